"""MPNet: a BERT-shaped encoder without token types, with positions counted past padding id 1 and one
bucketed relative-position bias shared by every layer.

transformers hard-codes two things whatever config.json says: the position padding id 1 (MPNetEmbeddings)
and the bucketing, 32 buckets up to distance 128 (MPNetEncoder.compute_position_bias passes no
num_buckets). A table of `relative_attention_num_buckets` rows is indexed with those 32 buckets.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from flaxft.model.bert import BERT_LAYER_PARTS, bert_style_config, bert_style_keys
from flaxft.model.encoder_config import EncoderConfig, hf_config_object, refuse
from flaxft.model.layers import EncoderClassifier
from flaxft.model.registry import Family

POSITION_PADDING_ID = 1
BUCKETS, MAX_DISTANCE = 32, 128


def read_config(d: dict) -> EncoderConfig:
    hf = hf_config_object(d)
    refuse(hf.relative_attention_num_buckets < BUCKETS,
           f"relative_attention_num_buckets {hf.relative_attention_num_buckets}",
           f"transformers indexes {BUCKETS} buckets whatever the config says; use at least {BUCKETS}")
    return bert_style_config(hf, position_offset=POSITION_PADDING_ID, type_vocab_size=0, head_dropout_first=True,
                             relative_attention_buckets=hf.relative_attention_num_buckets,
                             relative_attention_max_distance=MAX_DISTANCE)


def relative_buckets(length: int, max_distance: int) -> np.ndarray:
    """[L, L] bucket of each (query, key) pair, as MPNetEncoder.relative_position_bucket computes it (float32
    logs, truncated): exact up to distance 7 on each side, then logarithmic, clamped at the last bucket."""
    positions = np.arange(length)
    n = positions[:, None] - positions[None, :]           # query - key
    half = BUCKETS // 2
    exact = half // 2
    side = np.where(n < 0, half, 0)
    n = np.abs(n)
    scaled = np.log(np.maximum(n, exact).astype(np.float32) / np.float32(exact)) / np.float32(
        np.log(max_distance / exact)) * np.float32(half - exact)
    large = np.minimum(exact + scaled.astype(np.int64), half - 1)
    return (side + np.where(n < exact, n, large)).astype(np.int32)


class RelativePositionBias(nn.Module):
    """The bias [1, heads, L, L] added to every layer's attention scores. It depends on the row length only:
    in packed rows pairs across examples are masked, and within an example row distance is position distance."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, length: int):
        cfg = self.config
        table = self.param("embedding", nn.initializers.normal(cfg.initializer_range),
                           (cfg.relative_attention_buckets, cfg.num_heads), jnp.float32)
        return jnp.transpose(table[relative_buckets(length, cfg.relative_attention_max_distance)], (2, 0, 1))[None]


class MPNetClassifier(EncoderClassifier):
    attention_bias: type = RelativePositionBias


# BERT's layout, but for the attention's names and the shared bias table (an nn.Embedding in transformers)
KEYS = bert_style_keys(
    "mpnet", head={"head/dense": "classifier.dense", "head/out": "classifier.out_proj"},
    embeddings=(("attention_bias", "mpnet.encoder.relative_attention_bias"),),
    parts={**BERT_LAYER_PARTS, "attention_norm": "attention.LayerNorm",
           **{f"attention/{p}": f"attention.attn.{p[0]}" for p in ("query", "key", "value", "output")}})

FAMILY = Family(
    name="mpnet",
    architectures={"mpnet": "MPNetForSequenceClassification"},
    read_config=read_config,
    keys=KEYS,
    module=MPNetClassifier,
    token_type_ids=False,
    partition_rules=((r"attention_bias/.*embedding$", P(None, "tensor")),),
)
