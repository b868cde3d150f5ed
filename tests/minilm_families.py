"""MiniLM's real BERT weights moved into other families' transformers classifiers: real numbers for parity
tests (and end-to-end runs) of families that have no checkpoint here."""

import pathlib

import safetensors.torch
import torch
import transformers

POSITIONS_AFTER_PAD = ("roberta", "xlm-roberta", "camembert")  # families that number positions pad+1, pad+2, ...


def minilm_as(model_type: str, minilm_dir: pathlib.Path, folder: pathlib.Path, num_labels: int = 2, seed: int = 0):
    """Save into `folder` a transformers *ForSequenceClassification of `model_type` ("roberta", "xlm-roberta",
    "camembert" or "electra") holding MiniLM's encoder, and return it (eval mode).

    Its pad id is MiniLM's ([PAD] = 0), so MiniLM's tokenizer fits. RoBERTa-style position tables get pad+1
    leading rows (position pad+1+i holds BERT's row i) and one token type (BERT's row 0); ELECTRA keeps both
    types and has embedding_size = hidden_size. Head: MiniLM's pooler as the dense layer and a normal(0, 1)
    output layer (seeded), larger than a fresh one so that logit comparisons are telling.
    """
    bert = transformers.BertConfig.from_pretrained(minilm_dir)
    sd = safetensors.torch.load_file(str(pathlib.Path(minilm_dir) / "model.safetensors"))
    shape = dict(vocab_size=bert.vocab_size, hidden_size=bert.hidden_size, num_hidden_layers=bert.num_hidden_layers,
                 num_attention_heads=bert.num_attention_heads, intermediate_size=bert.intermediate_size,
                 hidden_act=bert.hidden_act, layer_norm_eps=bert.layer_norm_eps, pad_token_id=bert.pad_token_id,
                 num_labels=num_labels)
    if model_type in POSITIONS_AFTER_PAD:
        spare = bert.pad_token_id + 1
        extra = dict(max_position_embeddings=bert.max_position_embeddings + spare, type_vocab_size=1)
        positions = sd["embeddings.position_embeddings.weight"]
        sd["embeddings.position_embeddings.weight"] = torch.cat([torch.zeros(spare, positions.shape[1]), positions])
        sd["embeddings.token_type_embeddings.weight"] = sd["embeddings.token_type_embeddings.weight"][:1]
        prefix = "roberta"
    else:
        assert model_type == "electra", model_type
        extra = dict(max_position_embeddings=bert.max_position_embeddings, type_vocab_size=bert.type_vocab_size,
                     embedding_size=bert.hidden_size)
        prefix = "electra"
    config = transformers.AutoConfig.for_model(model_type, **shape, **extra)
    model = transformers.AutoModelForSequenceClassification.from_config(config)
    state = {f"{prefix}.{k}": v for k, v in sd.items() if not k.startswith("pooler.") and v.is_floating_point()}
    generator = torch.Generator().manual_seed(seed)
    state.update({"classifier.dense.weight": sd["pooler.dense.weight"],
                  "classifier.dense.bias": sd["pooler.dense.bias"],
                  "classifier.out_proj.weight": torch.randn(num_labels, bert.hidden_size, generator=generator),
                  "classifier.out_proj.bias": torch.randn(num_labels, generator=generator)})
    model.load_state_dict(state, strict=True)
    model.save_pretrained(folder)
    return model.eval()
