"""flaxft's own Flax (linen) BERT for sequence classification / regression.

The parameter tree mirrors Hugging Face's ``BertForSequenceClassification`` names
(``bert/encoder/layer_0/attention/self/query/kernel`` ...) so that checkpoint conversion is
mechanical (see ``convert.py``) and sharding rules can match parameters by path.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxft.errors import FlaxftError

Dtype = Any

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
SUPPORTED_MODEL_TYPES = ("bert",)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT hyper-parameters, with the field names of Hugging Face's ``config.json``."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    classifier_dropout: float | None = None

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise FlaxftError(
                f"model config: hidden_act '{self.hidden_act}' is not supported; "
                f"use one of {sorted(ACTIVATIONS)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise FlaxftError(
                f"model config: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}; fix config.json"
            )

    @classmethod
    def from_hf_dict(cls, d: dict) -> "BertConfig":
        """Build from a Hugging Face ``config.json`` dict; unknown keys are ignored."""
        model_type = d.get("model_type", "bert")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise FlaxftError(
                f"model config: model_type '{model_type}' is not supported; "
                f"use a checkpoint with model_type in {list(SUPPORTED_MODEL_TYPES)}"
            )
        pos_type = d.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise FlaxftError(
                f"model config: position_embedding_type '{pos_type}' is not supported; "
                "only 'absolute' position embeddings are"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if kwargs.get("pad_token_id") is None:
            kwargs.pop("pad_token_id", None)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict:
        """A dict that Hugging Face's ``BertConfig`` (and ``config.json``) understands."""
        return {"model_type": "bert", **dataclasses.asdict(self)}


def _dense(features: int, config: BertConfig, dtype: Dtype, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.normal(config.initializer_range),
        bias_init=nn.initializers.zeros,
        name=name,
    )


def _layer_norm(config: BertConfig, dtype: Dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=jnp.float32, name="LayerNorm")


class BertEmbeddings(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
        cfg = self.config

        def embed(num, name):
            return nn.Embed(
                num,
                cfg.hidden_size,
                embedding_init=nn.initializers.normal(cfg.initializer_range),
                dtype=self.dtype,
                param_dtype=jnp.float32,
                name=name,
            )

        x = embed(cfg.vocab_size, "word_embeddings")(input_ids)
        x = x + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        x = x + embed(cfg.max_position_embeddings, "position_embeddings")(position_ids)
        x = _layer_norm(cfg, self.dtype)(x)
        return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class BertSelfAttention(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, queries, mask, deterministic: bool):
        """x: [B, L, hidden] (keys and values); queries: [B, Q, hidden], x itself or some of its rows;
        mask: bool, broadcastable to [B, heads, Q, L]."""
        cfg = self.config
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads

        def project(name, y):  # [B, n, hidden] -> [B, n, heads, head_dim]
            y = _dense(cfg.hidden_size, cfg, self.dtype, name)(y)
            return y.reshape(*y.shape[:-1], heads, head_dim)

        q, k, v = project("query", queries), project("key", x), project("value", x)
        # Scores and softmax in float32 so bf16 runs stay stable.
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = scores * head_dim**-0.5
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
        return out.reshape(*out.shape[:2], cfg.hidden_size)


class BertResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): HF's BertSelfOutput and BertOutput."""

    config: BertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, residual, deterministic: bool):
        x = _dense(self.config.hidden_size, self.config, self.dtype, "dense")(x)
        x = nn.Dropout(self.config.hidden_dropout_prob)(x, deterministic=deterministic)
        return _layer_norm(self.config, self.dtype)(x + residual)


class BertAttention(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, queries, mask, deterministic: bool):
        a = BertSelfAttention(self.config, self.dtype, name="self")(x, queries, mask, deterministic)
        return BertResidualOutput(self.config, self.dtype, name="output")(a, queries, deterministic)


class BertIntermediate(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _dense(self.config.intermediate_size, self.config, self.dtype, "dense")(x)
        return ACTIVATIONS[self.config.hidden_act](x)


class BertLayer(nn.Module):
    """One encoder layer. Only the rows in `queries` (x itself, or the [CLS] rows in the last layer)
    are computed: attention reads keys and values from every row of x."""

    config: BertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, queries, mask, deterministic: bool):
        x = BertAttention(self.config, self.dtype, name="attention")(x, queries, mask, deterministic)
        h = BertIntermediate(self.config, self.dtype, name="intermediate")(x)
        return BertResidualOutput(self.config, self.dtype, name="output")(h, x, deterministic)


class BertEncoder(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x, mask, cls_index, deterministic: bool):
        """The hidden states of the [CLS] rows: [B, 1, hidden], or [B, K, hidden] at `cls_index` [B, K].

        The classifier reads nothing else, so the last layer computes only those rows (keys and
        values still come from every token): the same logits and gradients as computing all rows,
        with about 5/6 of the last layer's matmul FLOPs saved.
        """
        # Rematerialise each layer on the backward pass to save activation memory (long
        # sequences). Argument 4 (`deterministic`, counting `self` as 0) is a Python bool.
        layer_cls = nn.remat(BertLayer, static_argnums=(4,)) if self.remat else BertLayer
        last = self.config.num_hidden_layers - 1
        for i in range(last):
            x = layer_cls(self.config, self.dtype, name=f"layer_{i}")(x, x, mask, deterministic)
        if cls_index is None:
            cls, cls_mask = x[:, :1], mask
        else:
            cls = jnp.take_along_axis(x, cls_index[..., None], axis=1)
            cls_mask = jnp.take_along_axis(mask, cls_index[:, None, :, None], axis=2) if mask.shape[2] > 1 else mask
        return layer_cls(self.config, self.dtype, name=f"layer_{last}")(x, cls, cls_mask, deterministic)


class BertPooler(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, cls):
        # HF "pools" the hidden state of the first ([CLS]) token: cls [B, hidden] (a packed row has
        # one [CLS] per example: [B, K, hidden]).
        return jnp.tanh(_dense(self.config.hidden_size, self.config, self.dtype, "dense")(cls))


class BertModule(nn.Module):
    """HF's BertModel (the ``bert`` sub-tree): embeddings, encoder, pooler."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, position_ids, segment_ids, cls_index,
                 deterministic):
        x = BertEmbeddings(self.config, self.dtype, name="embeddings")(
            input_ids, token_type_ids, position_ids, deterministic
        )
        cls = BertEncoder(self.config, self.dtype, self.remat, name="encoder")(
            x, attention_mask_to_bool(attention_mask, segment_ids), cls_index, deterministic
        )
        return BertPooler(self.config, self.dtype, name="pooler")(cls[:, 0] if cls_index is None else cls)


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


class BertForSequenceClassification(nn.Module):
    """BERT + HF's classification head; returns float32 logits [batch, num_labels].

    Packed rows (see flaxft.data.packing) pass `segment_ids`, `position_ids` and `cls_index` [batch, K],
    the position of each example's [CLS] token: the logits are then per example, [batch, K, num_labels].

    num_labels == 1 means regression. `dtype` is the computation dtype; parameters are always
    float32. Dropout draws from the 'dropout' rng collection when `deterministic=False`.
    """

    config: BertConfig
    num_labels: int
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask,
        token_type_ids,
        position_ids=None,
        *,
        segment_ids=None,
        cls_index=None,
        deterministic: bool = True,
    ):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
        pooled = BertModule(self.config, self.dtype, self.remat, name="bert")(
            input_ids, attention_mask, token_type_ids, position_ids, segment_ids, cls_index, deterministic
        )
        cfg = self.config
        rate = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
        pooled = nn.Dropout(rate)(pooled, deterministic=deterministic)
        logits = _dense(self.num_labels, cfg, self.dtype, "classifier")(pooled)
        return logits.astype(jnp.float32)
