"""flaxft parameter trees <-> Hugging Face state dicts, for any family.

A family's `KeyMap` turns flaxft's module paths into its Hugging Face module names
(`encoder/layer_0/attention/query` -> `bert.encoder.layer.0.attention.self.query`); leaves map the same
way for every family: Dense `kernel` is the transposed `weight` (Flax kernels are [in, out], torch Linear
weights [out, in]), `embedding` and LayerNorm `scale` are `weight`, `bias` is `bias`. Where a Hugging Face
layer fuses several of flaxft's (ModernBERT's Wqkv), each flaxft layer is one block of its outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flaxft.errors import FlaxftError

log = logging.getLogger("flaxft")

_LEAVES = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}


@dataclasses.dataclass(frozen=True)
class KeyMap:
    """How one family names its weights in Hugging Face checkpoints."""

    prefix: str                          # base model's prefix in *ForSequenceClassification keys ("bert")
    modules: tuple[tuple[str, str], ...]  # (regex on the flaxft module path, HF module name), first match wins
    head: tuple[str, ...] = ("head/",)   # flaxft paths a base checkpoint may lack: initialised fresh
    labels: str = "head/out/"            # the layer sized by num_labels: re-initialised when the checkpoint's differs
    renames: tuple[tuple[str, str], ...] = (("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias"))
    # (regex on the flaxft module path, HF module name, block, blocks): the flaxft layer is output block `block` of
    # `blocks` equal ones of a fused HF layer (ModernBERT's Wqkv holds query, key and value)
    fused: tuple[tuple[str, str, int, int], ...] = ()

    def hf_key(self, path: tuple[str, ...]) -> tuple[str, bool]:
        """(flaxft path) -> (HF key with prefix, whether the array is transposed)."""
        key, transpose, _ = self.hf_location(path)
        return key, transpose

    def hf_location(self, path: tuple[str, ...]) -> tuple[str, bool, tuple[int, int] | None]:
        """(flaxft path) -> (HF key with prefix, whether the array is transposed, (block, blocks) of a fused
        layer's outputs or None)."""
        *modules, leaf = path
        name = "/".join(modules)
        for pattern, replacement, *block in (*self.modules, *self.fused):
            if re.fullmatch(pattern, name):
                return (f"{re.sub(pattern, replacement, name)}.{_LEAVES[leaf]}", leaf == "kernel",
                        tuple(block) if block else None)
        raise FlaxftError(f"internal error: no Hugging Face name for parameter '{'/'.join(path)}' "
                          f"in the {self.prefix} key map")

    def canonical(self, key: str, head_keys: set[str]) -> str:
        """A checkpoint key as the *ForSequenceClassification model names it: legacy names renamed, and the
        base-model prefix added to keys of base checkpoints (BertModel has no "bert.")."""
        for old, new in self.renames:
            key = key.replace(old, new)
        if key.startswith(self.prefix + ".") or key in head_keys:
            return key
        return f"{self.prefix}.{key}"


def _fresh(path: tuple[str, ...], shape, std: float, rng) -> jax.Array:
    """transformers' initialisation: normal(initializer_range) weights, zero bias, unit LayerNorm scale."""
    if path[-1] in ("kernel", "embedding"):
        return std * jax.random.normal(rng, shape, jnp.float32)
    if path[-1] == "scale":
        return jnp.ones(shape, jnp.float32)
    return jnp.zeros(shape, jnp.float32)


def _shown(shape, transpose: bool) -> tuple:
    return tuple(shape)[::-1] if transpose else tuple(shape)


def state_dict_to_params(state_dict: dict, keys: KeyMap, shapes: dict, *, std: float, rng) -> dict:
    """HF state dict -> float32 params with the flat `shapes` ({path: ShapeDtypeStruct}) of the model.

    Head weights that are missing, or an output layer whose shape does not fit num_labels, are
    initialised fresh from `rng` (logged). Missing or mis-shaped encoder weights raise FlaxftError.
    """
    head_keys = {keys.hf_key(path)[0] for path in shapes if "/".join(path).startswith(keys.head)}
    sd = {keys.canonical(k, head_keys): (k, v) for k, v in state_dict.items()}
    flat, missing, fresh, used = {}, [], [], set()
    for i, (path, spec) in enumerate(sorted(shapes.items())):
        key, transpose, block = keys.hf_location(path)
        name = "/".join(path)
        is_head = name.startswith(keys.head)
        if key in sd:
            used.add(key)
            arr = np.asarray(sd[key][1]).astype(np.float32)
            # One block of a fused layer's outputs (the first axis in torch layout); a fused layer that does not
            # split evenly is left whole, for the shape check below to name it.
            if block is not None and len(arr) % block[1] == 0:
                arr = np.split(arr, block[1])[block[0]]
            arr = arr.T if transpose else arr
            if arr.shape == spec.shape:
                flat[path] = jnp.asarray(arr)
                continue
            if not name.startswith(keys.labels):
                raise FlaxftError(
                    f"checkpoint weight '{sd[key][0]}' has shape {_shown(arr.shape, transpose)} but config.json implies "
                    f"{_shown(spec.shape, transpose)} (parameter {name}); the weights do not match config.json")
            log.warning("checkpoint weight '%s' has shape %s, not %s for this number of labels; re-initializing it",
                        sd[key][0], _shown(arr.shape, transpose), _shown(spec.shape, transpose))
        elif not is_head:
            missing.append(key)
            continue
        flat[path] = _fresh(path, spec.shape, std, jax.random.fold_in(rng, i))
        fresh.append(name)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FlaxftError(f"checkpoint is missing {len(missing)} encoder weights ({shown}); is this a "
                          f"{keys.prefix} checkpoint of the size config.json describes?")
    if fresh:
        log.warning("newly initialized (not in the checkpoint): %s", ", ".join(fresh))
    unused = sorted(original for key, (original, _) in sd.items() if key not in used)
    if unused:
        log.info("ignored checkpoint weights: %s", ", ".join(unused))
    return traverse_util.unflatten_dict(flat)


def params_to_state_dict(params: dict, keys: KeyMap) -> dict[str, np.ndarray]:
    """Flax params -> the family's HF *ForSequenceClassification state dict (float32 numpy), ready for
    ``safetensors.numpy.save_file``."""
    params = params.get("params", params)
    out, blocks = {}, {}
    for path, value in traverse_util.flatten_dict(params).items():
        key, transpose, block = keys.hf_location(path)
        arr = np.asarray(jax.device_get(value), dtype=np.float32)
        arr = np.array(arr.T if transpose else arr, order="C")  # writable, contiguous copy
        if block is None:
            out[key] = arr
        else:
            blocks.setdefault(key, {})[block[0]] = arr
    for key, parts in blocks.items():  # a fused layer: its blocks stacked along the outputs, in order
        out[key] = np.concatenate([parts[i] for i in sorted(parts)])
    return out
