"""The train state and the jitted train and evaluation steps, apart from the epoch loop.

A :class:`TrainState` is a pytree: the flax variables (``params`` and, for BatchNorm models,
``batch_stats``), the optimizer state, the global step and the running loss / correct sums of
the current epoch. :func:`make_train_step` gives the pure ``state, images, labels -> state``
(jitted); the loop in :mod:`signgd_jax.commands.train.loop` only feeds it batches and saves it.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from signgd_jax import data
from signgd_jax.commands.train.config import TrainConfig
from signgd_jax.regularize import with_range_penalty


@flax.struct.dataclass
class TrainState:
    variables: dict     # flax variables: params (+ batch_stats)
    opt_state: Any      # the optax state of the params
    step: jax.Array     # global step (int32): steps taken since the start of the run
    loss_sum: jax.Array  # sum of the per-example loss over the current epoch so far
    correct: jax.Array  # training examples classified correctly in the current epoch so far

    @classmethod
    def create(cls, variables: dict, tx: optax.GradientTransformation) -> "TrainState":
        return cls(variables=dict(variables), opt_state=tx.init(variables["params"]),
                   step=jnp.zeros((), jnp.int32), loss_sum=jnp.zeros((), jnp.float32),
                   correct=jnp.zeros((), jnp.int32))

    def new_epoch(self) -> "TrainState":
        """The same state with the epoch's running sums set to zero."""
        return self.replace(loss_sum=jnp.zeros((), jnp.float32), correct=jnp.zeros((), jnp.int32))

    def checkpoint_items(self) -> tuple[dict, dict]:
        """``(variables, train)``: the two array items of a checkpoint (see ``checkpoint.py``)."""
        return self.variables, {"opt_state": self.opt_state, "step": self.step,
                                "loss_sum": self.loss_sum, "correct": self.correct}

    @classmethod
    def from_checkpoint_items(cls, variables: dict, train: dict) -> "TrainState":
        return cls(variables=dict(variables), **train)


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """SGD with momentum (the paper's recipe) or AdamW, cosine (or constant) rate.

    ``add_decayed_weights`` before ``sgd`` is PyTorch's ``SGD(weight_decay=...)``: the decay
    term joins the gradient before the momentum buffer. AdamW (decoupled decay, betas
    0.9/0.999) trains the LayerNorm/GELU models (ConvNeXt, Mixer, ResMLP) far faster.
    Settings ``cfg`` leaves unset come from the model's recipe (:meth:`TrainConfig.resolved`).
    """
    cfg = cfg.resolved()
    lr = learning_rate(cfg, total_steps) if cfg.schedule == "cosine" else cfg.lr
    if cfg.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=cfg.weight_decay)
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov))


def learning_rate(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the global step."""
    cfg = cfg.resolved()
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(cfg.lr, max(total_steps, 1))
    return optax.constant_schedule(cfg.lr)


def make_train_step(model, tx: optax.GradientTransformation, dropout_key: jax.Array,
                    range_penalty: float = 0.0, range_bound: float = 2.5
                    ) -> Callable[[TrainState, jax.Array, jax.Array], TrainState]:
    """The jitted ``train_step(state, images, labels) -> state``: one optimizer step on the
    mean cross-entropy (plus ``range_penalty * R``, the conversion-aware range penalty of
    :mod:`signgd_jax.regularize` with bound ``range_bound``, when ``range_penalty > 0``).

    Dropout draws from ``fold_in(dropout_key, state.step)``, so a resumed run draws the same.
    """
    apply = with_range_penalty(model.apply, range_bound) if range_penalty else model.apply

    def train_step(state: TrainState, images, labels) -> TrainState:
        mutable = [k for k in state.variables if k != "params"]
        rng = jax.random.fold_in(dropout_key, state.step)

        def loss_fn(params):
            kwargs = dict(train=True, rngs={"dropout": rng})
            if mutable:
                kwargs["mutable"] = mutable
            out = apply({**state.variables, "params": params}, images, **kwargs)
            out, penalty = out if range_penalty else (out, 0.0)
            logits, updates = out if mutable else (out, {})
            loss = optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), labels).mean() + range_penalty * penalty
            return loss, (logits, updates)

        params = state.variables["params"]
        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        opt_updates, opt_state = tx.update(grads, state.opt_state, params)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.int32)
        return state.replace(
            variables={**state.variables, **updates, "params": optax.apply_updates(params, opt_updates)},
            opt_state=opt_state, step=state.step + 1,
            loss_sum=state.loss_sum + loss * labels.shape[0], correct=state.correct + correct)

    return jax.jit(train_step)


def make_accuracy(model, batch_size: int) -> Callable[[dict, Any], float]:
    """``accuracy(variables, dataset)``: the share of ``dataset`` the model classifies correctly,
    in batches of ``min(batch_size, len(dataset))`` (the last one padded: one compilation)."""
    count = jax.jit(lambda variables, images, labels: jnp.sum(
        jnp.argmax(model.apply(variables, images, train=False), -1) == labels).astype(jnp.int32))

    def accuracy(variables, ds) -> float:
        if len(ds) == 0:
            return float("nan")
        correct = jnp.zeros((), jnp.int32)
        size = min(batch_size, len(ds))
        workers = data.default_workers(ds, data.num_batches(len(ds), size, False))
        for images, labels, _ in data.padded_batches(ds, size, workers=workers):
            correct = correct + count(variables, images, labels)
        return int(correct) / len(ds)

    return accuracy


__all__ = ["TrainState", "make_optimizer", "learning_rate", "make_train_step", "make_accuracy"]
