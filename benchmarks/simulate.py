"""Simulation speed and memory, measured against the ANN in the same run.

    python benchmarks/simulate.py [--models convnext_mini,...] [--batch-sizes 32,128]
        [--timesteps 32,128] [--memory-timesteps 32,512] [--dynamics paper] [--dtype float32]
        [--out benchmarks/results_cpu.json [--merge]]

For every model and batch size: the jitted ANN forward time, the SNN compile time and run
time for T steps, SNN images x time-steps per second, and the overhead ratio
``SNN time / (T x ANN forward time)`` (1.0 would mean the simulation costs exactly T forward
passes, the floor for any SNN whose linear layers run every step). On CPU the simulation is
compiled with ``signgd_jax.simulate.CPU_COMPILER_OPTIONS`` and its convolutions in the forms of
``signgd_jax.cpu_forms``; since both also speed up many ANNs, the ANN is also timed with the
options, and with the options and those forms (``cpu_forms.cpu_forward``), and
``overhead_ratio_vs_best_ann`` divides by the fastest of the three (the stricter figure). The
ANN compilations and the simulations are timed in turns (best of ``--repeats`` turns), so that
both meet the same load on the machine. Peak memory is XLA's buffer assignment for the
compiled simulation (arguments + outputs + temporaries), at two values of T. Weights are
random (speed does not depend on them); BatchNorm statistics are set to non-trivial values so
folding is exercised.

Dynamics: paper, except for the ViTs (their vector neurons convert in improved mode only);
``--dynamics`` sets one for every model. Neuron state per image: the float elements of the
neuron state for one image against the ANN's floating-point intermediate values (every output
of the traced forward pass; the definition of ``scripts/vit_state_sizes.py``). ``--merge``
replaces the named models' entries in an existing ``--out`` file and keeps the others.
"""
from __future__ import annotations

import argparse
import json
import math
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
from signgd_jax.simulate import CPU_COMPILER_OPTIONS, compiled_simulation, initial_state  # noqa: E402

SMALL = ("convnext_mini", "mixer_mini", "resmlp_mini", "resnet_mini", "vgg_mini", "vit_mini")
IMPROVED_ONLY = ("vit_mini", "vit_b16")  # vector neurons: paper mode refuses them


def default_dynamics(name):
    return "improved" if name in IMPROVED_ONLY else "paper"


def input_shape(name):
    return (28, 28, 1) if name.endswith("_mini") else (224, 224, 3)


def best_times(fns, rounds, calls):
    """Minimum wall time of each of ``fns`` (name -> function), after one warm-up call each.

    They are timed in turns, ``calls[name]`` calls per turn and ``rounds`` turns, so that a
    change of load on the machine meets the ANN and the simulation alike and their ratio holds.
    """
    for fn in fns.values():
        jax.block_until_ready(fn())
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(calls.get(name, 1)):
                start = time.perf_counter()
                jax.block_until_ready(fn())
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def peak_bytes(compiled):
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - getattr(mem, "alias_size_in_bytes", 0))


def state_per_image(apply_fn, variables, snn, shape):
    """(neuron state, ANN values) per image in float elements: the SNN's neuron state for a batch
    of one against every floating-point output of the traced ANN forward pass."""
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    closed = jax.make_jaxpr(apply_fn)(variables, x)
    ann = sum(math.prod(v.aval.shape) for e in closed.jaxpr.eqns for v in e.outvars
              if jnp.issubdtype(v.aval.dtype, jnp.floating))
    state = jax.eval_shape(lambda s, z: initial_state(s, z)["neurons"], snn, x)
    return sum(a.size for a in jax.tree_util.tree_leaves(state)), ann


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
        anns = {"ann": ann.lower(variables, images).compile()}
        if jax.default_backend() == "cpu":  # the ANN compiled like the simulation (often faster): the stricter ratio
            anns["ann_cpu_options"] = ann.lower(variables, images).compile(CPU_COMPILER_OPTIONS)
            forms = jax.jit(cpu_forward(lambda v, x: model.apply(v, x, train=False)))
            anns["ann_cpu_forms"] = forms.lower(variables, images).compile(CPU_COMPILER_OPTIONS)
        fns = {name: (lambda c=c: c(variables, images)) for name, c in anns.items()}
        compile_s = {}
        for T in timesteps:
            start = time.perf_counter()
            compiled = simulation.lower(snn, images, jax.random.PRNGKey(0), (T,), False, dtype).compile()
            compile_s[T] = time.perf_counter() - start
            fns[T] = lambda c=compiled: c(snn, images, jax.random.PRNGKey(0))
        times = best_times(fns, repeats, {name: 3 for name in anns})
        ann_s, best_ann_s = times["ann"], min(times[name] for name in anns)
        for T in timesteps:
            run_s = times[T]
            rows.append(dict(model=name, batch=batch, T=T, ann_forward_s=ann_s, best_ann_forward_s=best_ann_s,
                             ann_forward_s_by_compilation={k: times[k] for k in anns},
                             compile_s=compile_s[T], snn_s=run_s, image_steps_per_s=batch * T / run_s,
                             overhead_ratio=run_s / (T * ann_s), overhead_ratio_vs_best_ann=run_s / (T * best_ann_s)))
            print(f"{name:>16} B={batch:<4} T={T:<4} ann {ann_s * 1e3:8.2f} ms (best {best_ann_s * 1e3:8.2f})  "
                  f"snn {run_s:8.3f} s  compile {compile_s[T]:6.1f} s  {batch * T / run_s:10.0f} img*steps/s  "
                  f"ratio {run_s / (T * ann_s):5.2f} (vs best ANN {run_s / (T * best_ann_s):5.2f})", flush=True)
    memory = {}
    images = jax.random.uniform(jax.random.PRNGKey(1), (batch_sizes[-1], *shape))
    simulation = compiled_simulation(snn, images)
    for T in memory_timesteps:
        compiled = simulation.lower(snn, images, jax.random.PRNGKey(0), (T,), False, dtype).compile()
        memory[str(T)] = peak_bytes(compiled)
    # the neuron states every step reads and writes once: the traffic the ANN does not have
    state = jax.eval_shape(lambda z: initial_state(snn, z)["neurons"], images)
    state_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(state))
    state_elements, ann_values = state_per_image(lambda v, x: model.apply(v, x, train=False), variables, snn, shape)
    return dict(model=name, dynamics=dynamics, convert_s=convert_s, rows=rows, peak_memory_bytes=memory,
                memory_batch=batch_sizes[-1], neuron_state_bytes=state_bytes,
                neuron_state_per_image=state_elements, ann_values_per_image=ann_values)


def merged(path, report):
    """``report``'s results in place of the same models' in the report at ``path`` (if any); each
    merged entry keeps the command, machine and dtype it was measured with."""
    if not os.path.exists(path):
        return report
    with open(path) as f:
        old = json.load(f)
    new = {r["model"]: dict(r, command=report["command"], machine=report["machine"], dtype=report["dtype"])
           for r in report["results"]}
    results = [new.pop(r["model"]) if r["model"] in new else r for r in old["results"]]
    return dict(old, results=results + list(new.values()))


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
    parser.add_argument("--dynamics", default=None, help="default: paper, improved for the ViTs")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--merge", action="store_true", help="keep --out's entries for other models")
    args = parser.parse_args(argv)
    if args.merge and not args.out:
        parser.error("--merge needs --out")
    results = []
    for name in args.models.split(","):
        results.append(bench_model(name, args.batch_sizes, args.timesteps, args.memory_timesteps,
                                   args.dynamics or default_dynamics(name), args.dtype, args.repeats))
        mem = results[-1]["peak_memory_bytes"]
        values = [v for v in mem.values() if v]
        if len(values) >= 2:
            print(f"{name:>16} peak memory (B={results[-1]['memory_batch']}): "
                  + ", ".join(f"T={t}: {v / 2**20:.1f} MiB" for t, v in mem.items())
                  + f"  ratio {values[-1] / values[0]:.3f}; neuron state "
                  f"{results[-1]['neuron_state_bytes'] / 2**20:.1f} MiB", flush=True)
        r = results[-1]
        print(f"{name:>16} per image: neuron state {r['neuron_state_per_image']:,} floats, ANN values "
              f"{r['ann_values_per_image']:,} ({r['neuron_state_per_image'] / r['ann_values_per_image']:.2f}x)",
              flush=True)
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    report = dict(command=command, machine=machine(), dynamics=args.dynamics or "paper; improved for the ViTs",
                  dtype=args.dtype, results=results)
    if args.merge:
        report = merged(args.out, report)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, args.out)
    return report


if __name__ == "__main__":
    main()
