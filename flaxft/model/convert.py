"""Hugging Face BERT checkpoints <-> flaxft Flax params. Needs no torch at run time.

Names map mechanically: the Flax path ``bert/encoder/layer_0/attention/self/query/kernel`` is
the HF key ``bert.encoder.layer.0.attention.self.query.weight`` (transposed: Flax Dense kernels
are [in, out], torch Linear weights [out, in]); ``embedding`` and LayerNorm ``scale`` are
HF ``weight``.
"""

from __future__ import annotations

import collections
import json
import logging
import pathlib
import pickle
import re
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors.numpy
from flax import traverse_util

from flaxft.errors import FlaxftError
from flaxft.model.bert import BertConfig, BertForSequenceClassification

log = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
# Parameters a plain encoder checkpoint may lack; HF initializes them fresh, and so do we.
HEAD_PREFIXES = ("bert/pooler/", "classifier/")


# --------------------------------------------------------------------------- reading weights


class _StorageType:
    """Stands in for ``torch.FloatStorage`` etc. inside the pickle: just carries the dtype."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    size, stride = tuple(size), tuple(stride)
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:],
        shape=size,
        strides=tuple(s * storage.itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)  # copy: own the memory, C-contiguous


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _TorchZipUnpickler(pickle.Unpickler):
    """Restricted unpickler for torch's zip checkpoints: rebuilds tensors as numpy arrays.

    Only the handful of globals a plain ``state_dict`` needs are allowed, so arbitrary code in
    a malicious pickle cannot run.
    """

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(file)
        self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return np.dtype(_TORCH_DTYPES[name])
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a torch checkpoint")

    def persistent_load(self, pid):
        # pid = ('storage', storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else np.dtype(np.uint8)
        if self._byteorder == "big":
            dtype = dtype.newbyteorder(">")
        if key not in self._storages:  # storages can be shared (tied weights, views)
            raw = self._archive.read(f"{self._prefix}data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=dtype)
        return self._storages[key]


def _read_torch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Read a ``torch.save`` zip checkpoint (``pytorch_model.bin``) without importing torch."""
    if not zipfile.is_zipfile(path):
        raise FlaxftError(
            f"{path}: not a zip-format torch checkpoint (legacy torch<1.6 format?); "
            "re-save it with a recent torch or convert it to model.safetensors"
        )
    with zipfile.ZipFile(path) as archive:
        pkls = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if not pkls:
            raise FlaxftError(f"{path}: no data.pkl inside; is this a torch checkpoint? convert it to model.safetensors")
        prefix = pkls[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}byteorder").decode().strip()
        with archive.open(pkls[0]) as f:
            try:
                obj = _TorchZipUnpickler(f, archive, prefix, byteorder).load()
            except (pickle.UnpicklingError, KeyError, ValueError, TypeError) as e:
                raise FlaxftError(f"{path}: cannot read torch checkpoint ({e}); convert it to model.safetensors") from e
    if not isinstance(obj, dict):
        raise FlaxftError(f"{path}: expected a state_dict (dict of tensors), got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}


def _read_index(index: pathlib.Path, reader) -> dict[str, np.ndarray]:
    try:
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError) as e:
        raise FlaxftError(f"{index}: unreadable shard index ({e}); re-download the checkpoint") from e
    out = {}
    for name in files:
        shard = index.parent / name
        if not shard.is_file():
            raise FlaxftError(f"{index} lists shard '{name}' which is missing; re-download the checkpoint")
        out.update(reader(shard))
    return out


def read_hf_state_dict(folder) -> dict[str, np.ndarray]:
    """Read HF weights from `folder`: model.safetensors, its sharded index, or pytorch_model.bin
    (read without torch). Returns {HF key: numpy array} in the stored dtype."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FlaxftError(f"model folder '{folder}' does not exist; point the model path at a Hugging Face checkpoint folder")
    if (folder / SAFE_WEIGHTS).is_file():
        return dict(safetensors.numpy.load_file(folder / SAFE_WEIGHTS))
    if (folder / SAFE_INDEX).is_file():
        return _read_index(folder / SAFE_INDEX, lambda p: dict(safetensors.numpy.load_file(p)))
    if (folder / TORCH_WEIGHTS).is_file():
        return _read_torch_bin(folder / TORCH_WEIGHTS)
    if (folder / TORCH_INDEX).is_file():
        return _read_index(folder / TORCH_INDEX, _read_torch_bin)
    raise FlaxftError(
        f"model folder '{folder}' has no weights (looked for {SAFE_WEIGHTS}, {SAFE_INDEX}, "
        f"{TORCH_WEIGHTS}, {TORCH_INDEX}); add the weights or use random initialization"
    )


# --------------------------------------------------------------------------- name mapping


def flax_path_to_hf_key(path: tuple[str, ...]) -> tuple[str, bool]:
    """('bert', 'encoder', 'layer_0', ..., 'kernel') -> ('bert.encoder.layer.0....weight', transpose?)."""
    *mods, leaf = path
    name = ".".join(re.sub(r"^layer_(\d+)$", r"layer.\1", m) for m in mods)
    hf_leaf = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}[leaf]
    return f"{name}.{hf_leaf}", leaf == "kernel"


def _normalize_hf_key(key: str) -> str | None:
    """Canonical BertForSequenceClassification key, or None for keys we deliberately ignore."""
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    if key.startswith("cls.") or key.endswith(".position_ids") or key.endswith("embeddings.token_type_ids"):
        return None  # pretraining heads and non-parameter buffers
    if not key.startswith(("bert.", "classifier.")):
        key = "bert." + key  # BertModel checkpoints have no "bert." prefix
    return key


def param_shapes(config: BertConfig, num_labels: int) -> dict:
    """Flat {path tuple: ShapeDtypeStruct} of the model's params, without computing anything."""
    model = BertForSequenceClassification(config, num_labels)
    ids = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, jnp.ones_like(ids), ids))
    return traverse_util.flatten_dict(shapes["params"])


def _fresh(path: tuple[str, ...], shape, std: float, rng) -> jax.Array:
    """HF-style initialization: normal(initializer_range) weights, zero bias, unit LayerNorm scale."""
    if path[-1] in ("kernel", "embedding"):
        return std * jax.random.normal(rng, shape, jnp.float32)
    if path[-1] == "scale":
        return jnp.ones(shape, jnp.float32)
    return jnp.zeros(shape, jnp.float32)


# --------------------------------------------------------------------------- conversion


def state_dict_to_params(state_dict: dict, config: BertConfig, num_labels: int, rng) -> dict:
    """HF state dict (with or without "bert." prefix) -> float32 params of BertForSequenceClassification.

    Pooler/classifier weights that are missing, or a classifier whose shape does not fit
    `num_labels`, are freshly initialized from `rng` (logged). Missing encoder weights raise
    FlaxftError.
    """
    sd = {}
    for key, value in state_dict.items():
        norm = _normalize_hf_key(key)
        if norm is not None:
            sd[norm] = value
    flat, missing, fresh, used = {}, [], [], set()
    for i, (path, spec) in enumerate(sorted(param_shapes(config, num_labels).items())):
        key, transpose = flax_path_to_hf_key(path)
        name = "/".join(path)
        if key in sd:
            used.add(key)
            arr = np.asarray(sd[key]).astype(np.float32)
            arr = arr.T if transpose else arr
            if arr.shape == spec.shape:
                flat[path] = jnp.asarray(arr)
                continue
            if not name.startswith("classifier/"):
                raise FlaxftError(
                    f"checkpoint weight '{key}' has shape {arr.shape[::-1] if transpose else arr.shape} "
                    f"but config.json implies {spec.shape[::-1] if transpose else spec.shape}; "
                    "the weights do not match config.json"
                )
            log.warning(
                "checkpoint classifier '%s' has shape %s, not %s for num_labels=%d; re-initializing the classifier",
                key, arr.shape, spec.shape, num_labels,
            )
        elif not name.startswith(HEAD_PREFIXES):
            missing.append(key)
            continue
        flat[path] = _fresh(path, spec.shape, config.initializer_range, jax.random.fold_in(rng, i))
        fresh.append(name)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FlaxftError(f"checkpoint is missing {len(missing)} encoder weights ({shown}); is this a BERT checkpoint?")
    if fresh:
        log.warning("newly initialized (not in the checkpoint): %s", ", ".join(fresh))
    unused = sorted(set(sd) - used)
    if unused:
        log.info("ignored checkpoint weights: %s", ", ".join(unused))
    return traverse_util.unflatten_dict(flat)


def params_to_state_dict(params: dict) -> dict[str, np.ndarray]:
    """Flax params -> HF BertForSequenceClassification state dict (float32 numpy, "bert." prefix),
    ready for ``safetensors.numpy.save_file``."""
    params = params.get("params", params)
    out = {}
    for path, value in traverse_util.flatten_dict(params).items():
        key, transpose = flax_path_to_hf_key(path)
        arr = np.asarray(jax.device_get(value), dtype=np.float32)
        out[key] = np.array(arr.T if transpose else arr, order="C")  # writable, contiguous copy
    return out


# --------------------------------------------------------------------------- entry points


def init_params(config: BertConfig, num_labels: int, rng) -> dict:
    """Randomly initialized float32 params (HF-style initializers) for BertForSequenceClassification."""
    model = BertForSequenceClassification(config, num_labels)
    ids = jnp.zeros((1, 8), jnp.int32)
    variables = jax.jit(model.init)(rng, ids, jnp.ones_like(ids), ids)
    return dict(variables["params"])


def read_config(folder) -> BertConfig:
    """BertConfig from `folder`/config.json."""
    if not pathlib.Path(folder).is_dir():
        raise FlaxftError(f"model folder '{folder}' does not exist; point the model path at a Hugging Face checkpoint folder")
    path = pathlib.Path(folder) / "config.json"
    if not path.is_file():
        raise FlaxftError(f"'{path}' not found; point the model path at a Hugging Face checkpoint folder with a config.json")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FlaxftError(f"'{path}' is not readable JSON ({e}); fix or re-download config.json") from e
    if not isinstance(d, dict):
        raise FlaxftError(f"'{path}' is not a JSON object; fix or re-download config.json")
    return BertConfig.from_hf_dict(d)


def load_pretrained(folder, num_labels: int, *, rng, random_init: bool = False) -> tuple[BertConfig, dict]:
    """Config and params from a local HF checkpoint folder; `random_init` skips the weights."""
    config = read_config(folder)
    if random_init:
        return config, init_params(config, num_labels, rng)
    return config, state_dict_to_params(read_hf_state_dict(folder), config, num_labels, rng)
