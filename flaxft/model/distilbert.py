"""DistilBERT: BERT's post-norm encoder without token types, with its own weight names and config fields.

Its attention output goes straight into the residual sum (no dropout there), its LayerNorms use a fixed
eps of 1e-12, and its head is pre_classifier -> ReLU -> dropout -> classifier. With
`sinusoidal_pos_embds` transformers 5 only *initialises* the position table with sinusoids: the table is
an ordinary trainable weight, loaded from checkpoints like any other, and so it is here.
"""

from __future__ import annotations

from flaxft.model.encoder_config import EncoderConfig, as_json, hf_config_object
from flaxft.model.layers import EncoderClassifier
from flaxft.model.registry import Family
from flaxft.model.weights import KeyMap


def read_config(d: dict) -> EncoderConfig:
    hf = hf_config_object(d)
    return EncoderConfig(
        model_type=hf.model_type, vocab_size=hf.vocab_size, hidden_size=hf.dim, num_layers=hf.n_layers,
        num_heads=hf.n_heads, intermediate_size=hf.hidden_dim, activation=hf.activation, hidden_dropout=hf.dropout,
        attention_dropout=hf.attention_dropout, attention_output_dropout=0.0,
        classifier_dropout=hf.seq_classif_dropout, max_positions=hf.max_position_embeddings, type_vocab_size=0,
        layer_norm_eps=1e-12, initializer_range=hf.initializer_range,
        pad_token_id=hf.pad_token_id if hf.pad_token_id is not None else 0,
        sinusoidal_positions=bool(hf.sinusoidal_pos_embds), head_activation="relu", hf_config=as_json(hf))


_LAYER = r"encoder/layer_(\d+)"
_HF_LAYER = r"distilbert.transformer.layer.\1"

FAMILY = Family(
    name="distilbert",
    architectures={"distilbert": "DistilBertForSequenceClassification"},
    read_config=read_config,
    keys=KeyMap(prefix="distilbert", modules=(
        (r"embeddings/(word|position)_embeddings", r"distilbert.embeddings.\1_embeddings"),
        (r"embeddings/norm", "distilbert.embeddings.LayerNorm"),
        (rf"{_LAYER}/attention/(q|k|v)\w+", rf"{_HF_LAYER}.attention.\2_lin"),
        (rf"{_LAYER}/attention/output", rf"{_HF_LAYER}.attention.out_lin"),
        (rf"{_LAYER}/attention_norm", rf"{_HF_LAYER}.sa_layer_norm"),
        (rf"{_LAYER}/mlp/input", rf"{_HF_LAYER}.ffn.lin1"),
        (rf"{_LAYER}/mlp/output", rf"{_HF_LAYER}.ffn.lin2"),
        (rf"{_LAYER}/mlp_norm", rf"{_HF_LAYER}.output_layer_norm"),
        ("head/dense", "pre_classifier"),
        ("head/out", "classifier"),
    )),
    module=EncoderClassifier,
    token_type_ids=False,
)
