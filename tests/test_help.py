"""``--help`` of both commands: every option shows its default, and the default shown is the
parser's real one (or, for options left unset, says in words what applies)."""
import argparse
import re

import pytest

from signgd_jax import data
from signgd_jax.commands.evaluate.cli import parser as convert_parser
from signgd_jax.commands.train.cli import parser as train_parser
from signgd_jax.commands.train.config import (MODEL_RECIPES, OPTIMIZER_DEFAULTS, PAPER_RECIPE,
                                              TrainConfig)


def _options(p: argparse.ArgumentParser):
    return [a for a in p._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _help(p: argparse.ArgumentParser, action) -> str:
    """The option's help as ``--help`` prints it (``%(default)s`` expanded), one line."""
    return " ".join(p._get_formatter()._expand_help(action).split())


def default_problems(p: argparse.ArgumentParser) -> list[str]:
    """Options whose help does not show their true default; empty when all do."""
    problems = []
    for action in _options(p):
        text, name = _help(p, action), action.option_strings[-1]
        shown = re.search(r"\(default:? ([^)]*)\)", text)
        if action.required:
            if "(required)" not in text:
                problems.append(f"{name}: required, not said")
        elif isinstance(action, argparse._StoreTrueAction):
            if not (action.default is False and "(default: off)" in text):
                problems.append(f"{name}: store_true without '(default: off)'")
        elif isinstance(action, argparse._StoreFalseAction):
            if not (action.default is True and re.search(r"\(default: [^)]*\bon\)", text)):
                problems.append(f"{name}: store_false without '(default: ... on)'")
        elif action.default is None:
            if not shown or shown.group(1).strip() in ("", "None"):
                problems.append(f"{name}: unset by default, help does not say what applies")
        elif not shown or not (shown.group(1) == str(action.default)
                               or shown.group(1).startswith(f"{action.default}; ")
                               or shown.group(1).startswith(f"{action.default}, ")):
            problems.append(f"{name}: default {action.default!r}, help shows "
                            f"{shown.group(1) if shown else 'none'!r}")
    return problems


def test_the_checker_catches_a_missing_or_wrong_default():
    p = argparse.ArgumentParser()
    p.add_argument("--a", type=int, default=3, help="shown right (default: %(default)s)")
    p.add_argument("--b", type=int, default=4, help="shown wrong (default: 5)")
    p.add_argument("--c", default=None, help="not shown")
    p.add_argument("--d", action="store_true", help="flag")
    assert default_problems(p) == ["--b: default 4, help shows '5'",
                                   "--c: unset by default, help does not say what applies",
                                   "--d: store_true without '(default: off)'"]


def test_train_help_shows_every_default():
    assert default_problems(train_parser()) == []


def test_convert_help_shows_every_default():
    assert default_problems(convert_parser()) == []


def test_train_help_recipe_defaults_are_the_resolved_ones():
    """What the help says the unset options become is what :meth:`TrainConfig.resolved` does."""
    helps = {a.dest: _help(train_parser(), a) for a in _options(train_parser())}
    for optimizer, d in OPTIMIZER_DEFAULTS.items():
        assert f"{d['lr']:g} for {optimizer}" in helps["lr"]
        assert f"{d['weight_decay']:g} for {optimizer}" in helps["weight_decay"]
        plain = TrainConfig(model="resnet_mini", workdir="w", optimizer=optimizer).resolved()
        assert (plain.lr, plain.weight_decay) == (d["lr"], d["weight_decay"])
    assert f"{MODEL_RECIPES['resmlp_mini']['range_penalty']:g} for resmlp_mini" in helps["range_penalty"]
    assert f"else {PAPER_RECIPE['range_penalty']:g})" in helps["range_penalty"]
    assert f"{MODEL_RECIPES['resmlp_mini']['range_bound']:g} for resmlp_mini" in helps["range_bound"]
    assert f"else {PAPER_RECIPE['range_bound']:g})" in helps["range_bound"]
    assert "sgd otherwise" in helps["optimizer"] and PAPER_RECIPE["optimizer"] == "sgd"
    epilog = train_parser().epilog
    assert all(f"{name}: {r['optimizer']} lr {r['lr']:g}" in epilog for name, r in MODEL_RECIPES.items())
    for dataset in ("mnist5k", "cifar10", "cifar100", "mnist"):
        on = TrainConfig(model="resnet_mini", workdir="w", dataset=dataset).resolved().augment
        assert on == (dataset in ("cifar10", "cifar100")), dataset
    assert "else on for cifar10 and cifar100 only)" in helps["augment"]


@pytest.mark.parametrize("dataset", data.SUPPORTED)
def test_augment_help_says_what_augmentation_does(dataset):
    """The largest shift (the pad) and the flip per dataset, as ``data.augmentation`` applies them."""
    (action,) = [a for a in _options(train_parser()) if a.dest == "augment"]
    clauses = _help(train_parser(), action).split("(default:")[0].split(";")
    (clause,) = [c for c in clauses if re.search(rf"\b{dataset}\b", c)]
    rule = data.augmentation(dataset)
    assert f"up to {rule['pad']} pixels" in clause, clause
    assert ("horizontal flips" in clause) == rule["flip"], clause


@pytest.mark.parametrize("make", [train_parser, convert_parser], ids=["train", "convert"])
def test_dataset_help_lists_every_name(make):
    (action,) = [a for a in _options(make()) if a.dest == "dataset"]
    text = _help(make(), action)
    missing = [name for name in data.SUPPORTED if not re.search(rf"(?<![\w]){name}(?![\w])", text)]
    assert not missing, f"--dataset help does not name {missing}: {text}"
