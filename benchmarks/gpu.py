"""One accelerator benchmark in one command: everything issue 26 asks of an H200, written to one JSON.

    python benchmarks/gpu.py [--out benchmarks/results_h200.json] [--budget-s 420] [--models resnet34,...]
    python benchmarks/gpu.py --smoke --out /tmp/gpu_smoke.json      # the same code paths, tiny, on CPU

Measures, with random deterministic weights (speed does not depend on them), at 224x224:
ResNet-34, ConvNeXt-S, Mixer-B/16, ResMLP-B24 and ViT-B/16, in paper dynamics and improved
dynamics (the ViT in improved only: paper mode refuses its vector neurons, and the reference's
elementwise decomposition carries one product neuron per query, key, head and channel).

- rows: B=64, T=64, fp32 and bf16 (``simulate(..., dtype=jnp.bfloat16)``): SNN seconds,
  image-steps/s, the ratio ``SNN time / (T x jitted ANN forward time)`` with the ANN compiled for
  the same batch and dtype and timed in turns with the simulation (``simulate.best_times``), the
  compile time, XLA's buffer assignment for the compiled simulation and the device's
  ``memory_stats()`` peak (null where the backend has none, e.g. CPU);
- batch search: from B=64 doubling up to 512 until out of memory or no gain (>2%), fp32 and bf16;
- memory at T=64 and T=512 (the T=512 simulation compiled and run once);
- the compiled sweep (``signgd_jax.sweep``, 4 x 4 = 16 grid points) against 16 separate runs of
  the same compiled simulation, with the ANN's predictions as labels (agreement, not accuracy);
- the host input pipeline: synthetic JPEGs (375x500, PIL-encoded) read through
  ``signgd_jax.data.Dataset`` as ImageNet validation images (decode, resize 256, crop 224,
  normalise), on one thread and on several, and with a pretrained model's preprocessing; without
  PIL a decode-free stand-in (raw uint8 arrays), labelled as such;
- for the ResNet-34: the projected seconds for 50,000 images at T=64 (simulation alone, and the
  input pipeline alone; overlapped, the larger of the two).

Order: the measurements that matter most come first (the ResNet-34's rows, sweep and batch
search; every other model at B=64 in fp32, then in bf16; memory at T=512; improved mode; the
other models' batch search). The JSON is rewritten after every measurement, so an interrupted
run leaves what it measured; once ``--budget-s`` seconds have passed (or a measurement's estimate
would pass them) the rest is skipped and listed under ``skipped``. A failed measurement is
recorded under ``errors`` and the run goes on; the exit status is then 1. JAX's allocator may
take 90% of the device (``XLA_PYTHON_CLIENT_MEM_FRACTION``, unless set). Needs jax, flax, numpy
and the project (PIL optional); nothing imports tensorflow.
"""
from __future__ import annotations

import time

START = time.perf_counter()

import os  # noqa: E402

# The batch search may fill the device: let JAX's allocator take 90% of it instead of 75% (set
# before JAX starts; an explicit setting wins and is recorded with the machine facts).
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_simulate_benchmark():
    """benchmarks/simulate.py as a module (its timing and memory helpers; it puts the repo on sys.path)."""
    spec = importlib.util.spec_from_file_location("benchmarks_simulate", os.path.join(HERE, "simulate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_simulate_benchmark()
import signgd_jax as sg  # noqa: E402
from signgd_jax import data, models  # noqa: E402

MODELS = ("resnet34", "convnext_small", "mixer_b16", "resmlp_big_24", "vit_b16")
HEADLINE = "resnet34"  # the model of the sweep and the 50,000-image projection (else the first one named)
VALIDATION_IMAGES = 50_000
MIN_GAIN = 0.02  # the batch search stops when doubling gains less than this
SWEEP_ETA0 = (0.1, 0.15, 0.2, 0.25)
SWEEP_GAMMA = (0.9, 0.93, 0.95, 0.97)
JPEG_SHAPE = (375, 500)  # a typical ImageNet validation photo

FULL = dict(image_size=224, batch=64, max_batch=512, timesteps=64, memory_timesteps=(64, 512), repeats=2,
            num_classes=1000, calibration_images=8, pipeline_images=256, pipeline_batch=64, overrides={})
# --smoke: the same code paths at sizes a 2-core CPU runs in seconds (32x32 images, narrow and shallow
# versions of the same model classes; T and the T of the memory check in the same 1:8 ratio)
SMOKE = dict(image_size=32, batch=2, max_batch=4, timesteps=4, memory_timesteps=(4, 32), repeats=1,
             num_classes=10, calibration_images=2, pipeline_images=8, pipeline_batch=4, overrides=dict(
                 resnet34=dict(depths=(1,), widths=(8,), strides=(1,), stem_width=8),
                 convnext_small=dict(depths=(1, 1), dims=(8, 8)),
                 mixer_b16=dict(num_blocks=1, patch_size=8, hidden_dim=8, tokens_mlp_dim=8, channels_mlp_dim=16),
                 resmlp_big_24=dict(depth=1, patch_size=8, dim=8, mlp_ratio=2),
                 vit_b16=dict(patch_size=8, hidden_dim=8, depth=1, num_heads=2, mlp_dim=16)))
SMOKE_MODELS = ("resnet34", "vit_b16")  # every code path: BN, max-pool, sweep, projection; improved-only


class OutOfMemory(RuntimeError):
    pass


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def dynamics_of(name):
    """The dynamics measured for ``name``: paper and improved, improved alone for the ViTs."""
    return ("improved",) if name in bench.IMPROVED_ONLY else ("paper", "improved")


def device_memory():
    """``memory_stats()`` of the first device (None where the backend keeps none)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without the call
        return None
    return dict(stats) if stats else None


def seconds_since_start():
    return time.perf_counter() - START


# ----------------------------------------------------------------------------- the report
class Report:
    """The JSON being written: rewritten after every measurement, so an interrupted run keeps its numbers."""

    def __init__(self, path, settings, budget_s, command):
        self.path, self.budget_s = path, budget_s
        self.data = dict(command=command, smoke=settings["smoke"], budget_s=budget_s,
                         started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                         complete=False, elapsed_s=None, machine=machine_facts(),
                         settings={k: v for k, v in settings.items() if k != "overrides"},
                         model_options=settings["overrides"], models={}, rows=[], batch_search=[], memory=[],
                         sweep=None, pipeline=None, projection=None, not_measured=[], skipped=[], errors=[])

    def save(self):
        self.data["elapsed_s"] = seconds_since_start()
        self.data["projection"] = projection(self.data)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=float)
        os.replace(tmp, self.path)

    def left_s(self):
        return self.budget_s - seconds_since_start()

    def skip(self, task, estimate_s=None, reason=None):
        if reason is None:
            reason = f"time budget: {seconds_since_start():.0f} s elapsed of {self.budget_s:.0f} s"
            if estimate_s:
                reason += f", about {estimate_s:.0f} s more needed"
        self.data["skipped"].append(dict(task=task, reason=reason))
        print(f"skipped {task}: {reason}", flush=True)
        self.save()

    def run(self, task, fn, estimate_s=0.0):
        """Runs one measurement unless the budget is spent; records an error and goes on."""
        if self.left_s() <= 0 or estimate_s > self.left_s():
            self.skip(task, estimate_s)
            return None
        start = time.perf_counter()
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - one failed measurement must not lose the others
            self.data["errors"].append(dict(task=task, arguments=getattr(fn, "args", None),
                                            error=f"{type(e).__name__}: {e}"[:2000],
                                            traceback=traceback.format_exc()[-4000:]))
            print(f"error in {task}: {type(e).__name__}: {str(e)[:500]}", flush=True)
            return None
        finally:
            print(f"[{seconds_since_start():6.1f} s] {task} ({time.perf_counter() - start:.1f} s)", flush=True)
            self.save()


def machine_facts():
    facts = bench.machine()
    devices = jax.devices()
    facts.update(backend=jax.default_backend(), device_count=len(devices), python=platform.python_version(),
                 default_matmul_precision=str(jax.config.jax_default_matmul_precision),
                 env={k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_", "TF_GPU"))},
                 versions={})
    for dist in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint",
                 "numpy", "pillow", "signgd-jax"):
        try:  # from the installed metadata: nothing optional is imported
            facts["versions"][dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            facts["versions"][dist] = None
    stats = device_memory()
    facts["device_memory_limit_bytes"] = None if stats is None else stats.get("bytes_limit")
    return facts


# ----------------------------------------------------------------------------- models and programs
class Bench:
    """Models, their conversions and compiled programs, built once and shared by the measurements."""

    def __init__(self, settings, report):
        self.s, self.report = settings, report
        self.shape = (settings["image_size"], settings["image_size"], 3)
        self.built, self.snns, self.anns, self.programs, self.batches = {}, {}, {}, {}, {}
        self.cast_variables = {}
        self.costs = {}  # (name, dtype) -> dict(compile_s, run_s per image-step), for the budget's estimates

    def model(self, name):
        """(model, variables on the device, calibration images, variables on the host)."""
        if name not in self.built:
            start = time.perf_counter()
            model = models.create(name, num_classes=self.s["num_classes"], **self.s["overrides"].get(name, {}))
            calib = jnp.asarray(uniform_images(self.s["calibration_images"], self.shape, seed=0))
            shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(calib.shape, calib.dtype))
            host = deterministic_variables(shapes)
            self.built[name] = (model, jax.device_put(host), calib, host)
            self.report.data["models"].setdefault(name, {}).update(
                parameters=int(sum(a.size for a in jax.tree_util.tree_leaves(host.get("params", host)))),
                init_s=time.perf_counter() - start, convert_s={})
        return self.built[name]

    def snn(self, name, dynamics):
        if (name, dynamics) not in self.snns:
            model, variables, calib, _ = self.model(name)
            start = time.perf_counter()
            snn = sg.convert(model, variables, [calib], dynamics=dynamics)
            jax.block_until_ready(jax.tree_util.tree_leaves(snn))
            self.report.data["models"][name]["convert_s"][dynamics] = time.perf_counter() - start
            self.snns[(name, dynamics)] = snn
        return self.snns[(name, dynamics)]

    def images(self, batch):
        if batch not in self.batches:
            # one batch size held at a time (the batch search's largest must not crowd the device)
            self.batches = {batch: jnp.asarray(uniform_images(batch, self.shape, seed=1))}
        return self.batches[batch]

    def variables(self, name, dtype):
        """The model's variables on the device in ``dtype`` (the ANN's, for a forward pass in that dtype)."""
        if (name, dtype) not in self.cast_variables:
            _, variables, _, host = self.model(name)
            self.cast_variables[(name, dtype)] = variables if dtype == "float32" else \
                jax.device_put(jax.tree_util.tree_map(lambda a: a.astype(jnp.dtype(dtype)), host))
        return self.cast_variables[(name, dtype)]

    def ann(self, name, dtype, batch):
        """(compiled ANN forward, its variables, its images, compile seconds) for ``dtype`` and ``batch``
        (kept for the base batch size only, like the simulations)."""
        if (name, dtype, batch) in self.anns:
            return self.anns[(name, dtype, batch)]
        model = self.model(name)[0]
        v = self.variables(name, dtype)
        x = jnp.asarray(np.asarray(self.images(batch)).astype(jnp.dtype(dtype)))
        start = time.perf_counter()
        compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(v, x).compile()
        result = (compiled, v, x, time.perf_counter() - start)
        if batch == self.s["batch"]:
            self.anns[(name, dtype, batch)] = result
        return result

    def program(self, name, dynamics, dtype, batch, T, keep=True):
        """(compiled simulation ``fn(snn, images) -> logits [1, B, classes]``, compile seconds), built
        with the public ``signgd_jax.simulate`` under ``jax.jit`` (the same program it runs itself)."""
        key = (name, dynamics, dtype, batch, T)
        if key in self.programs:
            return self.programs[key]
        cast = None if dtype == "float32" else jnp.dtype(dtype)
        fn = jax.jit(lambda snn, images: sg.simulate(snn, images, timesteps=(T,), dtype=cast))
        start = time.perf_counter()
        try:
            compiled = fn.lower(self.snn(name, dynamics), self.images(batch)).compile()
        except Exception as e:  # noqa: BLE001
            if is_out_of_memory(e):
                raise OutOfMemory(str(e)[:500]) from e
            raise
        result = (compiled, time.perf_counter() - start)
        if keep:
            self.programs[key] = result
        return result

    def estimate(self, name, dtype, batch, T, runs, compiles=1):
        """Seconds a measurement of ``runs`` simulations should take, from what was measured so far
        (0 when nothing of this model was: the first measurement of a model is never refused)."""
        cost = next((self.costs[k] for k in ((name, dtype), (name, "float32"), (name, "bfloat16")) if k in self.costs),
                    None)
        if cost is not None:
            return compiles * 1.5 * cost["compile_s"] + runs * cost["run_s"] * batch * T
        if not self.costs:
            return 0.0
        # a model not measured yet: twice the costliest measured one (its conversion comes on top)
        compile_s = max(c["compile_s"] for c in self.costs.values())
        run_s = max(c["run_s"] for c in self.costs.values())
        return 2 * (compiles * compile_s + runs * run_s * batch * T)

    # ------------------------------------------------------------------------- one row
    def failed(self, name, dynamics, dtype):
        """Whether the base measurement of this model, dynamics and dtype raised an error."""
        return any(tuple(e["arguments"] or ())[:3] == (name, dynamics, dtype) for e in self.report.data["errors"])

    def row(self, name, dynamics, dtype, batch, phase="base", rounds=None):
        T = self.s["timesteps"]
        rounds = self.s["repeats"] if rounds is None else rounds
        snn, images = self.snn(name, dynamics), self.images(batch)
        try:
            compiled, compile_s = self.program(name, dynamics, dtype, batch, T, keep=batch == self.s["batch"])
            ann, ann_vars, ann_images, ann_compile_s = self.ann(name, dtype, batch)
            fns = {"ann": lambda: ann(ann_vars, ann_images), "snn": lambda: compiled(snn, images)}
            before = device_memory()
            times = bench.best_times(fns, rounds, {"ann": 5})  # in turns, after one warm-up call each
            after = device_memory()
        except Exception as e:  # noqa: BLE001
            if not isinstance(e, OutOfMemory) and is_out_of_memory(e):
                raise OutOfMemory(str(e)[:500]) from e
            raise
        snn_s, ann_s = times["snn"], times["ann"]
        row = dict(model=name, dynamics=dynamics, dtype=dtype, batch=batch, T=T, phase=phase,
                   snn_s=snn_s, image_steps_per_s=batch * T / snn_s, ann_forward_s=ann_s,
                   overhead_ratio=snn_s / (T * ann_s), compile_s=compile_s, ann_compile_s=ann_compile_s,
                   timed_runs=rounds, **memory_fields(compiled, before, after))
        self.report.data["rows"].append(row)
        self.costs.setdefault((name, dtype), dict(compile_s=compile_s, run_s=snn_s / (batch * T)))
        print(f"{name:>15} {dynamics:>8} {dtype:>8} B={batch:<4} T={T:<4} snn {snn_s:8.3f} s  "
              f"ann {ann_s * 1e3:8.2f} ms  {row['image_steps_per_s']:10.0f} img*steps/s  "
              f"ratio {row['overhead_ratio']:5.2f}  "
              f"compile {compile_s:6.1f} s", flush=True)
        return row

    # ------------------------------------------------------------------------- batch search
    def batch_search(self, name, dynamics, dtype):
        base = next((r for r in self.report.data["rows"] if (r["model"], r["dynamics"], r["dtype"], r["batch"])
                     == (name, dynamics, dtype, self.s["batch"])), None)
        if base is None:
            base = self.row(name, dynamics, dtype, self.s["batch"], "batch search", rounds=1)
        entry = dict(model=name, dynamics=dynamics, dtype=dtype, T=self.s["timesteps"],
                     tried=[dict(batch=base["batch"], image_steps_per_s=base["image_steps_per_s"])],
                     best_batch=base["batch"], best_image_steps_per_s=base["image_steps_per_s"], stopped=None)
        self.report.data["batch_search"].append(entry)
        batch = 2 * base["batch"]
        while batch <= self.s["max_batch"]:
            estimate = self.estimate(name, dtype, batch, self.s["timesteps"], runs=2)
            if estimate > self.report.left_s():
                entry["stopped"] = "time budget"
                self.report.skip(f"batch search {name} {dynamics} {dtype} B={batch}", estimate)
                break
            try:
                row = self.row(name, dynamics, dtype, batch, "batch search", rounds=1)
            except OutOfMemory as e:
                entry["tried"].append(dict(batch=batch, out_of_memory=str(e)[:300]))
                entry["stopped"] = "out of memory"
                break
            entry["tried"].append(dict(batch=batch, image_steps_per_s=row["image_steps_per_s"]))
            if row["image_steps_per_s"] <= entry["best_image_steps_per_s"] * (1 + MIN_GAIN):
                entry["stopped"] = "no gain"
                if row["image_steps_per_s"] > entry["best_image_steps_per_s"]:
                    entry.update(best_batch=batch, best_image_steps_per_s=row["image_steps_per_s"])
                break
            entry.update(best_batch=batch, best_image_steps_per_s=row["image_steps_per_s"])
            batch *= 2
        else:
            entry["stopped"] = "largest batch"
        return entry

    # ------------------------------------------------------------------------- memory at two T
    def memory(self, name, dynamics):
        batch, (t_short, t_long) = self.s["batch"], self.s["memory_timesteps"]
        snn, images = self.snn(name, dynamics), self.images(batch)
        by_t = {}
        short = next((r for r in self.report.data["rows"] if r["phase"] == "base" and r["T"] == t_short
                      and (r["model"], r["dynamics"], r["dtype"]) == (name, dynamics, "float32")), None)
        for T in (t_short, t_long):
            if T == t_short and short is not None:
                by_t[str(T)] = {k: short[k] for k in short if k.startswith(("compiled_", "device_"))}
                by_t[str(T)]["snn_s"] = short["snn_s"]
                continue
            compiled, compile_s = self.program(name, dynamics, "float32", batch, T, keep=False)
            before = device_memory()
            start = time.perf_counter()
            jax.block_until_ready(compiled(snn, images))  # one run: its memory, and its time (compiled already)
            by_t[str(T)] = dict(memory_fields(compiled, before, device_memory()), snn_s=time.perf_counter() - start,
                                compile_s=compile_s)
        entry = dict(model=name, dynamics=dynamics, dtype="float32", batch=batch, by_T=by_t)
        self.report.data["memory"].append(entry)
        return entry

    # ------------------------------------------------------------------------- the sweep
    def sweep(self, name, dynamics):
        batch, T = self.s["batch"], self.s["timesteps"]
        snn = self.snn(name, dynamics)
        images = np.asarray(self.images(batch))
        ann, ann_vars, ann_images, _ = self.ann(name, "float32", batch)
        labels = np.asarray(jnp.argmax(ann(ann_vars, ann_images), -1), np.int32)  # agreement with the ANN
        start = time.perf_counter()
        grid = np.asarray(sg.sweep(snn, [(images, labels)], eta0=SWEEP_ETA0, gamma=SWEEP_GAMMA, timesteps=(T,)))
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        grid = np.asarray(sg.sweep(snn, [(images, labels)], eta0=SWEEP_ETA0, gamma=SWEEP_GAMMA, timesteps=(T,)))
        sweep_s = time.perf_counter() - start
        compiled, _ = self.program(name, dynamics, "float32", batch, T)
        device_images = jnp.asarray(images)
        points = [(e, g) for e in SWEEP_ETA0 for g in SWEEP_GAMMA]
        jax.block_until_ready(compiled(snn.with_schedule(eta0=points[0][0], gamma=points[0][1]), device_images))
        start = time.perf_counter()
        separate = []
        for e, g in points:  # as a loop over simulate calls would: each result back on the host
            logits = compiled(snn.with_schedule(eta0=e, gamma=g), device_images)
            separate.append(float(np.mean(np.argmax(np.asarray(logits[0]), -1) == labels)))
        separate_s = time.perf_counter() - start
        separate = np.asarray(separate).reshape(len(SWEEP_ETA0), len(SWEEP_GAMMA))
        try:
            chunk = importlib.import_module("signgd_jax.sweep").grid_chunk_size(snn, images, len(points))
        except Exception:  # noqa: BLE001 - an internal helper: optional
            chunk = None
        entry = dict(model=name, dynamics=dynamics, dtype="float32", batch=batch, T=T, grid_points=len(points),
                     eta0=list(SWEEP_ETA0), gamma=list(SWEEP_GAMMA), chunk_size=chunk, sweep_first_call_s=first_s,
                     sweep_s=sweep_s, separate_runs_s=separate_s, speedup=separate_s / sweep_s,
                     image_steps_per_s_sweep=len(points) * batch * T / sweep_s,
                     image_steps_per_s_separate=len(points) * batch * T / separate_s,
                     agreement_with_ann=grid[..., 0].tolist(),
                     agreement_max_difference=float(np.max(np.abs(grid[..., 0] - separate))))
        self.report.data["sweep"] = entry
        print(f"sweep {name}: {len(points)} points in {sweep_s:.3f} s, separate runs {separate_s:.3f} s "
              f"({entry['speedup']:.2f}x)", flush=True)
        return entry


def uniform_images(batch, shape, seed):
    """Images uniform in [-1, 1], made on the host (no compilation)."""
    return np.random.default_rng(seed).uniform(-1, 1, (batch, *shape)).astype(np.float32)


def deterministic_variables(shapes, seed=0):
    """Random deterministic weights for the variable shapes ``shapes`` (``jax.eval_shape`` of
    ``model.init``), made with numpy: no compilation, and the same on every backend.

    Kernels and other arrays ``normal / sqrt(fan_in)``, biases ``0.01 normal``, norm scales 1,
    BatchNorm statistics mean 0.1 and variance 1.1 (non-trivial, so folding is exercised). Speed
    does not depend on the values."""
    rng = np.random.default_rng(seed)

    def make(path, leaf):
        names = [str(getattr(p, "key", p)) for p in path]
        shape = tuple(leaf.shape)
        if names[0] == "batch_stats":
            return np.full(shape, 0.1 if names[-1] == "mean" else 1.1, np.float32)
        if names[-1] == "scale":
            return np.ones(shape, np.float32)
        if names[-1] == "bias":
            return (0.01 * rng.standard_normal(shape, np.float32)).astype(np.float32)
        fan_in = math.prod(shape[:-1]) or 1
        return (rng.standard_normal(shape, np.float32) / np.float32(math.sqrt(fan_in))).astype(np.float32)

    return jax.tree_util.tree_map_with_path(make, shapes)


def memory_fields(compiled, before, after):
    """XLA's buffer assignment for ``compiled`` and the device's peak around its runs.

    ``memory_stats()``'s peak is the process's high-water mark: it belongs to this measurement
    only when it rose during it (``device_peak_set_here``), else it is an upper bound."""
    fields = dict(compiled_peak_bytes=bench.peak_bytes(compiled), device_peak_bytes=None,
                  device_bytes_in_use_before=None, device_peak_set_here=None)
    if before is not None and after is not None and "peak_bytes_in_use" in after:
        fields.update(device_peak_bytes=int(after["peak_bytes_in_use"]),
                      device_bytes_in_use_before=int(before.get("bytes_in_use", 0)),
                      device_peak_set_here=int(after["peak_bytes_in_use"]) > int(before.get("peak_bytes_in_use", 0)))
    return fields


# ----------------------------------------------------------------------------- input pipeline
class SyntheticImages:
    """A data source like TFDS's: ``source[k]`` decodes the k-th stored image to ``{'image', 'label'}``."""

    def __init__(self, stored, decode):
        self.stored, self.decode = stored, decode

    def __len__(self):
        return len(self.stored)

    def __getitem__(self, k):
        return dict(image=self.decode(self.stored[k]), label=k % 1000)


def synthetic_photos(count, shape=JPEG_SHAPE, seed=0):
    """uint8 photos with smooth structure and grain (JPEG sizes near ImageNet's)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    for _ in range(count):
        coarse = rng.uniform(0, 255, (h // 25 + 2, w // 25 + 2, 3))
        rows = np.linspace(0, coarse.shape[0] - 1.001, h)
        cols = np.linspace(0, coarse.shape[1] - 1.001, w)
        r0, c0 = rows.astype(int), cols.astype(int)
        fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
        smooth = ((1 - fr) * (1 - fc) * coarse[r0][:, c0] + (1 - fr) * fc * coarse[r0][:, c0 + 1]
                  + fr * (1 - fc) * coarse[r0 + 1][:, c0] + fr * fc * coarse[r0 + 1][:, c0 + 1])
        yield np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)


def pipeline(settings):
    """Images/s of the host input pipeline (decode, resize, crop, normalise), and of the copy to the device."""
    count, batch = settings["pipeline_images"], settings["pipeline_batch"]
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        stored = []
        for photo in synthetic_photos(count):
            buffer = io.BytesIO()
            Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
            stored.append(buffer.getvalue())

        def decode(blob):
            with Image.open(io.BytesIO(blob)) as im:
                return np.asarray(im.convert("RGB"))
        kind = "synthetic JPEG, decoded with PIL"
        mean_bytes = float(np.mean([len(b) for b in stored]))
    else:
        stored, decode = list(synthetic_photos(count)), np.array
        kind = "decode-free stand-in: raw uint8 arrays (PIL not installed), resize and crop only"
        mean_bytes = None
    source = SyntheticImages(stored, decode)
    validation = data.Dataset("imagenet2012", "validation", source)
    result = dict(kind=kind, images=count, stored_shape=list(JPEG_SHAPE), stored_mean_bytes=mean_bytes,
                  batch=batch, output_shape=list(validation.image_shape))

    start = time.perf_counter()
    n = sum(len(labels) for _, labels in data.batches(validation, batch))
    result["one_thread_images_per_s"] = n / (time.perf_counter() - start)

    workers = max(1, min(8, os.cpu_count() or 1))
    chunks = [np.arange(a, min(a + batch, count)) for a in range(0, count, batch)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        n = sum(len(labels) for _, labels in pool.map(validation.get, chunks))
    result.update(threads=workers, threads_images_per_s=n / (time.perf_counter() - start))

    # a pretrained checkpoint's preprocessing (torchvision's): resized on the host with PIL (signgd_jax.images)
    pretrained = data.Dataset("imagenet2012", "validation", source, preprocessing=models.preprocessing.TORCHVISION)
    pretrained.get(np.arange(1))
    start = time.perf_counter()
    n = sum(len(labels) for _, labels in data.batches(pretrained, batch))
    result["pretrained_preprocessing_one_thread_images_per_s"] = n / (time.perf_counter() - start)

    images, _ = validation.get(chunks[0])
    jax.block_until_ready(jax.device_put(images))
    start = time.perf_counter()
    for _ in range(3):
        jax.block_until_ready(jax.device_put(images))
    result["device_put_images_per_s"] = 3 * len(images) / (time.perf_counter() - start)
    print(f"pipeline ({kind}): {result['one_thread_images_per_s']:.0f} images/s on one thread, "
          f"{result['threads_images_per_s']:.0f} on {workers}", flush=True)
    return result


# ----------------------------------------------------------------------------- projection
def projection(report):
    """Seconds for the 50,000 validation images at the benchmark's T, from the headline model's
    fastest measured rows (per dtype) and the input pipeline's best rate."""
    T, name = report["settings"]["timesteps"], report["settings"]["headline"]
    rows = [r for r in report["rows"] if r["model"] == name and r["dynamics"] == dynamics_of(name)[0]]
    if not rows:
        return None
    feed = report.get("pipeline") or {}
    feed_rate = max([feed.get(k) or 0 for k in ("one_thread_images_per_s", "threads_images_per_s")] or [0])
    out = dict(model=name, dynamics=dynamics_of(name)[0], images=VALIDATION_IMAGES, T=T, by_dtype={},
               input_pipeline_s=VALIDATION_IMAGES / feed_rate if feed_rate else None)
    for dtype in sorted({r["dtype"] for r in rows}):
        best = max((r for r in rows if r["dtype"] == dtype), key=lambda r: r["image_steps_per_s"])
        simulation_s = VALIDATION_IMAGES * T / best["image_steps_per_s"]
        out["by_dtype"][dtype] = dict(batch=best["batch"], image_steps_per_s=best["image_steps_per_s"],
                                      simulation_s=simulation_s,
                                      overlapped_s=max(simulation_s, out["input_pipeline_s"] or 0))
    return out


# ----------------------------------------------------------------------------- main
def default_out(smoke):
    kind = re.sub(r"[^a-z0-9]+", "_", jax.devices()[0].device_kind.lower().replace("nvidia", "")).strip("_")
    return os.path.join(HERE, f"results_{kind or 'device'}{'_smoke' if smoke else ''}.json")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any backend (the test suite's run)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results_<device kind>.json")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="seconds after which the remaining measurements are skipped (default 420)")
    parser.add_argument("--models", default=None, help=f"comma-separated; default {','.join(MODELS)} "
                        f"({','.join(SMOKE_MODELS)} with --smoke)")
    parser.add_argument("--compilation-cache", default=None, metavar="DIR",
                        help="JAX's persistent compilation cache (a rerun then skips most compilation; "
                        "its compile times are then cache loads)")
    args = parser.parse_args(argv)
    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    settings = dict(SMOKE if args.smoke else FULL, smoke=args.smoke)
    names = tuple(args.models.split(",")) if args.models else (SMOKE_MODELS if args.smoke else MODELS)
    unknown = [n for n in names if n not in models.available()]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; available: {', '.join(models.available())}")
    settings["models"] = list(names)
    settings["headline"] = HEADLINE if HEADLINE in names else names[0]
    settings["overrides"] = {name: settings["overrides"][name] for name in names if name in settings["overrides"]}
    settings["compilation_cache"] = args.compilation_cache
    out = args.out or default_out(args.smoke)
    command = "python " + " ".join([os.path.relpath(sys.argv[0]) if argv is None else "benchmarks/gpu.py",
                                    *(sys.argv[1:] if argv is None else argv)])
    report = Report(out, settings, args.budget_s, command)
    report.data["import_s"] = seconds_since_start()
    report.data["weights"] = ("random deterministic (numpy, seed 0): kernels normal / sqrt(fan_in), "
                              "biases 0.01 normal, norm scales 1, BatchNorm mean 0.1 and variance 1.1")
    report.save()
    b = Bench(settings, report)
    batch, T = settings["batch"], settings["timesteps"]
    dtypes = ("float32", "bfloat16")
    headline = settings["headline"]
    first = dynamics_of(headline)[0]
    for name in names:
        if "paper" not in dynamics_of(name):
            report.data["not_measured"].append(dict(
                model=name, dynamics="paper", reason="paper mode refuses vector neurons; the reference's elementwise "
                "decomposition (vector_neurons=False) carries one product neuron per query, key, head and channel"))

    def rows(name, dynamics, dtypes):
        for dtype in dtypes:
            report.run(f"{name} {dynamics} {dtype} B={batch}", functools.partial(b.row, name, dynamics, dtype, batch),
                       b.estimate(name, dtype, batch, T, runs=settings["repeats"] + 1))

    def batch_search(name, dtype):
        first = dynamics_of(name)[0]
        task = f"batch search {name} {first} {dtype}"
        if b.failed(name, first, dtype):
            report.skip(task, reason=f"its B={batch} measurement failed (see errors)")
        else:
            report.run(task, functools.partial(b.batch_search, name, first, dtype),
                       b.estimate(name, dtype, 2 * batch, T, runs=2))

    # In order of importance, so that what the budget cuts off matters least:
    report.run("input pipeline", lambda: report.data.update(pipeline=pipeline(settings)))
    # 1. the headline model: B=64 in fp32 and bf16, the sweep, the batch search (the 50,000-image projection)
    rows(headline, first, dtypes)
    report.run(f"sweep {headline} {first}", functools.partial(b.sweep, headline, first),
               b.estimate(headline, "float32", batch, T, runs=36))
    for dtype in dtypes:
        batch_search(headline, dtype)
    # 2. every other model at B=64 in its first dynamics: fp32 (the ratio), then bf16
    others = [name for name in names if name != headline]
    for dtype in dtypes:
        for name in others:
            rows(name, dynamics_of(name)[0], (dtype,))
    # 3. memory at the short and the long T
    t_long = settings["memory_timesteps"][1]
    for name in names:
        first = dynamics_of(name)[0]
        report.run(f"memory {name} {first} T={t_long}", functools.partial(b.memory, name, first),
                   b.estimate(name, "float32", batch, t_long, runs=1))
    # 4. the second dynamics (improved mode)
    for name in names:
        for dynamics in dynamics_of(name)[1:]:
            rows(name, dynamics, dtypes)
    # 5. the other models' batch search
    for name in others:
        for dtype in dtypes:
            batch_search(name, dtype)
    report.data["complete"] = True
    report.data["optional_modules_loaded"] = [m for m in ("tensorflow", "tensorflow_datasets", "torch", "PIL")
                                              if m in sys.modules]
    report.save()
    print(f"wrote {out} in {seconds_since_start():.0f} s; {len(report.data['skipped'])} skipped, "
          f"{len(report.data['errors'])} errors", flush=True)
    return 1 if report.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
