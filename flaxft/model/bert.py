"""BERT (and checkpoints of its shape, such as MiniLM): the reference family.

Its config fields and weight names are shared by the families built on BERT's encoder (RoBERTa,
ELECTRA), which reuse `bert_style_config` and `bert_style_keys`.
"""

from __future__ import annotations

from flaxft.model.encoder_config import EncoderConfig, as_json, hf_config_object, refuse
from flaxft.model.layers import EncoderClassifier
from flaxft.model.registry import Family
from flaxft.model.weights import KeyMap


def bert_style_config(hf, **family_fields) -> EncoderConfig:
    """EncoderConfig from a transformers config with BERT's field names (hidden_act, hidden_dropout_prob, ...)."""
    refuse(getattr(hf, "position_embedding_type", "absolute") != "absolute",
           f"position_embedding_type '{getattr(hf, 'position_embedding_type', None)}'",
           "use a checkpoint with absolute position embeddings")
    refuse(bool(getattr(hf, "is_decoder", False) or getattr(hf, "add_cross_attention", False)),
           "a decoder config (is_decoder / add_cross_attention)", "use an encoder checkpoint")
    classifier_dropout = getattr(hf, "classifier_dropout", None)
    fields = dict(
        model_type=hf.model_type, vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
        num_layers=hf.num_hidden_layers, num_heads=hf.num_attention_heads, intermediate_size=hf.intermediate_size,
        activation=hf.hidden_act, hidden_dropout=hf.hidden_dropout_prob,
        attention_dropout=hf.attention_probs_dropout_prob, attention_output_dropout=hf.hidden_dropout_prob,
        classifier_dropout=hf.hidden_dropout_prob if classifier_dropout is None else classifier_dropout,
        max_positions=hf.max_position_embeddings, type_vocab_size=getattr(hf, "type_vocab_size", 0),
        layer_norm_eps=hf.layer_norm_eps, initializer_range=hf.initializer_range,
        pad_token_id=hf.pad_token_id if hf.pad_token_id is not None else 0, hf_config=as_json(hf))
    return EncoderConfig(**{**fields, **family_fields})


# flaxft's module in each encoder layer -> BERT's name for it under `<prefix>.encoder.layer.<i>`
BERT_LAYER_PARTS = {"attention/query": "attention.self.query", "attention/key": "attention.self.key",
                    "attention/value": "attention.self.value", "attention/output": "attention.output.dense",
                    "attention_norm": "attention.output.LayerNorm", "mlp/input": "intermediate.dense",
                    "mlp/output": "output.dense", "mlp_norm": "output.LayerNorm"}


def bert_style_keys(prefix: str, head: dict[str, str], embeddings: tuple[tuple[str, str], ...] = (),
                    layers: str | None = None, parts: dict[str, str] = BERT_LAYER_PARTS) -> KeyMap:
    """The key map of a BERT-shaped encoder under `prefix`, with the family's head (and extra embedding) names;
    families that name their layers otherwise (DistilBERT, MPNet) give their layer list path and `parts`."""
    layers = layers or f"{prefix}.encoder.layer"
    return KeyMap(prefix=prefix, modules=(
        (r"embeddings/(word|position|token_type)_embeddings", rf"{prefix}.embeddings.\1_embeddings"),
        (r"embeddings/norm", f"{prefix}.embeddings.LayerNorm"),
        *embeddings,
        *((rf"encoder/layer_(\d+)/{part}", rf"{layers}.\1.{name}") for part, name in parts.items()),
        *head.items(),
    ))


def read_config(d: dict) -> EncoderConfig:
    return bert_style_config(hf_config_object(d))


FAMILY = Family(
    name="bert",
    architectures={"bert": "BertForSequenceClassification"},
    read_config=read_config,
    keys=bert_style_keys("bert", head={"head/dense": "bert.pooler.dense", "head/out": "classifier"}),
    module=EncoderClassifier,
    token_type_ids=True,
)
