"""BERT specifics and checkpoint reading: torch .bin without torch, the real MiniLM, conversion edge cases.

What every family shares (logits, gradients, packing, bf16, remat, fresh heads) is in test_families.py."""

import json
import logging
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from flaxft.errors import FlaxftError
from flaxft.model import (
    build,
    config_from_hf,
    init_params,
    load_pretrained,
    params_to_state_dict,
    read_hf_state_dict,
    state_dict_to_params,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    type_vocab_size=2,
)
ATOL = 1e-4


def tiny_torch_model(num_labels=3, seed=0, **overrides):
    """A tiny random HF model whose weights are all perturbed, so swapped/transposed names show up."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(**{**TINY, **overrides}, num_labels=num_labels)
    model = transformers.BertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.2)
            if name.endswith("LayerNorm.weight"):
                p.add_(1.0)
    return model


def tiny_batch(seed=0):
    """Three sentence pairs of different lengths, right-padded to 10 (pad id 0)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((3, 10), np.int32)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, (first, second) in enumerate([(5, 5), (4, 3), (2, 2)]):
        n = first + second
        ids[row, :n] = rng.integers(1, TINY["vocab_size"], n)
        mask[row, :n] = 1
        types[row, first:n] = 1
    return ids, mask, types


def torch_logits(model, ids, mask, types):
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long),
            token_type_ids=torch.as_tensor(types, dtype=torch.long),
        )
    return out.logits.numpy()


def flax_logits(config, params, num_labels, ids, mask, types, **kw):
    model = build(config, num_labels, **{k: kw.pop(k) for k in ("dtype", "remat") if k in kw})
    return np.asarray(jax.jit(model.apply)({"params": params}, ids, mask, types, **kw))


def numpy_state_dict(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny():
    return tiny_torch_model()


# ------------------------------------------------------------------------------ parity


def test_tiny_parity_safetensors(tiny, tmp_path, caplog):
    tiny.save_pretrained(tmp_path)  # transformers 5 always writes model.safetensors
    assert (tmp_path / "model.safetensors").is_file()
    with caplog.at_level(logging.WARNING, logger="flaxft"):
        config, params = load_pretrained(tmp_path, 3, rng=jax.random.key(0))
    assert "newly initialized" not in caplog.text
    batch = tiny_batch()
    got = flax_logits(config, params, 3, *batch)
    want = torch_logits(tiny, *batch)
    assert got.dtype == np.float32 and got.shape == (3, 3)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_tiny_parity_torch_bin_loaded_without_torch(tiny, tmp_path):
    # What save_pretrained(safe_serialization=False) wrote before transformers 5 dropped it.
    tiny.config.save_pretrained(tmp_path)
    torch.save(tiny.state_dict(), tmp_path / "pytorch_model.bin")
    batch = tiny_batch()
    np.savez(tmp_path / "batch.npz", *batch)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now fails: flaxft must read the .bin without it
        import jax, numpy as np
        from flaxft.model import build, load_pretrained
        config, params = load_pretrained({str(tmp_path)!r}, 3, rng=jax.random.key(0))
        b = np.load({str(tmp_path / "batch.npz")!r})
        logits = build(config, 3).apply({{"params": params}}, b["arr_0"], b["arr_1"], b["arr_2"])
        np.save({str(tmp_path / "logits.npy")!r}, np.asarray(logits))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), torch_logits(tiny, *batch), atol=ATOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64])
def test_torch_bin_reader_dtypes_and_views(tmp_path, monkeypatch, dtype):
    base = (torch.randn(4, 6) * 10).to(dtype)
    state = {"plain": base, "transposed": base.t(), "row": base[2], "strided": base[1:, ::2], "shared": base}
    torch.save(state, tmp_path / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` inside the reader now fails
    got = read_hf_state_dict(tmp_path)
    monkeypatch.undo()
    assert set(got) == set(state)
    for key, tensor in state.items():
        want = tensor.float().numpy() if dtype == torch.bfloat16 else tensor.numpy()
        assert got[key].shape == tuple(tensor.shape)
        np.testing.assert_array_equal(np.asarray(got[key], dtype=want.dtype), want)


def test_gelu_new_and_regression_parity():
    batch = tiny_batch(seed=1)
    for num_labels, act in [(3, "gelu_new"), (1, "gelu"), (2, "relu")]:
        model = tiny_torch_model(num_labels, seed=1, hidden_act=act)
        config = config_from_hf(model.config.to_dict())
        assert config.activation == act
        params = state_dict_to_params(numpy_state_dict(model), config, num_labels, jax.random.key(0))
        got = flax_logits(config, params, num_labels, *batch)
        assert got.shape == (3, num_labels)
        np.testing.assert_allclose(got, torch_logits(model, *batch), atol=ATOL, rtol=0, err_msg=act)


def test_minilm_parity(minilm_dir, tmp_path):
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    with torch.no_grad():  # a larger random head makes the comparison more telling
        model.classifier.weight.normal_(0.0, 1.0)
        model.classifier.bias.normal_(0.0, 1.0)
    model.save_pretrained(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    enc = tok(
        ["A man is playing a guitar on the stage tonight.", "The cat sat."],
        ["Someone plays music.", "A small dog barks loudly at the mailman every single morning."],
        padding=True,
        return_tensors="np",
    )
    batch = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    assert (enc["attention_mask"] == 0).any() and (enc["token_type_ids"] == 1).any()
    config, params = load_pretrained(tmp_path, 2, rng=jax.random.key(0))
    got = flax_logits(config, params, 2, *batch)
    np.testing.assert_allclose(got, torch_logits(model, *batch), atol=ATOL, rtol=0)


def test_minilm_base_checkpoint_gets_fresh_classifier(minilm_dir, caplog):
    # BertModel checkpoint: no "bert." prefix and no classifier.
    with caplog.at_level(logging.WARNING, logger="flaxft"):
        config, params = load_pretrained(minilm_dir, 2, rng=jax.random.key(0))
    assert "head/out/kernel" in caplog.text and "encoder/" not in caplog.text
    assert config.hidden_size == 384 and config.num_layers == 6
    raw = read_hf_state_dict(minilm_dir)
    np.testing.assert_array_equal(
        params["encoder"]["layer_5"]["attention"]["query"]["kernel"],
        raw["encoder.layer.5.attention.self.query.weight"].T,
    )
    np.testing.assert_array_equal(params["head"]["dense"]["kernel"], raw["pooler.dense.weight"].T)  # BERT's pooler
    kernel = np.asarray(params["head"]["out"]["kernel"])
    assert kernel.shape == (384, 2) and 0.01 < kernel.std() < 0.03
    assert not np.asarray(params["head"]["out"]["bias"]).any()


# ------------------------------------------------------------------------------ conversion


def test_round_trip_to_torch(tmp_path):
    config = config_from_hf({"model_type": "bert", **TINY, "initializer_range": 0.2})
    params = init_params(config, 3, jax.random.key(1))
    state = params_to_state_dict(params, config)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**config.to_hf(), num_labels=3))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    batch = tiny_batch(seed=2)
    np.testing.assert_allclose(flax_logits(config, params, 3, *batch), torch_logits(model.eval(), *batch), atol=ATOL)
    # ... and back through a safetensors folder.
    safetensors.numpy.save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf()))
    config2, params2 = load_pretrained(tmp_path, 3, rng=jax.random.key(0))
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_classifier_shape_mismatch_is_reinitialized(tiny, caplog):
    config = config_from_hf(tiny.config.to_dict())
    with caplog.at_level(logging.WARNING, logger="flaxft"):
        params = state_dict_to_params(numpy_state_dict(tiny), config, 5, jax.random.key(0))
    assert params["head"]["out"]["kernel"].shape == (32, 5)
    assert "'classifier.weight' has shape (3, 32), not (5, 32)" in caplog.text and "re-initializing it" in caplog.text
    np.testing.assert_array_equal(params["head"]["dense"]["bias"], tiny.bert.pooler.dense.bias.detach().numpy())


def test_legacy_names_and_ignored_keys(tiny):
    config = config_from_hf(tiny.config.to_dict())
    state = {}
    for k, v in numpy_state_dict(tiny).items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state[k] = v
    state["bert.embeddings.position_ids"] = np.arange(64)[None]
    state["cls.predictions.bias"] = np.zeros(99, np.float32)
    params = state_dict_to_params(state, config, 3, jax.random.key(0))
    batch = tiny_batch()
    np.testing.assert_allclose(flax_logits(config, params, 3, *batch), torch_logits(tiny, *batch), atol=ATOL, rtol=0)


def test_missing_encoder_weight_raises(tiny):
    config = config_from_hf(tiny.config.to_dict())
    state = numpy_state_dict(tiny)
    del state["bert.encoder.layer.1.output.dense.weight"]
    with pytest.raises(FlaxftError, match="layer.1.output.dense.weight"):
        state_dict_to_params(state, config, 3, jax.random.key(0))


def test_missing_files_raise(tiny, tmp_path):
    with pytest.raises(FlaxftError, match="does not exist"):
        load_pretrained(tmp_path / "nope", 2, rng=jax.random.key(0))
    with pytest.raises(FlaxftError, match="config.json"):
        load_pretrained(tmp_path, 2, rng=jax.random.key(0))
    tiny.config.save_pretrained(tmp_path)
    with pytest.raises(FlaxftError, match="model.safetensors.*pytorch_model.bin"):
        load_pretrained(tmp_path, 2, rng=jax.random.key(0))
    config, params = load_pretrained(tmp_path, 2, rng=jax.random.key(0), random_init=True)
    assert params["head"]["out"]["kernel"].shape == (32, 2)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_unsupported_configs_raise():
    with pytest.raises(FlaxftError, match="model_type 'gpt2' is not supported"):
        config_from_hf({"model_type": "gpt2"})
    with pytest.raises(FlaxftError, match="no model_type"):
        config_from_hf({"hidden_size": 32})
    with pytest.raises(FlaxftError, match="position_embedding_type 'relative_key'"):
        config_from_hf({"model_type": "bert", "position_embedding_type": "relative_key"})
    with pytest.raises(FlaxftError, match="activation 'swish'"):
        config_from_hf({"model_type": "bert", "hidden_act": "swish"})
    with pytest.raises(FlaxftError, match="is_decoder"):
        config_from_hf({"model_type": "bert", "is_decoder": True})
    assert config_from_hf({"model_type": "bert", "foo": 1, "pad_token_id": None}).pad_token_id == 0


# ------------------------------------------------------------------------------ model behaviour


@pytest.fixture(scope="module")
def tiny_flax():
    config = config_from_hf({"model_type": "bert", **TINY, "initializer_range": 0.2})
    return config, init_params(config, 3, jax.random.key(0))


def test_dropout_uses_rng(tiny_flax):
    config, params = tiny_flax
    model = build(config, 3)
    batch = tiny_batch()

    @jax.jit
    def run(key):
        return model.apply({"params": params}, *batch, deterministic=False, rngs={"dropout": key})

    a, b, a2 = run(jax.random.key(0)), run(jax.random.key(1)), run(jax.random.key(0))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, a2)
    assert not np.allclose(a, model.apply({"params": params}, *batch))


def test_bf16_and_remat(tiny_flax):
    config, params = tiny_flax
    batch = tiny_batch()
    ref = flax_logits(config, params, 3, *batch)
    bf16 = flax_logits(config, params, 3, *batch, dtype=jnp.bfloat16)
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, ref, atol=0.1 * np.abs(ref).max() + 1e-2)
    np.testing.assert_allclose(flax_logits(config, params, 3, *batch, remat=True), ref, atol=1e-6)

    def loss(p, remat):
        model = build(config, 3, remat=remat)
        return (model.apply({"params": p}, *batch) ** 2).sum()

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g1, g2 = grad(params, True), grad(params, False)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), g1, g2)


def test_segment_ids_isolate_packed_examples(tiny_flax):
    config, params = tiny_flax
    model = build(config, 3)
    a, b = np.array([2, 11, 12, 3]), np.array([2, 21, 3])
    penultimate = f"layer_{config.num_layers - 2}"

    @jax.jit
    def hidden_states(ids, mask, types, pos=None, seg=None, cls_index=None):
        """(every token after the penultimate layer, the [CLS] rows the encoder returns)"""
        _, state = model.apply(
            {"params": params}, ids, mask, types, pos, segment_ids=seg, cls_index=cls_index,
            capture_intermediates=lambda mdl, _: mdl.name in ("encoder", penultimate),
        )
        encoder = state["intermediates"]["encoder"]
        return encoder[penultimate]["__call__"][0], encoder["__call__"][0]

    packed = np.array([[*a, *b, 0]])
    seg = np.array([[1, 1, 1, 1, 2, 2, 2, 0]])
    pos = np.array([[0, 1, 2, 3, 0, 1, 2, 0]])
    hidden, cls = hidden_states(packed, (seg > 0).astype(np.int32), np.zeros_like(packed), pos, seg,
                                np.array([[0, 4]]))
    alone_a, cls_a = hidden_states(a[None], np.ones((1, 4), np.int32), np.zeros((1, 4), np.int32))
    alone_b, cls_b = hidden_states(b[None], np.ones((1, 3), np.int32), np.zeros((1, 3), np.int32))
    np.testing.assert_allclose(hidden[0, :4], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(hidden[0, 4:7], alone_b[0], atol=1e-5)
    assert cls.shape == (1, 2, config.hidden_size) and cls_a.shape == (1, 1, config.hidden_size)
    np.testing.assert_allclose(cls[0], np.concatenate([cls_a[0], cls_b[0]]), atol=1e-5)
