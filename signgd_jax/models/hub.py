"""Pretrained weights from the Hugging Face Hub: ``repo_id`` -> ``(model, variables, preprocessing)``.

    model, variables, prep = from_pretrained("timm/convnext_small.fb_in1k")
    logits = model.apply(variables, preprocess(images, prep), train=False)

The repositories are timm's (``timm/<architecture>.<tag>``, the names ``timm.create_model``
takes). Two files are fetched with ``huggingface_hub`` into its cache (``~/.cache/huggingface/hub``,
``HF_HUB_CACHE`` or ``cache_dir=``): ``config.json`` (small, first: the architecture and the
tag's preprocessing) and ``model.safetensors`` (timm's ``state_dict``). The architecture picks
the zoo model and the layout :mod:`signgd_jax.models.checkpoints` reads it with:

timm architecture (repository prefix)  zoo model          layout (``checkpoints.LAYOUTS``)
- ``convnext_small``                  ``convnext_small``  ``timm``
- ``mixer_b16_224``                   ``mixer_b16``       ``timm``
- ``resmlp_big_24_224``               ``resmlp_big_24``   ``timm``
- ``resnet18``, ``resnet34``          same names          ``torchvision`` (timm's ResNet keeps its key names)
- ``vgg16_bn``                        ``vgg16_bn``        ``torchvision``, timm's ``pre_logits.fc1`` (a 7x7 conv),
                                                          ``pre_logits.fc2`` (1x1) and ``head.fc`` renamed
                                                          ``classifier.0/3/6``
- ``vit_base_patch16_224``            ``vit_b16``         ``torchvision``, timm's keys renamed
                                                          (``blocks.{i}.attn.qkv`` -> ``...in_proj_weight``...)

e.g. ``timm/convnext_small.fb_in1k``, ``timm/mixer_b16_224.goog_in21k_ft_in1k``,
``timm/resmlp_big_24_224.fb_in22k_ft_in1k``, ``timm/resnet18.a1_in1k``, ``timm/resnet34.tv_in1k``,
``timm/vgg16_bn.tv_in1k``, ``timm/vit_base_patch16_224.augreg2_in21k_ft_in1k``. Any tag of these
architectures with a 1000-class head loads; the preprocessing is the tag's own (``config.json``'s
``pretrained_cfg``: input size, ``crop_pct``, interpolation, mean, std), so e.g.
``resnet18.a1_in1k`` gets bicubic with crop 0.95 and ``resnet18.tv_in1k`` bilinear with crop
0.875. A repository without ``config.json`` is read by its name, with the architecture's default
timm preprocessing (a warning says so). Other architectures (``resnet50``...) have no zoo model.

Errors are one line naming the repository and what to do (:class:`HubError`, a
:class:`~signgd_jax.models.checkpoints.CheckpointError`): ``huggingface_hub`` missing, a
malformed id, an unknown (or private) repository or revision, a repository without
``model.safetensors``, offline (``HF_HUB_OFFLINE=1`` or no network) with the files not in the
cache, an unsupported architecture. A file whose keys or shapes are not the zoo model's is a
:class:`~signgd_jax.models.checkpoints.CheckpointMismatch` naming the key, as from a local file.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Optional

import numpy as np

from signgd_jax.models import checkpoints
from signgd_jax.models import preprocessing as prep

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
INSTALL_HINT = "pip install 'signgd-jax[hub]' (or pip install huggingface_hub)"


class HubError(checkpoints.CheckpointError):
    """Weights that cannot be fetched from the Hub or have no zoo model (a one-line message)."""


# ----------------------------------------------------------------------------- renaming timm keys
def _vgg_timm(arrays: Mapping[str, np.ndarray]) -> dict:
    """timm's VGG head (``pre_logits.fc1``: a 7x7 conv on the 7x7 map, ``pre_logits.fc2``: a 1x1
    conv, ``head.fc``) -> torchvision's ``classifier.0/3/6`` linear layers. A 7x7 conv over a 7x7
    map is the linear layer over the (C, H, W)-flattened map: ``(O, C, 7, 7) -> (O, C*49)``.
    Files already in torchvision's names pass unchanged."""
    names = {"pre_logits.fc1": "classifier.0", "pre_logits.fc2": "classifier.3", "head.fc": "classifier.6"}
    out = {}
    for key, value in arrays.items():
        module, _, leaf = key.rpartition(".")
        if module in names:
            key = f"{names[module]}.{leaf}"
            if leaf == "weight" and module.startswith("pre_logits") and value.ndim == 4:
                value = value.reshape(value.shape[0], -1)
        out[key] = value
    return out


_VIT_NAMES = [  # timm VisionTransformer -> torchvision vit_b_16 (keys not listed are kept, and refused if extra)
    (r"cls_token", "class_token"),
    (r"pos_embed", "encoder.pos_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"conv_proj.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.encoder_layer_\1.ln_1.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.encoder_layer_\1.self_attention.in_proj_\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.encoder_layer_\1.self_attention.out_proj.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.encoder_layer_\1.ln_2.\2"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"encoder.layers.encoder_layer_\1.mlp.0.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"encoder.layers.encoder_layer_\1.mlp.3.\2"),
    (r"norm\.(weight|bias)", r"encoder.ln.\1"),
    (r"head\.(weight|bias)", r"heads.head.\1"),
]
_VIT_PATTERNS = [(re.compile(pattern + r"\Z"), target) for pattern, target in _VIT_NAMES]


def _vit_timm(arrays: Mapping[str, np.ndarray]) -> dict:
    """timm's ViT keys -> torchvision's. The two compute the same function: pre-norm blocks,
    ``qkv`` = torch's ``in_proj`` (q, k, v stacked, heads split the same way), exact GELU,
    LayerNorm eps 1e-6, the class token's output into the head."""
    out = {}
    for key, value in arrays.items():
        for pattern, target in _VIT_PATTERNS:
            if pattern.match(key):
                key = pattern.sub(target, key)
                break
        out[key] = value
    return out


class Architecture(NamedTuple):
    """Where a timm architecture's weights go: the zoo model, the checkpoints layout, a key
    renaming into that layout (None: same names), and the architecture's default timm
    preprocessing (used only when a repository has no ``config.json``)."""

    model: str
    source: str
    rename: Optional[Callable[[Mapping[str, np.ndarray]], dict]]
    default_preprocessing: prep.Preprocessing


_TIMM_VIT = prep.Preprocessing(224, math.floor(224 / 0.9), "bicubic", prep.HALF, prep.HALF)
ARCHITECTURES: dict[str, Architecture] = {
    "convnext_small": Architecture("convnext_small", "timm", None, prep.TIMM_IMAGENET),
    "mixer_b16_224": Architecture("mixer_b16", "timm", None, prep.TIMM_MIXER),
    "resmlp_big_24_224": Architecture("resmlp_big_24", "timm", None, prep.TIMM_IMAGENET),
    "resnet18": Architecture("resnet18", "torchvision", None, prep.TORCHVISION),
    "resnet34": Architecture("resnet34", "torchvision", None, prep.TORCHVISION),
    "vgg16_bn": Architecture("vgg16_bn", "torchvision", _vgg_timm, prep.TORCHVISION),
    "vit_base_patch16_224": Architecture("vit_b16", "torchvision", _vit_timm, _TIMM_VIT),
}


class Pretrained(NamedTuple):
    """What :func:`load` returns: :func:`from_pretrained`'s triple and where it came from."""

    model: Any
    variables: dict
    preprocessing: prep.Preprocessing
    name: str  # zoo model
    source: str  # checkpoints layout
    architecture: str  # timm architecture
    repo_id: str
    revision: Optional[str]  # the commit the files are from (None if not known)
    weights: str  # local path of model.safetensors (in the Hub cache)


# ----------------------------------------------------------------------------- preprocessing
def preprocessing_from_config(cfg: Mapping[str, Any], where: str = "config.json") -> prep.Preprocessing:
    """timm's ``pretrained_cfg`` -> :class:`Preprocessing`: ``input_size`` (3, S, S), the
    shorter side resized to ``floor(S / crop_pct)`` then a centre S x S crop (``crop_mode``
    ``center``, timm's evaluation transform), ``interpolation``, ``mean``, ``std``. ``squash``
    with ``crop_pct`` 1 is the whole image resized to S x S; other crop modes are refused."""
    try:
        channels, height, width = (int(v) for v in cfg.get("input_size", (3, 224, 224)))
        if channels != 3 or height != width:
            raise HubError(f"{where}: input_size {list(cfg['input_size'])}: only square RGB inputs are supported")
        crop_pct = float(cfg.get("crop_pct") or 0.875)  # timm's DEFAULT_CROP_PCT when absent
        mode = cfg.get("crop_mode") or "center"
        if mode == "center":
            resize = math.floor(height / crop_pct)
        elif mode == "squash" and crop_pct == 1.0:
            resize = None
        else:
            raise HubError(f"{where}: crop_mode {mode!r} with crop_pct {crop_pct} is not supported "
                           "(center, or squash with crop_pct 1)")
        interpolation = cfg.get("interpolation", "bicubic")
        mean = tuple(float(v) for v in cfg.get("mean", prep.IMAGENET_MEAN))
        std = tuple(float(v) for v in cfg.get("std", prep.IMAGENET_STD))
        if len(mean) != 3 or len(std) != 3:
            raise HubError(f"{where}: mean and std need 3 values, got {list(mean)} and {list(std)}")
        return prep.Preprocessing(height, resize, interpolation, mean, std)
    except HubError:
        raise
    except (TypeError, ValueError, KeyError) as error:
        raise HubError(f"{where}: unreadable pretrained_cfg: {' '.join(str(error).split())}") from None


# ----------------------------------------------------------------------------- fetching
def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise HubError(f"loading weights from the Hugging Face Hub needs huggingface_hub: {INSTALL_HINT}") from None
    try:
        from huggingface_hub import errors
    except ImportError:  # huggingface_hub < 0.24 keeps them in utils
        from huggingface_hub import utils as errors
    return huggingface_hub, errors


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _supported() -> str:
    return ", ".join(f"timm/{arch}.<tag>" for arch in ARCHITECTURES)


def _fetch(repo_id: str, filename: str, revision, cache_dir, *, optional: bool = False) -> Optional[str]:
    """The local path of ``filename`` of ``repo_id`` (downloaded into the cache if needed); None
    when ``optional`` and the repository has no such file."""
    hub, errors = _hub()
    at = f" at revision {revision!r}" if revision else ""
    try:
        return hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)
    except errors.GatedRepoError:
        raise HubError(f"{repo_id}: a gated repository: accept its terms on huggingface.co and log in "
                       "(hf auth login, or HF_TOKEN)") from None
    except errors.RepositoryNotFoundError:
        raise HubError(f"{repo_id}: no such repository on the Hugging Face Hub (or it is private: log in with "
                       f"hf auth login); check the name, e.g. timm/convnext_small.fb_in1k; supported: "
                       f"{_supported()}") from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{repo_id}: no revision {revision!r} on the Hub: pass an existing branch, tag or "
                       "commit (revision=None for main)") from None
    except errors.LocalEntryNotFoundError:  # offline, or the Hub unreachable, and not in the cache
        from huggingface_hub import constants

        cache = cache_dir or constants.HF_HUB_CACHE
        raise HubError(f"{repo_id}: {filename}{at} is not in the Hugging Face cache ({cache}) and the Hub "
                       "cannot be reached (HF_HUB_OFFLINE=1 or no network): run once with network access "
                       "(unset HF_HUB_OFFLINE) to download it, or pass cache_dir= where it was downloaded") from None
    except errors.EntryNotFoundError:  # the repository exists but has no such file
        if optional:
            return None
        raise HubError(f"{repo_id}: the repository has no {filename}{at}: signgd_jax reads timm's safetensors "
                       "weights; download the weights yourself and load them with "
                       "models.from_checkpoint(FILE, MODEL)") from None
    except errors.HFValidationError as error:
        raise HubError(f"{repo_id!r} is not a Hub repository id (owner/name, e.g. timm/convnext_small.fb_in1k): "
                       f"{_first_line(error)}") from None
    except (OSError, ValueError) as error:  # HTTP errors (5xx, timeouts), a full disk...
        raise HubError(f"{repo_id}: downloading {filename}{at} failed: {_first_line(error)}; retry, or check the "
                       "network and HF_ENDPOINT") from None


def _architecture(repo_id: str, config: Optional[dict]) -> str:
    if config is not None and isinstance(config.get("architecture"), str):
        return config["architecture"]
    name = repo_id.rsplit("/", 1)[-1]
    return name.split(".", 1)[0]  # timm's <architecture>.<tag>


def _check_architecture(repo_id: str, arch: str) -> Architecture:
    if arch not in ARCHITECTURES:
        raise HubError(f"{repo_id}: architecture {arch!r} has no zoo model; supported: {_supported()}")
    return ARCHITECTURES[arch]


def _commit(path: str) -> Optional[str]:
    parent = os.path.basename(os.path.dirname(path))  # <cache>/models--org--name/snapshots/<commit>/<file>
    return parent if re.fullmatch(r"[0-9a-f]{40}", parent) else None


def load(repo_id: str, revision: Optional[str] = None, cache_dir=None) -> Pretrained:
    """:func:`from_pretrained` with the details: the zoo model's name, the layout, the timm
    architecture, the commit and the local weights file (see :class:`Pretrained`)."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubError(f"{repo_id!r} is not a Hub repository id: owner/name, e.g. timm/convnext_small.fb_in1k")
    if repo_id.split("/")[0] == "timm":  # timm's repositories are named <architecture>.<tag>: refuse before downloading
        _check_architecture(repo_id, _architecture(repo_id, None))
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
    config_path = _fetch(repo_id, CONFIG_FILE, revision, cache_dir, optional=True)
    config = None
    if config_path is not None:
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as error:
            raise HubError(f"{repo_id}: unreadable {CONFIG_FILE}: {_first_line(error)}") from None
        if not isinstance(config, dict):
            raise HubError(f"{repo_id}: {CONFIG_FILE} is not a JSON object")
    arch = _architecture(repo_id, config)
    entry = _check_architecture(repo_id, arch)
    if config is not None and config.get("model_args"):
        raise HubError(f"{repo_id}: built with model_args {config['model_args']} that the zoo's {entry.model} "
                       "does not take; only the architecture's own configuration loads")
    where = f"{repo_id}/{CONFIG_FILE}"
    if config is None:
        preprocessing = entry.default_preprocessing
        warnings.warn(f"{repo_id}: no {CONFIG_FILE}; the model is taken from the repository's name ({arch}) and "
                      f"the preprocessing is timm's default for it: {preprocessing}", stacklevel=2)
    else:
        preprocessing = preprocessing_from_config(config.get("pretrained_cfg") or {}, where)

    weights = _fetch(repo_id, WEIGHTS_FILE, revision, cache_dir)
    try:
        arrays = checkpoints.read_arrays(weights)
    except checkpoints.CheckpointError as error:  # a damaged download: the cache keeps it until removed
        folder = os.path.dirname(os.path.dirname(os.path.dirname(weights)))  # <cache>/models--owner--name
        raise HubError(f"{repo_id}: a damaged download ({' '.join(str(error).split())}): delete {folder} "
                       "and load again") from None
    if entry.rename is not None:
        arrays = entry.rename(arrays)
    model, variables, _ = checkpoints.from_arrays(arrays, entry.model, entry.source,
                                                  origin=f"{repo_id}/{WEIGHTS_FILE}")
    return Pretrained(model, variables, preprocessing, entry.model, entry.source, arch, repo_id,
                      _commit(weights), weights)


def from_pretrained(repo_id: str, revision: Optional[str] = None, cache_dir=None):
    """Loads a timm repository of the Hugging Face Hub into its zoo model.

    Args:
      repo_id: e.g. ``"timm/convnext_small.fb_in1k"`` (see the module docstring's table).
      revision: a branch, tag or commit of the repository (default: ``main``).
      cache_dir: the ``huggingface_hub`` cache (default: ``HF_HUB_CACHE``, ``~/.cache/huggingface/hub``).

    Returns:
      ``(model, variables, preprocessing)`` as :func:`~signgd_jax.models.from_checkpoint`
      returns them, with the preprocessing of the repository's tag.

    Raises:
      HubError: one line naming the repository and what to do (not installed, unknown
        repository, revision or architecture, no ``model.safetensors``, offline and not cached).
      CheckpointMismatch: the file's keys or shapes are not those of the zoo model.
    """
    loaded = load(repo_id, revision, cache_dir)
    return loaded.model, loaded.variables, loaded.preprocessing
