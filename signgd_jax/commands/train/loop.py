"""The epoch loop behind ``signgd-train`` (``python -m train``) and :func:`run`.

Resumable by construction: the example order of an epoch is a pure function of
``(seed, epoch)``, the augmentation of a batch of ``(seed, epoch, batch)``, the dropout key of
the global step; a checkpoint (every ``checkpoint_every`` steps and at every epoch end) holds
the :class:`~signgd_jax.commands.train.state.TrainState` and the epoch history. Rerunning the
same command restores the latest complete checkpoint, skips the steps of the epoch already
done, and so ends with the same parameters as an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from signgd_jax import data
from signgd_jax.commands.common import (atomic_write, progress_bar, read_json, workdir_lock,
                                        write_json_atomic)
from signgd_jax.commands.train import checkpoint as ckpt
from signgd_jax.commands.train.config import (CONFIG_FILE, METRICS_FILE, ConfigError, TrainConfig,
                                              build_model, check_resumable, config_record)
from signgd_jax.commands.train.state import (TrainState, learning_rate, make_accuracy,
                                             make_optimizer, make_train_step)

# Called after every global step as ``on_step(step, checkpointing)``, once the step's
# checkpoint (if it has one) has been started; for an epoch's last step after the test
# evaluation, the epoch-end checkpoint and the metrics line. For tests and monitoring.
StepCallback = Callable[[int, bool], None]


def _write_metrics(path: str, history: list) -> None:
    atomic_write(path, lambda f: f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in history))


def _append_metrics(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _finished_record(workdir: str, cfg: TrainConfig, settings: dict) -> Optional[dict]:
    """The last epoch record if ``workdir`` already holds this run, completed; else None."""
    if not os.path.isfile(os.path.join(workdir, CONFIG_FILE)):
        return None
    try:
        old = read_json(os.path.join(workdir, CONFIG_FILE))
    except ValueError as e:
        raise ConfigError(f"{workdir}/{CONFIG_FILE} is unreadable ({e}); use a new --workdir") \
            from None
    check_resumable({k: old.get(k) for k in settings}, settings)
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    mgr = ckpt.manager(workdir, read_only=True)
    try:
        step = mgr.latest_step()
        if step is None:
            return None
        meta = ckpt.restore(mgr, step, meta=True)["meta"]
    finally:
        mgr.close()
    if meta["epochs_done"] >= cfg.epochs and meta["history"]:
        _write_metrics(os.path.join(workdir, METRICS_FILE), meta["history"])
        return meta["history"][-1]
    return None


def _initial_state(model, seed: int, image_shape, tx) -> tuple[TrainState, jax.Array]:
    """The freshly initialised state and the dropout key, both from ``seed``."""
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    variables = jax.jit(lambda k: model.init(
        k, jnp.zeros((1, *image_shape), jnp.float32), train=False))(init_key)
    return TrainState.create(variables, tx), dropout_key


def _restore_latest(mgr, state: TrainState, log, epochs: int, spe: int) -> tuple[TrainState, dict]:
    """``(state, meta)`` of the latest checkpoint, or the given state at the start."""
    meta = {"epoch": 0, "step_in_epoch": 0, "epochs_done": 0, "history": [], "epoch_seconds": 0.0}
    latest = mgr.latest_step()
    if latest is None:
        return state, meta
    variables, train = (ckpt.abstract_like(item) for item in state.checkpoint_items())
    try:
        ckpt.check_shapes(mgr, latest, variables)
        got = ckpt.restore(mgr, latest, variables=variables, train=train, meta=True)
    except ckpt.RestoreError as e:
        raise type(e)(f"{e} (to resume from an earlier checkpoint, delete "
                      f"{mgr.directory}/{latest})") from e
    meta = got["meta"]
    log(f"resuming from checkpoint {latest}: epoch {meta['epoch'] + 1}/{epochs}, "
        f"step {meta['step_in_epoch']}/{spe}")
    return TrainState.from_checkpoint_items(got["variables"], got["train"]), meta


def _prepare(cfg: TrainConfig, splits: tuple[str, str], settings: dict):
    """``(train_ds, test_ds, config record)``; ConfigError when the batch does not fit."""
    train_ds = data.load(cfg.dataset, splits[0], cfg.data_dir).take(cfg.limit_train)
    test_ds = data.load(cfg.dataset, splits[1], cfg.data_dir).take(cfg.limit_test)
    if len(train_ds) < cfg.batch_size:
        raise ConfigError(f"batch-size {cfg.batch_size} exceeds the {len(train_ds)} training examples")
    spe = len(train_ds) // cfg.batch_size
    record = dict(settings, train_examples=len(train_ds), test_examples=len(test_ds),
                  steps_per_epoch=spe, total_steps=cfg.epochs * spe)
    return train_ds, test_ds, record


def run(config: TrainConfig, model=None, log: Callable[[str], None] = print,
        on_step: Optional[StepCallback] = None) -> dict:
    """Train (or resume, or notice it is done) as ``config`` says; return the last epoch's
    metrics ``{"epoch", "train_loss", "train_acc", "test_acc", "seconds", "step", "lr"}``.

    ``model`` overrides building ``config.model`` (any flax module called as
    ``model.apply(variables, images, train=...)``); ``on_step`` see :data:`StepCallback`.
    Raises :class:`ConfigError` for bad settings or a workdir in use,
    ``signgd_jax.data.DatasetNotPrepared``, or a ``RestoreError`` when the workdir's
    checkpoint cannot be restored.
    """
    config.validate()
    cfg = config.resolved()  # the model's recipe fills what the config leaves unset
    image_shape, num_classes, *splits = data.dataset_info(cfg.dataset)
    workdir = os.path.abspath(os.path.expanduser(cfg.workdir))
    settings = config_record(cfg, num_classes=num_classes, image_shape=list(image_shape))
    done = _finished_record(workdir, cfg, settings)
    if done is not None:
        log(f"training already finished in {workdir} ({cfg.epochs} epochs, "
            f"test accuracy {done['test_acc']:.4f}); nothing to do")
        return done
    model = build_model(cfg.model, num_classes, cfg.activation, cfg.qcfs_levels) if model is None else model
    log(config.recipe_text())
    train_ds, test_ds, record = _prepare(cfg, tuple(splits), settings)
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock(workdir, ConfigError):
        cfg_path = os.path.join(workdir, CONFIG_FILE)
        if os.path.isfile(cfg_path):
            check_resumable(read_json(cfg_path), record)
        write_json_atomic(cfg_path, record, sort_keys=True)
        tx = make_optimizer(cfg, record["total_steps"])
        state, dropout_key = _initial_state(model, cfg.seed, image_shape, tx)
        mgr = ckpt.manager(workdir, keep=cfg.keep_checkpoints)
        try:
            state, meta = _restore_latest(mgr, state, log, cfg.epochs, record["steps_per_epoch"])
            history = _epochs(cfg, model, tx, dropout_key, mgr, state, meta, train_ds, test_ds,
                              os.path.join(workdir, METRICS_FILE), log, on_step or (lambda *_: None))
            mgr.wait_until_finished()
        finally:
            mgr.close()
    return history[-1]


def _epochs(cfg: TrainConfig, model, tx, dropout_key, mgr, state: TrainState, meta: dict,
            train_ds, test_ds, metrics_path: str, log, on_step: StepCallback) -> list:
    """Train the epochs from ``meta``'s position to the end; returns the epoch history."""
    bs = cfg.batch_size
    spe = len(train_ds) // bs
    train_step = make_train_step(model, tx, dropout_key, cfg.range_penalty, cfg.range_bound)
    accuracy = make_accuracy(model, cfg.eval_batch_size)
    lr_at = learning_rate(cfg, cfg.epochs * spe)
    history = list(meta["history"])
    _write_metrics(metrics_path, history)  # drop lines past the checkpoint

    def save(state, epoch, step_in_epoch, epochs_done, seconds):
        step = epoch * spe + step_in_epoch
        ckpt.save(mgr, step, *state.checkpoint_items(),
                  {"epoch": epoch, "step_in_epoch": step_in_epoch, "epochs_done": epochs_done,
                   "history": list(history), "epoch_seconds": seconds, "global_step": step,
                   "seed": cfg.seed})

    for epoch in range(meta["epoch"], cfg.epochs):
        resumed = epoch == meta["epoch"]
        start = meta["step_in_epoch"] if resumed else 0
        t0 = time.perf_counter() - (meta["epoch_seconds"] if resumed else 0.0)
        batches = data.batches(train_ds, bs, shuffle=True, seed=cfg.seed, epoch=epoch,
                               drop_remainder=True, augment=cfg.augment, start=start,
                               workers=data.default_workers(train_ds, spe - start))
        # The bar counts finished steps: steps are dispatched asynchronously, so each update
        # waits for the step before the one just dispatched (one step in flight keeps the
        # host's batch preparation overlapped with the computation).
        in_flight = None
        with progress_bar(spe, f"epoch {epoch + 1}/{cfg.epochs}", "step", cfg.progress,
                          initial=start) as bar:
            for s, (images, labels) in enumerate(batches, start + 1):
                state = train_step(state, images, labels)
                if in_flight is not None:
                    jax.block_until_ready(in_flight)
                    bar.update(1)
                in_flight = state.loss_sum
                if cfg.progress and s % 20 == 0:
                    bar.set_postfix(loss=f"{float(state.loss_sum) / (s * bs):.4f}", refresh=False)
                if s < spe:
                    checkpointing = (epoch * spe + s) % cfg.checkpoint_every == 0
                    if checkpointing:
                        save(state, epoch, s, epoch, time.perf_counter() - t0)
                    on_step(epoch * spe + s, checkpointing)
            if in_flight is not None:
                jax.block_until_ready(in_flight)
                bar.update(1)

        test_acc = accuracy(state.variables, test_ds)
        rec = {"epoch": epoch + 1, "train_loss": float(state.loss_sum) / (spe * bs),
               "train_acc": int(state.correct) / (spe * bs), "test_acc": test_acc,
               "seconds": round(time.perf_counter() - t0, 3), "step": (epoch + 1) * spe,
               "lr": float(lr_at((epoch + 1) * spe - 1))}  # of the epoch's last step
        history.append(rec)
        state = state.new_epoch()
        save(state, epoch + 1, 0, epoch + 1, 0.0)
        _append_metrics(metrics_path, rec)
        log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {rec['train_loss']:.4f}, "
            f"train acc {rec['train_acc']:.4f}, test acc {test_acc:.4f}, {rec['seconds']:.1f}s")
        on_step((epoch + 1) * spe, True)
    return history
