"""DeBERTa-v2 and DeBERTa-v3 (`model_type: deberta-v2`): BERT's post-norm layers with disentangled attention.

Each layer's attention scores add, to content-to-content, content-to-position (c2p: the query against the
projected embedding of the relative distance to the key) and position-to-content (p2c: the key against the
projected embedding of the distance to the query). Distances are bucketed logarithmically past
`position_buckets / 2` and clamped to the embedding table; the relative embeddings (one table, optionally
LayerNormed) are shared by every layer, and the table row of each (query, key) pair is a constant of the
row length. In packed rows that is the distance inside each example (pairs across examples are masked).

transformers computes each term as a [B, heads, L, 2 * span] matmul against the projected table, then gathers
each pair's entry (and scatters in the backward pass). Here the table is first laid out by distance (2L - 1 rows,
gathered from the small table once per layer), and the [B, heads, L, 2L - 1] matmul is shifted into pairs by
reshapes (`pair_scores`): no large gather and no scatter. Within the span (GLUE's 128 tokens against
DeBERTa-v3's 256) that is also fewer FLOPs; past it (L=512) the matmul is up to twice transformers' width, and
still faster and smaller than the gather and its scatter (docs/benchmarks.md). Only the last layer's [CLS] rows
use the gather.

As in transformers, scores are divided by sqrt(head_dim * (1 + number of c2p/p2c terms)); other entries of
`pos_att_type` (DeBERTa-v1's "p2p") are ignored there too. The head is DeBERTa's ContextPooler: dropout,
dense, activation, then dropout and the classifier.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from flaxft.model.bert import BERT_LAYER_PARTS, bert_style_config
from flaxft.model.encoder_config import EncoderConfig, hf_config_object, refuse
from flaxft.model.layers import (ClassificationHead, Dtype, PostNormLayer, attention_mask_to_bool, dense,
                                 embedding_positions, layer_norm, query_rows, query_rows_of_scores)
from flaxft.model.registry import Family
from flaxft.model.weights import KeyMap


@dataclasses.dataclass(frozen=True)
class DebertaConfig(EncoderConfig):
    relative_attention: bool = False
    position_buckets: int = 0             # 0: every distance up to max_relative_positions has its own row
    max_relative_positions: int = 512     # distances are clamped (or log-bucketed) within this
    c2p: bool = False                     # content-to-position scores
    p2c: bool = False                     # position-to-content scores
    share_att_key: bool = False           # relative embeddings projected by the layer's own query/key projections
    norm_relative_embeddings: bool = False  # LayerNorm on the relative table (norm_rel_ebd: layer_norm)
    position_biased_input: bool = True    # absolute position embeddings added to the input
    pooler_dropout: float = 0.0           # on the [CLS] vector before the pooler's dense layer

    @property
    def attention_span(self) -> int:
        """Half the rows of the relative embedding table."""
        return self.position_buckets or self.max_relative_positions

    @property
    def head_input_dropout(self) -> float:
        return self.pooler_dropout

    @property
    def score_scale(self) -> float:
        return (self.hidden_size // self.num_heads * (1 + self.c2p + self.p2c)) ** -0.5


def read_config(d: dict) -> DebertaConfig:
    hf = hf_config_object(d)
    refuse(getattr(hf, "conv_kernel_size", 0) > 0, f"conv_kernel_size {getattr(hf, 'conv_kernel_size', 0)} "
           "(DeBERTa-v2-xlarge's convolution after the first layer)", "use a DeBERTa-v2/v3 checkpoint without it")
    head_size = getattr(hf, "attention_head_size", hf.hidden_size // hf.num_attention_heads)
    refuse(head_size * hf.num_attention_heads != hf.hidden_size,
           f"attention_head_size {head_size} with {hf.num_attention_heads} heads of a {hf.hidden_size} hidden size",
           "use a checkpoint whose heads split the hidden size")
    refuse(getattr(hf, "embedding_size", hf.hidden_size) != hf.hidden_size,
           f"embedding_size {getattr(hf, 'embedding_size', None)} other than hidden_size",
           "use a checkpoint with embeddings as wide as the hidden size")
    refuse(hf.pooler_hidden_size != hf.hidden_size, f"pooler_hidden_size {hf.pooler_hidden_size} other than "
           "hidden_size (transformers' classifier cannot run it either)", "remove pooler_hidden_size from config.json")
    pos_att_type = hf.pos_att_type or []
    max_relative = hf.max_relative_positions if hf.max_relative_positions >= 1 else hf.max_position_embeddings
    buckets = getattr(hf, "position_buckets", -1)
    cls_dropout = getattr(hf, "cls_dropout", None)
    norm = [x.strip() for x in getattr(hf, "norm_rel_ebd", "none").lower().split("|")]
    shared = bert_style_config(hf, type_vocab_size=hf.type_vocab_size, head_activation=hf.pooler_hidden_act,
                               classifier_dropout=hf.hidden_dropout_prob if cls_dropout is None else cls_dropout)
    return DebertaConfig(
        **dataclasses.asdict(shared), relative_attention=bool(hf.relative_attention), position_buckets=max(buckets, 0),
        max_relative_positions=max_relative, c2p="c2p" in pos_att_type, p2c="p2c" in pos_att_type,
        share_att_key=bool(getattr(hf, "share_att_key", False)), norm_relative_embeddings="layer_norm" in norm,
        position_biased_input=bool(hf.position_biased_input), pooler_dropout=hf.pooler_dropout)


def log_buckets(distance: np.ndarray, buckets: int, max_position: int) -> np.ndarray:
    """transformers' make_log_bucket_position in float32: distances within buckets/2 are kept, longer ones
    shrink logarithmically so that max_position - 1 maps to buckets - 1, keeping their sign."""
    mid = buckets // 2
    size = np.where(np.abs(distance) < mid, mid - 1, np.abs(distance))
    scaled = np.log(size.astype(np.float32) / np.float32(mid)) / np.log(np.float32((max_position - 1) / mid))
    log_pos = np.ceil(scaled * np.float32(mid - 1)) + mid
    return np.where(size <= mid, distance, log_pos * np.sign(distance)).astype(np.int64)


def table_rows(config: DebertaConfig, distance: np.ndarray) -> np.ndarray:
    """Row of the relative embedding table for each distance query - key: bucketed, shifted by the span,
    clamped to the table."""
    if config.position_buckets:
        distance = log_buckets(distance, config.position_buckets, config.max_relative_positions)
    span = config.attention_span
    return np.clip(distance + span, 0, 2 * span - 1).astype(np.int32)


def relative_index(config: DebertaConfig, length: int) -> np.ndarray:
    """[1, 1, L(query), L(key)] table row of every pair.

    Packed rows use it as it is: an example's positions restart at 0 and advance with its rows, so within an
    example position distance is row distance, and pairs across examples are masked."""
    positions = np.arange(length)
    return table_rows(config, positions[:, None] - positions[None, :])[None, None]


def shifted(scores):
    """[B, H, L, 2L - 1] -> [B, H, L, L]: out[..., i, j] = scores[..., i, L - 1 - i + j], by a flat slice and
    reshapes (row i starts one column earlier than row i - 1)."""
    *lead, length, width = scores.shape
    flat = scores.reshape(*lead, length * width)[..., length - 1:length - 1 + length * (width - 1)]
    return flat.reshape(*lead, length, width - 1)[..., :length]


def pair_scores(rows, table, index):
    """rows [B, n, H, D] against relative table rows [R, H, D], for each pair (row i, other row j): [B, H, n, m].

    With `index` [1 or B, 1, n, m], pair (i, j) reads table row index[i, j] (a gather, as in transformers);
    without, the table holds one row per distance L-1, L-2, ..., -(L-1) and pair (i, j) reads the row of
    distance i - j (the shifted matmul)."""
    scores = jnp.einsum("bnhd,rhd->bhnr", rows, table, preferred_element_type=jnp.float32)
    return shifted(scores) if index is None else jnp.take_along_axis(scores, index, axis=-1)


class DisentangledSelfAttention(nn.Module):
    """Content and relative-position attention of `queries` over the rows of `x`, with its output projection.

    `relative` is (relative embeddings [2 * span, hidden], table row of each pair [1 or B, 1, Q, L]), or
    (embeddings, None) when every row is a query and the terms are computed by distance."""

    config: DebertaConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, queries, mask, relative, deterministic: bool):
        cfg = self.config
        heads = cfg.num_heads
        head_dim = cfg.hidden_size // heads

        def projection(name):  # a dense layer whose output is split into heads: [..., heads, head_dim]
            layer = dense(cfg.hidden_size, cfg, self.dtype, name)

            def split(y):
                y = layer(y)
                return y.reshape(*y.shape[:-1], heads, head_dim)
            return split

        query, key = projection("query"), projection("key")
        q, k, v = query(queries), key(x), projection("value")(x)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        if cfg.relative_attention and (cfg.c2p or cfg.p2c):
            embeddings, index = relative
            embeddings = nn.Dropout(cfg.hidden_dropout)(embeddings.astype(self.dtype), deterministic=deterministic)
            if index is None:  # the table rows of distances L-1 down to -(L-1), projected below
                embeddings = embeddings[table_rows(cfg, np.arange(x.shape[1] - 1, -x.shape[1], -1))]
            if cfg.c2p:
                position_key = (key if cfg.share_att_key else projection("position_key"))(embeddings)
                scores = scores + pair_scores(q, position_key, index)
            if cfg.p2c:  # pairs (key, query) read the distance query - key: by distance, the table reversed
                position_query = (query if cfg.share_att_key else projection("position_query"))(embeddings)
                p2c = pair_scores(k, position_query[::-1] if index is None else position_query,
                                  None if index is None else jnp.swapaxes(index, 2, 3))
                scores = scores + jnp.swapaxes(p2c, 2, 3)
        scores = jnp.where(mask, scores * cfg.score_scale, jnp.finfo(scores.dtype).min)
        probs = nn.Dropout(cfg.attention_dropout)(jax.nn.softmax(scores, axis=-1), deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
        return dense(cfg.hidden_size, cfg, self.dtype, "output")(out.reshape(*out.shape[:2], cfg.hidden_size))


class DebertaLayer(PostNormLayer):
    """BERT's post-norm layer (DeBERTa's weights are laid out the same) around disentangled attention."""

    attention: type = DisentangledSelfAttention


class DebertaEmbeddings(nn.Module):
    """Word (+ absolute position, when position_biased_input) (+ token type) embeddings, LayerNorm, dropout.

    transformers also zeroes padding rows after the LayerNorm; those rows are masked keys everywhere and
    reach no output, so that is not repeated here."""

    config: DebertaConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
        cfg = self.config

        def table(rows: int, name: str):
            return nn.Embed(rows, cfg.hidden_size, embedding_init=nn.initializers.normal(cfg.initializer_range),
                            dtype=self.dtype, param_dtype=jnp.float32, name=name)

        x = table(cfg.vocab_size, "word_embeddings")(input_ids)
        if cfg.position_biased_input:
            positions = table(cfg.max_positions, "position_embeddings")
            if position_ids is None:  # a slice: its gradient is a sum over the batch, not a scatter
                x = x + positions.embedding[:input_ids.shape[-1]].astype(self.dtype)
            else:
                x = x + positions(position_ids)
        if cfg.type_vocab_size:
            types = table(cfg.type_vocab_size, "token_type_embeddings").embedding.astype(self.dtype)
            if token_type_ids is None:
                x = x + types[0]
            else:  # a one-hot matmul rather than a gather, as in flaxft.model.layers.Embeddings
                x = x + jax.nn.one_hot(token_type_ids, cfg.type_vocab_size, dtype=self.dtype) @ types
        x = layer_norm(cfg, self.dtype, "norm")(x)
        return nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)


class DebertaEncoder(nn.Module):
    """The layer stack with the shared relative embeddings; returns the [CLS] rows' hidden states ([B, 1 or K,
    hidden]). As in flaxft.model.layers.Encoder, the last layer computes only those rows."""

    config: DebertaConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x, mask, cls_index, deterministic: bool):
        cfg = self.config
        relative = None
        if cfg.relative_attention:
            embeddings = nn.Embed(2 * cfg.attention_span, cfg.hidden_size, param_dtype=jnp.float32,
                                  embedding_init=nn.initializers.normal(cfg.initializer_range),
                                  name="relative_embeddings").embedding
            if cfg.norm_relative_embeddings:
                embeddings = layer_norm(cfg, self.dtype, "relative_norm")(embeddings)
            relative = (embeddings, None)
        layer_cls = nn.remat(DebertaLayer, static_argnums=(5,)) if self.remat else DebertaLayer
        last = cfg.num_layers - 1
        for i in range(last):
            x = layer_cls(cfg, self.dtype, name=f"layer_{i}")(x, x, mask, relative, deterministic)
        if relative is not None:  # the [CLS] rows' pairs, by gather
            relative = (relative[0], query_rows_of_scores(relative_index(cfg, x.shape[1]), cls_index))
        return layer_cls(cfg, self.dtype, name=f"layer_{last}")(
            x, query_rows(x, cls_index), query_rows_of_scores(mask, cls_index), relative, deterministic)


class DebertaClassifier(nn.Module):
    """Embeddings -> disentangled encoder -> ContextPooler head, with flaxft.model.layers.EncoderClassifier's
    call signature and outputs (packed rows included)."""

    config: DebertaConfig
    num_labels: int
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, position_ids=None, *, segment_ids=None,
                 cls_index=None, deterministic: bool = True):
        cfg = self.config
        x = DebertaEmbeddings(cfg, self.dtype, name="embeddings")(
            input_ids, token_type_ids, embedding_positions(cfg, input_ids, position_ids), deterministic)
        cls = DebertaEncoder(cfg, self.dtype, self.remat, name="encoder")(
            x, attention_mask_to_bool(attention_mask, segment_ids), cls_index, deterministic)
        return ClassificationHead(cfg, self.num_labels, self.dtype, name="head")(
            cls[:, 0] if cls_index is None else cls, deterministic)


_LAYERS = "deberta.encoder.layer"
KEYS = KeyMap(prefix="deberta", modules=(
    (r"embeddings/(word|position|token_type)_embeddings", r"deberta.embeddings.\1_embeddings"),
    (r"embeddings/norm", "deberta.embeddings.LayerNorm"),
    (r"encoder/relative_embeddings", "deberta.encoder.rel_embeddings"),
    (r"encoder/relative_norm", "deberta.encoder.LayerNorm"),
    *((rf"encoder/layer_(\d+)/{part}", rf"{_LAYERS}.\1.{name}") for part, name in {
        **BERT_LAYER_PARTS, **{f"attention/{p}": f"attention.self.{p}_proj" for p in ("query", "key", "value")},
        "attention/position_key": "attention.self.pos_key_proj",
        "attention/position_query": "attention.self.pos_query_proj"}.items()),
    (r"head/dense", "pooler.dense"),
    (r"head/out", "classifier"),
))

FAMILY = Family(
    name="deberta-v2",
    architectures={"deberta-v2": "DebertaV2ForSequenceClassification"},
    read_config=read_config,
    keys=KEYS,
    module=DebertaClassifier,
    token_type_ids=True,  # unused (and free) when type_vocab_size is 0, as in DeBERTa-v3
    # the relative projections split heads over the tensor axis like the query/key projections they meet
    partition_rules=((r"attention/position_(query|key)/kernel$", P("fsdp", "tensor")),
                     (r"attention/position_(query|key)/bias$", P("tensor"))),
)
