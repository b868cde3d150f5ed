"""ModernBERT beyond the family harness (tests/test_families.py, tests/test_family_runs.py): config.json as the
Hub writes it, masked-LM checkpoints, the sliding window on long packed rows, mean pooling of empty slots,
the sharding of the fused layers, and refused variants."""

import json
import logging
import re

import jax
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import PartitionSpec as P

from flaxft.cli import run_main
from flaxft.config import MeshConfig
from flaxft.errors import FlaxftError
from flaxft.model import build, config_from_hf, load_pretrained, params_to_state_dict, state_dict_to_params
from flaxft.model.modernbert import FAMILY, band_mask, banded, window_mask
from flaxft.parallel import make_mesh, tree_shardings
from flaxft.train import main as train_main
from tests.test_family_runs import modernbert_tokenizer, run_args, write_pairs
from tests.test_families import (MODERNBERT, VOCAB, assert_gradients_match, long_batch, packed_logits,
                                 tiny_torch_model)


# answerdotai/ModernBERT-base's config.json (transformers 4.47 era): the Hub's names for the layer pattern and bases
MODERNBERT_BASE = {
    "architectures": ["ModernBertForMaskedLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 50281, "classifier_activation": "gelu", "classifier_bias": False, "classifier_dropout": 0.0,
    "classifier_pooling": "mean", "cls_token_id": 50281, "decoder_bias": True, "deterministic_flash_attn": False,
    "embedding_dropout": 0.0, "eos_token_id": 50282, "global_attn_every_n_layers": 3, "global_rope_theta": 160000.0,
    "gradient_checkpointing": False, "hidden_activation": "gelu", "hidden_size": 768, "initializer_cutoff_factor": 2.0,
    "initializer_range": 0.02, "intermediate_size": 1152, "layer_norm_eps": 1e-05, "local_attention": 128,
    "local_rope_theta": 10000.0, "max_position_embeddings": 8192, "mlp_bias": False, "mlp_dropout": 0.0,
    "model_type": "modernbert", "norm_bias": False, "norm_eps": 1e-05, "num_attention_heads": 12,
    "num_hidden_layers": 22, "pad_token_id": 50283, "position_embedding_type": "absolute", "sep_token_id": 50282,
    "tie_word_embeddings": True, "torch_dtype": "float32", "transformers_version": "4.47.0.dev0", "vocab_size": 50368}


def test_hub_config_fields():
    """The Hub's config.json names (global_attn_every_n_layers, *_rope_theta) become per-layer kinds and bases."""
    config = config_from_hf(MODERNBERT_BASE)
    assert config.global_layers == tuple(i % 3 == 0 for i in range(22))
    assert config.half_window == 64 and config.pooling == "mean" and not config.norm_bias
    assert (config.global_rope_theta, config.local_rope_theta, config.layer_norm_eps) == (160000.0, 10000.0, 1e-5)
    assert config.max_length == 8192 and config.type_vocab_size == 0 and config.intermediate_size == 1152
    other = config_from_hf({"model_type": "modernbert", "num_hidden_layers": 4, "global_attn_every_n_layers": 2,
                            "local_rope_theta": 500.0, "norm_eps": 1e-6, "norm_bias": True})
    assert other.global_layers == (True, False, True, False) and other.local_rope_theta == 500.0
    assert other.layer_norm_eps == 1e-6 and other.norm_bias and other.pooling == "cls"


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_window_far_shorter_than_rows(pooling, tmp_path):
    """Rows of up to 40 tokens with a window of 3 each side: logits and gradients match transformers, and packed
    rows (an example starting at token 33 of its row) give each example's own logits."""
    model = tiny_torch_model("modernbert", local_attention=6, classifier_pooling=pooling)
    model.save_pretrained(tmp_path)
    config, params = load_pretrained(tmp_path, 3, rng=jax.random.key(0))
    ids, mask, types = long_batch([40, 33, 7], 40)
    got = build(config, 3).apply({"params": params}, ids, mask)
    with torch.no_grad():
        want = model(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask)).logits
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-4, rtol=0)
    assert_gradients_match(model, config, params, ids, mask, types)
    packed = np.asarray(packed_logits(config, params, ids, mask, types, np.array([[1, 2, -1], [0, -1, -1]]), 48, 0))
    np.testing.assert_allclose(packed[[1, 0, 0], [0, 0, 1]], np.asarray(got), atol=1e-5)
    assert np.isfinite(packed).all()  # empty slots too (mean pooling over no tokens is zeros, not NaN)


def test_window_wider_than_a_third_of_the_row(tmp_path):
    """A window of 8 each side on rows of 10: one dense [L, L] mask (blocks would cost more), still windowed (tokens
    0 and 9 do not see each other); logits and gradients match transformers, packed rows their examples."""
    model = tiny_torch_model("modernbert", local_attention=16)
    model.save_pretrained(tmp_path)
    config, params = load_pretrained(tmp_path, 3, rng=jax.random.key(0))
    assert not banded(10, config.half_window) and banded(40, config.half_window)
    ids, mask, types = long_batch([10, 10, 6], 10)
    got = build(config, 3).apply({"params": params}, ids, mask)
    with torch.no_grad():
        want = model(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask)).logits
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-4, rtol=0)
    assert_gradients_match(model, config, params, ids, mask, types)
    packed = np.asarray(packed_logits(config, params, ids, mask, types, np.array([[0, 2], [1, -1]]), 16, 0))
    np.testing.assert_allclose(packed[[0, 1, 0], [0, 0, 1]], np.asarray(got), atol=1e-5)


def test_window_mask_stays_inside_examples():
    """Packed positions restart per example: the window is by those positions, within the same segment; the
    blocked mask (blocks of 2 tokens against 6 keys) holds the same pairs."""
    segments = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 0, 0, 3]])
    positions = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 0, 0, 0]])
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
    got = np.asarray(window_mask(same[:, None], positions, positions, 2))[0, 0]
    want = same[0] & (np.abs(positions[0][:, None] - positions[0][None, :]) <= 2)
    np.testing.assert_array_equal(got, want)
    assert not got[4, 5] and got[4, 2] and not got[4, 1]
    band = np.asarray(band_mask(segments, 2).mask)[0, :, 0]  # [blocks, 2, 6]: keys from index 2 i - 2
    from_band = np.zeros((12, 12), bool)
    for i, block in enumerate(band):
        for j, t in zip(*np.nonzero(block)):
            from_band[2 * i + j, 2 * i - 2 + t] = True
    np.testing.assert_array_equal(from_band[:11, :11], want)


def test_masked_lm_checkpoint_keeps_its_head(tmp_path, caplog):
    """A ModernBertForMaskedLM folder: the encoder and the prediction head (dense, norm) come from it, only the
    output layer is new; the decoder is ignored. The classifier then matches transformers' with that layer."""
    torch.manual_seed(0)
    config_hf = transformers.ModernBertConfig(**{**MODERNBERT, "vocab_size": VOCAB, "hidden_size": 32,
                                                 "num_attention_heads": 4, "intermediate_size": 37, "num_labels": 2})
    mlm = transformers.ModernBertForMaskedLM(config_hf).eval()
    with torch.no_grad():
        for p in mlm.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    mlm.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="flaxft"):
        config, params = load_pretrained(tmp_path, 2, rng=jax.random.key(0))
    fresh = [line for line in caplog.text.splitlines() if "newly initialized" in line]
    assert len(fresh) == 1 and "head/out/kernel" in fresh[0] and "head/dense" not in fresh[0]
    state = params_to_state_dict(params, config)
    for key, value in mlm.state_dict().items():
        if not key.startswith("decoder"):
            np.testing.assert_array_equal(state[key], value.numpy(), err_msg=key)
    classifier = transformers.ModernBertForSequenceClassification.from_pretrained(tmp_path).eval()
    classifier.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    ids, mask, _ = long_batch([12, 9], 12)
    with torch.no_grad():
        want = classifier(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask)).logits
    np.testing.assert_allclose(np.asarray(build(config, 2).apply({"params": params}, ids, mask)), want.numpy(),
                               atol=1e-4, rtol=0)


def test_a_fused_weight_of_the_wrong_size_is_named():
    model = tiny_torch_model("modernbert")
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    state["model.layers.1.attn.Wqkv.weight"] = np.zeros((97, 32), np.float32)
    config = config_from_hf(model.config.to_dict())
    with pytest.raises(FlaxftError, match=r"^checkpoint weight 'model.layers.1.attn.Wqkv.weight' has shape \(97, 32\)"):
        state_dict_to_params(state, config, 3, jax.random.key(0))


def test_fused_layers_shard_like_their_parts():
    """query/key/value (from Wqkv) follow the shared rules; the GeGLU gate (from Wi) splits like the input."""
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    config = config_from_hf({"model_type": "modernbert", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "intermediate_size": 48})
    module = build(config, 2)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), np.zeros((1, 8), np.int32), np.ones((1, 8))))
    layer = tree_shardings(mesh, shapes["params"], FAMILY.partition_rules)["encoder"]["layer_1"]
    for name in ("query", "key", "value"):
        assert layer["attention"][name]["kernel"].spec == P("fsdp", "tensor")
    assert layer["mlp"]["gate"]["kernel"].spec == layer["mlp"]["input"]["kernel"].spec == P("fsdp", "tensor")
    assert layer["mlp"]["output"]["kernel"].spec == P("tensor", "fsdp")


@pytest.mark.parametrize("field, named", [
    ({"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}, "rope_type 'linear'"),
    ({"hidden_activation": "silu"}, "hidden_activation 'silu'"),
    ({"classifier_activation": "silu"}, "classifier_activation 'silu'"),
    ({"hidden_size": 36, "num_attention_heads": 4}, "an odd attention head size (9)"),
])
def test_unsupported_variants_are_one_line_errors(field, named):
    with pytest.raises(FlaxftError, match=rf"^model config: {re.escape(named)}.* is not supported[^\n]*$"):
        config_from_hf({"model_type": "modernbert", **field})


@pytest.mark.parametrize("field, named", [
    ({"classifier_pooling": "max"}, "classifier_pooling"),
    ({"num_hidden_layers": 2, "layer_types": ["full_attention"]}, "layer_types"),
])
def test_configs_transformers_refuses_are_one_line_errors(field, named):
    with pytest.raises(FlaxftError, match=rf"^model config: transformers cannot read this modernbert config.json "
                                          rf"\([^\n]*{named}[^\n]*\); fix config.json$"):
        config_from_hf({"model_type": "modernbert", **field})


def test_an_unsupported_variant_stops_the_job_in_one_line(tmp_path, capsys):
    tokenizer, folder = modernbert_tokenizer(), tmp_path / "model"
    transformers.ModernBertModel(transformers.ModernBertConfig(
        **{**MODERNBERT, "vocab_size": len(tokenizer), "hidden_size": 32, "num_attention_heads": 4,
           "intermediate_size": 37})).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"]["sliding_attention"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    (folder / "config.json").write_text(json.dumps(config))
    write_pairs(tmp_path / "train.csv", 16, seed=0)
    write_pairs(tmp_path / "dev.csv", 8, seed=1)
    assert run_main(train_main, run_args(folder, tmp_path, tmp_path / "out")) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("flaxft: error")]
    assert len(lines) == 1 and "rope_type 'linear' (sliding_attention layers) is not supported" in lines[0]
    assert not (tmp_path / "out" / "checkpoints").exists()
