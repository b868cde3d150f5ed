"""Every encoder family against transformers' PyTorch *ForSequenceClassification: logits, gradients, packing.

Each case builds a tiny random model with transformers from a config (all weights perturbed, so swapped
or transposed names show up), saves it as a Hugging Face folder and loads it with flaxft.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from flaxft.data import packing
from flaxft.data.tokenize import TokenizedSplit
from flaxft.errors import FlaxftError
from flaxft.model import build, config_from_hf, load_pretrained, params_to_state_dict, read_config
from flaxft.optim import decay_mask
from tests.minilm_families import minilm_as

VOCAB = 99
DEBERTA_V3 = dict(relative_attention=True, position_buckets=4, max_relative_positions=8, pos_att_type=["p2c", "c2p"],
                  share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0)
DEBERTA_V2 = dict(relative_attention=True, max_relative_positions=6, share_att_key=False, norm_rel_ebd="none",
                  position_biased_input=True, type_vocab_size=2)
ROBERTA_STYLE = dict(pad_token_id=1, type_vocab_size=1, max_position_embeddings=66)
MODERNBERT = dict(num_hidden_layers=3, global_attn_every_n_layers=2, local_attention=4, pad_token_id=0,
                  bos_token_id=1, cls_token_id=1, eos_token_id=2, sep_token_id=2, attn_implementation="eager")
# case name (the model_type, or a variant of it) -> (transformers config class, its *ForSequenceClassification
# class, config overrides)
CASES = {
    "bert": (transformers.BertConfig, transformers.BertForSequenceClassification, {}),
    # positions pad+1, pad+2, ...: the real checkpoints' pad id 1, one token type, two spare position rows
    "roberta": (transformers.RobertaConfig, transformers.RobertaForSequenceClassification, ROBERTA_STYLE),
    "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaForSequenceClassification, ROBERTA_STYLE),
    "camembert": (transformers.CamembertConfig, transformers.CamembertForSequenceClassification, ROBERTA_STYLE),
    # DeBERTa-v3's shape: c2p+p2c through the layers' own query/key projections, log buckets past distance 2
    # (rows of 10 reach them), a LayerNormed relative table, no absolute positions, no token types
    "deberta-v2": (transformers.DebertaV2Config, transformers.DebertaV2ForSequenceClassification, DEBERTA_V3),
    # DeBERTa-v2's options: separate position projections, exact distances clamped at 6, absolute positions,
    # token types, one relative term
    "deberta-v2-c2p": (transformers.DebertaV2Config, transformers.DebertaV2ForSequenceClassification,
                       {**DEBERTA_V2, "pos_att_type": ["c2p"]}),
    # rows of 10 within a span of 16: the relative terms by distance (shifted matmuls) but in the last layer;
    # buckets past distance 8
    "deberta-v2-p2c": (transformers.DebertaV2Config, transformers.DebertaV2ForSequenceClassification,
                       {**DEBERTA_V2, "pos_att_type": ["p2c"], "position_buckets": 16, "max_relative_positions": 32}),
    # embeddings narrower than the hidden size, projected (ELECTRA-small's shape)
    "electra": (transformers.ElectraConfig, transformers.ElectraForSequenceClassification, dict(embedding_size=16)),
    "distilbert": (transformers.DistilBertConfig, transformers.DistilBertForSequenceClassification, {"hidden_dim": 37}),
    "distilbert-sinusoidal": (transformers.DistilBertConfig, transformers.DistilBertForSequenceClassification,
                              {"hidden_dim": 37, "sinusoidal_pos_embds": True}),
    "mpnet": (transformers.MPNetConfig, transformers.MPNetForSequenceClassification, {}),
    # pre-norm, RoPE, GeGLU; 3 layers, global ones at 0 and 2, a window of 2 tokens each side (rows of up to 10)
    "modernbert": (transformers.ModernBertConfig, transformers.ModernBertForSequenceClassification, MODERNBERT),
    # mean pooling, every bias present, RoPE bases of its own per layer kind
    "modernbert-mean": (transformers.ModernBertConfig, transformers.ModernBertForSequenceClassification,
                        {**MODERNBERT, "classifier_pooling": "mean", "norm_bias": True, "attention_bias": True,
                         "mlp_bias": True, "classifier_bias": True, "global_rope_theta": 500.0,
                         "local_rope_theta": 50.0}),
}
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64)


def tiny_config(case: str, num_labels: int = 3, **overrides):
    config_cls, _, extra = CASES[case]
    return config_cls(**{**TINY, **extra, **overrides}, num_labels=num_labels)


def tiny_torch_model(case: str, num_labels: int = 3, seed: int = 0, **overrides):
    """A tiny random HF model whose weights are all perturbed, so swapped/transposed names show up."""
    torch.manual_seed(seed)
    model = CASES[case][1](tiny_config(case, num_labels, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.2)
            if "norm" in name.lower() and name.endswith("weight"):
                p.add_(1.0)
    return model


def mixed_batch(pad_id: int, seed: int = 0, lengths=((5, 5), (4, 3), (2, 2))):
    """Sentence pairs of different lengths, right-padded with `pad_id` to 10; ids avoid the special ids 0-3."""
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), 10), pad_id, np.int32)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, (first, second) in enumerate(lengths):
        n = first + second
        ids[row, :n] = rng.integers(4, VOCAB, n)
        mask[row, :n] = 1
        types[row, first:n] = 1
    return ids, mask, types


def long_batch(lengths, width: int, seed: int = 0, cls_id: int = 1, pad_id: int = 0):
    """Single sequences of these lengths (`cls_id` first, then ids 4..), right-padded with `pad_id` to `width`."""
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), width), pad_id, np.int32)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = np.concatenate([[cls_id], rng.integers(4, VOCAB, n - 1)])
        mask[row, :n] = 1
    return ids, mask, np.zeros_like(ids)


def torch_inputs(model, ids, mask, types):
    inputs = {"input_ids": torch.as_tensor(ids, dtype=torch.long), "attention_mask": torch.as_tensor(mask)}
    if getattr(model.config, "type_vocab_size", 0) > 1:  # families with segment embeddings take token types
        inputs["token_type_ids"] = torch.as_tensor(types, dtype=torch.long)
    return inputs


def flax_types(config, types):
    return types if config.type_vocab_size > 1 else None


@pytest.fixture(scope="module", params=sorted(CASES))
def family_case(request, tmp_path_factory):
    """(case name, torch model, its folder, flaxft config, flaxft params)."""
    model = tiny_torch_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    config, params = load_pretrained(folder, 3, rng=jax.random.key(0))
    return request.param, model, folder, config, params


def test_logits_match_transformers(family_case, caplog):
    case, model, folder, config, params = family_case
    assert config.model_type == model.config.model_type
    ids, mask, types = mixed_batch(model.config.pad_token_id or 0)
    got = jax.jit(build(config, 3).apply)({"params": params}, ids, mask, flax_types(config, types))
    with torch.no_grad():
        want = model(**torch_inputs(model, ids, mask, types)).logits.numpy()
    assert got.dtype == jnp.float32 and got.shape == (3, 3)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


def test_gradients_match_transformers(family_case):
    """Every parameter's gradient equals PyTorch's (the last layer computes only the [CLS] rows)."""
    case, model, folder, config, params = family_case
    assert_gradients_match(model, config, params, *mixed_batch(model.config.pad_token_id or 0, seed=1))


def test_weight_decay_falls_where_the_trainers_does(family_case):
    """flaxft's decay mask, in the family's Hugging Face names, is the HF Trainer's get_decay_parameter_names:
    every weight but biases and norms (embeddings and relative-position tables decayed)."""
    case, model, folder, config, params = family_case
    flags = jax.tree.map(lambda p, decayed: np.full(p.shape, float(decayed), np.float32), params, decay_mask(params))
    ours = params_to_state_dict(flags, config)
    theirs = set(transformers.Trainer.get_decay_parameter_names(None, model))
    names = [name for name, _ in model.named_parameters()]
    assert set(names) <= set(ours) and any(n in theirs for n in names) and any(n not in theirs for n in names)
    for name in names:
        assert np.all(ours[name] == float(name in theirs)), name


def assert_gradients_match(model, config, params, ids, mask, types):
    """d(sum of squared logits)/d(every weight): flaxft's equals PyTorch's."""
    module = build(config, model.config.num_labels)
    grads = jax.jit(jax.grad(lambda p: (module.apply({"params": p}, ids, mask, flax_types(config, types)) ** 2).sum()))(
        params)
    model.zero_grad()
    (model(**torch_inputs(model, ids, mask, types)).logits ** 2).sum().backward()
    want = {k: p.grad.numpy() for k, p in model.named_parameters() if p.grad is not None}
    got = params_to_state_dict(grads, config)
    assert set(want) <= set(got)
    scale = max(np.abs(g).max() for g in want.values())  # within 1e-4 relative to the largest gradient
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-4 * scale, rtol=1e-4, err_msg=key)


def test_state_dict_round_trip_is_exact(family_case):
    """params -> HF state dict has exactly the *ForSequenceClassification keys and values transformers has."""
    case, model, folder, config, params = family_case
    got = params_to_state_dict(params, config)
    want = {k: v.numpy() for k, v in model.state_dict().items() if v.dtype.is_floating_point}
    want = {k: v for k, v in want.items() if not k.endswith((".position_ids", ".token_type_ids"))}
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_packed_logits_match_unpacked(family_case):
    """Several examples in one row (segment ids, restarting positions) give each example's own logits."""
    case, model, folder, config, params = family_case
    pad = model.config.pad_token_id or 0
    ids, mask, types = mixed_batch(pad, seed=2)
    packed = packed_logits(config, params, ids, mask, types, np.array([[0, 2, -1], [1, -1, -1]]), 24, pad)
    alone = np.asarray(build(config, 3).apply({"params": params}, ids, mask, flax_types(config, types)))
    np.testing.assert_allclose(np.asarray(packed[0, :2]), np.asarray(alone[[0, 2]]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(packed[1, 0]), np.asarray(alone[1]), atol=1e-5)


def packed_logits(config, params, ids, mask, types, rows, length: int, pad: int):
    """The examples of a padded batch packed into `rows` (example indices, -1 = none) of `length` tokens."""
    lengths = mask.sum(1)
    split = TokenizedSplit(ids=np.concatenate([r[:n] for r, n in zip(ids, lengths)]),
                           type_ids=np.concatenate([r[:n] for r, n in zip(types, lengths)]),
                           offsets=np.concatenate([[0], np.cumsum(lengths)]), labels=np.zeros(len(ids), np.int32))
    batch = packing.collate(split, rows, length, pad_id=pad)
    return jax.jit(build(config, params["head"]["out"]["bias"].shape[0]).apply)(
        {"params": params}, batch["input_ids"], batch["attention_mask"], flax_types(config, batch["token_type_ids"]),
        batch["position_ids"], segment_ids=batch["segment_ids"], cls_index=batch["cls_index"])


def test_bfloat16_and_remat(family_case):
    case, model, folder, config, params = family_case
    ids, mask, types = mixed_batch(model.config.pad_token_id or 0)
    types = flax_types(config, types)
    ref = np.asarray(build(config, 3).apply({"params": params}, ids, mask, types))
    bf16 = np.asarray(build(config, 3, dtype=jnp.bfloat16).apply({"params": params}, ids, mask, types))
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, ref, atol=0.1 * np.abs(ref).max() + 1e-2)
    remat = build(config, 3, remat=True)
    np.testing.assert_allclose(np.asarray(remat.apply({"params": params}, ids, mask, types)), ref, atol=1e-6)


def test_base_checkpoint_gets_a_fresh_head(family_case, tmp_path, caplog):
    """A base model folder (no head) loads with the head initialised as transformers does."""
    case, model, folder, config, params = family_case
    base_cls = transformers.AutoModel.from_config(model.config).__class__
    base = base_cls.from_pretrained(folder)
    base.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="flaxft"):
        config2, params2 = load_pretrained(tmp_path, 2, rng=jax.random.key(0))
    assert read_config(tmp_path).model_type == model.config.model_type
    assert "head/out/kernel" in caplog.text and "encoder/" not in caplog.text
    kernel = np.asarray(params2["head"]["out"]["kernel"])
    assert kernel.shape == (config.hidden_size, 2) and 0.01 < kernel.std() < 0.03
    assert not np.asarray(params2["head"]["out"]["bias"]).any()
    jax.tree.map(np.testing.assert_array_equal, params2["encoder"], params["encoder"])


def mrpc_dev_pairs(glue_dir, n: int):
    lines = (glue_dir / "MRPC" / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]
    rows = [line.split("\t") for line in lines]
    return [r[3] for r in rows[:n]], [r[4] for r in rows[:n]]


@pytest.mark.parametrize("model_type", ["roberta", "electra"])
def test_real_minilm_weights_match_transformers(model_type, minilm_dir, glue_dir, tmp_path):
    """MiniLM's real encoder in this family's layout: flaxft's logits equal transformers' on real MRPC pairs."""
    model = minilm_as(model_type, minilm_dir, tmp_path)
    first, second = mrpc_dev_pairs(glue_dir, 6)
    enc = transformers.AutoTokenizer.from_pretrained(minilm_dir)(first, second, padding=True, return_tensors="np")
    ids, mask, types = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    assert (mask == 0).any() and (ids[mask == 0] == model.config.pad_token_id).all() and (types == 1).any()
    config, params = load_pretrained(tmp_path, 2, rng=jax.random.key(0))
    got = np.asarray(build(config, 2).apply({"params": params}, ids, mask, flax_types(config, types)))
    with torch.no_grad():
        want = model(**torch_inputs(model, ids, mask, types)).logits.numpy()
    assert np.abs(want).max() > 1.0  # the std-1 head makes differences visible
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("model_type, field", [
    ("roberta", {"position_embedding_type": "relative_key"}), ("xlm-roberta", {"add_cross_attention": True}),
    ("camembert", {"pad_token_id": None}), ("electra", {"is_decoder": True}),
    ("electra", {"position_embedding_type": "relative_key_query"})])
def test_unsupported_features_are_one_line_errors(model_type, field):
    with pytest.raises(FlaxftError, match=rf"^model config: .*{next(iter(field))}.* is not supported[^\n]*$"):
        config_from_hf({"model_type": model_type, **field})
