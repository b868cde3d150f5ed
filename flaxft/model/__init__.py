"""flaxft's Flax encoders (one file per family, flaxft.model.registry) and Hugging Face checkpoint conversion."""

from flaxft.model.encoder_config import EncoderConfig
from flaxft.model.hf_files import read_hf_config, read_hf_state_dict
from flaxft.model.pretrained import (
    build,
    config_from_hf,
    family_of,
    init_params,
    load_pretrained,
    param_shapes,
    params_to_state_dict,
    read_config,
    state_dict_to_params,
)

__all__ = [
    "EncoderConfig",
    "build",
    "config_from_hf",
    "family_of",
    "init_params",
    "load_pretrained",
    "param_shapes",
    "params_to_state_dict",
    "read_config",
    "read_hf_config",
    "read_hf_state_dict",
    "state_dict_to_params",
]
