"""flaxft's Flax BERT and Hugging Face checkpoint conversion."""

from flaxft.model.bert import BertConfig, BertForSequenceClassification
from flaxft.model.convert import (
    init_params,
    load_pretrained,
    params_to_state_dict,
    read_hf_state_dict,
    state_dict_to_params,
)

__all__ = [
    "BertConfig",
    "BertForSequenceClassification",
    "init_params",
    "load_pretrained",
    "params_to_state_dict",
    "read_hf_state_dict",
    "state_dict_to_params",
]
