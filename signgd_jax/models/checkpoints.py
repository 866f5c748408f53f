"""Pretrained checkpoints into the zoo: published weights -> ``(model, variables, preprocessing)``.

    model, variables, prep = from_checkpoint("convnext_small.safetensors", "convnext_small")
    logits = model.apply(variables, preprocess(images, prep), train=False)

Supported (zoo name: source -- file contents):

* ``mixer_b16``: ``vit_jax`` -- google-research/vision_transformer / big_vision ``.npz``
  (``MixerBlock_{i}/token_mixing/Dense_0/kernel``, ``stem/kernel``, ``pre_head_layer_norm/scale``,
  ``head/kernel``; Flax layout, tanh GELU); ``timm`` -- ``mixer_b16_224`` state dict (exact GELU).
* ``convnext_small``: ``timm`` (``stages.{i}.blocks.{j}...``) and ``torchvision``
  (``features.{i}.{j}.block...``); exact GELU, LayerNorm eps 1e-6.
* ``resmlp_big_24``: ``timm`` ``resmlp_big_24_224`` (exact GELU, ``Aff`` as (1, 1, C) arrays).
* ``resnet18``, ``resnet34``, ``vgg16_bn``: ``torchvision`` (BatchNorm eps 1e-5; VGG's first
  classifier layer reads the (C, H, W)-flattened map, re-ordered here to our (H, W, C)).
* ``vit_b16``: ``torchvision`` ``vit_b_16`` (``encoder.layers.encoder_layer_{i}...``; exact GELU,
  LayerNorm eps 1e-6, the class token's output; ``in_proj_weight`` is our ``qkv`` kernel transposed).

(:data:`LAYOUTS` holds this table; timm repositories of the Hugging Face Hub, ViT's included,
load through :mod:`signgd_jax.models.hub`.)

Files: ``.safetensors`` (numpy API of the ``safetensors`` package) and ``.npz`` are read without
torch; ``.pth`` / ``.pt`` / ``.bin`` (a flat ``{name: tensor}`` state dict) import torch only
then. The source is recognised by one distinctive key per layout, or forced with ``source=``;
after that the match is strict: every expected key present with its exact shape, no other key
(torch's optional ``num_batches_tracked`` counters excepted), else :class:`CheckpointMismatch`
naming the key. Weights are converted torch -> Flax layout: conv ``(O, I, kh, kw)`` ->
``(kh, kw, I, O)`` (depthwise ``(C, 1, kh, kw)`` -> ``(kh, kw, 1, C)``), linear ``(out, in)`` ->
``(in, out)``, BatchNorm ``weight/bias/running_mean/running_var`` -> ``scale/bias`` and
``batch_stats`` ``mean/var``.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from signgd_jax.models import preprocessing as prep


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; ``str(e)`` is one line. The root of signgd_jax's checkpoint
    errors: this module raises it for a published file that cannot be read (corrupt, truncated,
    unknown format, torch missing), :mod:`~signgd_jax.models.hub` its ``HubError``, and the
    training tools' errors on restoring a workdir (``signgd_jax.commands.train.RestoreError``)
    derive from it too."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint whose keys or shapes are not those of the requested model (a
    published file, or a training workdir's checkpoint: ``commands.train.RestoreMismatch``)."""


class Entry(NamedTuple):
    """One checkpoint array: its key, where it goes in our variables, and the layout change."""

    key: str
    path: tuple[str, ...]  # (collection, module, ..., leaf)
    source_shape: Callable[[tuple], tuple]  # our shape -> the checkpoint's shape
    to_ours: Callable[[np.ndarray, tuple], np.ndarray]  # (checkpoint array, our shape) -> ours


def _same(key, path):
    return Entry(key, path, tuple, lambda a, shape: a)


def _conv(key, path):
    """torch ``(O, I, kh, kw)`` -> Flax ``(kh, kw, I, O)``."""
    return Entry(key, path, lambda s: (s[3], s[2], s[0], s[1]), lambda a, shape: a.transpose(2, 3, 1, 0))


def _linear(key, path):
    """torch ``(out, in)`` -> Flax ``(in, out)``."""
    return Entry(key, path, lambda s: (s[1], s[0]), lambda a, shape: a.T)


def _reshaped(key, path, source_shape):
    """A vector stored with singleton axes, e.g. ResMLP's ``(1, 1, C)``, torchvision's ``(C, 1, 1)``."""
    return Entry(key, path, source_shape, lambda a, shape: a.reshape(shape))


def _flattened_chw(key, path, chw):
    """torch ``(out, C*H*W)`` reading a (C, H, W)-flattened map -> Flax ``(H*W*C, out)``."""
    c, h, w = chw
    return Entry(key, path, lambda s: (s[1], s[0]),
                 lambda a, shape: a.reshape(a.shape[0], c, h, w).transpose(2, 3, 1, 0).reshape(shape))


def _torch_linear(prefix, module):
    yield _linear(f"{prefix}.weight", ("params", *module, "kernel"))
    yield _same(f"{prefix}.bias", ("params", *module, "bias"))


def _torch_conv(prefix, module, bias=True):
    yield _conv(f"{prefix}.weight", ("params", *module, "kernel"))
    if bias:
        yield _same(f"{prefix}.bias", ("params", *module, "bias"))


def _torch_norm(prefix, module):
    """LayerNorm ``weight/bias`` -> ``scale/bias``."""
    yield _same(f"{prefix}.weight", ("params", *module, "scale"))
    yield _same(f"{prefix}.bias", ("params", *module, "bias"))


def _torch_batch_norm(prefix, module):
    yield from _torch_norm(prefix, module)
    yield _same(f"{prefix}.running_mean", ("batch_stats", *module, "mean"))
    yield _same(f"{prefix}.running_var", ("batch_stats", *module, "var"))


def _flax(prefix, module, leaves):
    for leaf in leaves:
        yield _same(f"{prefix}/{leaf}", ("params", *module, leaf))


def _channels_last_vector(s):
    return (s[0], 1, 1)


def _leading_ones_vector(s):
    return (1, 1, s[0])


# ----------------------------------------------------------------------------- layouts
def _mixer_vit_jax(model, tree) -> Iterator[Entry]:
    yield from _flax("stem", ("stem",), ("kernel", "bias"))
    for i in range(model.num_blocks):
        ours, theirs = f"blocks_{i}", f"MixerBlock_{i}"
        yield from _flax(f"{theirs}/LayerNorm_0", (ours, "norm1"), ("scale", "bias"))
        yield from _flax(f"{theirs}/LayerNorm_1", (ours, "norm2"), ("scale", "bias"))
        for mixing in ("token_mixing", "channel_mixing"):
            for k, fc in enumerate(("fc1", "fc2")):
                yield from _flax(f"{theirs}/{mixing}/Dense_{k}", (ours, mixing, fc), ("kernel", "bias"))
    yield from _flax("pre_head_layer_norm", ("norm",), ("scale", "bias"))
    yield from _flax("head", ("head",), ("kernel", "bias"))


def _mixer_timm(model, tree) -> Iterator[Entry]:
    yield from _torch_conv("stem.proj", ("stem",))
    for i in range(model.num_blocks):
        ours, theirs = f"blocks_{i}", f"blocks.{i}"
        yield from _torch_norm(f"{theirs}.norm1", (ours, "norm1"))
        yield from _torch_norm(f"{theirs}.norm2", (ours, "norm2"))
        for mixing, timm_name in (("token_mixing", "mlp_tokens"), ("channel_mixing", "mlp_channels")):
            for fc in ("fc1", "fc2"):
                yield from _torch_linear(f"{theirs}.{timm_name}.{fc}", (ours, mixing, fc))
    yield from _torch_norm("norm", ("norm",))
    yield from _torch_linear("head", ("head",))


def _resmlp_timm(model, tree) -> Iterator[Entry]:
    def affine(prefix, module):
        for leaf in ("alpha", "beta"):
            yield _reshaped(f"{prefix}.{leaf}", ("params", *module, leaf), _leading_ones_vector)

    yield from _torch_conv("stem.proj", ("stem",))
    for i in range(model.depth):
        ours, theirs = f"blocks_{i}", f"blocks.{i}"
        yield from affine(f"{theirs}.norm1", (ours, "norm1"))
        yield from _torch_linear(f"{theirs}.linear_tokens", (ours, "linear_tokens"))
        yield _same(f"{theirs}.ls1", ("params", ours, "layer_scale1", "scale"))
        yield from affine(f"{theirs}.norm2", (ours, "norm2"))
        for fc in ("fc1", "fc2"):
            yield from _torch_linear(f"{theirs}.mlp_channels.{fc}", (ours, "mlp", fc))
        yield _same(f"{theirs}.ls2", ("params", ours, "layer_scale2", "scale"))
    yield from affine("norm", ("norm",))
    yield from _torch_linear("head", ("head",))


class _ConvNeXtNames(NamedTuple):
    """Where a publisher keeps ConvNeXt's parts: stem, downsampling layer i, block (i, j),
    a block's (dwconv, norm, pwconv1, pwconv2, layer scale) leaves, the layer scale's stored
    shape, and the head's norm and linear layer."""

    stem: tuple[str, str]
    downsample: Callable[[int], tuple[str, str]]
    block: Callable[[int, int], str]
    block_leaves: tuple[str, str, str, str, str]
    layer_scale_shape: Callable
    head: tuple[str, str]


def _convnext(names: _ConvNeXtNames):
    def entries(model, tree) -> Iterator[Entry]:
        yield from _torch_conv(names.stem[0], ("stem", "conv"))
        yield from _torch_norm(names.stem[1], ("stem", "norm"))
        dwconv, norm, fc1, fc2, scale = names.block_leaves
        for i, depth in enumerate(model.depths):
            if i > 0:
                down_norm, down_conv = names.downsample(i)
                yield from _torch_norm(down_norm, (f"stages_{i}", "downsample", "norm"))
                yield from _torch_conv(down_conv, (f"stages_{i}", "downsample", "conv"))
            for j in range(depth):
                prefix, module = names.block(i, j), (f"stages_{i}", f"block_{j}")
                yield from _torch_conv(f"{prefix}.{dwconv}", (*module, "dwconv"))
                yield from _torch_norm(f"{prefix}.{norm}", (*module, "norm"))
                yield from _torch_linear(f"{prefix}.{fc1}", (*module, "pwconv1"))
                yield from _torch_linear(f"{prefix}.{fc2}", (*module, "pwconv2"))
                yield _reshaped(f"{prefix}.{scale}", ("params", *module, "layer_scale", "scale"),
                                names.layer_scale_shape)
        yield from _torch_norm(names.head[0], ("head_norm",))
        yield from _torch_linear(names.head[1], ("head",))

    return entries


_convnext_timm = _convnext(_ConvNeXtNames(
    ("stem.0", "stem.1"), lambda i: (f"stages.{i}.downsample.0", f"stages.{i}.downsample.1"),
    lambda i, j: f"stages.{i}.blocks.{j}", ("conv_dw", "norm", "mlp.fc1", "mlp.fc2", "gamma"), tuple,
    ("head.norm", "head.fc")))
_convnext_torchvision = _convnext(_ConvNeXtNames(
    ("features.0.0", "features.0.1"), lambda i: (f"features.{2 * i}.0", f"features.{2 * i}.1"),
    lambda i, j: f"features.{2 * i + 1}.{j}", ("block.0", "block.2", "block.3", "block.5", "layer_scale"),
    _channels_last_vector, ("classifier.0", "classifier.2")))


def _resnet_torchvision(model, tree) -> Iterator[Entry]:
    yield from _torch_conv("conv1", ("stem", "conv"), bias=False)
    yield from _torch_batch_norm("bn1", ("stem", "bn"))
    for i, depth in enumerate(model.depths):
        for j in range(depth):
            ours, theirs = (f"stages_{i}", f"block_{j}"), f"layer{i + 1}.{j}"
            for k in (1, 2):
                yield from _torch_conv(f"{theirs}.conv{k}", (*ours, f"conv{k}", "conv"), bias=False)
                yield from _torch_batch_norm(f"{theirs}.bn{k}", (*ours, f"conv{k}", "bn"))
            if "shortcut" in tree["params"][ours[0]][ours[1]]:
                yield from _torch_conv(f"{theirs}.downsample.0", (*ours, "shortcut", "conv"), bias=False)
                yield from _torch_batch_norm(f"{theirs}.downsample.1", (*ours, "shortcut", "bn"))
    yield from _torch_linear("fc", ("head",))


def _vgg_torchvision(model, tree) -> Iterator[Entry]:
    index, conv, channels = 0, 0, None
    for layer in model.layers:
        if layer == "M":
            index += 1  # MaxPool2d
            continue
        yield from _torch_conv(f"features.{index}", (f"features_{conv}", "conv"))
        yield from _torch_batch_norm(f"features.{index + 1}", (f"features_{conv}", "bn"))
        index, conv, channels = index + 3, conv + 1, int(layer)  # Conv2d, BatchNorm2d, ReLU
    if model.pool_size is None:
        raise CheckpointError("torchvision VGG weights need the zoo VGG with its adaptive pool (pool_size=7)")
    side = model.pool_size
    for m in range(len(model.classifier)):  # Linear, ReLU, Dropout per hidden layer
        if m == 0:
            yield _flattened_chw(f"classifier.{3 * m}.weight", ("params", "classifier_0", "kernel"),
                                 (channels, side, side))
            yield _same(f"classifier.{3 * m}.bias", ("params", "classifier_0", "bias"))
        else:
            yield from _torch_linear(f"classifier.{3 * m}", (f"classifier_{m}",))
    yield from _torch_linear(f"classifier.{3 * len(model.classifier)}", ("head",))


def _vit_torchvision(model, tree) -> Iterator[Entry]:
    """torchvision ``vit_b_16``: ``in_proj_weight`` is our ``qkv`` kernel transposed."""
    if model.pool != "token":
        raise ValueError("torchvision's ViT reads the class token: the zoo model needs pool='token'")
    yield _same("class_token", ("params", "cls_token"))
    yield from _torch_conv("conv_proj", ("stem",))
    yield _same("encoder.pos_embedding", ("params", "pos_embedding"))
    for i in range(model.depth):
        layer, block = f"encoder.layers.encoder_layer_{i}", f"blocks_{i}"
        yield from _torch_norm(f"{layer}.ln_1", (block, "norm1"))
        yield _linear(f"{layer}.self_attention.in_proj_weight", ("params", block, "attention", "qkv", "kernel"))
        yield _same(f"{layer}.self_attention.in_proj_bias", ("params", block, "attention", "qkv", "bias"))
        yield from _torch_linear(f"{layer}.self_attention.out_proj", (block, "attention", "out"))
        yield from _torch_norm(f"{layer}.ln_2", (block, "norm2"))
        yield from _torch_linear(f"{layer}.mlp.0", (block, "mlp", "fc1"))
        yield from _torch_linear(f"{layer}.mlp.3", (block, "mlp", "fc2"))
    yield from _torch_norm("encoder.ln", ("norm",))
    yield from _torch_linear("heads.head", ("head",))


class Layout(NamedTuple):
    signature: str  # a key that only this layout has, among the layouts for this model
    entries: Callable[..., Iterator[Entry]]  # (model, abstract variables) -> entries in checkpoint order
    overrides: dict  # model options that make the zoo model compute what the publisher's does
    preprocessing: prep.Preprocessing


_EXACT_GELU = dict(gelu_approximate="exact", ln_epsilon=1e-6)
LAYOUTS: dict[str, dict[str, Layout]] = {
    "mixer_b16": {
        # Flax's nn.gelu (tanh form) in vision_transformer's MlpBlock; timm uses torch's exact GELU.
        "vit_jax": Layout("stem/kernel", _mixer_vit_jax, dict(gelu_approximate="tanh", ln_epsilon=1e-6),
                          prep.VIT_JAX),
        "timm": Layout("stem.proj.weight", _mixer_timm, _EXACT_GELU, prep.TIMM_MIXER),
    },
    "convnext_small": {
        "timm": Layout("stem.0.weight", _convnext_timm, _EXACT_GELU, prep.TIMM_IMAGENET),
        "torchvision": Layout("features.0.0.weight", _convnext_torchvision, _EXACT_GELU,
                              prep.TORCHVISION_CONVNEXT_SMALL),
    },
    "resmlp_big_24": {
        "timm": Layout("stem.proj.weight", _resmlp_timm, dict(gelu_approximate="exact"), prep.TIMM_IMAGENET),
    },
    "resnet18": {"torchvision": Layout("conv1.weight", _resnet_torchvision, {}, prep.TORCHVISION)},
    "resnet34": {"torchvision": Layout("conv1.weight", _resnet_torchvision, {}, prep.TORCHVISION)},
    "vgg16_bn": {"torchvision": Layout("features.0.weight", _vgg_torchvision, {}, prep.TORCHVISION)},
    # torchvision's ViT: exact GELU, LayerNorm eps 1e-6, the class token's output
    "vit_b16": {"torchvision": Layout("encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
                                      _vit_torchvision, dict(_EXACT_GELU, pool="token"), prep.TORCHVISION)},
}
OPTIONAL_LEAVES = ("num_batches_tracked",)  # torch BatchNorm step counters: not weights, absent in old files


# ----------------------------------------------------------------------------- reading files
def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _read_safetensors(path):
    from safetensors.numpy import load_file
    return load_file(path)


def _read_npz(path):
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def _read_torch(path):
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: reading a torch file needs torch (pip install torch); "
                              ".safetensors and .npz checkpoints load without it") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict {{name: tensor}}, found {type(state).__name__}")
    arrays = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor "
                                  "(a flat state dict is expected)")
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        arrays[key] = value.numpy()
    return arrays


_READERS = {".safetensors": _read_safetensors, ".npz": _read_npz, ".pth": _read_torch, ".pt": _read_torch,
            ".bin": _read_torch}


def read_arrays(path) -> dict[str, np.ndarray]:
    """``{key: array}`` of a checkpoint file (see the module docstring for formats)."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _READERS:
        raise CheckpointError(f"{path}: unknown checkpoint format {suffix!r}; supported: {', '.join(_READERS)}")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        return _READERS[suffix](path)
    except CheckpointError:
        raise
    except Exception as error:  # the readers' own errors (zipfile, safetensors, pickle) vary by format
        raise CheckpointError(f"{path}: unreadable {suffix} file (truncated or corrupt?): {_one_line(error)}") from None


# ----------------------------------------------------------------------------- matching
def recognise(arrays: Mapping[str, np.ndarray], name: str) -> str:
    """The source layout of ``arrays`` among those supported for ``name``."""
    layouts = _layouts_for(name)
    found = [source for source, layout in layouts.items() if layout.signature in arrays]
    if len(found) > 1:
        raise CheckpointMismatch(f"keys of several {name} layouts ({', '.join(found)}): pass source= to choose")
    if not found:
        wanted = ", ".join(f"{s} ({l.signature!r})" for s, l in layouts.items())
        first = next(iter(arrays), None)
        raise CheckpointMismatch(f"not a {name} checkpoint in a supported layout: expected a key of {wanted}; "
                                 f"found {len(arrays)} keys, the first {first!r}")
    return found[0]


def _layouts_for(name):
    if name not in LAYOUTS:
        raise ValueError(f"no checkpoint importer for {name!r}; supported: {', '.join(sorted(LAYOUTS))}")
    return LAYOUTS[name]


def _nested_set(tree: dict, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _leaf_shapes(tree, prefix=()):
    if isinstance(tree, Mapping):
        for key, sub in tree.items():
            yield from _leaf_shapes(sub, (*prefix, key))
    else:
        yield prefix, tuple(tree.shape)


def _abstract_variables(model, image_size):
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)


def _plan(name: str, source: str):
    """The model for ``(name, source)`` and its ``[(entry, our shape)]``."""
    from signgd_jax import models  # the registry imports this module's package

    layout = LAYOUTS[name][source]
    model = models.create(name, **layout.overrides)
    abstract = _abstract_variables(model, layout.preprocessing.image_size)
    shapes = dict(_leaf_shapes(abstract))
    plan = [(entry, shapes[entry.path]) for entry in layout.entries(model, abstract)]
    uncovered = sorted(set(shapes) - {entry.path for entry, _ in plan})
    if uncovered:  # the layout table does not cover the model: a bug here, not in a file
        raise RuntimeError(f"{name} ({source}): no checkpoint entry for {'/'.join(uncovered[0])}")
    return model, plan


def expected_shapes(name: str, source: str) -> dict[str, tuple]:
    """``{key: shape}`` that a ``source`` checkpoint of ``name`` holds, in the publisher's
    layout and order (torch's optional ``num_batches_tracked`` left out)."""
    if source not in _layouts_for(name):
        raise ValueError(f"{name}: unknown source {source!r}; supported: {', '.join(LAYOUTS[name])}")
    return {entry.key: tuple(entry.source_shape(shape)) for entry, shape in _plan(name, source)[1]}


def from_arrays(arrays: Mapping[str, np.ndarray], name: str, source: str | None = None, *, origin: str = "checkpoint"):
    """:func:`from_checkpoint` for arrays already in memory (``origin`` names them in errors)."""
    layouts = _layouts_for(name)
    if source is None:
        try:
            source = recognise(arrays, name)
        except CheckpointMismatch as error:
            raise CheckpointMismatch(f"{origin}: {error}") from None
    elif source not in layouts:
        raise ValueError(f"{name}: unknown source {source!r}; supported: {', '.join(layouts)}")
    model, plan = _plan(name, source)
    entries = [entry for entry, _ in plan]
    where = f"{origin}: {name} ({source} layout)"

    expected = {e.key for e in entries}
    missing = [e.key for e in entries if e.key not in arrays]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointMismatch(f"{where}: missing key {missing[0]!r}{more}")
    extra = [k for k in arrays if k not in expected and k.rsplit(".", 1)[-1] not in OPTIONAL_LEAVES]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointMismatch(f"{where}: unexpected key {extra[0]!r}{more}")

    variables = {}
    for entry, ours in plan:
        theirs = tuple(entry.source_shape(ours))
        array = np.asarray(arrays[entry.key])
        if tuple(array.shape) != theirs:
            raise CheckpointMismatch(f"{where}: key {entry.key!r} has shape {tuple(array.shape)}, expected {theirs}")
        if not np.issubdtype(array.dtype, np.floating):
            raise CheckpointMismatch(f"{where}: key {entry.key!r} has dtype {array.dtype}, expected floating point")
        _nested_set(variables, entry.path, jnp.asarray(entry.to_ours(array.astype(np.float32), ours)))
    return model, variables, layouts[source].preprocessing


def from_checkpoint(path, name: str, source: str | None = None):
    """Loads published weights into the zoo model ``name``.

    Args:
      path: a ``.safetensors``, ``.npz`` or torch (``.pth``/``.pt``/``.bin``) file.
      name: a zoo ImageNet model (``mixer_b16``, ``convnext_small``, ``resmlp_big_24``,
        ``resnet18``, ``resnet34``, ``vgg16_bn``, ``vit_b16``; the keys of :data:`LAYOUTS`).
      source: ``'vit_jax'``, ``'timm'`` or ``'torchvision'``; default: recognised from the keys.

    Returns:
      ``(model, variables, preprocessing)``: the zoo module built with the options that make it
      compute what the publisher's code computes, its variables (``params`` and, for BatchNorm
      models, ``batch_stats``), and the :class:`~signgd_jax.models.preprocessing.Preprocessing`
      the weights expect (apply it with :func:`~signgd_jax.models.preprocessing.preprocess`).

    Raises:
      CheckpointError: unreadable file (one line), torch missing for a torch file.
      CheckpointMismatch: missing key, unexpected key, shape mismatch, other model (one line,
        naming the key).
    """
    arrays = read_arrays(path)
    return from_arrays(arrays, name, source, origin=os.fspath(path))
