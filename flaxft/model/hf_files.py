"""Reading a Hugging Face checkpoint folder: config.json and the weights, without torch.

Weights come from model.safetensors, its sharded index, or pytorch_model.bin (torch's zip pickle,
read by a restricted unpickler that rebuilds numpy arrays and refuses any other global).
"""

from __future__ import annotations

import collections
import json
import pathlib
import pickle
import zipfile

import ml_dtypes
import numpy as np
import safetensors.numpy

from flaxft.errors import FlaxftError

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"


def _need_folder(folder: pathlib.Path) -> None:
    if not folder.is_dir():
        raise FlaxftError(f"model folder '{folder}' does not exist; point the model path at a Hugging Face checkpoint folder")


def read_hf_config(folder) -> dict:
    """`folder`/config.json as a dict."""
    folder = pathlib.Path(folder)
    _need_folder(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise FlaxftError(f"'{path}' not found; point the model path at a Hugging Face checkpoint folder with a config.json")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FlaxftError(f"'{path}' is not readable JSON ({e}); fix or re-download config.json") from e
    if not isinstance(d, dict):
        raise FlaxftError(f"'{path}' is not a JSON object; fix or re-download config.json")
    return d


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
    _need_folder(folder)
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
