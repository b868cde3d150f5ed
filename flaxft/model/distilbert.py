"""DistilBERT: BERT's post-norm encoder without token types, with its own weight names and config fields.

Its attention output goes straight into the residual sum (no dropout there), its LayerNorms use a fixed
eps of 1e-12, and its head is pre_classifier -> ReLU -> dropout -> classifier. With
`sinusoidal_pos_embds` transformers 5 only *initialises* the position table with sinusoids: the table is
an ordinary trainable weight, loaded from checkpoints like any other, and so it is here.
"""

from __future__ import annotations

from flaxft.model.bert import bert_style_keys
from flaxft.model.encoder_config import EncoderConfig, as_json, hf_config_object
from flaxft.model.layers import EncoderClassifier
from flaxft.model.registry import Family


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


FAMILY = Family(
    name="distilbert",
    architectures={"distilbert": "DistilBertForSequenceClassification"},
    read_config=read_config,
    keys=bert_style_keys(
        "distilbert", head={"head/dense": "pre_classifier", "head/out": "classifier"},
        layers="distilbert.transformer.layer",
        parts={**{f"attention/{p}": f"attention.{p[0]}_lin" for p in ("query", "key", "value")},
               "attention/output": "attention.out_lin", "attention_norm": "sa_layer_norm", "mlp/input": "ffn.lin1",
               "mlp/output": "ffn.lin2", "mlp_norm": "output_layer_norm"}),
    module=EncoderClassifier,
    token_type_ids=False,
)
