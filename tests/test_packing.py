"""Sequence packing: the plan, packed/unpacked parity, packed training, and GLUE token efficiency."""

import json

import jax
import numpy as np
import pytest

from flaxft.cli import run_main
from flaxft.config import load_config
from flaxft.data import buckets, packing
from flaxft.data.buckets import FILLER
from flaxft.data.sources import load_splits
from flaxft.data.tokenize import TokenizedSplit, load_tokenizer, tokenize_split
from flaxft.model import build, init_params, load_pretrained
from flaxft.losses import Objective
from flaxft.steps import forward
from flaxft.train import main as train_main

from tests.conftest import bert_config, toy_args


def random_split(n: int, seed: int = 0, longest: int = 60) -> TokenizedSplit:
    """Examples [CLS] w... [SEP] of random lengths, with random pair token types and labels."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, longest + 1, n)
    ids = [np.concatenate([[101], rng.integers(1000, 2000, k - 2), [102]]) for k in lengths]
    types = [(np.arange(k) > k // 2).astype(np.int32) for k in lengths]
    return TokenizedSplit(ids=np.concatenate(ids).astype(np.int32), type_ids=np.concatenate(types),
                          offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                          labels=rng.integers(0, 3, n).astype(np.int32))


def test_plan_covers_every_example_once_within_limits():
    lengths = random_split(500).lengths
    rows = packing.pack(lengths, 64, 4, seed=1)
    assert rows.shape[1] == 4
    real = rows[rows != FILLER]
    assert sorted(real) == list(range(500))  # every example exactly once
    filled = np.where(rows != FILLER, lengths[np.where(rows != FILLER, rows, 0)], 0).sum(1)
    assert filled.max() <= 64 and (rows[:, 0] != FILLER).all()
    np.testing.assert_array_equal(rows, packing.pack(lengths, 64, 4, seed=1))  # deterministic
    other = packing.pack(lengths, 64, 4, seed=2)
    assert not np.array_equal(rows, other)  # the seed breaks ties between equal lengths ...

    def row_lengths(r):
        return np.where(r != FILLER, lengths[np.where(r != FILLER, r, 0)], 0)
    np.testing.assert_array_equal(row_lengths(rows), row_lengths(other))  # ... and keeps the layout of lengths

    step_rows = packing.rows_per_step(rows, batch_size=16, multiple=4)
    assert step_rows % 4 == 0
    epochs = [packing.plan_epoch(lengths, 64, 4, step_rows, seed=3, epoch=e) for e in range(3)]
    assert len({len(p) for p in epochs}) == 1  # constant steps per epoch
    for plan in epochs:
        assert all(b.indices.shape == (step_rows, 4) and b.length == 64 for b in plan)
        flat = np.concatenate([b.indices.ravel() for b in plan])
        assert sorted(flat[flat != FILLER]) == list(range(500))
    same = packing.plan_epoch(lengths, 64, 4, step_rows, seed=3, epoch=1)
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(same, epochs[1]))
    assert not all(np.array_equal(a.indices, b.indices) for a, b in zip(epochs[0], epochs[1]))

    def row_mates(plan):  # pairs of examples that share a row
        return {(int(a), int(b)) for batch in plan for r in batch.indices for a in r for b in r
                if a != FILLER and b != FILLER and a < b}
    first, second = row_mates(epochs[0]), row_mates(epochs[1])
    assert len(first & second) < 0.5 * len(first)  # re-packed: most row mates change between epochs
    with pytest.raises(Exception, match="packed_length"):
        packing.pack(lengths, 32, 4)


def test_collate_layout():
    split = random_split(40, seed=3)
    rows = packing.pack(split.lengths, 128, 8)
    rows = np.concatenate([rows, np.full((1, 8), FILLER)])  # plus a filler row
    b = packing.collate(split, rows, 128)
    real = rows != FILLER
    np.testing.assert_array_equal(b["weights"], real)
    np.testing.assert_array_equal(b["input_ids"][np.arange(len(rows))[:, None], b["cls_index"]][real], 101)
    np.testing.assert_array_equal(b["labels"][real], split.labels[rows[real]])
    np.testing.assert_array_equal(b["attention_mask"], b["segment_ids"] > 0)
    assert b["attention_mask"].sum() == split.lengths.sum() and not b["attention_mask"][-1].any()
    r, k = 0, 1  # the second example of the first row, token by token
    i = rows[r, k]
    span = slice(b["cls_index"][r, k], b["cls_index"][r, k] + split.lengths[i])
    np.testing.assert_array_equal(b["input_ids"][r, span], split.ids[split.offsets[i]:split.offsets[i + 1]])
    np.testing.assert_array_equal(b["position_ids"][r, span], np.arange(split.lengths[i]))
    assert (b["segment_ids"][r, span] == k + 1).all()


def packed_vs_unpacked(model, params, split: TokenizedSplit, length: int, slots: int):
    """Logits and losses of every example, packed and one per row (deterministic forward passes)."""
    rows = packing.pack(split.lengths, length, slots)
    packed = packing.collate(split, rows, length)
    logits = jax.jit(lambda b: forward(model, params, b))(packed)
    losses = Objective().terms(logits, packed["labels"])[0]
    real = rows != FILLER
    order = np.argsort(rows[real])
    alone = buckets.collate(split, np.arange(len(split)), int(split.lengths.max()))
    ref = jax.jit(lambda b: forward(model, params, b))(alone)
    return (np.asarray(logits)[real][order], np.asarray(losses)[real][order],
            np.asarray(ref), np.asarray(Objective().terms(ref, alone["labels"])[0]))


def test_packed_logits_match_unpacked_tiny_bert():
    config = bert_config(vocab_size=2048, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)
    params = init_params(config, 3, jax.random.key(0))
    split = random_split(24, seed=5)
    logits, losses, ref, ref_losses = packed_vs_unpacked(build(config, 3), params, split,
                                                         128, 6)
    assert logits.shape == (24, 3)
    np.testing.assert_allclose(logits, ref, atol=1e-5)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5)


def test_packed_logits_match_unpacked_minilm_on_mrpc(minilm_dir, glue_dir):
    lines = (glue_dir / "MRPC" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:13]
    pairs = [line.split("\t") for line in lines]
    enc = load_tokenizer(minilm_dir)([p[3] for p in pairs], [p[4] for p in pairs], truncation=True, max_length=128)
    lengths = [len(x) for x in enc["input_ids"]]
    split = TokenizedSplit(ids=np.concatenate(enc["input_ids"]).astype(np.int32),
                           type_ids=np.concatenate(enc["token_type_ids"]).astype(np.int32),
                           offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                           labels=np.array([int(p[0]) for p in pairs], np.int32))
    config, params = load_pretrained(minilm_dir, 2, rng=jax.random.key(0))
    logits, losses, ref, ref_losses = packed_vs_unpacked(build(config, 2), params, split,
                                                         256, 8)
    np.testing.assert_allclose(logits, ref, atol=1e-5)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5)


def test_packed_training_learns_with_one_train_shape(tiny_model, toy_data, tmp_path):
    out = tmp_path / "packed"
    # ~21 examples per step in 8 rows of 64 tokens; this tiny model needs ~70 steps to pick up the task
    assert run_main(train_main, toy_args(tiny_model, toy_data, out, "data.packing=true", "data.packed_length=64",
                                         "train.epochs=10", "checkpoint.export=none")) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["eval_accuracy"] >= 0.9, s
    assert s["train_compilations"] == 1
    assert s["observed_compilations"] == 1 + s["eval_compilations"]
    assert s["packed_length"] == 64 and s["packed_rows_per_step"] % jax.device_count() == 0
    assert s["padding_efficiency"] > 0.85  # toy data: 256 examples, a part-filled last batch
    assert s["train_samples_per_second"] > 0 and s["epochs"] == 10


@pytest.mark.parametrize("grouping", ["none", "megabatch"])
def test_trainer_style_padded_batches_train(grouping, tiny_model, toy_data, tmp_path):
    """data.length_grouping=none|megabatch (the A/Bs against packed rows and one-bucket batches): the HF Trainer's
    batches, each padded to a bucket, train through the same loop (the seed study measures what they learn)."""
    out = tmp_path / grouping
    assert run_main(train_main, toy_args(tiny_model, toy_data, out, f"data.length_grouping={grouping}",
                                         "data.bucket_boundaries=[32,64]", "train.max_steps=6",
                                         "checkpoint.export=none")) == 0
    s = json.loads((out / "summary.json").read_text())
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert s["global_step"] == 6 and losses and all(np.isfinite(losses))
    assert 1 <= s["train_compilations"] <= 2
    # mixed-bucket batches pad more than one-bucket ones would (toy lengths straddle the two buckets)
    assert s["padding_efficiency"] < 1


@pytest.mark.parametrize("task", ["MRPC", "SST-2", "RTE", "CoLA", "STS-B"])
def test_glue_token_efficiency(task, minilm_dir, glue_dir):
    """Defaults (rows of 128 tokens, 32 slots, batch 32 on the data-parallel devices): >= 0.95."""
    cfg = load_config(None, [f"data.path={glue_dir / task}", f"data.task={task.replace('-', '').lower()}"])
    raw = load_splits(cfg.data)
    train = tokenize_split(raw.splits["train"], raw.text_columns, load_tokenizer(minilm_dir), cfg.data.max_seq_length)
    d, t = cfg.data, cfg.train
    rows = packing.pack(train.lengths, d.max_seq_length, d.max_examples_per_row, seed=t.seed)
    plan = packing.plan_epoch(train.lengths, d.max_seq_length, d.max_examples_per_row,
                              packing.rows_per_step(rows, t.batch_size, jax.device_count()), seed=t.seed, epoch=0)
    assert buckets.padding_efficiency(train.lengths, plan) >= 0.95


def test_packed_train_step_matches_unpacked():
    """The same examples, packed or one per row, give the same loss and the same update (dropout off)."""
    import jax.numpy as jnp
    import optax

    from flaxft.steps import TrainState, train_step

    config = bert_config(vocab_size=2048, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
    model, params = build(config, 3), init_params(config, 3, jax.random.key(0))
    split = random_split(24, seed=5)
    tx = optax.sgd(1.0)  # the update is minus the gradient
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(1)))
    step = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx, schedule=lambda _: 1.0, objective=Objective()))
    rows = packing.pack(split.lengths, 128, 6)
    packed_state, packed_metrics = step(state, packing.collate(split, rows, 128))
    alone_state, alone_metrics = step(state, buckets.collate(split, np.arange(len(split)), int(split.lengths.max())))
    assert len(rows) < len(split) / 2  # several examples share each row
    np.testing.assert_allclose(packed_metrics["loss"], alone_metrics["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(packed_state.params), jax.tree.leaves(alone_state.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)
