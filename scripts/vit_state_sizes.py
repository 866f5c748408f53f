"""Neuron state per image of the ViTs against the ANN's intermediate values per image (float
elements), with vector neurons and with the reference's elementwise decomposition.
Usage: PYTHONPATH=. python scripts/vit_state_sizes.py"""
import jax
import jax.numpy as jnp
import numpy as np

import signgd_jax as sg
from signgd_jax import models
from signgd_jax.simulate import initial_state


def state_sizes(name, image_shape):
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    row = {}
    for label, vector in (("vector neurons", True), ("reference decomposition", False)):
        model = models.create(name, vector_neurons=vector)
        variables = jax.eval_shape(lambda img: model.init(jax.random.PRNGKey(0), img, train=False), x)
        if vector:
            closed = jax.make_jaxpr(lambda v, img: model.apply(v, img, train=False))(variables, x)
            row["ANN values"] = sum(int(np.prod(v.aval.shape)) for e in closed.jaxpr.eqns for v in e.outvars
                                    if jnp.issubdtype(v.aval.dtype, jnp.floating))
        dynamics = "improved" if vector else "paper"
        snn = jax.eval_shape(lambda v, img: sg.convert(model, v, [img], dynamics=dynamics), variables, x)
        state = jax.eval_shape(lambda s, img: initial_state(s, img), snn, x)["neurons"]
        row[label] = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(state))
    return row


if __name__ == "__main__":
    print("| model | ANN values | vector neurons | reference decomposition |")
    print("|---|---:|---:|---:|")
    for name, shape in (("vit_mini", (28, 28, 1)), ("vit_b16", (224, 224, 3))):
        r = state_sizes(name, shape)
        ann = r["ANN values"]
        print(f"| {name} | {ann:,} | {r['vector neurons']:,} ({r['vector neurons'] / ann:.2f}x) | "
              f"{r['reference decomposition']:,} ({r['reference decomposition'] / ann:.1f}x) |")
