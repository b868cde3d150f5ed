"""An encoder's hyper-parameters: one dataclass for every family, filled from a Hugging Face config.json.

Each family (flaxft.model.registry) reads its config.json through transformers' own config class, which
supplies the defaults and the aliases (DistilBERT's `dim` is `hidden_size`), and maps it onto these fields.
The source config.json is kept (`hf_config`, JSON text) for export, so nothing it says is lost.
"""

from __future__ import annotations

import dataclasses
import json

from flaxft.errors import FlaxftError

# Hugging Face activation names -> how flaxft computes them (HF "gelu" is the exact erf form).
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    model_type: str                       # config.json's model_type: picks the family
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    activation: str = "gelu"
    hidden_dropout: float = 0.1           # embeddings, after each residual branch
    attention_dropout: float = 0.1        # on the attention probabilities
    attention_output_dropout: float = 0.1  # after the attention's output projection (DistilBERT has none)
    classifier_dropout: float = 0.1
    max_positions: int = 512              # rows of the position table
    position_offset: int | None = None    # None: positions 0, 1, ...; k: 1+k, 2+k, ... (RoBERTa, MPNet: k = padding id)
    type_vocab_size: int = 2              # 0: no token-type embeddings
    embedding_size: int | None = None     # set when embeddings are narrower and projected (ELECTRA)
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    relative_attention_buckets: int = 0   # > 0: a bucketed relative-position bias in every layer (MPNet)
    relative_attention_max_distance: int = 128
    sinusoidal_positions: bool = False    # a fresh position table holds sinusoids (DistilBERT option)
    head_activation: str = "tanh"         # of the head's hidden layer (BERT pooler: tanh; ELECTRA gelu; DistilBERT relu)
    head_dropout_first: bool = False      # dropout on the [CLS] vector before the head's hidden layer (RoBERTa-style heads)
    hf_config: str = "{}"                 # the source config.json, as JSON text

    def __post_init__(self):
        for name in ("activation", "head_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise FlaxftError(f"model config: activation '{getattr(self, name)}' is not supported; "
                                  f"use one of {list(ACTIVATIONS)}")
        if self.hidden_size % self.num_heads:
            raise FlaxftError(f"model config: hidden size {self.hidden_size} is not divisible by "
                              f"{self.num_heads} attention heads; fix config.json")

    @property
    def max_length(self) -> int:
        """The longest sequence the position table can hold."""
        return self.max_positions - (0 if self.position_offset is None else self.position_offset + 1)

    @property
    def head_input_dropout(self) -> float:
        """Dropout rate on the [CLS] vector before the head's hidden layer (0: none)."""
        return self.classifier_dropout if self.head_dropout_first else 0.0

    @property
    def embedding_width(self) -> int:
        return self.embedding_size or self.hidden_size

    def to_hf(self) -> dict:
        """The source config.json as a dict."""
        return json.loads(self.hf_config)


def hf_config_object(d: dict):
    """transformers' config object for a config.json dict: its defaults filled in, its aliases resolved."""
    import transformers
    from huggingface_hub.errors import StrictDataclassError  # transformers' validation of typed config fields

    values = {k: v for k, v in d.items() if k != "model_type"}
    try:
        return transformers.AutoConfig.for_model(d["model_type"], **values)
    except (TypeError, ValueError, StrictDataclassError) as e:
        reason = " ".join(line.strip() for line in str(e).splitlines())  # strict errors name the field on line 1
        raise FlaxftError(f"model config: transformers cannot read this {d['model_type']} config.json "
                          f"({reason}); fix config.json") from None


def refuse(condition: bool, feature: str, fix: str) -> None:
    """A config.json feature a family does not implement: one line naming it."""
    if condition:
        raise FlaxftError(f"model config: {feature} is not supported by flaxft; {fix}")


def as_json(hf) -> str:
    """A transformers config object as JSON text (keys and values as config.json holds them)."""
    return json.dumps(hf.to_dict(), sort_keys=True, default=str)
