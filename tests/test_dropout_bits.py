"""The hash PRNG behind dropout masks (flaxft.dropout_bits): statistics, determinism, sharding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from flaxft.dropout_bits import dropout_key
from flaxft.errors import FlaxftError


def key(seed=0, kind="hash"):
    return dropout_key(jax.random.key_data(jax.random.key(seed)), kind)


def test_bits_are_balanced_and_uncorrelated():
    bits = np.asarray(jax.random.bits(key(), (256, 1024)))
    ones = np.unpackbits(bits.view(np.uint8)).reshape(256, 1024, 32).mean(axis=(0, 1))
    assert np.all(np.abs(ones - 0.5) < 0.01), ones  # every bit position is fair
    u = bits.astype(np.float64) / 2**32
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    for a, b in ((u[:, 1:], u[:, :-1]), (u[1:], u[:-1])):  # neighbours along either axis
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01


def test_masks_keep_the_rate_and_differ_between_keys():
    k = key()
    m1 = np.asarray(jax.random.bernoulli(k, 0.9, (512, 512)))
    m2 = np.asarray(jax.random.bernoulli(jax.random.fold_in(k, 1), 0.9, (512, 512)))
    assert abs(m1.mean() - 0.9) < 0.003 and abs(m2.mean() - 0.9) < 0.003
    assert abs((m1 == m2).mean() - (0.9**2 + 0.1**2)) < 0.005  # independent masks agree by chance only
    np.testing.assert_array_equal(m1, np.asarray(jax.random.bernoulli(key(), 0.9, (512, 512))))
    assert not np.array_equal(m1, np.asarray(jax.random.bernoulli(key(kind="threefry"), 0.9, (512, 512))))


def test_flax_dropout_mask_is_the_same_sharded_or_not():
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    x = jnp.ones((8 * jax.device_count(), 16, 24))
    drop = jax.jit(lambda x, k: nn.Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": k}))
    whole = drop(x, key())
    sharded = drop(jax.device_put(x, NamedSharding(mesh, P("data"))), key())
    assert len(sharded.sharding.device_set) == jax.device_count()
    np.testing.assert_array_equal(np.asarray(whole), np.asarray(sharded))
    assert abs(float((whole == 0).mean()) - 0.1) < 0.01


def test_unknown_kind_is_an_error():
    with pytest.raises(FlaxftError, match="train.dropout_rng='philox' is not supported"):
        key(kind="philox")
