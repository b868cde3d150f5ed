"""RoBERTa, XLM-RoBERTa and CamemBERT: BERT's encoder with positions numbered after the padding id.

transformers numbers real tokens pad+1, pad+2, ... (`create_position_ids_from_input_ids`), so the
position table has pad+1 unused rows and the longest sequence is max_position_embeddings - pad - 1.
The tokenizer gives no token types: the model adds row 0 of its (usually one-row) type table.
All three keep their weights under "roberta."; a base checkpoint's pooler and a masked-LM checkpoint's
lm_head are not used by the classifier and are ignored.
"""

from __future__ import annotations

from flaxft.model.bert import bert_style_config, bert_style_keys
from flaxft.model.encoder_config import EncoderConfig, hf_config_object, refuse
from flaxft.model.layers import EncoderClassifier
from flaxft.model.registry import Family


def read_config(d: dict) -> EncoderConfig:
    hf = hf_config_object(d)
    refuse(hf.pad_token_id is None, f"a {hf.model_type} config without pad_token_id (positions start after it)",
           "set pad_token_id in config.json")
    return bert_style_config(hf, position_offset=hf.pad_token_id, head_dropout_first=True)


FAMILY = Family(
    name="roberta",
    architectures={"roberta": "RobertaForSequenceClassification",
                   "xlm-roberta": "XLMRobertaForSequenceClassification",
                   "camembert": "CamembertForSequenceClassification"},
    read_config=read_config,
    keys=bert_style_keys("roberta", head={"head/dense": "classifier.dense", "head/out": "classifier.out_proj"}),
    module=EncoderClassifier,
    token_type_ids=False,
)
