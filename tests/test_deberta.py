"""DeBERTa-v2/v3 beyond the family harness (tests/test_families.py): the log buckets, every attention variant,
long rows past the buckets, packed examples far into their row, masked-LM checkpoints, sharding of the
position projections, refused configs, and a DeBERTa-v3 folder whose only tokenizer file is spm.model."""

import io
import json
import logging
import pathlib

import jax
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import PartitionSpec as P
from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position, make_log_bucket_position

from flaxft.config import MeshConfig
from flaxft.data.tokenize import load_tokenizer
from flaxft.errors import FlaxftError
from flaxft.model import build, config_from_hf, init_params, load_pretrained
from flaxft.model.deberta import FAMILY, log_buckets, relative_index
from flaxft.parallel import make_mesh, tree_shardings

from tests.conftest import WORDS
from tests.test_families import (DEBERTA_V3, assert_gradients_match, long_batch, mixed_batch, packed_logits,
                                 tiny_config, tiny_torch_model, torch_inputs)


@pytest.mark.parametrize("buckets, max_position", [(4, 8), (32, 128), (256, 512), (64, 1024)])
def test_buckets_match_transformers(buckets, max_position):
    """Every distance up to 1200 on both sides: kept, logarithmic and beyond max_position."""
    distance = torch.arange(-1200, 1201)
    want = make_log_bucket_position(distance, buckets, max_position).long().numpy()
    np.testing.assert_array_equal(log_buckets(distance.numpy(), buckets, max_position), want)


@pytest.mark.parametrize("buckets, max_relative", [(4, 8), (0, 6), (0, 64)])
def test_relative_index_matches_transformers(buckets, max_relative):
    """The table row of each (query, key) pair: transformers' relative position, shifted by the span, clamped."""
    config = config_from_hf(tiny_config("deberta-v2", position_buckets=buckets, max_relative_positions=max_relative)
                            .to_dict())
    length = 40
    x = torch.zeros(1, length, 1)
    rel = build_relative_position(x, x, bucket_size=buckets or -1, max_position=max_relative)[0].numpy()
    span = buckets or max_relative
    want = np.clip(rel + span, 0, 2 * span - 1)
    np.testing.assert_array_equal(relative_index(config, length)[0, 0], want)


# pos_att_type x share_att_key x the input's options x the span: logits against transformers
VARIANTS = [
    dict(pos_att_type=["c2p"], share_att_key=True),
    dict(pos_att_type=["p2c"], share_att_key=True, position_biased_input=True),
    dict(pos_att_type=["c2p", "p2c"], share_att_key=False, type_vocab_size=2),
    dict(pos_att_type=[], share_att_key=False),                             # relative table, no relative terms
    dict(relative_attention=False, pos_att_type=["c2p", "p2c"], type_vocab_size=2,  # the scale still counts them
         position_biased_input=True),
    dict(pos_att_type="p2c|c2p", norm_rel_ebd="none", pooler_hidden_act="tanh", layer_norm_eps=1e-5),
    # spans of at least the row length: terms by distance (shifted matmuls), with and without buckets
    dict(position_buckets=16, max_relative_positions=32),
    dict(position_buckets=0, max_relative_positions=10, share_att_key=False, type_vocab_size=2),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in sorted(v)))
def test_attention_variants_match_transformers(variant, tmp_path):
    model = tiny_torch_model("deberta-v2", **variant)
    model.save_pretrained(tmp_path)
    config, params = load_pretrained(tmp_path, 3, rng=jax.random.key(0))
    ids, mask, types = mixed_batch(0)
    got = jax.jit(build(config, 3).apply)({"params": params}, ids, mask, types if config.type_vocab_size else None)
    with torch.no_grad():
        want = model(**torch_inputs(model, ids, mask, types)).logits.numpy()
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("buckets, max_relative", [(8, 32), (128, 256)])
def test_long_rows_and_late_packed_examples_match_transformers(buckets, max_relative, tmp_path):
    """Rows of 60-90 tokens reach the logarithmic buckets (with a span of 8 they run far past it, to the clamp at
    max_relative_positions; with a span of 128 they stay within it): logits and gradients match; an example
    packed at token 80 of its row keeps its own relative positions."""
    model = tiny_torch_model("deberta-v2", position_buckets=buckets, max_relative_positions=max_relative,
                             max_position_embeddings=128)
    model.save_pretrained(tmp_path)
    config, params = load_pretrained(tmp_path, 3, rng=jax.random.key(0))
    ids, mask, types = long_batch([90, 75, 60], 90)
    got = jax.jit(build(config, 3).apply)({"params": params}, ids, mask)
    with torch.no_grad():
        want = model(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask)).logits
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-4, rtol=0)
    assert_gradients_match(model, config, params, ids, mask, types)

    ids, mask, types = long_batch([80, 60, 30, 15], 80, seed=1)
    alone = np.asarray(build(config, 3).apply({"params": params}, ids, mask))
    packed = np.asarray(packed_logits(config, params, ids, mask, types, np.array([[0, 3], [1, 2]]), 100, 0))
    np.testing.assert_allclose(packed[[0, 1, 1, 0], [0, 0, 1, 1]], alone, atol=1e-5)


@pytest.mark.parametrize("legacy", [True, False])
def test_masked_lm_checkpoint_gets_a_fresh_head(legacy, tmp_path, caplog):
    """DebertaV2ForMaskedLM (either LM head layout): its encoder is loaded, its LM head ignored, the classifier
    head initialised fresh."""
    model = tiny_torch_model("deberta-v2")
    model.save_pretrained(tmp_path / "cls")
    _, params = load_pretrained(tmp_path / "cls", 3, rng=jax.random.key(0))
    mlm = transformers.DebertaV2ForMaskedLM.from_pretrained(tmp_path / "cls", legacy=legacy)
    mlm.save_pretrained(tmp_path / "mlm")
    with caplog.at_level(logging.WARNING, logger="flaxft"):
        _, params2 = load_pretrained(tmp_path / "mlm", 2, rng=jax.random.key(0))
    assert "head/out/kernel" in caplog.text and "encoder/" not in caplog.text
    jax.tree.map(np.testing.assert_array_equal, params2["encoder"], params["encoder"])
    jax.tree.map(np.testing.assert_array_equal, params2["embeddings"], params["embeddings"])


def test_position_projections_split_heads_over_tensor_axis():
    config = config_from_hf(tiny_config("deberta-v2", share_att_key=False).to_dict())
    mesh = make_mesh(MeshConfig(data=-1, tensor=2))
    shardings = tree_shardings(mesh, init_params(config, 3, jax.random.key(0)), FAMILY.partition_rules)
    attention = shardings["encoder"]["layer_0"]["attention"]
    assert attention["position_key"]["kernel"].spec == attention["query"]["kernel"].spec == P(None, "tensor")
    assert attention["position_query"]["bias"].spec == P("tensor")
    assert shardings["encoder"]["relative_embeddings"]["embedding"].spec == P(None, None)  # small: replicated


@pytest.mark.parametrize("field, value", [("conv_kernel_size", 3), ("attention_head_size", 16),
                                          ("embedding_size", 16), ("pooler_hidden_size", 16)])
def test_unsupported_variants_are_one_line_errors(field, value):
    with pytest.raises(FlaxftError, match=rf"^model config: {field} {value}.* is not supported by flaxft; [^\n]*$"):
        config_from_hf({**tiny_config("deberta-v2").to_dict(), field: value})


def spm_tokenizer_folder(folder: pathlib.Path, words=WORDS) -> pathlib.Path:
    """A DeBERTa-v3-style tokenizer folder: a unigram spm.model ([PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, [MASK]) and
    tokenizer_config.json, as the Hub's deberta-v3 folders have them; no tokenizer.json."""
    import sentencepiece

    words = [*words, "good", "bad"]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4), model_writer=model,
        model_type="unigram", vocab_size=80, hard_vocab_limit=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]", user_defined_symbols=["[MASK]"],
        minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spm.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "vocab_type": "spm"}))
    return folder


def test_spm_model_only_folder_tokenizes_as_sentencepiece(tmp_path):
    """flaxft's tokenizer for a folder with config.json + spm.model + tokenizer_config.json (no tokenizer.json) is
    fast and gives transformers' DebertaV2Tokenizer's ids, which are sentencepiece's own with [CLS]/[SEP]; saved
    (as export does) and reloaded, it gives the same ids."""
    import sentencepiece

    folder = spm_tokenizer_folder(tmp_path / "v3")
    transformers.DebertaV2Config(**DEBERTA_V3).save_pretrained(folder)
    assert not (folder / "tokenizer.json").exists()
    ours = load_tokenizer(folder)
    assert ours.is_fast
    first = ["the movie was good, Zebra!", "  really   bad\tplot", "actor"]
    second = ["a film", "scene music", "quite x"]
    want = transformers.DebertaV2Tokenizer.from_pretrained(folder)(first, second)
    got = ours(first, second)
    assert got["input_ids"] == want["input_ids"] and got["token_type_ids"] == want["token_type_ids"]
    spm = sentencepiece.SentencePieceProcessor(model_file=str(folder / "spm.model"))
    for ids, a, b in zip(got["input_ids"], first, second):
        assert ids == [1, *spm.encode(a), 2, *spm.encode(b), 2]
    assert (ours.pad_token_id, ours.unk_token_id, ours.mask_token_id) == (0, 3, 4)
    ours.save_pretrained(tmp_path / "saved")
    assert load_tokenizer(tmp_path / "saved")(first, second)["input_ids"] == got["input_ids"]
