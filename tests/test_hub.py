"""``models.from_pretrained(repo_id)`` and ``signgd-convert --pretrained REPO_ID``: timm
repositories of the Hugging Face Hub, without the internet.

The repositories are made here: ``model.safetensors`` holds the deterministic stand-in weights
of ``tests/fixtures/zoo`` (the rule of its README) under the keys timm's ``state_dict`` has, and
``config.json`` is the one timm writes (``architecture`` and the tag's ``pretrained_cfg``, values
from timm's model files). They are either written straight into a Hugging Face cache
(``models--org--name/blobs``, ``snapshots/<commit>``, ``refs/main``) and read with the Hub
switched off, or served by a small Hub on 127.0.0.1 (``HF_ENDPOINT``) that answers as the real one
does (``X-Repo-Commit``, ``ETag``, ``X-Error-Code``). The loaded model's logits are compared with
those the publisher's code computed with the same weights (``tests/fixtures/zoo/logits.npz``).

timm's ResNet keeps torchvision's key names and its ViT-B/16 and VGG-16-BN compute what
torchvision's do, so those repositories are checked against torchvision's fixtures: the
weights made for torchvision's keys, stored under timm's (``timm_keys`` below).
"""
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import save

from signgd_jax import models
from signgd_jax.models import hub, preprocessing

FIXTURES = Path(__file__).parent / "fixtures" / "zoo"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMIT = "0123456789abcdef0123456789abcdef01234567"
IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
HALF = dict(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])

# repository -> (fixture, timm's pretrained_cfg of the tag, the Preprocessing it means)
REPOS = {
    "timm/resnet18.a1_in1k": ("torchvision_resnet18", dict(crop_pct=0.95, interpolation="bicubic", **IMAGENET),
                              preprocessing.Preprocessing(224, 235, "bicubic")),
    "timm/resnet18.tv_in1k": ("torchvision_resnet18", dict(crop_pct=0.875, interpolation="bilinear", **IMAGENET),
                              preprocessing.TORCHVISION),
    "timm/resnet34.a1_in1k": ("torchvision_resnet34", dict(crop_pct=0.95, interpolation="bicubic", **IMAGENET),
                              preprocessing.Preprocessing(224, 235, "bicubic")),
    "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k": (
        "torchvision_vit_b_16", dict(crop_pct=0.9, interpolation="bicubic", **HALF),
        preprocessing.Preprocessing(224, 248, "bicubic", (0.5,) * 3, (0.5,) * 3)),
    "timm/convnext_small.fb_in1k": ("timm_convnext_small", dict(crop_pct=0.875, interpolation="bicubic", **IMAGENET),
                                    preprocessing.TIMM_IMAGENET),
    "timm/mixer_b16_224.goog_in21k_ft_in1k": ("timm_mixer_b16_224",
                                              dict(crop_pct=0.875, interpolation="bicubic", **HALF),
                                              preprocessing.TIMM_MIXER),
    "timm/resmlp_big_24_224.fb_in22k_ft_in1k": ("timm_resmlp_big_24_224",
                                                dict(crop_pct=0.875, interpolation="bicubic", **IMAGENET),
                                                preprocessing.TIMM_IMAGENET),
    "timm/vgg16_bn.tv_in1k": ("torchvision_vgg16_bn", dict(crop_pct=0.875, interpolation="bilinear", **IMAGENET),
                              preprocessing.TORCHVISION),
}


# ----------------------------------------------------------------------------- stand-in repositories
def stand_in(name: str, shape) -> np.ndarray:
    """The fixtures' deterministic value of torch-layout parameter ``name`` (their README's rule)."""
    shape = tuple(shape)
    b = np.sin(0.1 * np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.float64)
               + zlib.crc32(name.encode("utf-8")) % 997).reshape(shape)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    if leaf == "running_var":
        value = 1.0 + 0.5 * np.abs(b)
    elif leaf == "running_mean":
        value = 0.1 * b
    elif "bias" in leaf or leaf == "beta":
        value = 0.05 * b
    elif leaf in ("gamma", "ls1", "ls2", "layer_scale") or "layer_scale" in name:
        value = 0.1 + 0.05 * b
    elif len(shape) <= 1:
        value = 1.0 + 0.1 * b
    else:
        value = b * np.sqrt(2.0 / np.prod(shape[1:]))
    return value.astype(np.float32)


def images() -> np.ndarray:
    x = 0.5 * np.sin(0.01 * np.arange(2 * 3 * 224 * 224, dtype=np.float64))
    return x.reshape(2, 3, 224, 224).astype(np.float32).transpose(0, 2, 3, 1)


def fixture_keys(fixture: str):
    name = "vit_b_16_keys.json" if fixture == "torchvision_vit_b_16" else "keys.json"
    return json.loads((FIXTURES / name).read_text())[fixture]


def reference_logits(fixture: str) -> np.ndarray:
    name = "vit_b_16_logits.npz" if fixture == "torchvision_vit_b_16" else "logits.npz"
    with np.load(FIXTURES / name) as data:
        return data[fixture]


_VIT_FIXED = {"class_token": "cls_token", "encoder.pos_embedding": "pos_embed", "conv_proj.weight": "patch_embed.proj.weight",
              "conv_proj.bias": "patch_embed.proj.bias", "encoder.ln.weight": "norm.weight",
              "encoder.ln.bias": "norm.bias", "heads.head.weight": "head.weight", "heads.head.bias": "head.bias"}
_VIT_BLOCK = {"ln_1": "norm1", "ln_2": "norm2", "self_attention.out_proj": "attn.proj", "mlp.0": "mlp.fc1",
              "mlp.3": "mlp.fc2"}


def _vit_key(key: str) -> str:
    """torchvision ``vit_b_16`` key -> the key timm's ``VisionTransformer`` state_dict has for it
    (timm/models/vision_transformer.py: ``cls_token``, ``pos_embed``, ``patch_embed.proj``,
    ``blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2``, ``norm``, ``head``)."""
    if key in _VIT_FIXED:
        return _VIT_FIXED[key]
    i, rest = re.fullmatch(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)", key).groups()
    if rest.startswith("self_attention.in_proj_"):  # in_proj_weight / in_proj_bias: q, k, v stacked, as timm's qkv
        return f"blocks.{i}.attn.qkv.{rest.rsplit('_', 1)[1]}"
    module, leaf = rest.rsplit(".", 1)
    return f"blocks.{i}.{_VIT_BLOCK[module]}.{leaf}"


def timm_state_dict(fixture: str) -> dict:
    """The stand-in weights of ``fixture`` under the keys timm's model of that architecture has."""
    arrays = {name: stand_in(name, shape) for name, shape, _ in fixture_keys(fixture)}
    if fixture == "torchvision_vit_b_16":
        return {_vit_key(k): v for k, v in arrays.items()}
    if fixture == "torchvision_vgg16_bn":  # timm's ConvMlp: 7x7 and 1x1 convs, then ClassifierHead.fc
        renamed = {}
        for key, value in arrays.items():
            if key.startswith("classifier.0."):
                key, value = "pre_logits.fc1." + key[13:], value.reshape(-1, 512, 7, 7) if value.ndim == 2 else value
            elif key.startswith("classifier.3."):
                key, value = "pre_logits.fc2." + key[13:], value.reshape(-1, 4096, 1, 1) if value.ndim == 2 else value
            elif key.startswith("classifier.6."):
                key = "head.fc." + key[13:]
            renamed[key] = value
        return renamed
    return arrays  # timm's own fixtures, and timm's ResNet (torchvision's names)


def timm_config(repo_id: str, cfg: dict) -> dict:
    """``config.json`` as timm's ``push_to_hf_hub`` writes it."""
    arch, tag = repo_id.split("/")[1].split(".", 1)
    return dict(architecture=arch, num_classes=1000, num_features=512,
                pretrained_cfg=dict(tag=tag, custom_load=False, input_size=[3, 224, 224], fixed_input_size=False,
                                    num_classes=1000, **cfg))


def put_in_cache(cache: Path, repo_id: str, files: dict, commit: str = COMMIT, ref: str = "main") -> Path:
    """``files`` ({name: bytes}) in the huggingface_hub cache layout: content-addressed blobs,
    the snapshot of ``commit`` linking to them, and ``refs/<ref>`` naming the commit."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        (root / "blobs" / digest).write_bytes(data)
        link = root / "snapshots" / commit / name
        if not link.exists():
            link.symlink_to(Path("..", "..", "blobs", digest))
    (root / "refs" / ref).write_text(commit)
    return root


def repo_files(repo_id: str, arrays=None, config=True) -> dict:
    fixture, cfg, _ = REPOS[repo_id]
    files = {"model.safetensors": save(timm_state_dict(fixture) if arrays is None else arrays)}
    if config:
        files["config.json"] = json.dumps(timm_config(repo_id, cfg), indent=2).encode()
    return files


@pytest.fixture
def offline(monkeypatch):
    """The Hub switched off as ``HF_HUB_OFFLINE=1`` does (huggingface_hub reads the variable
    when imported, so its constant is set here)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def logits_of(model, variables):
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images()))


def assert_close(logits, reference, what):
    tolerance = 1e-4 * float(np.abs(reference).max()) + 1e-5
    error = float(np.abs(logits - reference).max())
    assert error <= tolerance, f"{what}: max |logit error| {error:.3g} > {tolerance:.3g}"


# ----------------------------------------------------------------------------- from the cache
@pytest.mark.parametrize("repo_id", ["timm/resnet18.a1_in1k", "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
                                     "timm/convnext_small.fb_in1k", "timm/mixer_b16_224.goog_in21k_ft_in1k",
                                     "timm/resmlp_big_24_224.fb_in22k_ft_in1k", "timm/vgg16_bn.tv_in1k",
                                     "timm/resnet34.a1_in1k"])
def test_published_logits_from_the_cache(repo_id, tmp_path, offline):
    fixture, _, expected = REPOS[repo_id]
    put_in_cache(tmp_path, repo_id, repo_files(repo_id))
    model, variables, spec = models.from_pretrained(repo_id, cache_dir=tmp_path)
    assert spec == expected
    assert_close(logits_of(model, variables), reference_logits(fixture), repo_id)


def test_load_reports_where_the_weights_came_from(tmp_path, offline):
    repo_id = "timm/resnet18.tv_in1k"
    root = put_in_cache(tmp_path, repo_id, repo_files(repo_id))
    loaded = hub.load(repo_id, cache_dir=tmp_path)
    assert (loaded.name, loaded.source, loaded.architecture, loaded.repo_id) == (
        "resnet18", "torchvision", "resnet18", repo_id)
    assert loaded.revision == COMMIT
    assert os.path.samefile(loaded.weights, root / "snapshots" / COMMIT / "model.safetensors")
    assert loaded.preprocessing == preprocessing.TORCHVISION  # the tv tag: bilinear, crop 0.875
    # the same weights as the a1 tag; only the preprocessing differs
    a1 = "timm/resnet18.a1_in1k"
    put_in_cache(tmp_path, a1, repo_files(a1))
    _, variables, spec = models.from_pretrained(a1, cache_dir=tmp_path)
    assert spec.interpolation == "bicubic" and spec.resize_size == 235
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, variables, loaded.variables))


def test_a_revision_is_its_own_snapshot(tmp_path, offline):
    repo_id = "timm/resnet18.a1_in1k"
    other = "f" * 40
    put_in_cache(tmp_path, repo_id, repo_files(repo_id))
    arrays = timm_state_dict("torchvision_resnet18")
    arrays["fc.bias"] = arrays["fc.bias"] + 1.0
    put_in_cache(tmp_path, repo_id, repo_files(repo_id, arrays), commit=other, ref="v2")
    assert hub.load(repo_id, cache_dir=tmp_path).revision == COMMIT
    for revision in ("v2", other):
        loaded = hub.load(repo_id, revision=revision, cache_dir=tmp_path)
        assert loaded.revision == other
        np.testing.assert_array_equal(loaded.variables["params"]["head"]["bias"], arrays["fc.bias"])


# ----------------------------------------------------------------------------- errors (one line, the repository named)
def one_line(kind, *args, **kwargs):
    with pytest.raises(kind) as error:
        models.from_pretrained(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_offline_with_an_empty_cache(tmp_path, offline):
    message = one_line(models.HubError, "timm/resnet18.a1_in1k", cache_dir=tmp_path)
    assert message.startswith("timm/resnet18.a1_in1k: ") and "not in the Hugging Face cache" in message
    assert "HF_HUB_OFFLINE" in message and "run once with network access" in message


def test_unsupported_architecture_is_refused_before_any_download(tmp_path, offline):
    message = one_line(models.HubError, "timm/resnet50.a1_in1k", cache_dir=tmp_path)
    assert message.startswith("timm/resnet50.a1_in1k: architecture 'resnet50' has no zoo model; supported: ")
    assert "timm/convnext_small.<tag>" in message and "timm/vit_base_patch16_224.<tag>" in message
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("repo_id", ["resnet18", "timm/resnet18/a1", "", "/x"])
def test_malformed_repository_id(repo_id, tmp_path):
    assert "is not a Hub repository id" in one_line(models.HubError, repo_id, cache_dir=tmp_path)


def test_weights_of_another_model_name_the_key(tmp_path, offline):
    repo_id = "timm/resnet18.a1_in1k"
    arrays = timm_state_dict("torchvision_resnet18")
    del arrays["layer3.1.bn2.running_var"]
    put_in_cache(tmp_path, repo_id, repo_files(repo_id, arrays))
    message = one_line(models.CheckpointMismatch, repo_id, cache_dir=tmp_path)
    assert message == ("timm/resnet18.a1_in1k/model.safetensors: resnet18 (torchvision layout): "
                       "missing key 'layer3.1.bn2.running_var'")


def test_a_damaged_download_names_the_folder_to_delete(tmp_path, offline):
    repo_id = "timm/resnet18.a1_in1k"
    files = repo_files(repo_id)
    files["model.safetensors"] = files["model.safetensors"][:1000]
    root = put_in_cache(tmp_path, repo_id, files)
    message = one_line(models.HubError, repo_id, cache_dir=tmp_path)
    assert message.startswith(f"{repo_id}: a damaged download (") and "unreadable .safetensors" in message
    assert message.endswith(f"delete {root.resolve()} and load again")


def test_a_config_with_model_args_is_refused(tmp_path, offline):
    repo_id = "timm/resnet18.a1_in1k"
    files = repo_files(repo_id)
    config = json.loads(files["config.json"])
    files["config.json"] = json.dumps(dict(config, model_args=dict(stem_type="deep"))).encode()
    put_in_cache(tmp_path, repo_id, files)
    assert "model_args" in one_line(models.HubError, repo_id, cache_dir=tmp_path)


def test_without_huggingface_hub(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub -> ImportError
    message = one_line(models.HubError, "timm/resnet18.a1_in1k", cache_dir=tmp_path)
    assert "needs huggingface_hub" in message and "pip install 'signgd-jax[hub]'" in message


# ----------------------------------------------------------------------------- timm's layouts and configs
def test_vgg_head_convs_are_the_linear_layers():
    """timm's ``pre_logits.fc1`` (a 7x7 conv on the 7x7 map) is torchvision's ``classifier.0`` on
    the (C, H, W)-flattened map; files in torchvision's names pass unchanged."""
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(6, 4, 7, 7)).astype(np.float32)  # (out, C, kh, kw)
    fmap = rng.normal(size=(4, 7, 7)).astype(np.float32)  # (C, H, W)
    renamed = hub._vgg_timm({"pre_logits.fc1.weight": conv, "pre_logits.fc2.weight": np.ones((3, 6, 1, 1)),
                             "head.fc.bias": np.zeros(2), "features.0.weight": np.ones(1)})
    assert sorted(renamed) == ["classifier.0.weight", "classifier.3.weight", "classifier.6.bias", "features.0.weight"]
    np.testing.assert_allclose(renamed["classifier.0.weight"] @ fmap.reshape(-1),
                               np.einsum("ochw,chw->o", conv, fmap), rtol=1e-5)
    assert renamed["classifier.3.weight"].shape == (3, 6)
    torchvision = {"classifier.0.weight": conv.reshape(6, -1), "classifier.6.bias": np.zeros(2)}
    assert hub._vgg_timm(torchvision).keys() == torchvision.keys()


def test_vit_keys_are_timms():
    """Every timm ViT-B/16 key maps onto torchvision's, one to one, with the same shape."""
    torchvision = {name: tuple(shape) for name, shape, _ in fixture_keys("torchvision_vit_b_16")}
    timm = {_vit_key(name): shape for name, shape in torchvision.items()}
    assert len(timm) == len(torchvision) == 4 + 12 * 12 + 4
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.11.attn.qkv.weight", "blocks.0.mlp.fc2.bias",
            "norm.weight", "head.bias"} <= set(timm)
    renamed = hub._vit_timm({name: np.zeros(0) for name in timm})
    assert set(renamed) == set(torchvision)
    assert "reg_token" in hub._vit_timm({"reg_token": np.zeros(0)})  # not ours: kept, then refused as extra


@pytest.mark.parametrize("cfg,expected", [
    (dict(input_size=[3, 224, 224], crop_pct=0.95, interpolation="bicubic", **IMAGENET),
     preprocessing.Preprocessing(224, 235, "bicubic")),
    (dict(input_size=[3, 224, 224], crop_pct=0.9, crop_mode="center", interpolation="bicubic", **HALF),
     preprocessing.Preprocessing(224, 248, "bicubic", (0.5,) * 3, (0.5,) * 3)),
    (dict(input_size=[3, 288, 288], crop_pct=1.0, interpolation="bilinear", **IMAGENET),
     preprocessing.Preprocessing(288, 288, "bilinear")),
    (dict(input_size=[3, 224, 224], crop_pct=1.0, crop_mode="squash", interpolation="bilinear", **HALF),
     preprocessing.Preprocessing(224, None, "bilinear", (0.5,) * 3, (0.5,) * 3)),
    (dict(interpolation="bilinear", mean=[0, 0, 0], std=[1, 1, 1]),  # no crop_pct: timm's default 0.875
     preprocessing.Preprocessing(224, 256, "bilinear", (0.0,) * 3, (1.0,) * 3)),
])
def test_preprocessing_from_timm_config(cfg, expected):
    assert hub.preprocessing_from_config(cfg) == expected


@pytest.mark.parametrize("cfg,expected", [
    (dict(input_size=[3, 224, 256]), "only square RGB inputs"),
    (dict(crop_pct=0.9, crop_mode="border"), "crop_mode 'border'"),
    (dict(interpolation="random"), "interpolation must be one of"),
    (dict(mean=[0.5]), "mean and std need 3 values"),
])
def test_unsupported_timm_config(cfg, expected):
    with pytest.raises(models.HubError, match=re.escape(expected)):
        hub.preprocessing_from_config(cfg, "timm/x.y/config.json")


# ----------------------------------------------------------------------------- over HTTP (HF_ENDPOINT)
class _Hub(http.server.BaseHTTPRequestHandler):
    """``/{org}/{name}/resolve/{revision}/{file}`` as huggingface.co answers it: the commit and
    an ETag with each file; 404/401 with ``X-Error-Code`` for a missing revision, file or repository."""

    files: dict = {}  # (repo_id, file name) -> bytes
    requests: list = []

    def _answer(self, body: bool):
        self.requests.append(f"{self.command} {self.path}")
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
        repo, revision, name = match.groups() if match else (None, None, None)
        if not any(r == repo for r, _ in self.files):
            return self._error(401, "RepoNotFound")
        if revision not in ("main", COMMIT):
            return self._error(404, "RevisionNotFound")
        data = self.files.get((repo, name))
        if data is None:
            return self._error(404, "EntryNotFound")
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status, code):
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        self._answer(False)

    def do_GET(self):
        self._answer(True)

    def log_message(self, *args):
        pass


_CLIENT = """
import json, sys, time, warnings
if sys.argv[3] == "no-backoff":  # huggingface_hub waits 1+2+4+8+8 s between its tries for an unreachable Hub
    time.sleep = lambda seconds: None
from signgd_jax import models
from signgd_jax.models import hub
out = {}
for repo_id, revision in json.loads(sys.argv[2]):
    key = repo_id if revision is None else f"{repo_id}@{revision}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loaded = hub.load(repo_id, revision=revision, cache_dir=sys.argv[1])
            out[key] = dict(ok=True, revision=loaded.revision, preprocessing=list(loaded.preprocessing.__dict__.values()),
                                head_bias=float(loaded.variables["params"]["head"]["bias"][0]))
        except models.CheckpointError as e:
            out[key] = dict(ok=False, kind=type(e).__name__, message=str(e))
    out[key]["warnings"] = [str(w.message) for w in caught]
print("RESULT " + json.dumps(out))
"""


def _client(cache: Path, env: dict, repos, backoff: bool = True) -> dict:
    """``hub.load`` of each ``(repo_id, revision)`` in a fresh interpreter whose environment
    (``HF_ENDPOINT``, ``HF_HUB_OFFLINE``) huggingface_hub reads at import, as a user's would;
    results keyed ``repo_id`` or ``repo_id@revision``."""
    proc = subprocess.run([sys.executable, "-c", _CLIENT, str(cache), json.dumps(repos),
                           "backoff" if backoff else "no-backoff"],
                          env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", HF_HUB_DISABLE_TELEMETRY="1",
                                   HF_HUB_DISABLE_PROGRESS_BARS="1", **env),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def over_http(tmp_path_factory):
    """One client against a local Hub (downloads and errors), then one offline client on the
    cache the first filled. The first files are served, the rest refused as huggingface.co would."""
    resnet = repo_files("timm/resnet18.a1_in1k")
    _Hub.files = {("timm/resnet18.a1_in1k", name): data for name, data in resnet.items()}
    _Hub.files[("timm/resnet18.no_weights", "config.json")] = resnet["config.json"]
    _Hub.files[("timm/resnet18.no_config", "model.safetensors")] = resnet["model.safetensors"]
    _Hub.files[("someone/finetuned", "config.json")] = json.dumps(dict(architecture="resnet50")).encode()
    _Hub.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cache = tmp_path_factory.mktemp("hub_cache")
    try:
        online = _client(cache, dict(HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}"), [
            ["timm/resnet18.a1_in1k", None], ["timm/resnet18.no_weights", None], ["timm/resnet18.no_config", None],
            ["timm/resnet18.no_such_tag", None], ["someone/finetuned", None], ["timm/resnet18.a1_in1k@bad", None],
            ["timm/resnet18.a1_in1k", "v9"]])
        requests = list(_Hub.requests)
    finally:
        server.shutdown()
        server.server_close()
    port = server.server_address[1]  # closed now: a Hub that cannot be reached
    unreachable = _client(tmp_path_factory.mktemp("empty_cache"), dict(HF_ENDPOINT=f"http://127.0.0.1:{port}"),
                          [["timm/resnet18.a1_in1k", None]], backoff=False)
    offline = _client(cache, dict(HF_HUB_OFFLINE="1"), [["timm/resnet18.a1_in1k", None], ["timm/resnet34.a1_in1k", None]])
    return dict(online=online, requests=requests, unreachable=unreachable,
                offline=offline, cache=cache)


def test_download_then_offline_from_the_same_cache(over_http):
    expected = dict(ok=True, revision=COMMIT, preprocessing=[224, 235, "bicubic", list(preprocessing.IMAGENET_MEAN),
                                                             list(preprocessing.IMAGENET_STD)],
                    head_bias=float(stand_in("fc.bias", (1000,))[0]), warnings=[])
    assert over_http["online"]["timm/resnet18.a1_in1k"] == expected
    assert over_http["offline"]["timm/resnet18.a1_in1k"] == expected
    assert "GET /timm/resnet18.a1_in1k/resolve/main/model.safetensors" in over_http["requests"]
    assert (over_http["cache"] / "models--timm--resnet18.a1_in1k" / "refs" / "main").read_text() == COMMIT
    # unsupported timm architectures never reach the server
    assert not [r for r in over_http["requests"] if "resnet50" in r]


def _failure(result, kind="HubError"):
    assert not result["ok"] and result["kind"] == kind, result
    assert "\n" not in result["message"]
    return result["message"]


def test_unknown_repository(over_http):
    message = _failure(over_http["online"]["timm/resnet18.no_such_tag"])
    assert message.startswith("timm/resnet18.no_such_tag: no such repository on the Hugging Face Hub")
    assert "hf auth login" in message and "check the name" in message


def test_repository_without_the_weights_file(over_http):
    message = _failure(over_http["online"]["timm/resnet18.no_weights"])
    assert message.startswith("timm/resnet18.no_weights: the repository has no model.safetensors")
    assert "models.from_checkpoint(FILE, MODEL)" in message


def test_repository_without_config_uses_its_name_and_warns(over_http):
    result = over_http["online"]["timm/resnet18.no_config"]
    assert result["ok"] and result["preprocessing"][:3] == [224, 256, "bilinear"]  # timm's ResNet default
    (warning,) = result["warnings"]
    assert "no config.json" in warning and "resnet18" in warning


def test_unsupported_architecture_from_config(over_http):
    message = _failure(over_http["online"]["someone/finetuned"])
    assert message.startswith("someone/finetuned: architecture 'resnet50' has no zoo model")


def test_bad_revision_and_bad_name(over_http):
    message = _failure(over_http["online"]["timm/resnet18.a1_in1k@v9"])
    assert message.startswith("timm/resnet18.a1_in1k: no revision 'v9' on the Hub")
    assert "is not a Hub repository id" in _failure(over_http["online"]["timm/resnet18.a1_in1k@bad"])


def test_hub_unreachable_or_offline_without_the_files(over_http):
    for result in (over_http["unreachable"]["timm/resnet18.a1_in1k"], over_http["offline"]["timm/resnet34.a1_in1k"]):
        message = _failure(result)
        assert "is not in the Hugging Face cache" in message and "run once with network access" in message


# ----------------------------------------------------------------------------- the command line
def _main(argv):
    from signgd_jax.commands.evaluate.cli import main

    return main(argv)


@pytest.mark.parametrize("argv,expected", [
    (["--pretrained", "timm/resnet18.a1_in1k", "--weights", "w.safetensors"], "goes without --weights"),
    (["--pretrained", "timm/resnet18.a1_in1k", "--model", "resnet18"], "goes without --weights, --model"),
    (["--pretrained", "timm/resnet18.a1_in1k", "--source", "timm"], "and --source"),
])
def test_pretrained_argument_errors(argv, expected, capsys):
    with pytest.raises(SystemExit) as e:
        _main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err


def test_pretrained_reaches_the_evaluation(tmp_path, monkeypatch):
    """--pretrained REPO_ID: no --model, the workdir defaults to ./convert_<repository name>."""
    from signgd_jax.commands.evaluate import cli, core

    seen = {}

    def fake(settings, **kw):
        seen.update(settings=settings, existed=os.path.isdir(settings.workdir))
        raise core.ConvertError("stop here")

    monkeypatch.setattr(core, "evaluate", fake)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--pretrained", "timm/resnet18.a1_in1k"]) == 2
    settings = seen["settings"]
    assert settings.repo_id == "timm/resnet18.a1_in1k" and settings.model is None and settings.weights is None
    assert settings.pretrained and settings.workdir == "convert_resnet18.a1_in1k" and seen["existed"]
    assert not (tmp_path / "convert_resnet18.a1_in1k").exists()


def test_pretrained_errors_are_one_line_and_write_nothing(tmp_path, offline, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    for repo_id, expected in [("timm/resnet18.a1_in1k", "not in the Hugging Face cache"),
                              ("timm/resnet50.a1_in1k", "has no zoo model")]:
        workdir = tmp_path / "out"
        assert _main(["--pretrained", repo_id, "--workdir", str(workdir), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {repo_id}: ") and err.count("\n") == 1 and expected in err, err
        assert not workdir.exists()


def test_evaluate_pretrained_loads_the_repository_and_records_it(tmp_path, offline, monkeypatch):
    """What the command evaluates for --pretrained (the evaluation itself faked; the whole run is
    ``test_pretrained_command_end_to_end``, a slow check)."""
    import huggingface_hub.constants
    import tensorflow_datasets as tfds

    from signgd_jax.commands.evaluate import core

    repo_id = "timm/resnet18.a1_in1k"
    put_in_cache(tmp_path / "hub", repo_id, repo_files(repo_id))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    seen = {}

    def evaluate_model(loaded, settings, **kw):
        seen.update(model=loaded.model, identity=loaded.identity, extra=loaded.extra, variables=loaded.variables,
                    test_ds=loaded.test_ds, settings=settings)
        return {}

    monkeypatch.setattr(core, "evaluate_model", evaluate_model)
    settings = core.ConvertSettings.create(str(tmp_path / "work"), repo_id=repo_id, data_dir=str(tmp_path / "tfds"))
    with tfds.testing.mock_data(as_data_source_fn=_ImageNet()):
        core.evaluate(settings)
    snapshot = tmp_path / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / COMMIT
    expected = models.from_pretrained(repo_id)
    assert seen["identity"]["model"] == "resnet18" and seen["identity"]["source"] == "torchvision"
    assert seen["settings"].dataset == "imagenet2012" and seen["settings"].calibration_batch_count == 100
    assert seen["identity"]["preprocessing"]["resize_size"] == 235
    pretrained = seen["extra"]["pretrained"]
    assert pretrained["hub"] == dict(repo_id=repo_id, revision=COMMIT, architecture="resnet18")
    assert os.path.samefile(pretrained["weights"], snapshot / "model.safetensors")
    assert seen["test_ds"].get(np.arange(1))[0].shape == (1, 224, 224, 3)  # the tag's crop
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, seen["variables"], expected[1]))


class _ImageNet:
    """imagenet2012 replaced by four small random RGB images (both splits), labels settable."""

    def __init__(self):
        rng = np.random.default_rng(1)
        self.images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 52), (33, 33), (64, 48),
                                                                                     (20, 71)]]
        self.labels = [0, 0, 0, 0]

    def __call__(self, *args, **kwargs):  # patched over DatasetBuilder.as_data_source
        return [dict(image=im, label=int(lab)) for im, lab in zip(self.images, self.labels)]


def test_pretrained_command_end_to_end(tmp_path, offline, capsys, monkeypatch):
    """``signgd-convert --pretrained timm/resnet18.a1_in1k`` from the cache: the ANN's accuracy
    is the one the loaded weights give with the a1 tag's preprocessing, and results.json names
    the repository, its commit and that preprocessing."""
    import dataclasses

    import huggingface_hub.constants
    import jax.numpy as jnp
    import tensorflow_datasets as tfds

    from signgd_jax import data

    repo_id = "timm/resnet18.a1_in1k"
    cache = tmp_path / "hub"
    put_in_cache(cache, repo_id, repo_files(repo_id))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    stand_in_data = _ImageNet()
    with tfds.testing.mock_data(as_data_source_fn=stand_in_data):
        model, variables, spec = models.from_pretrained(repo_id)
        test = data.load("imagenet2012", "test", str(tmp_path / "tfds"), preprocessing=spec)
        x, _ = test.get(np.arange(4))
        predicted = np.asarray(jnp.argmax(model.apply(variables, jnp.asarray(x), train=False), -1))
        stand_in_data.labels = [predicted[0], (predicted[1] + 1) % 1000, predicted[2], predicted[3]]
        assert _main(["--pretrained", repo_id, "--data-dir", str(tmp_path / "tfds"), "--limit", "4",
                      "--batch-size", "2", "--calibration-batches", "2", "--calibration-batch-size", "2",
                      "--timesteps", "1,2", "--dynamics", "improved", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ANN       75.00" in out
    results = json.loads((tmp_path / "convert_resnet18.a1_in1k" / "results.json").read_text())
    assert results["model"] == "resnet18" and results["ann"] == dict(accuracy=0.75, correct=3)
    pretrained = results["pretrained"]
    assert pretrained["hub"] == dict(repo_id=repo_id, revision=COMMIT, architecture="resnet18")
    assert pretrained["source"] == "torchvision"
    assert pretrained["preprocessing"] == json.loads(json.dumps(dataclasses.asdict(spec)))
    assert spec.interpolation == "bicubic" and spec.resize_size == 235
    assert os.path.samefile(pretrained["weights"], cache / "models--timm--resnet18.a1_in1k" / "snapshots" / COMMIT
                            / "model.safetensors")
