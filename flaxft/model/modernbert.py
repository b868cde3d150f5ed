"""ModernBERT: a pre-norm encoder with rotary positions, GeGLU feed-forwards, and attention that is global in
some layers and a sliding window in the others.

What differs from BERT's encoder (flaxft.model.layers), as transformers computes it:
  - no position or token-type tables: word embeddings, LayerNorm, dropout; queries and keys are rotated by
    their position (RoPE), with one base for global layers and another for sliding-window layers;
  - each layer is x + attention(norm(x)), then x + mlp(norm(x)); the first layer has no attention norm, and a
    final norm follows the last layer; LayerNorms and Dense layers may have no bias (`norm_bias`, ...);
  - a sliding-window layer lets a token see keys at most local_attention // 2 positions away on each side;
  - the feed-forward is GeGLU: Wi's outputs are [input | gate], act(input) * gate -> Wo;
  - the classifier pools the [CLS] row or the mean of the real tokens, then dense -> act -> norm -> dropout ->
    classifier.
Packed rows (flaxft.data.packing) number positions from 0 in each example, so RoPE and the window are per
example: a key is visible if it is in the query's example and within the window by those positions.

Sliding-window layers attend by blocks of local_attention // 2 tokens, each against its own and its two
neighbours' keys, when that is fewer scores than the full [L, L] (rows longer than 3 half-windows): at
ModernBERT-base's window of 128, 512-token rows need 192 instead of 512 keys per query, 8192-token rows 192
instead of 8192. Shorter rows use one dense windowed mask. Either way the masks are built once per call.
"""

from __future__ import annotations

import dataclasses

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from flaxft.model.encoder_config import ACTIVATIONS, EncoderConfig, as_json, hf_config_object, refuse
from flaxft.model.layers import (ACTIVATIONS as ACTIVATION_FNS, Dtype, attention_mask_to_bool, dense, layer_norm,
                                 query_rows, query_rows_of_scores)
from flaxft.model.registry import Family
from flaxft.model.weights import KeyMap

GLOBAL, SLIDING = "full_attention", "sliding_attention"  # transformers' layer_types


@dataclasses.dataclass(frozen=True)
class ModernBertConfig(EncoderConfig):
    """EncoderConfig plus what only ModernBERT has. Shared fields: layer_norm_eps is norm_eps, hidden_dropout the
    embedding dropout, attention_dropout and attention_output_dropout both attention_dropout, head_activation
    classifier_activation."""

    global_layers: tuple[bool, ...] = ()  # per layer: full attention (True) or the sliding window
    half_window: int = 64                 # sliding layers see keys at most this far away: local_attention // 2
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    norm_bias: bool = False               # the LayerNorms have a bias
    attention_bias: bool = False          # Wqkv and the attention's Wo have biases
    mlp_bias: bool = False                # Wi and the feed-forward's Wo have biases
    classifier_bias: bool = False         # the head's dense layer has a bias (the final classifier always has one)
    mlp_dropout: float = 0.0              # on act(input) * gate
    pooling: str = "cls"                  # classifier_pooling: "cls" (row 0) or "mean" (of the real tokens)


def read_config(d: dict) -> ModernBertConfig:
    """transformers validates classifier_pooling and one layer type per layer; flaxft refuses what it lacks."""
    hf = hf_config_object(d)
    for kind in (GLOBAL, SLIDING):
        rope = hf.rope_parameters.get(kind) or {}
        refuse(rope.get("rope_type", "default") != "default", f"rope_type '{rope.get('rope_type')}' ({kind} layers)",
               "use a checkpoint with default RoPE (no rope_scaling)")
    unknown = sorted(set(hf.layer_types) - {GLOBAL, SLIDING})
    refuse(bool(unknown), f"layer_types {unknown}", f"use only '{GLOBAL}' and '{SLIDING}' layers")
    head_dim = hf.hidden_size // hf.num_attention_heads
    refuse(head_dim % 2 == 1, f"an odd attention head size ({head_dim}) with RoPE", "use an even head size")
    for name in ("hidden_activation", "classifier_activation"):
        refuse(getattr(hf, name) not in ACTIVATIONS, f"{name} '{getattr(hf, name)}'", f"use one of {list(ACTIVATIONS)}")
    return ModernBertConfig(
        model_type=hf.model_type, vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
        num_layers=hf.num_hidden_layers, num_heads=hf.num_attention_heads, intermediate_size=hf.intermediate_size,
        activation=hf.hidden_activation, hidden_dropout=hf.embedding_dropout,
        attention_dropout=hf.attention_dropout, attention_output_dropout=hf.attention_dropout,
        classifier_dropout=hf.classifier_dropout, max_positions=hf.max_position_embeddings, type_vocab_size=0,
        layer_norm_eps=hf.norm_eps, initializer_range=hf.initializer_range,
        pad_token_id=hf.pad_token_id if hf.pad_token_id is not None else 0,
        head_activation=hf.classifier_activation, hf_config=as_json(hf),
        global_layers=tuple(kind == GLOBAL for kind in hf.layer_types), half_window=hf.local_attention // 2,
        global_rope_theta=float(hf.rope_parameters[GLOBAL]["rope_theta"]),
        local_rope_theta=float(hf.rope_parameters[SLIDING]["rope_theta"]),
        norm_bias=hf.norm_bias, attention_bias=hf.attention_bias, mlp_bias=hf.mlp_bias,
        classifier_bias=hf.classifier_bias, mlp_dropout=hf.mlp_dropout, pooling=hf.classifier_pooling)


def rotary(positions, theta: float, head_dim: int):
    """(cos, sin) [B or 1, L, 1, head_dim] of each position (float32), for `rotate`."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    return jnp.cos(angles), jnp.sin(angles)


def rotate(x, cos_sin):
    """RoPE on x [B, n, heads, head_dim], in float32: x cos + (-x2, x1) sin, with x1, x2 its two halves."""
    cos, sin = cos_sin
    y = x.astype(jnp.float32)
    first, second = jnp.split(y, 2, axis=-1)
    return (y * cos + jnp.concatenate([-second, first], axis=-1) * sin).astype(x.dtype)


def window_mask(mask, query_positions, key_positions, half_window: int):
    """`mask` [B, 1, Q, L] and |query position - key position| <= half_window. Positions are per example ([B, n]
    in packed rows) or 0..L-1 ([1, n]), so a window never reaches into another example."""
    near = jnp.abs(query_positions[:, :, None] - key_positions[:, None, :]) <= half_window
    return mask & near[:, None]


def blocks(x, size: int):
    """[B, L, ...] -> [B, ceil(L / size), size, ...], zero-padded at the end."""
    n = -(-x.shape[1] // size)
    x = jnp.pad(x, [(0, 0), (0, n * size - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
    return x.reshape(x.shape[0], n, size, *x.shape[2:])


def neighbourhoods(x, size: int):
    """[B, L, ...] -> [B, blocks, 3 size, ...]: for each block of `blocks`, the rows of the blocks before it, itself
    and after it (zeros past either end)."""
    b = jnp.pad(blocks(x, size), [(0, 0), (1, 1)] + [(0, 0)] * (x.ndim - 1))
    return jnp.concatenate([b[:, :-2], b[:, 1:-1], b[:, 2:]], axis=2)


@flax.struct.dataclass
class BandMask:
    """A sliding-window mask by blocks of half_window tokens, [B, blocks, 1, size, 3 size]: query j of block i may see
    token t of blocks i-1, i, i+1. Attention then costs L x 3 size scores instead of L x L."""

    mask: jax.Array

    @property
    def block_size(self) -> int:
        return self.mask.shape[-2]


def banded(length: int, half_window: int) -> bool:
    """Whether blocks of half_window tokens, each against three blocks of keys, cost less than L x L scores."""
    return 3 * max(half_window, 1) < length


def band_mask(segments, half_window: int) -> BandMask:
    """The sliding-window mask of rows whose tokens carry `segments` [B, L] (0 = padding; the attention mask for
    unpacked rows, the segment ids for packed ones). Tokens of one example are contiguous, so within an example
    row distance is position distance."""
    size = max(half_window, 1)
    queries = blocks(segments, size)[:, :, :, None]
    keys = neighbourhoods(segments, size)[:, :, None, :]
    near = np.abs(size + np.arange(size)[:, None] - np.arange(3 * size)[None, :]) <= half_window  # static
    return BandMask(((queries == keys) & (keys > 0) & near)[:, :, None])


class Embeddings(nn.Module):
    """Word embeddings, LayerNorm, dropout: positions enter the attention as rotations."""

    config: ModernBertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, deterministic: bool):
        cfg = self.config
        x = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=nn.initializers.normal(cfg.initializer_range),
                     dtype=self.dtype, param_dtype=jnp.float32, name="word_embeddings")(input_ids)
        x = layer_norm(cfg, self.dtype, "norm", cfg.norm_bias)(x)
        return nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)


class DenseParams(nn.Module):
    """The kernel (and bias) of a Dense layer, under the layer's own name, without applying it."""

    features: int
    use_bias: bool
    config: ModernBertConfig

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param("kernel", nn.initializers.normal(self.config.initializer_range),
                            (in_features, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32) if self.use_bias else None
        return kernel, bias


def stacked_dense(module: nn.Module, names: tuple[str, ...], features: int, use_bias: bool, x, dtype):
    """Dense layers `names` of the same input as one matmul: [B, L, len(names), features]. transformers fuses
    them as ModernBERT's Wqkv and Wi; here each keeps its own parameters (checkpoints, partition rules) and the
    matmul reads them stacked, so the backward pass computes x's gradient once instead of summing one per layer."""
    params = [DenseParams(features, use_bias, module.config, name=name, parent=module)(x.shape[-1]) for name in names]
    kernel = jnp.stack([k for k, _ in params], axis=1).astype(dtype)  # [in, n, features]
    y = jnp.einsum("bli,inf->blnf", x.astype(dtype), kernel)
    return y + jnp.stack([b for _, b in params]).astype(dtype) if use_bias else y


class Attention(nn.Module):
    """Multi-head attention of `queries` over x (queries None: every row of x), with rotary positions and the
    output projection."""

    config: ModernBertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, queries, mask, rope_keys, rope_queries, deterministic: bool):
        cfg = self.config
        heads = cfg.num_heads
        head_dim = cfg.hidden_size // heads

        def projections(names, y):  # [B, n, hidden] -> one [B, n, heads, head_dim] per name
            y = stacked_dense(self, names, cfg.hidden_size, cfg.attention_bias, y, self.dtype)
            return [y[:, :, i].reshape(*y.shape[:2], heads, head_dim) for i in range(len(names))]

        def attend(q, k, v, mask, scores_spec: str, output_spec: str):
            # Scores and softmax in float32 so bf16 runs stay stable.
            scores = jnp.einsum(scores_spec, q, k, preferred_element_type=jnp.float32) * head_dim**-0.5
            scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
            probs = nn.Dropout(cfg.attention_dropout)(jax.nn.softmax(scores, axis=-1), deterministic=deterministic)
            return jnp.einsum(output_spec, probs.astype(self.dtype), v)

        if queries is None:
            q, k, v = projections(("query", "key", "value"), x)
        else:  # the last layer's [CLS] rows
            (q,), (k, v) = projections(("query",), queries), projections(("key", "value"), x)
        q, k = rotate(q, rope_queries), rotate(k, rope_keys)
        if isinstance(mask, BandMask):  # each block of queries against its own and its neighbours' keys
            size = mask.block_size
            out = attend(blocks(q, size), neighbourhoods(k, size), neighbourhoods(v, size), mask.mask,
                         "bnqhd,bnkhd->bnhqk", "bnhqk,bnkhd->bnqhd")
            out = out.reshape(out.shape[0], -1, heads, head_dim)[:, :q.shape[1]]
        else:
            out = attend(q, k, v, mask, "bqhd,bkhd->bhqk", "bhqk,bkhd->bqhd")
        out = dense(cfg.hidden_size, cfg, self.dtype, "output", use_bias=cfg.attention_bias)(
            out.reshape(*out.shape[:2], cfg.hidden_size))
        return nn.Dropout(cfg.attention_output_dropout)(out, deterministic=deterministic)


class GeGLU(nn.Module):
    """act(input(x)) * gate(x) -> dropout -> output; transformers' Wi is [input | gate] (one fused layer)."""

    config: ModernBertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        cfg = self.config

        h = stacked_dense(self, ("input", "gate"), cfg.intermediate_size, cfg.mlp_bias, x, self.dtype)
        h = ACTIVATION_FNS[cfg.activation](h[:, :, 0]) * h[:, :, 1]
        h = nn.Dropout(cfg.mlp_dropout)(h, deterministic=deterministic)
        return dense(cfg.hidden_size, cfg, self.dtype, "output", use_bias=cfg.mlp_bias)(h)


class PreNormLayer(nn.Module):
    """x + attention(norm(x)), then + mlp(norm(.)), for the rows in `queries` (x itself, or the [CLS] rows in
    the last layer); the first layer has no attention norm (its input is the normalised embedding)."""

    config: ModernBertConfig
    dtype: Dtype = jnp.float32
    first: bool = False

    @nn.compact
    def __call__(self, x, queries, mask, rope_keys, rope_queries, deterministic: bool):
        cfg = self.config
        norm = (lambda y: y) if self.first else layer_norm(cfg, self.dtype, "attention_norm", cfg.norm_bias)
        h = queries + Attention(cfg, self.dtype, name="attention")(
            norm(x), None if queries is x else norm(queries), mask, rope_keys, rope_queries, deterministic)
        mlp_in = layer_norm(cfg, self.dtype, "mlp_norm", cfg.norm_bias)(h)
        return h + GeGLU(cfg, self.dtype, name="mlp")(mlp_in, deterministic)


class Encoder(nn.Module):
    """The layer stack and the final norm. With cls pooling it returns only the [CLS] rows ([B, 1, hidden], or
    [B, K, hidden] at `cls_index`), and the last layer computes only those (as flaxft.model.layers.Encoder);
    with mean pooling every row ([B, L, hidden])."""

    config: ModernBertConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x, mask, segments, positions, cls_index, deterministic: bool):
        cfg = self.config
        head_dim = cfg.hidden_size // cfg.num_heads
        # The two masks and two rotations are computed once and shared by the layers of each kind.
        if banded(x.shape[1], cfg.half_window):
            local = band_mask(segments, cfg.half_window)
        else:
            local = window_mask(mask, positions, positions, cfg.half_window)
        masks = {True: mask, False: local}
        ropes = {True: rotary(positions, cfg.global_rope_theta, head_dim),
                 False: rotary(positions, cfg.local_rope_theta, head_dim)}
        # Argument 6 (`deterministic`, counting `self` as 0) is a Python bool.
        layer_cls = nn.remat(PreNormLayer, static_argnums=(6,)) if self.remat else PreNormLayer
        last = cfg.num_layers - 1
        for i, is_global in enumerate(cfg.global_layers):
            layer = layer_cls(cfg, self.dtype, first=i == 0, name=f"layer_{i}")
            rope = ropes[is_global]
            if i == last and cfg.pooling == "cls":
                row_mask = query_rows_of_scores(mask, cls_index)
                if not is_global:
                    row_mask = window_mask(row_mask, query_rows(positions, cls_index), positions, cfg.half_window)
                rows = (query_rows(rope[0], cls_index), query_rows(rope[1], cls_index))
                x = layer(x, query_rows(x, cls_index), row_mask, rope, rows, deterministic)
            else:
                x = layer(x, x, masks[is_global], rope, rope, deterministic)
        return layer_norm(cfg, self.dtype, "final_norm", cfg.norm_bias)(x)


def mean_pool(hidden, attention_mask, segment_ids, slots: int | None):
    """Mean of each example's real tokens: [B, hidden], or [B, K, hidden] for the K example slots of packed rows
    (segment k + 1). Empty rows and slots give zeros, not NaN."""
    if segment_ids is None:
        weights = attention_mask[:, None, :]
    else:
        weights = segment_ids[:, None, :] == jnp.arange(1, slots + 1)[None, :, None]
        if attention_mask is not None:
            weights = weights & attention_mask[:, None, :].astype(bool)
    weights = weights.astype(jnp.float32)
    sums = jnp.einsum("bkl,bld->bkd", weights, hidden, preferred_element_type=jnp.float32)
    means = (sums / jnp.maximum(weights.sum(-1), 1.0)[..., None]).astype(hidden.dtype)
    return means[:, 0] if segment_ids is None else means


class Head(nn.Module):
    """Pooled vector -> dense -> act -> norm -> dropout -> logits (float32)."""

    config: ModernBertConfig
    num_labels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pooled, deterministic: bool):
        cfg = self.config
        h = dense(cfg.hidden_size, cfg, self.dtype, "dense", cfg.classifier_bias)(pooled)
        h = layer_norm(cfg, self.dtype, "norm", cfg.norm_bias)(ACTIVATION_FNS[cfg.head_activation](h))
        h = nn.Dropout(cfg.classifier_dropout)(h, deterministic=deterministic)
        return dense(self.num_labels, cfg, self.dtype, "out")(h).astype(jnp.float32)


class ModernBertClassifier(nn.Module):
    """Embeddings -> encoder -> pooling -> head, with flaxft.model.layers.EncoderClassifier's call signature
    (token_type_ids is ignored: ModernBERT has none)."""

    config: ModernBertConfig
    num_labels: int
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, position_ids=None, *, segment_ids=None,
                 cls_index=None, deterministic: bool = True):
        cfg = self.config
        x = Embeddings(cfg, self.dtype, name="embeddings")(input_ids, deterministic)
        positions = jnp.arange(input_ids.shape[-1])[None] if position_ids is None else position_ids
        segments = attention_mask if segment_ids is None else segment_ids  # 0 = padding
        hidden = Encoder(cfg, self.dtype, self.remat, name="encoder")(
            x, attention_mask_to_bool(attention_mask, segment_ids), segments, positions, cls_index, deterministic)
        if cfg.pooling == "mean":
            pooled = mean_pool(hidden, attention_mask, segment_ids, None if cls_index is None else cls_index.shape[1])
        else:
            pooled = hidden[:, 0] if cls_index is None else hidden
        return Head(cfg, self.num_labels, self.dtype, name="head")(pooled, deterministic)


LAYERS = "model.layers"
KEYS = KeyMap(
    prefix="model",
    modules=(
        (r"embeddings/word_embeddings", "model.embeddings.tok_embeddings"),
        (r"embeddings/norm", "model.embeddings.norm"),
        (r"encoder/layer_(\d+)/attention_norm", rf"{LAYERS}.\1.attn_norm"),
        (r"encoder/layer_(\d+)/attention/output", rf"{LAYERS}.\1.attn.Wo"),
        (r"encoder/layer_(\d+)/mlp_norm", rf"{LAYERS}.\1.mlp_norm"),
        (r"encoder/layer_(\d+)/mlp/output", rf"{LAYERS}.\1.mlp.Wo"),
        (r"encoder/final_norm", "model.final_norm"),
        (r"head/dense", "head.dense"), (r"head/norm", "head.norm"), (r"head/out", "classifier"),
    ),
    fused=(
        *((rf"encoder/layer_(\d+)/attention/{part}", rf"{LAYERS}.\1.attn.Wqkv", i, 3)
          for i, part in enumerate(("query", "key", "value"))),
        (r"encoder/layer_(\d+)/mlp/input", rf"{LAYERS}.\1.mlp.Wi", 0, 2),
        (r"encoder/layer_(\d+)/mlp/gate", rf"{LAYERS}.\1.mlp.Wi", 1, 2),
    ),
)

FAMILY = Family(
    name="modernbert",
    architectures={"modernbert": "ModernBertForSequenceClassification"},
    read_config=read_config,
    keys=KEYS,
    module=ModernBertClassifier,
    token_type_ids=False,
    # the gate is split like the shared rules split mlp/input: both are columns of the same GeGLU
    partition_rules=((r"mlp/gate/kernel$", P("fsdp", "tensor")), (r"mlp/gate/bias$", P("tensor"))),
)
