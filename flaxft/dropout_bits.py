"""Random bits for dropout masks (train.dropout_rng): a counter-based hash PRNG, registered as a JAX PRNG implementation.

Dropout needs one fresh random word per activation element every step. jax.random's threefry
spends 20 rounds of 32-bit arithmetic per pair of words; on a CPU that was 10% of a MiniLM train
step (bench/step_time.py: 136 ms of 1393; these hash bits: 16 ms). `hash` draws word i of a key (k0, k1) as lowbias32(lowbias32(i ^ k0) + k1):
two rounds of a well-mixed integer hash (Wellons' lowbias32: xor-shift-multiply, a bijection on
32 bits), which XLA fuses into the mask-and-scale. The bits of an element depend only on the key
and the element's index in the full array, so a sharded step draws the same mask as an unsharded
one. Keys are split and folded in with threefry, so key handling keeps its statistical quality;
only the bulk bits are cheaper, as in GPU dropout kernels (counter-based Philox in PyTorch).
Checkpoints store the raw key data (uint32[2]), the same for both kinds. The implementation is registered
with JAX the first time a hash key is made, not at import.
"""

from __future__ import annotations

import functools

import jax
import jax.extend.random
import jax.numpy as jnp
from jax import lax

from flaxft.errors import FlaxftError

KINDS = ("hash", "threefry")


def _lowbias32(x: jax.Array) -> jax.Array:
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """uint32 array of `shape` holding each element's row-major index (an iota XLA can shard)."""
    size = 1
    for d in shape:
        size *= d
    if size >= 2**32:
        raise FlaxftError(f"dropout_rng=hash draws at most 2**32 words per call, not {size}; use train.dropout_rng=threefry")
    index, stride = jnp.zeros(shape, jnp.uint32), 1
    for axis in reversed(range(len(shape))):
        index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    return index


def _hash_words(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return _lowbias32(_lowbias32(_flat_index(shape) ^ key[0]) + key[1])


def _random_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
    if bit_width == 64:  # two independent 32-bit words (the second under a different key word)
        hi = _hash_words(key, shape).astype(jnp.uint64)
        lo = _hash_words(key ^ jnp.uint32(0x9E3779B9), shape).astype(jnp.uint64)
        return (hi << 32) | lo
    return _hash_words(key, shape).astype(jnp.dtype(f"uint{bit_width}"))  # 8/16: the low bits


@functools.cache
def hash_impl():
    """The hash PRNG implementation (key handling is threefry's), registered with JAX once, on first use."""
    threefry = jax.extend.random.threefry_prng_impl
    return jax.extend.random.define_prng_impl(key_shape=(2,), seed=threefry.seed, split=threefry.split,
                                              fold_in=threefry.fold_in, random_bits=_random_bits,
                                              name="flaxft_hash32", tag="fhash")


def dropout_key(key_data: jax.Array, kind: str) -> jax.Array:
    """A typed PRNG key from raw uint32[2] key data, drawing its bits the `kind` way."""
    if kind not in KINDS:
        raise FlaxftError(f"train.dropout_rng='{kind}' is not supported; use one of {list(KINDS)}")
    return jax.random.wrap_key_data(key_data, impl=hash_impl() if kind == "hash" else "threefry2x32")
