"""The host input pipeline on photos: images/s with 0, 1 and 2 worker processes, and the cost of
many photo shapes against one.

    python benchmarks/input_pipeline.py [--out results/input_pipeline.json]
    python benchmarks/input_pipeline.py --smoke --out /tmp/x.json     # every code path, tiny

What is measured is what ``signgd-convert`` runs on imagenet2012: the script writes JPEG photos
(synthetic, smooth structure plus grain, PIL quality 90) as an imagenet2012 split in TFDS's
array_record format (TFDS's own writer, in a temporary data directory; nothing is downloaded),
opens it with ``signgd_jax.data.load("imagenet2012", "validation", data_dir)`` and times one
pass of ``signgd_jax.data.padded_batches(ds, 64, workers=w)``: TFDS's array_record reader hands
back the stored bytes, each worker decodes them with PIL, resizes the shorter side to 256
(bilinear), crops the centre 224, normalises with ImageNet's mean and std and assembles float32
batches of 64, which grain passes to this process in order.

Two sets of 1,000 photos: 300 distinct shapes (about 500x375 pixels each, landscape or portrait,
aspect ratios 1.2 to 1.5 around the one shape's 4:3, every shape used three or four times; the
mean pixel count is that of the one-shape set) and one shape (375x500). Each set is timed twice
per worker count, in the order many, one, one, many, and the faster pass of each counts (both
are in the JSON). ``images_per_s`` counts the whole pass from the call to the last batch, the
workers' start included; ``steady_images_per_s`` the images after the first batch over the
time after it. ``many_over_one`` is the time ratio of the two sets at each worker count: 1.0
means a new shape costs nothing (no compilation per shape); what is left is the photos'
geometry (a wider photo resizes to more pixels before the crop).

Other programs running on the machine slow it down: the load average before and after is in
the JSON, with the machine and the versions.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import io
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

BATCH = 64
PHOTOS = 1000
SHAPES = 300
ONE_SHAPE = (375, 500)  # (height, width): ImageNet's most common validation photo
WORKERS = (0, 1, 2)
GOALS = dict(two_workers_images_per_s=150.0, many_over_one=1.3)
DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "results", "input_pipeline.json")


def photo_shapes(count: int, seed: int = 0) -> list[tuple[int, int]]:
    """``count`` distinct (height, width) pairs of about ONE_SHAPE's pixel count, aspect ratios
    1.2 to 1.5 either way round, rescaled so their mean pixel count is exactly ONE_SHAPE's."""
    rng = np.random.default_rng(seed)
    area = ONE_SHAPE[0] * ONE_SHAPE[1]
    shapes: set = set()
    while len(shapes) < count:
        ratio = rng.uniform(1.2, 1.5)
        scale = rng.uniform(0.85, 1.15)
        long, short = np.sqrt(area * scale * ratio), np.sqrt(area * scale / ratio)
        shapes.add((int(short), int(long)) if rng.random() < 0.75 else (int(long), int(short)))
    shapes = sorted(shapes)
    rescale = np.sqrt(area / np.mean([h * w for h, w in shapes]))
    out = sorted({(int(round(h * rescale)), int(round(w * rescale))) for h, w in shapes})
    return out if len(out) == count else photo_shapes(count, seed + 1)


def jpeg(shape: tuple[int, int], rng: np.random.Generator) -> bytes:
    """A JPEG (quality 90) of ``shape``: smooth random colour fields plus pixel noise, so it
    compresses like a photo rather than like flat colour or pure noise."""
    from PIL import Image

    h, w = shape
    coarse = Image.fromarray(rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), np.float32)
    pixels = np.clip(smooth + rng.normal(0, 16, smooth.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_imagenet(data_dir: str, photos: list, split: str = "validation") -> None:
    """``photos`` (encoded bytes, or uint8 arrays stored as JPEG) as ``split`` of an
    imagenet2012 dataset in ``data_dir``, written by TFDS's own imagenet2012 builder in
    array_record format (labels ``i % 1000``), as ``tfds build`` would write the real one."""
    import tensorflow_datasets as tfds
    from PIL import Image

    from signgd_jax import data

    def encoded(p):
        if isinstance(p, bytes):
            return p
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(p)).save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()

    class Photos(tfds.builder_cls("imagenet2012"), skip_registration=True):
        name = "imagenet2012"  # the registered builder reads it back
        code_path = None

        def _log_download_bytes(self):
            pass

        def _log_download_done(self):
            pass

        def _split_generators(self, dl_manager):
            return {split: ((i, dict(image=encoded(p), label=i % 1000, file_name=f"photo_{i}.JPEG"))
                            for i, p in enumerate(photos))}

    builder = Photos(data_dir=data_dir, file_format="array_record")
    with tempfile.TemporaryDirectory() as downloads, data._no_tfds_progress_bars():
        builder.download_and_prepare(file_format="array_record", download_dir=downloads)


def one_pass(data_dir: str, batch: int, workers: int, limit: int | None = None) -> dict:
    """Seconds for one pass over the written validation split (its first ``limit`` photos), from
    the call to the last batch."""
    from signgd_jax import data

    ds = data.load("imagenet2012", "validation", data_dir).take(limit)
    start = time.perf_counter()
    first = None
    images = 0
    for x, _, real in data.padded_batches(ds, batch, workers=workers):
        assert x.shape == (batch, 224, 224, 3) and x.dtype == np.float32
        images += real
        if first is None:
            first = (time.perf_counter(), real)
    seconds = time.perf_counter() - start
    steady = (images - first[1]) / (time.perf_counter() - first[0]) if images > first[1] else None
    return dict(images=images, seconds=seconds, images_per_s=images / seconds, steady_images_per_s=steady)


def facts() -> dict:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {}
    for dist in ("signgd-jax", "grain", "array_record", "tensorflow-datasets", "pillow", "numpy", "jax"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return dict(platform=platform.platform(), machine=platform.machine(), python=platform.python_version(),
                cpu_count=os.cpu_count(), usable_cpus=usable, versions=versions)


def measure(count: int, shapes: int, batch: int, workers: tuple, repeats: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    many = photo_shapes(shapes, seed)
    sets = {"many_shapes": [many[i % len(many)] for i in range(count)], "one_shape": [ONE_SHAPE] * count}
    report = dict(command=" ".join(["python", "benchmarks/input_pipeline.py", *sys.argv[1:]]),
                  date=datetime.date.today().isoformat(), machine=facts(), batch=batch, goals=GOALS,
                  load_average_before=list(os.getloadavg()), sets={}, rows=[])
    with tempfile.TemporaryDirectory() as root:
        for name, set_shapes in sets.items():
            photos = [jpeg(s, rng) for s in set_shapes]
            write_imagenet(os.path.join(root, name), photos)
            report["sets"][name] = dict(photos=count, distinct_shapes=len(set(set_shapes)),
                                        mean_pixels=float(np.mean([h * w for h, w in set_shapes])),
                                        mean_jpeg_bytes=float(np.mean([len(p) for p in photos])))
        for name in sets:  # warm-up: PIL's JPEG plugin, the files in the page cache
            one_pass(os.path.join(root, name), batch, 0, limit=batch)
        for w in workers:  # the two sets in turns (ABBA), so both meet the same load on the machine
            passes = {name: [] for name in sets}
            for name in ("many_shapes", "one_shape", "one_shape", "many_shapes")[:2 * repeats]:
                passes[name].append(one_pass(os.path.join(root, name), batch, w))
            for name, timed in passes.items():
                row = dict(set=name, workers=w, **min(timed, key=lambda p: p["seconds"]),
                           seconds_of_each_pass=[p["seconds"] for p in timed])
                report["rows"].append(row)
                print(f"{name:12s} workers={w}: {row['images_per_s']:6.1f} images/s "
                      f"({row['seconds']:.2f} s; after the first batch "
                      f"{row['steady_images_per_s'] or float('nan'):.1f} images/s)", flush=True)
    report["load_average_after"] = list(os.getloadavg())
    rate = {(r["set"], r["workers"]): r for r in report["rows"]}
    report["many_over_one"] = {str(w): rate["many_shapes", w]["seconds"] / rate["one_shape", w]["seconds"]
                               for w in workers}
    if 2 in workers:
        two = rate["many_shapes", 2]["images_per_s"]
        report["goals_met"] = dict(two_workers_images_per_s=two >= GOALS["two_workers_images_per_s"],
                                   many_over_one=all(v <= GOALS["many_over_one"]
                                                     for v in report["many_over_one"].values()))
    print("many shapes / one shape (time):",
          ", ".join(f"{w} workers {v:.2f}" for w, v in report["many_over_one"].items()), flush=True)
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="12 photos of 4 shapes, batches of 4, 0 and 1 worker, one pass each")
    parser.add_argument("--out", default=DEFAULT_OUT, help="the JSON report (default: results/input_pipeline.json)")
    args = parser.parse_args(argv)
    report = measure(12, 4, 4, (0, 1), repeats=1) if args.smoke else measure(PHOTOS, SHAPES, BATCH, WORKERS)
    report["smoke"] = args.smoke
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    return report


if __name__ == "__main__":
    main()
