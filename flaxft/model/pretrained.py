"""A family's classifier from a Hugging Face checkpoint folder: its config, its weights, a fresh head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flaxft.errors import FlaxftError
from flaxft.model import weights
from flaxft.model.encoder_config import EncoderConfig
from flaxft.model.hf_files import read_hf_config, read_hf_state_dict
from flaxft.model.registry import Family, family


def config_from_hf(d: dict) -> EncoderConfig:
    """EncoderConfig from a config.json dict, read by the family its model_type names."""
    model_type = d.get("model_type")
    if not model_type:
        raise FlaxftError("model config: config.json has no model_type; add it (e.g. \"model_type\": \"bert\")")
    return family(model_type).read_config(d)


def read_config(folder) -> EncoderConfig:
    """EncoderConfig from `folder`/config.json."""
    return config_from_hf(read_hf_config(folder))


def family_of(config: EncoderConfig) -> Family:
    return family(config.model_type)


def build(config: EncoderConfig, num_labels: int, *, dtype=jnp.float32, remat: bool = False):
    """The family's flax module: (input_ids, attention_mask, token_type_ids, position_ids, ...) -> logits."""
    return family_of(config).module(config, num_labels, dtype=jnp.dtype(dtype), remat=remat)


def _init_inputs():
    ids = jnp.zeros((1, 8), jnp.int32)
    return ids, jnp.ones_like(ids), ids


def param_shapes(config: EncoderConfig, num_labels: int) -> dict:
    """Flat {path tuple: ShapeDtypeStruct} of the model's params, without computing anything."""
    model = build(config, num_labels)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *_init_inputs()))
    return traverse_util.flatten_dict(shapes["params"])


def init_params(config: EncoderConfig, num_labels: int, rng) -> dict:
    """Randomly initialised float32 params (transformers-style initialisers)."""
    return dict(jax.jit(build(config, num_labels).init)(rng, *_init_inputs())["params"])


def state_dict_to_params(state_dict: dict, config: EncoderConfig, num_labels: int, rng) -> dict:
    """HF state dict (of a base, *ForMaskedLM or *ForSequenceClassification model) -> params; a missing head
    is initialised fresh as transformers does."""
    return weights.state_dict_to_params(state_dict, family_of(config).keys, param_shapes(config, num_labels),
                                        std=config.initializer_range, rng=rng)


def params_to_state_dict(params: dict, config: EncoderConfig) -> dict[str, np.ndarray]:
    """Params -> the family's *ForSequenceClassification state dict (float32 numpy)."""
    return weights.params_to_state_dict(params, family_of(config).keys)


def load_pretrained(folder, num_labels: int, *, rng, random_init: bool = False) -> tuple[EncoderConfig, dict]:
    """Config and params from a local HF checkpoint folder; `random_init` skips the weights."""
    config = read_config(folder)
    if random_init:
        return config, init_params(config, num_labels, rng)
    return config, state_dict_to_params(read_hf_state_dict(folder), config, num_labels, rng)
