"""The encoder families flaxft fine-tunes, by config.json `model_type`.

A family is one file in flaxft/model/ defining a `FAMILY`; adding one means that file plus a line in
`_families()`. Each entry says how to read its config.json, which module computes it, how its weights
are named in Hugging Face checkpoints, how it shards beyond the shared rules, and what export writes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from flaxft.errors import FlaxftError
from flaxft.model.encoder_config import EncoderConfig
from flaxft.model.weights import KeyMap


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    architectures: dict[str, str]             # model_type -> transformers' *ForSequenceClassification class
    read_config: Callable[[dict], EncoderConfig]  # config.json dict -> EncoderConfig (one-line errors)
    keys: KeyMap                              # flaxft parameter paths <-> Hugging Face weight names
    module: type                              # flax module: (config, num_labels, dtype, remat) -> logits
    token_type_ids: bool                      # the tokenizer's token type ids reach the model
    partition_rules: tuple = ()               # (regex, PartitionSpec) tried before flaxft.parallel's shared rules


def _families() -> tuple[Family, ...]:
    from flaxft.model import bert, deberta, distilbert, electra, modernbert, mpnet, roberta

    return (bert.FAMILY, roberta.FAMILY, electra.FAMILY, distilbert.FAMILY, mpnet.FAMILY, deberta.FAMILY,
            modernbert.FAMILY)


@functools.cache
def families() -> dict[str, Family]:
    """model_type -> Family."""
    return {model_type: f for f in _families() for model_type in f.architectures}


def family(model_type: str) -> Family:
    found = families().get(model_type)
    if found is None:
        raise FlaxftError(f"model config: model_type '{model_type}' is not supported; flaxft fine-tunes "
                          f"{', '.join(families())} checkpoints")
    return found
