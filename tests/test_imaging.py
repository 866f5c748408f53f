"""The host image pipeline: signgd_jax.images (the publishers' geometry with PIL, no compilation)
and signgd_jax.loader (grain: worker processes give the in-process batches; per-process rows put
together are the single-process batches)."""
import importlib.util
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from signgd_jax import data, images, loader
from signgd_jax.models import preprocessing as prep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_benchmark():
    spec = importlib.util.spec_from_file_location("input_pipeline", os.path.join(ROOT, "benchmarks",
                                                                                 "input_pipeline.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def encoded(array, fmt="JPEG", mode=None):
    buffer = io.BytesIO()
    picture = Image.fromarray(array)
    (picture.convert(mode) if mode else picture).save(buffer, format=fmt)
    return buffer.getvalue()


def smooth_photo(h, w, seed=0):
    """Random colour fields resized up: a photo-like image whose resampling is not trivial."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (h // 7 + 2, w // 7 + 2, 3), dtype=np.uint8))
    return np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC))


def torchvision_eval(picture, spec):
    """torchvision's ``Resize(resize_size)`` + ``CenterCrop(image_size)`` on a PIL image, written
    out from torchvision's rules: the shorter side (the width when w <= h) becomes resize_size,
    the longer ``int(resize_size * long / short)``; the crop's corner is
    ``int(round((H - size) / 2.0))``. (``resize_size`` None: the whole image to size x size.)"""
    w, h = picture.size
    if spec.resize_size is None:
        new_w = new_h = spec.image_size
    else:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = spec.resize_size, int(spec.resize_size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
        picture = picture.resize((new_w, new_h), resample[spec.interpolation])
    size = spec.image_size
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return np.asarray(picture.crop((left, top, left + size, top + size)))


# ----------------------------------------------------------------------------- the geometry


# portrait, landscape, square, smaller than the crop, very thin, and crops whose offset is x.5
# (395 - 224 = 171 -> 86 and 397 - 224 = 173 -> 86: Python's round, half to even)
SHAPES = [(375, 500), (500, 333), (300, 300), (20, 31), (3, 400), (256, 395), (256, 397), (224, 224)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spec", [prep.TORCHVISION, prep.TIMM_IMAGENET, prep.TORCHVISION_CONVNEXT_SMALL,
                                  prep.VIT_JAX], ids=["torchvision", "timm", "convnext230", "vit"])
def test_photo_is_the_publishers_resize_and_centre_crop(shape, spec):
    blob = encoded(smooth_photo(*shape))
    with Image.open(io.BytesIO(blob)) as opened:
        want = torchvision_eval(opened.convert("RGB"), spec)
    got = images.photo(blob, spec)
    assert got.shape == (spec.image_size, spec.image_size, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"),
                                      ("RGB", "PNG")])
def test_every_mode_becomes_rgb_as_pil_converts_it(mode, fmt):
    blob = encoded(smooth_photo(90, 130, seed=3), fmt, mode)
    with Image.open(io.BytesIO(blob)) as opened:
        assert opened.mode == mode
        want = torchvision_eval(opened.convert("RGB"), prep.TORCHVISION)
    got = images.photo(blob, prep.TORCHVISION)
    assert got.shape == (224, 224, 3)
    np.testing.assert_array_equal(got, want)
    if mode == "L":
        assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()


def test_decoded_arrays_give_the_pixels_of_their_lossless_files():
    rgb = smooth_photo(61, 47, seed=5)
    rgba = np.concatenate([rgb, rgb[..., :1]], axis=-1)
    for array, stored in ((rgb, rgb), (rgb[..., :1], rgb[..., 0]), (rgb[..., 0], rgb[..., 0]), (rgba, rgba)):
        np.testing.assert_array_equal(images.photo(array, prep.TIMM_IMAGENET),
                                      images.photo(encoded(stored, "PNG"), prep.TIMM_IMAGENET))
    with pytest.raises(ValueError, match="uint8 \\[H, W, C\\]"):
        images.photo(rgb.astype(np.float32), prep.TORCHVISION)


def test_no_compilation_for_any_photo_shape(photo_dir):
    import jax
    import jax.numpy as jnp

    compiles = []

    def listen(event, duration, **kwargs):
        if event.startswith("/jax/core/compile/"):
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        ds = data.load("imagenet2012", "validation", photo_dir, preprocessing=prep.TIMM_IMAGENET)
        x, y, real = next(data.padded_batches(ds, len(ds)))
        assert x.shape == (len(ds), 224, 224, 3) and real == len(ds)
        assert compiles == []
        # the listener sees compilations: the on-device variant compiles once per shape
        for h, w in [(30, 40), (41, 30)]:
            prep.preprocess(jnp.zeros((1, h, w, 3), jnp.uint8), prep.TIMM_IMAGENET)
        assert len([e for e in compiles if e.endswith("backend_compile_duration")]) >= 2
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


# ----------------------------------------------------------------------------- photo datasets on disk

PHOTO_SHAPES = [(375, 500), (500, 375), (333, 500), (40, 30), (256, 397), (120, 90), (300, 301), (281, 500)]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """An imagenet2012 validation split on disk, TFDS's array_record files: eight JPEGs of eight
    shapes, one of them grayscale and one CMYK."""
    d = str(tmp_path_factory.mktemp("photos"))
    photos = [encoded(smooth_photo(h, w, seed=i)) for i, (h, w) in enumerate(PHOTO_SHAPES)]
    photos[3] = encoded(smooth_photo(40, 30, seed=3), "JPEG", "L")
    photos[5] = encoded(smooth_photo(120, 90, seed=5), "JPEG", "CMYK")
    load_benchmark().write_imagenet(d, photos)
    return d


def test_photos_are_read_as_stored_bytes_and_decoded_once_with_pil(photo_dir):
    ds = data.load("imagenet2012", "validation", photo_dir)
    records = [ds.source[k] for k in range(len(ds))]
    assert all(isinstance(r["image"], bytes) for r in records)  # TFDS decoded nothing
    raw, labels = ds.raw(np.arange(len(ds)))
    geometry = prep.Preprocessing(224, 256, "bilinear", prep.IMAGENET_MEAN, prep.IMAGENET_STD)
    assert ds.geometry == geometry and not ds.in_memory
    for got, label, r in zip(raw, labels, records):
        np.testing.assert_array_equal(got, images.photo(r["image"], geometry))
        assert label == r["label"]
    x, _ = ds.get(np.arange(2))
    np.testing.assert_allclose(x, (raw[:2] / 255.0 - np.array(prep.IMAGENET_MEAN)) / np.array(prep.IMAGENET_STD),
                               rtol=1e-5, atol=1e-5)


def test_workers_give_the_batches_of_this_process(photo_dir):
    """Shuffled, augmented and padded photo batches: two worker processes (spawned, reading the
    array_record file themselves) give exactly the in-process arrays, in order."""
    ds = data.load("imagenet2012", "validation", photo_dir)
    kw = dict(shuffle=True, seed=4, epoch=1, augment=True)
    here = list(data.batches(ds, 3, **kw))
    there = list(data.batches(ds, 3, workers=2, **kw))
    assert [len(y) for _, y in here] == [3, 3, 2]
    assert len(here) == len(there)
    for (a, b), (c, d) in zip(here, there):
        assert type(c) is np.ndarray and c.dtype == np.float32
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


UNGUARDED_SCRIPT = """from signgd_jax import data
ds = data.load("mnist5k", "test", data_dir=DATA_DIR).take(96)
print("images", sum(len(labels) for _, labels in data.batches(ds, 32, workers=2)))
"""


def test_a_script_without_a_main_guard_reads_in_its_own_process(mnist5k_dir, tmp_path):
    """Spawned workers run the script again; without ``if __name__ == "__main__":`` they would die
    while starting (grain then stops with an unexplained "terminated unexpectedly"). The loader
    says why in one warning and reads the batches in the calling process instead."""
    script = tmp_path / "unguarded.py"
    script.write_text(f"DATA_DIR = {mnist5k_dir!r}\n" + UNGUARDED_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "SIGNGD_DATA_WORKERS"}
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "images 96"
    assert f'{script} has no `if __name__ == "__main__":` guard' in run.stderr
    assert "terminated unexpectedly" not in run.stderr


# ----------------------------------------------------------------------------- per-process rows


@pytest.mark.parametrize("processes", [2, 4])
def test_process_rows_put_together_are_the_single_process_batches(mnist5k_dir, processes):
    ds = data.load("mnist5k", "test", data_dir=mnist5k_dir).take(200)
    kw = dict(shuffle=True, seed=2, epoch=5, augment=True, drop_remainder=True)
    whole = list(data.batches(ds, 24, **kw))
    shares = [list(data.batches(ds, 24, rows=data.process_rows(24, p, processes), **kw)) for p in range(processes)]
    assert {len(s) for s in shares} == {len(whole)} == {200 // 24}
    for i, (x, y) in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([s[i][0] for s in shares]), x)  # augmentation too
        np.testing.assert_array_equal(np.concatenate([s[i][1] for s in shares]), y)
    # the rows of a pass: disjoint between processes, together every example of the padded pass
    order = loader.epoch_order(len(ds), 2, 5)
    plans = [loader._plan(order, 24, loader.num_batches(len(ds), 24, False), 0, loader.process_rows(24, p, processes))
             for p in range(processes)]
    read = [np.concatenate([b.positions for b in plan]) for plan in plans]
    assert sum(len(r) for r in read) == len(ds)
    assert np.array_equal(np.sort(np.concatenate(read)), np.arange(len(ds)))
    padded = [list(data.padded_batches(ds, 24, rows=loader.process_rows(24, p, processes))) for p in range(processes)]
    for i, (x, y, real) in enumerate(data.padded_batches(ds, 24)):
        np.testing.assert_array_equal(np.concatenate([s[i][0] for s in padded]), x)
        np.testing.assert_array_equal(np.concatenate([s[i][1] for s in padded]), y)
        assert {s[i][2] for s in padded} == {real}


def test_process_rows_and_their_refusals():
    assert data.process_rows(12) == (0, 12)  # one JAX process
    assert data.process_rows(12, 2, 3) == (8, 12)
    with pytest.raises(ValueError, match="multiple of the 5 processes"):
        data.process_rows(12, 0, 5)


def test_rows_of_a_short_last_batch_need_drop_remainder(mnist5k_dir):
    ds = data.load("mnist5k", "test", data_dir=mnist5k_dir).take(50)
    with pytest.raises(ValueError, match="need drop_remainder"):
        next(data.batches(ds, 16, rows=(0, 8)))
    with pytest.raises(ValueError, match="non-empty range"):
        next(data.padded_batches(ds, 16, rows=(8, 20)))


def test_default_workers(mnist5k_dir, photo_dir, monkeypatch):
    monkeypatch.delenv(loader.WORKERS_ENV, raising=False)
    small = data.load("mnist5k", "test", data_dir=mnist5k_dir)
    photos = data.load("imagenet2012", "validation", photo_dir)
    usable = len(os.sched_getaffinity(0))
    assert data.default_workers(small, 1000) == 0  # decoded once, held in memory
    assert data.default_workers(photos, loader.MIN_BATCHES_FOR_WORKERS - 1) == 0  # the start would cost more
    assert data.default_workers(photos, loader.MIN_BATCHES_FOR_WORKERS) == min(usable, loader.MAX_WORKERS)
    monkeypatch.setenv(loader.WORKERS_ENV, "3")
    assert data.default_workers(small, 1) == 3
    monkeypatch.setenv(loader.WORKERS_ENV, "many")
    with pytest.raises(ValueError, match="SIGNGD_DATA_WORKERS must be a whole number"):
        data.default_workers(photos, 100)
