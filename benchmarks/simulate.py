"""Simulation speed and memory, measured against the ANN in the same run.

    python benchmarks/simulate.py [--models convnext_mini,...] [--batch-sizes 32,128]
        [--timesteps 32,128] [--memory-timesteps 32,512] [--dynamics paper] [--dtype float32]
        [--out benchmarks/results_cpu.json]

For every model and batch size: the jitted ANN forward time, the SNN compile time and run
time for T steps, SNN images x time-steps per second, and the overhead ratio
``SNN time / (T x ANN forward time)`` (1.0 would mean the simulation costs exactly T forward
passes, the floor for any SNN whose linear layers run every step). On CPU the simulation is
compiled with ``signgd_jax.simulate.CPU_COMPILER_OPTIONS`` and its convolutions in the forms of
``signgd_jax.cpu_forms``; since both also speed up many ANNs, the ANN is also timed with the
options, and with the options and those forms (``cpu_forms.cpu_forward``), and
``overhead_ratio_vs_best_ann`` divides by the fastest of the three (the stricter figure). Peak memory is XLA's
buffer assignment for the compiled simulation (arguments + outputs + temporaries), at two
values of T. Weights are random (speed does not depend on them); BatchNorm statistics are
set to non-trivial values so folding is exercised.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import signgd_jax as sg  # noqa: E402
from signgd_jax import models  # noqa: E402
from signgd_jax.cpu_forms import cpu_forward  # noqa: E402
from signgd_jax.simulate import CPU_COMPILER_OPTIONS, compiled_simulation  # noqa: E402

SMALL = ("convnext_mini", "mixer_mini", "resmlp_mini", "resnet_mini", "vgg_mini")


def input_shape(name):
    return (28, 28, 1) if name.endswith("_mini") else (224, 224, 3)


def best_time(fn, repeats):
    """Minimum wall time of ``repeats`` calls (after one warm-up call)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def peak_bytes(compiled):
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - getattr(mem, "alias_size_in_bytes", 0))


def bench_model(name, batch_sizes, timesteps, memory_timesteps, dynamics, dtype, repeats):
    model = models.create(name, num_classes=1000 if not name.endswith("_mini") else 10)
    shape = input_shape(name)
    key = jax.random.PRNGKey(0)
    calib = jax.random.uniform(key, (8, *shape), minval=-1, maxval=1)
    variables = model.init(key, calib)
    if "batch_stats" in variables:
        variables = dict(variables)
        variables["batch_stats"] = jax.tree_util.tree_map(lambda a: a + 0.1, variables["batch_stats"])
    start = time.perf_counter()
    snn = sg.convert(model, variables, [calib], dynamics=dynamics)
    convert_s = time.perf_counter() - start
    dtype = None if dtype == "float32" else jnp.dtype(dtype)
    ann = jax.jit(lambda v, x: model.apply(v, x, train=False))
    rows = []
    for batch in batch_sizes:
        images = jax.random.uniform(jax.random.PRNGKey(1), (batch, *shape), minval=-1, maxval=1)
        simulation = compiled_simulation(snn, images)
        ann_s = best_time(lambda: ann(variables, images), repeats * 3)
        best_ann_s = ann_s
        if jax.default_backend() == "cpu":  # the ANN compiled like the simulation (often faster): the stricter ratio
            for fn in (ann, jax.jit(cpu_forward(lambda v, x: model.apply(v, x, train=False)))):
                tuned = fn.lower(variables, images).compile(CPU_COMPILER_OPTIONS)
                best_ann_s = min(best_ann_s, best_time(lambda: tuned(variables, images), repeats * 3))
        for T in timesteps:
            start = time.perf_counter()
            compiled = simulation.lower(snn, images, jax.random.PRNGKey(0), (T,), False, dtype).compile()
            compile_s = time.perf_counter() - start
            run_s = best_time(lambda: compiled(snn, images, jax.random.PRNGKey(0)), repeats)
            rows.append(dict(model=name, batch=batch, T=T, ann_forward_s=ann_s, best_ann_forward_s=best_ann_s,
                             compile_s=compile_s, snn_s=run_s, image_steps_per_s=batch * T / run_s,
                             overhead_ratio=run_s / (T * ann_s), overhead_ratio_vs_best_ann=run_s / (T * best_ann_s)))
            print(f"{name:>16} B={batch:<4} T={T:<4} ann {ann_s * 1e3:8.2f} ms (best {best_ann_s * 1e3:8.2f})  "
                  f"snn {run_s:8.3f} s  compile {compile_s:6.1f} s  {batch * T / run_s:10.0f} img*steps/s  "
                  f"ratio {run_s / (T * ann_s):5.2f} (vs best ANN {run_s / (T * best_ann_s):5.2f})", flush=True)
    memory = {}
    images = jax.random.uniform(jax.random.PRNGKey(1), (batch_sizes[-1], *shape))
    simulation = compiled_simulation(snn, images)
    for T in memory_timesteps:
        compiled = simulation.lower(snn, images, jax.random.PRNGKey(0), (T,), False, dtype).compile()
        memory[str(T)] = peak_bytes(compiled)
    return dict(model=name, convert_s=convert_s, rows=rows, peak_memory_bytes=memory,
                memory_batch=batch_sizes[-1])


def machine():
    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), jax=jax.__version__,
                devices=[str(d) for d in jax.devices()], device_kind=jax.devices()[0].device_kind)


def ints(text):
    return tuple(int(t) for t in text.split(","))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(SMALL))
    parser.add_argument("--batch-sizes", type=ints, default=(32, 128))
    parser.add_argument("--timesteps", type=ints, default=(32, 128))
    parser.add_argument("--memory-timesteps", type=ints, default=(32, 512))
    parser.add_argument("--dynamics", default="paper")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    results = []
    for name in args.models.split(","):
        results.append(bench_model(name, args.batch_sizes, args.timesteps, args.memory_timesteps,
                                   args.dynamics, args.dtype, args.repeats))
        mem = results[-1]["peak_memory_bytes"]
        values = [v for v in mem.values() if v]
        if len(values) >= 2:
            print(f"{name:>16} peak memory (B={results[-1]['memory_batch']}): "
                  + ", ".join(f"T={t}: {v / 2**20:.1f} MiB" for t, v in mem.items())
                  + f"  ratio {values[-1] / values[0]:.3f}", flush=True)
    report = dict(command="python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
                  machine=machine(), dynamics=args.dynamics, dtype=args.dtype, results=results)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, args.out)
    return report


if __name__ == "__main__":
    main()
