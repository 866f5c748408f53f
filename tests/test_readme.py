"""The README's Python example runs exactly as written, and its claim holds."""
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _python_api_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_api_example_runs_as_written(capsys):
    namespace = {}
    exec(compile(_python_api_example(), "README.md (Python API)", "exec"), namespace)
    logits, ann = namespace["logits"], namespace["ann"]
    assert logits.shape == (3, 8, 10)
    errors = np.abs(np.asarray(logits) - np.asarray(ann)).max(axis=(1, 2))
    # improved mode approaches the ANN (up to GELU's sigmoid approximation) as T grows
    assert errors[2] < errors[0] / 4
    assert errors[2] < 0.05 * float(np.abs(np.asarray(ann)).mean())
    assert "max |SNN - ANN|" in capsys.readouterr().out


def test_calibration_batches_in_every_documented_form_give_the_same_snn():
    import flax.linen as nn
    import jax
    import pytest

    import signgd_jax as sg

    class Small(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.relu(nn.Dense(4)(x.reshape(x.shape[0], -1))))

    x = jax.random.uniform(jax.random.PRNGKey(0), (6, 2, 3))
    labels = np.arange(6)
    model = Small()
    variables = model.init(jax.random.PRNGKey(1), x)
    forms = {
        "one array": x,
        "list of arrays": [x[:4], x[4:]],
        "iterator of arrays": iter([x[:4], x[4:]]),
        "(x, y) pairs": [(x[:4], labels[:4]), (x[4:], labels[4:])],
        "TFDS dicts": [{"image": x[:4], "label": labels[:4]}, {"image": x[4:], "label": labels[4:]}],
    }
    scales = {name: np.asarray(next(iter(sg.convert(model, variables, batches).sites.values())).in_scale)
              for name, batches in forms.items()}
    for name, scale in scales.items():
        np.testing.assert_array_equal(scale, scales["list of arrays"], err_msg=name)
    # improved mode's calibrated mean: a smaller last batch is padded, with weight 0 in the mean
    whole, split = (next(iter(sg.convert(model, variables, b, dynamics="improved").sites.values())).out_offset
                    for b in (x, [x[:4], x[4:]]))
    np.testing.assert_allclose(split, whole, rtol=1e-6)
    np.testing.assert_allclose(whole[0], np.asarray(jax.nn.relu(
        model.apply(variables, x, capture_intermediates=True)[1]["intermediates"]["Dense_1"]["__call__"][0])).mean(0),
        rtol=1e-5)
    with pytest.raises(TypeError, match="expected an array.*got str"):
        sg.convert(model, variables, ["not images"])
    with pytest.raises(TypeError, match="without an image entry.*got keys \\['pixels'\\]"):
        sg.convert(model, variables, [{"pixels": x}])
    with pytest.raises(ValueError, match="empty"):
        sg.convert(model, variables, [])
