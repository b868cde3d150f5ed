"""MPNet beyond the family harness: the relative-position buckets past distance 128, the bias table's
sharding, a refused config, and the real all-mpnet-base-v2 weights on real MRPC pairs."""

import jax
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import PartitionSpec as P
from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

from flaxft.config import MeshConfig
from flaxft.errors import FlaxftError
from flaxft.model import build, config_from_hf, init_params, load_pretrained
from flaxft.model.mpnet import FAMILY, relative_buckets
from flaxft.parallel import make_mesh, tree_shardings

from tests.conftest import mrpc_pairs
from tests.test_families import assert_gradients_match, long_batch, packed_logits, tiny_config, tiny_torch_model

PAD = 1


def test_buckets_match_transformers():
    """Every (query, key) pair up to 600 tokens apart: exact, logarithmic and clamped buckets on both sides."""
    positions = torch.arange(600)
    want = MPNetEncoder.relative_position_bucket(positions[None, :] - positions[:, None]).numpy()
    np.testing.assert_array_equal(relative_buckets(600, 128), want)


@pytest.mark.parametrize("buckets", [32, 40])  # a larger table: transformers still uses its first 32 rows
def test_long_sequences_match_transformers(buckets, tmp_path):
    """Sequences of 150-200 tokens reach the logarithmic buckets and the clamp at distance 128: logits,
    gradients and packed rows (one example starting at token 190 of its row) still match."""
    model = tiny_torch_model("mpnet", max_position_embeddings=256, relative_attention_num_buckets=buckets)
    model.save_pretrained(tmp_path)
    config, params = load_pretrained(tmp_path, 3, rng=jax.random.key(0))
    ids, mask, types = long_batch([200, 170, 150], 200, cls_id=0, pad_id=PAD)
    got = jax.jit(build(config, 3).apply)({"params": params}, ids, mask)
    with torch.no_grad():
        want = model(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask)).logits
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-4, rtol=0)
    assert_gradients_match(model, config, params, ids, mask, types)

    ids, mask, types = long_batch([190, 150, 40, 25], 190, seed=1, cls_id=0, pad_id=PAD)
    alone = np.asarray(build(config, 3).apply({"params": params}, ids, mask))
    packed = np.asarray(packed_logits(config, params, ids, mask, types, np.array([[0, 3], [1, 2]]), 220, PAD))
    np.testing.assert_allclose(packed[[0, 1, 1, 0], [0, 0, 1, 1]], alone, atol=1e-5)


def test_bias_table_heads_split_over_tensor_axis():
    """Like the attention heads, the bias table's head columns are split over the tensor axis."""
    config = config_from_hf(tiny_config("mpnet").to_dict())
    mesh = make_mesh(MeshConfig(data=-1, tensor=2))
    shardings = tree_shardings(mesh, init_params(config, 3, jax.random.key(0)), FAMILY.partition_rules)
    assert shardings["attention_bias"]["embedding"].spec == P(None, "tensor")
    assert shardings["encoder"]["layer_0"]["attention"]["query"]["kernel"].spec == P(None, "tensor")


def test_too_few_buckets_is_refused():
    """transformers indexes 32 buckets whatever the config says: a smaller table would be out of range."""
    with pytest.raises(FlaxftError, match="relative_attention_num_buckets 16") as e:
        config_from_hf({"model_type": "mpnet", "relative_attention_num_buckets": 16})
    assert "\n" not in str(e.value)


def test_real_mpnet_matches_transformers(mpnet_dir, glue_dir, tmp_path):
    """all-mpnet-base-v2 (an MPNetModel checkpoint) with a seeded random head, on real MRPC pairs tokenized
    by its own tokenizer (<s> a </s></s> b </s>): logits match, and packed rows give the same logits."""
    torch.manual_seed(0)
    model = transformers.MPNetForSequenceClassification.from_pretrained(mpnet_dir, num_labels=2).eval()
    with torch.no_grad():  # a larger random output layer makes the comparison more telling
        model.classifier.out_proj.weight.normal_(0.0, 1.0)
        model.classifier.out_proj.bias.normal_(0.0, 1.0)
    model.save_pretrained(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(mpnet_dir)
    first, second = zip(*mrpc_pairs(glue_dir))
    enc = tok(list(first), list(second), padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    assert (ids == PAD).any() and (ids[:, 0] == 0).all()
    config, params = load_pretrained(tmp_path, 2, rng=jax.random.key(0))
    got = np.asarray(jax.jit(build(config, 2).apply)({"params": params}, ids, mask))
    with torch.no_grad():
        want = model(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask)).logits
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
    rows = np.array([[0, 1, 2], [3, 4, -1], [5, 6, 7]])
    packed = np.asarray(packed_logits(config, params, ids, mask, np.zeros_like(ids), rows, 3 * ids.shape[1], PAD))
    np.testing.assert_allclose(packed[rows >= 0], got[rows[rows >= 0]], atol=1e-5)
