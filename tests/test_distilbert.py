"""DistilBERT beyond the family harness: the sinusoidal position option, refused configs, and real weights
(MiniLM's BERT encoder moved under DistilBERT's names) on real MRPC pairs."""

import jax
import numpy as np
import pytest
import torch
import transformers

from flaxft.errors import FlaxftError
from flaxft.model import build, config_from_hf, init_params, load_pretrained

from tests.conftest import bert_as_distilbert, mrpc_pairs
from tests.test_families import tiny_config


@pytest.mark.parametrize("sinusoidal", [True, False])
def test_fresh_position_table(sinusoidal):
    """transformers 5 fills a fresh table with sinusoids when sinusoidal_pos_embds is set and keeps it a
    trainable weight (the harness compares its gradient); a fresh flaxft model starts from the same table."""
    hf = tiny_config("distilbert", sinusoidal_pos_embds=sinusoidal)
    torch.manual_seed(0)
    want = transformers.DistilBertForSequenceClassification(hf).distilbert.embeddings.position_embeddings.weight
    assert want.requires_grad
    config = config_from_hf(hf.to_dict())
    got = np.asarray(init_params(config, 3, jax.random.key(0))["embeddings"]["position_embeddings"]["embedding"])
    assert got.shape == tuple(want.shape)
    if sinusoidal:
        np.testing.assert_array_equal(got, want.detach().numpy())
    else:
        assert 0.015 < got.std() < 0.025 and not np.allclose(got, want.detach().numpy())


@pytest.mark.parametrize("fields, named", [({"activation": "silu"}, "activation 'silu'"),
                                           ({"dim": 30, "n_heads": 4}, "30 is not divisible by 4")])
def test_unsupported_configs_are_refused(fields, named):
    with pytest.raises(FlaxftError, match=named) as e:
        config_from_hf({"model_type": "distilbert", **fields})
    assert "\n" not in str(e.value)


def test_real_weights_match_transformers(minilm_dir, glue_dir, tmp_path):
    """A DistilBERT holding MiniLM's real encoder weights, with a seeded random head, on MRPC pairs
    tokenized by MiniLM's tokenizer ([CLS] a [SEP] b [SEP]; DistilBERT reads no token types)."""
    torch.manual_seed(0)
    model = bert_as_distilbert(minilm_dir)
    with torch.no_grad():  # a larger random output layer makes the comparison more telling
        model.classifier.weight.normal_(0.0, 1.0)
        model.classifier.bias.normal_(0.0, 1.0)
    model.save_pretrained(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    first, second = zip(*mrpc_pairs(glue_dir))
    enc = tok(list(first), list(second), padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    assert (mask == 0).any()
    config, params = load_pretrained(tmp_path, 2, rng=jax.random.key(0))
    assert config.model_type == "distilbert" and config.type_vocab_size == 0
    got = np.asarray(jax.jit(build(config, 2).apply)({"params": params}, ids, mask))
    with torch.no_grad():
        want = model(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask)).logits
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
