"""The training loop behind ``python -m train`` and :func:`train.run`.

Resumable by construction: the example order of an epoch is a pure function of
``(seed, epoch)``, the augmentation of a batch of ``(seed, epoch, batch)``, the dropout key of
the global step; a checkpoint (every ``checkpoint_every`` steps and at every epoch end) holds
everything else. Rerunning the same command restores the latest checkpoint, skips the steps
of the epoch already done, and so ends with the same parameters as an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from signgd_jax import data
from signgd_jax.regularize import with_range_penalty
from train import checkpoint as ckpt
from train.config import (CONFIG_FILE, METRICS_FILE, ConfigError, TrainConfig, build_model,
                          check_resumable, config_record, read_json, write_json_atomic)

# Test hook: SIGKILL the process right after this global step (once its checkpoint, if any,
# is on disk), to exercise resumption. Not part of the CLI.
KILL_ENV = "SIGNGD_TRAIN_KILL_AT_STEP"


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """SGD with momentum (the paper's recipe) or AdamW, cosine (or constant) rate.

    ``add_decayed_weights`` before ``sgd`` is PyTorch's ``SGD(weight_decay=...)``: the decay
    term joins the gradient before the momentum buffer. AdamW (decoupled decay, betas
    0.9/0.999) trains the LayerNorm/GELU models (ConvNeXt, Mixer, ResMLP) far faster.
    """
    lr = (optax.cosine_decay_schedule(cfg.lr, max(total_steps, 1))
          if cfg.schedule == "cosine" else cfg.lr)
    if cfg.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=cfg.weight_decay)
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov))


def _make_steps(model, tx, mutable: tuple, dropout_key, batch_size: int,
                range_penalty: float = 0.0, range_bound: float = 2.5):
    # Conversion-aware training (signgd_jax.regularize): loss + range_penalty * R, where R
    # penalises non-ReLU neuron targets beyond +-range_bound.
    apply = model.apply
    if range_penalty:
        apply = with_range_penalty(model.apply, range_bound)

    def train_step(variables, state, images, labels):
        rng = jax.random.fold_in(dropout_key, state["step"])

        def loss_fn(params):
            v = {**variables, "params": params}
            kwargs = dict(train=True, rngs={"dropout": rng})
            if mutable:
                kwargs["mutable"] = list(mutable)
            out = apply(v, images, **kwargs)
            out, penalty = out if range_penalty else (out, 0.0)
            logits, updates = out if mutable else (out, {})
            loss = optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), labels).mean() + range_penalty * penalty
            return loss, (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            variables["params"])
        opt_updates, opt_state = tx.update(grads, state["opt_state"], variables["params"])
        params = optax.apply_updates(variables["params"], opt_updates)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.int32)
        new_state = {"opt_state": opt_state, "step": state["step"] + 1,
                     "loss_sum": state["loss_sum"] + loss * batch_size,
                     "correct": state["correct"] + correct}
        return {**variables, **updates, "params": params}, new_state

    def eval_step(variables, images, labels, mask):
        logits = model.apply(variables, images, train=False)
        return jnp.sum((jnp.argmax(logits, -1) == labels) & mask).astype(jnp.int32)

    return jax.jit(train_step), jax.jit(eval_step)


def _evaluate(eval_step, variables, ds: data.Dataset, batch_size: int) -> float:
    if len(ds) == 0:
        return float("nan")
    batch_size = min(batch_size, len(ds))
    correct = jnp.zeros((), jnp.int32)
    for images, labels in data.batches(ds, batch_size):
        k = len(labels)
        mask = np.arange(batch_size) < k
        if k < batch_size:  # pad to one shape: one compilation
            images = np.concatenate([images, np.zeros((batch_size - k,) + images.shape[1:],
                                                      images.dtype)])
            labels = np.concatenate([labels, np.zeros(batch_size - k, labels.dtype)])
        correct = correct + eval_step(variables, images, labels, mask)
    return int(correct) / len(ds)


def _write_metrics(path: str, history: list) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in history)
    os.replace(tmp, path)


def _append_metrics(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _workdir_lock(workdir: str):
    """Hold an exclusive lock on the workdir (released by the OS if the process dies)."""
    import fcntl

    with open(os.path.join(workdir, ".lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"workdir {workdir} is in use by another training process") \
                from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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


def run(config: TrainConfig, model=None, log: Callable[[str], None] = print) -> dict:
    """Train (or resume, or notice it is done) as ``config`` says; return the last epoch's
    metrics ``{"epoch", "train_loss", "train_acc", "test_acc", "seconds", "step", "lr"}``.

    ``model`` overrides building ``config.model`` (any flax module called as
    ``model.apply(variables, images, train=...)``). Raises :class:`ConfigError` for bad
    settings, ``signgd_jax.data.DatasetNotPrepared``, or a ``CheckpointError`` when the
    workdir's checkpoint cannot be restored.
    """
    cfg = config
    cfg.validate()
    image_shape, num_classes, train_split, test_split = data.dataset_info(cfg.dataset)
    workdir = os.path.abspath(os.path.expanduser(cfg.workdir))
    settings = config_record(cfg, num_classes=num_classes, image_shape=list(image_shape))

    done = _finished_record(workdir, cfg, settings)
    if done is not None:
        log(f"training already finished in {workdir} ({cfg.epochs} epochs, "
            f"test accuracy {done['test_acc']:.4f}); nothing to do")
        return done

    if model is None:
        model = build_model(cfg.model, num_classes)
    train_ds = data.load(cfg.dataset, train_split, cfg.data_dir).take(cfg.limit_train)
    test_ds = data.load(cfg.dataset, test_split, cfg.data_dir).take(cfg.limit_test)
    n_train, bs = len(train_ds), cfg.batch_size
    if n_train < bs:
        raise ConfigError(f"batch-size {bs} exceeds the {n_train} training examples")
    spe = n_train // bs
    total = cfg.epochs * spe
    record = dict(settings, train_examples=n_train, test_examples=len(test_ds),
                  steps_per_epoch=spe, total_steps=total)
    os.makedirs(workdir, exist_ok=True)
    with _workdir_lock(workdir):
        cfg_path = os.path.join(workdir, CONFIG_FILE)
        if os.path.isfile(cfg_path):
            check_resumable(read_json(cfg_path), record)
        write_json_atomic(cfg_path, record)

        key = jax.random.key(cfg.seed)
        init_key, dropout_key = jax.random.split(key)
        variables = jax.jit(lambda k: model.init(
            k, jnp.zeros((1, *image_shape), jnp.float32), train=False))(init_key)
        variables = dict(variables)
        mutable = tuple(k for k in variables if k != "params")
        tx = make_optimizer(cfg, total)
        state = {"opt_state": tx.init(variables["params"]), "step": jnp.zeros((), jnp.int32),
                 "loss_sum": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.int32)}
        meta = {"epoch": 0, "step_in_epoch": 0, "epochs_done": 0, "history": [],
                "epoch_seconds": 0.0}

        mgr = ckpt.manager(workdir, keep=cfg.keep_checkpoints)
        try:
            latest = mgr.latest_step()
            if latest is not None:
                target_vars = ckpt.abstract_like(variables)
                try:
                    ckpt.check_shapes(mgr, latest, target_vars)
                    got = ckpt.restore(mgr, latest, variables=target_vars,
                                       train=ckpt.abstract_like(state), meta=True)
                except ckpt.CheckpointError as e:
                    raise type(e)(f"{e} (to resume from an earlier checkpoint, delete "
                                  f"{mgr.directory}/{latest})") from e
                variables, state, meta = dict(got["variables"]), got["train"], got["meta"]
                log(f"resuming from checkpoint {latest}: epoch {meta['epoch'] + 1}/{cfg.epochs}, "
                    f"step {meta['step_in_epoch']}/{spe}")
            metrics_path = os.path.join(workdir, METRICS_FILE)
            _write_metrics(metrics_path, meta["history"])  # drop lines past the checkpoint
            history = list(meta["history"])
            train_step, eval_step = _make_steps(model, tx, mutable, dropout_key, bs,
                                                cfg.range_penalty, cfg.range_bound)
            kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
            lr_at = (optax.cosine_decay_schedule(cfg.lr, max(total, 1))
                     if cfg.schedule == "cosine" else (lambda s: cfg.lr))

            def save(epoch, step_in_epoch, epochs_done, seconds):
                ckpt.save(mgr, epoch * spe + step_in_epoch, variables, state,
                          {"epoch": epoch, "step_in_epoch": step_in_epoch,
                           "epochs_done": epochs_done, "history": list(history),
                           "epoch_seconds": seconds, "global_step": epoch * spe + step_in_epoch,
                           "seed": cfg.seed})

            for epoch in range(meta["epoch"], cfg.epochs):
                first = epoch == meta["epoch"]
                start = meta["step_in_epoch"] if first else 0
                t0 = time.perf_counter() - (meta["epoch_seconds"] if first else 0.0)
                bar = tqdm(total=spe, initial=start, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           unit="step", leave=False, disable=not cfg.progress, file=sys.stderr,
                           dynamic_ncols=True, mininterval=0.5)
                batches = data.batches(train_ds, bs, shuffle=True, seed=cfg.seed, epoch=epoch,
                                       drop_remainder=True, augment=cfg.resolved_augment(),
                                       start=start)
                for s, (images, labels) in enumerate(batches, start + 1):
                    variables, state = train_step(variables, state, images, labels)
                    bar.update(1)
                    if cfg.progress and s % 20 == 0:
                        bar.set_postfix(loss=f"{float(state['loss_sum']) / (s * bs):.4f}",
                                        refresh=False)
                    if s < spe and (epoch * spe + s) % cfg.checkpoint_every == 0:
                        save(epoch, s, epoch, time.perf_counter() - t0)
                    if kill_at and epoch * spe + s == kill_at:
                        mgr.wait_until_finished()
                        os.kill(os.getpid(), signal.SIGKILL)
                bar.close()

                test_acc = _evaluate(eval_step, variables, test_ds, cfg.eval_batch_size)
                rec = {"epoch": epoch + 1,
                       "train_loss": float(state["loss_sum"]) / (spe * bs),
                       "train_acc": int(state["correct"]) / (spe * bs),
                       "test_acc": test_acc,
                       "seconds": round(time.perf_counter() - t0, 3),
                       "step": (epoch + 1) * spe,
                       "lr": float(lr_at((epoch + 1) * spe - 1))}  # of the epoch's last step
                history.append(rec)
                state = {**state, "loss_sum": jnp.zeros((), jnp.float32),
                         "correct": jnp.zeros((), jnp.int32)}
                save(epoch + 1, 0, epoch + 1, 0.0)
                _append_metrics(metrics_path, rec)
                log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {rec['train_loss']:.4f}, "
                    f"train acc {rec['train_acc']:.4f}, test acc {test_acc:.4f}, "
                    f"{rec['seconds']:.1f}s")
                if kill_at and (epoch + 1) * spe == kill_at:
                    mgr.wait_until_finished()
                    os.kill(os.getpid(), signal.SIGKILL)
            mgr.wait_until_finished()
        finally:
            mgr.close()
    return history[-1]
