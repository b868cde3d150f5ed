"""Building blocks the encoder families share: embeddings, masks, attention, post-norm layers, the encoder
stack and the classification head.

Parameter names are flaxft's own and the same in every family (`encoder/layer_0/attention/query/kernel`);
each family maps them to its Hugging Face names (flaxft.model.weights), and partition rules match them
once for all families (flaxft.parallel). Parameters are float32; `dtype` is the computation dtype.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxft.model.encoder_config import EncoderConfig

Dtype = Any

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}


def dense(features: int, config: EncoderConfig, dtype: Dtype, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(config.initializer_range), bias_init=nn.initializers.zeros,
                    name=name)


def layer_norm(config: EncoderConfig, dtype: Dtype, name: str, use_bias: bool = True) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                        name=name)


def sinusoidal_init(key, shape, dtype=jnp.float32):
    """The fixed sinusoid table (DistilBERT's `sinusoidal_pos_embds`): sin on even columns, cos on odd ones."""
    positions, dim = shape
    angle = np.arange(positions)[:, None] / np.power(10000, 2 * (np.arange(dim) // 2) / dim)[None, :]
    table = np.where(np.arange(dim) % 2 == 0, np.sin(angle), np.cos(angle))
    return jnp.asarray(table, dtype)


def embedding_positions(config: EncoderConfig, input_ids, position_ids):
    """Rows of the position table for every token; None for 0, 1, ..., L-1 in every row.

    `position_ids` (packed rows) count from 0 within each example. Without them positions are 0, 1, ...,
    except in families whose positions start after the padding id (RoBERTa, MPNet): there, as in
    transformers, real tokens are numbered pad+1, pad+2, ... and padding tokens get pad.
    """
    offset = config.position_offset
    if position_ids is None:
        if offset is None:
            return None
        real = (input_ids != offset).astype(jnp.int32)
        return jnp.cumsum(real, axis=-1) * real + offset
    return position_ids if offset is None else position_ids + offset + 1


def attention_mask_to_bool(attention_mask, segment_ids=None):
    """Boolean mask [B, 1, L(query) or 1, L(key)]: True where a query may attend to a key.

    Without `segment_ids`, padded keys are masked as in HF. With `segment_ids` (packed rows,
    0 = padding, 1..k = example index) only tokens of the same nonzero segment see each other.
    """
    if segment_ids is None:
        return attention_mask[:, None, None, :].astype(bool)
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    if attention_mask is not None:
        same = same & attention_mask[:, None, :].astype(bool)
    return same[:, None]


class Embeddings(nn.Module):
    """Word + token-type + position embeddings, LayerNorm, dropout; projected to the hidden size when the
    embeddings are narrower (ELECTRA)."""

    config: EncoderConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, positions, deterministic: bool):
        cfg = self.config

        def table(rows: int, name: str, init=None):
            init = init or nn.initializers.normal(cfg.initializer_range)
            return nn.Embed(rows, cfg.embedding_width, embedding_init=init, dtype=self.dtype, param_dtype=jnp.float32,
                            name=name)

        x = table(cfg.vocab_size, "word_embeddings")(input_ids)
        if cfg.type_vocab_size:
            types = table(cfg.type_vocab_size, "token_type_embeddings")
            if token_type_ids is None:
                x = x + types.embedding[0].astype(self.dtype)
            else:  # a one-hot matmul: a gather's backward would scatter every token into one or two rows, which
                # serialises on GPUs (it was 60% of a BERT-base step on an H200); this is a tiny matmul
                x = x + jax.nn.one_hot(token_type_ids, cfg.type_vocab_size, dtype=self.dtype) @ types.embedding.astype(
                    self.dtype)
        position_table = table(cfg.max_positions, "position_embeddings",
                               sinusoidal_init if cfg.sinusoidal_positions else None)
        if positions is None:  # 0, 1, ..., L-1 in every row: a slice, whose gradient is a sum over the batch
            x = x + position_table.embedding[:input_ids.shape[-1]].astype(self.dtype)
        else:
            x = x + position_table(positions)
        x = layer_norm(cfg, self.dtype, "norm")(x)
        x = nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
        if cfg.embedding_width != cfg.hidden_size:
            x = dense(cfg.hidden_size, cfg, self.dtype, "projection")(x)
        return x


class SelfAttention(nn.Module):
    """Multi-head attention of `queries` over the rows of `x`, with its output projection."""

    config: EncoderConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, queries, mask, bias, deterministic: bool):
        """x: [B, L, hidden] (keys and values); queries: [B, Q, hidden], x itself or some of its rows;
        mask: bool, broadcastable to [B, heads, Q, L]; bias: added to the scores (relative positions) or None."""
        cfg = self.config
        heads = cfg.num_heads
        head_dim = cfg.hidden_size // heads

        def project(name, y):  # [B, n, hidden] -> [B, n, heads, head_dim]
            y = dense(cfg.hidden_size, cfg, self.dtype, name)(y)
            return y.reshape(*y.shape[:-1], heads, head_dim)

        q, k, v = project("query", queries), project("key", x), project("value", x)
        # Scores and softmax in float32 so bf16 runs stay stable.
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * head_dim**-0.5
        if bias is not None:
            scores = scores + bias
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
        return dense(cfg.hidden_size, cfg, self.dtype, "output")(out.reshape(*out.shape[:2], cfg.hidden_size))


class FeedForward(nn.Module):
    config: EncoderConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = ACTIVATIONS[self.config.activation](dense(self.config.intermediate_size, self.config, self.dtype, "input")(x))
        return dense(self.config.hidden_size, self.config, self.dtype, "output")(x)


class PostNormLayer(nn.Module):
    """One encoder layer with LayerNorm after each residual sum (BERT and the families close to it).

    Only the rows in `queries` (x itself, or the [CLS] rows in the last layer) are computed: attention
    reads keys and values from every row of x. A family with attention of its own (DeBERTa) sets
    `attention`: a module called like SelfAttention, to which `bias` is passed as it is."""

    config: EncoderConfig
    dtype: Dtype = jnp.float32
    attention: type = SelfAttention

    @nn.compact
    def __call__(self, x, queries, mask, bias, deterministic: bool):
        cfg = self.config
        a = self.attention(cfg, self.dtype, name="attention")(x, queries, mask, bias, deterministic)
        a = nn.Dropout(cfg.attention_output_dropout)(a, deterministic=deterministic)
        h = layer_norm(cfg, self.dtype, "attention_norm")(a + queries)
        m = nn.Dropout(cfg.hidden_dropout)(FeedForward(cfg, self.dtype, name="mlp")(h), deterministic=deterministic)
        return layer_norm(cfg, self.dtype, "mlp_norm")(m + h)


def query_rows(x, cls_index):
    """The [CLS] rows of x [B, L, ...]: [B, 1, ...] (row 0), or [B, K, ...] at `cls_index` [B, K]."""
    if cls_index is None:
        return x[:, :1]
    return jnp.take_along_axis(x, cls_index.reshape(*cls_index.shape, *(1,) * (x.ndim - 2)), axis=1)


def query_rows_of_scores(s, cls_index):
    """The same rows of a mask or bias [B or 1, heads or 1, L(query) or 1, L(key)]."""
    if s is None or s.shape[2] == 1:
        return s
    if cls_index is None:
        return s[:, :, :1]
    s = jnp.broadcast_to(s, (cls_index.shape[0], *s.shape[1:]))
    return jnp.take_along_axis(s, cls_index[:, None, :, None], axis=2)


class Encoder(nn.Module):
    """The layer stack; returns the hidden states of the [CLS] rows: [B, 1, hidden], or [B, K, hidden] at
    `cls_index` [B, K] (one per packed example).

    The classifier reads nothing else, so the last layer computes only those rows (keys and values still
    come from every token): the same logits and gradients as computing all rows, with about 5/6 of the
    last layer's matmul FLOPs saved.
    """

    config: EncoderConfig
    dtype: Dtype = jnp.float32
    remat: bool = False
    layer: type = PostNormLayer

    @nn.compact
    def __call__(self, x, mask, bias, cls_index, deterministic: bool):
        # Rematerialise each layer on the backward pass to save activation memory (long sequences).
        # Argument 5 (`deterministic`, counting `self` as 0) is a Python bool.
        layer_cls = nn.remat(self.layer, static_argnums=(5,)) if self.remat else self.layer
        last = self.config.num_layers - 1
        for i in range(last):
            x = layer_cls(self.config, self.dtype, name=f"layer_{i}")(x, x, mask, bias, deterministic)
        return layer_cls(self.config, self.dtype, name=f"layer_{last}")(
            x, query_rows(x, cls_index), query_rows_of_scores(mask, cls_index), query_rows_of_scores(bias, cls_index),
            deterministic)


class ClassificationHead(nn.Module):
    """[CLS] vector -> logits: a hidden layer (BERT's pooler, RoBERTa's and ELECTRA's head, DistilBERT's
    pre_classifier, DeBERTa's ContextPooler), dropout, the output projection; RoBERTa-style heads and DeBERTa's
    also drop out their input (`head_input_dropout`)."""

    config: EncoderConfig
    num_labels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, cls, deterministic: bool):
        cfg = self.config
        if cfg.head_input_dropout:
            cls = nn.Dropout(cfg.head_input_dropout)(cls, deterministic=deterministic)
        h = ACTIVATIONS[cfg.head_activation](dense(cfg.hidden_size, cfg, self.dtype, "dense")(cls))
        h = nn.Dropout(cfg.classifier_dropout)(h, deterministic=deterministic)
        return dense(self.num_labels, cfg, self.dtype, "out")(h).astype(jnp.float32)


class EncoderClassifier(nn.Module):
    """Embeddings -> encoder -> head; returns float32 logits [batch, num_labels].

    Packed rows (see flaxft.data.packing) pass `segment_ids`, `position_ids` (restarting at 0 in each
    example) and `cls_index` [batch, K], the position of each example's first token: the logits are then
    per example, [batch, K, num_labels]. num_labels == 1 means regression. Dropout draws from the
    'dropout' rng collection when `deterministic=False`.

    A family changes the parts through its config (flaxft.model.encoder_config) and, where that is not
    enough, by overriding `attention_bias` (a module computing [1, heads, L, L] from the row count) or `layer`.
    """

    config: EncoderConfig
    num_labels: int
    dtype: Dtype = jnp.float32
    remat: bool = False
    attention_bias: Optional[type] = None
    layer: type = PostNormLayer

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, position_ids=None, *, segment_ids=None,
                 cls_index=None, deterministic: bool = True):
        cfg = self.config
        x = Embeddings(cfg, self.dtype, name="embeddings")(
            input_ids, token_type_ids, embedding_positions(cfg, input_ids, position_ids), deterministic)
        bias = None
        if self.attention_bias is not None:
            bias = self.attention_bias(cfg, name="attention_bias")(input_ids.shape[-1])
        cls = Encoder(cfg, self.dtype, self.remat, self.layer, name="encoder")(
            x, attention_mask_to_bool(attention_mask, segment_ids), bias, cls_index, deterministic)
        return ClassificationHead(cfg, self.num_labels, self.dtype, name="head")(
            cls[:, 0] if cls_index is None else cls, deterministic)
