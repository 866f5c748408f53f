"""A ViT (LayerNorm scale, attention) simulated in bfloat16 in improved mode: the program traced in
float32 meets its float32 constants with bfloat16 values (the interpreter casts them to the
narrower dtype) and the logits stay close to the float32 run."""
import jax
import jax.numpy as jnp
import numpy as np

import signgd_jax as sg
from signgd_jax import models


def test_vit_runs_in_bfloat16_close_to_float32():
    model = models.create("vit_mini")
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    variables = model.init(jax.random.key(1), x, train=False)
    snn = sg.convert(model, variables, x, dynamics="improved")
    low = np.asarray(sg.simulate(snn, x, (32,), dtype=jnp.bfloat16))
    full = np.asarray(sg.simulate(snn, x, (32,)))
    assert np.all(np.isfinite(low))
    assert np.abs(low - full).mean() < 0.05 * np.abs(full).mean()
