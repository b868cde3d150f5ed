"""ELECTRA (the discriminator): BERT's encoder on embeddings that may be narrower than the hidden size.

Word, position and type embeddings have `embedding_size` columns and their LayerNorm runs at that width;
`embeddings_project` then maps them to the hidden size (only when the sizes differ, as in ELECTRA-small).
The head is dropout, dense, exact GELU, dropout, out_proj. ElectraForPreTraining's
discriminator_predictions and a generator's weights are not the classifier's and are ignored.

The projection kernel ([embedding_size, hidden], 32K floats in ELECTRA-small) has no partition rule of
its own: like the other small matrices it stays replicated, which saves an all-gather before layer 0.
"""

from __future__ import annotations

from flaxft.model.bert import bert_style_config, bert_style_keys
from flaxft.model.encoder_config import EncoderConfig, hf_config_object
from flaxft.model.layers import EncoderClassifier
from flaxft.model.registry import Family


def read_config(d: dict) -> EncoderConfig:
    hf = hf_config_object(d)
    return bert_style_config(hf, embedding_size=hf.embedding_size, head_activation="gelu", head_dropout_first=True)


FAMILY = Family(
    name="electra",
    architectures={"electra": "ElectraForSequenceClassification"},
    read_config=read_config,
    keys=bert_style_keys("electra", head={"head/dense": "classifier.dense", "head/out": "classifier.out_proj"},
                         embeddings=((r"embeddings/projection", "electra.embeddings_project"),)),
    module=EncoderClassifier,
    token_type_ids=True,
)
