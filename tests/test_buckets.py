import numpy as np
import pytest

from flaxft.data import buckets
from flaxft.errors import FlaxftError


def _lengths(n=1000, seed=0):
    return np.random.default_rng(seed).integers(5, 120, size=n)


def test_boundaries_are_few_and_cover_everything():
    lengths = _lengths()
    b = buckets.choose_boundaries(lengths, num_buckets=4, batch_size=32, multiple=8, top=128)
    assert len(b) <= 4 and b[-1] == 128 and b == sorted(b) and all(x % 8 == 0 for x in b)


def test_dp_is_optimal_against_brute_force():
    import itertools
    lengths = _lengths(300, seed=3)
    batch = 16
    cands = sorted(set(buckets.round_up(lengths, 8).tolist()))
    def cost(bounds):
        return sum(len(p.indices) * p.length for p in buckets.plan_batches(lengths, list(bounds), batch, shuffle=False))
    best = min(cost(list(c) + [cands[-1]]) for k in range(0, 3) for c in itertools.combinations(cands[:-1], k))
    got = buckets.choose_boundaries(lengths, 3, batch, 8, cands[-1])
    assert cost(got) == best


def test_more_buckets_never_pad_more():
    lengths = _lengths()
    effs = []
    for k in (1, 2, 4, 8):
        b = buckets.choose_boundaries(lengths, k, 32, 8, 128)
        effs.append(buckets.padding_efficiency(lengths, buckets.plan_batches(lengths, b, 32, shuffle=False)))
    assert effs == sorted(effs)


def test_no_example_dropped_or_repeated_and_fillers_fill():
    lengths = _lengths(1001)
    bounds = buckets.choose_boundaries(lengths, 4, 32, 8, 128)
    plan = buckets.plan_batches(lengths, bounds, 32, shuffle=True, seed=1, epoch=0)
    assert all(len(p.indices) == 32 for p in plan)
    idx = np.concatenate([p.indices for p in plan])
    real = idx[idx != buckets.FILLER]
    assert sorted(real.tolist()) == list(range(1001))
    for p in plan:  # every example fits its bucket
        r = p.indices[p.indices >= 0]
        assert (lengths[r] <= p.length).all()
    assert (idx == buckets.FILLER).sum() < 32 * len(bounds)  # at most one partial batch per bucket


def test_shuffle_is_deterministic_per_seed_and_epoch():
    lengths = _lengths()
    bounds = [32, 64, 128]
    def order(seed, epoch):
        return np.concatenate([p.indices for p in buckets.plan_batches(lengths, bounds, 32, shuffle=True, seed=seed, epoch=epoch)])
    assert (order(0, 0) == order(0, 0)).all()
    assert not (order(0, 0) == order(0, 1)).all()
    assert not (order(0, 0) == order(1, 0)).all()
    assert len(buckets.plan_batches(lengths, bounds, 32, shuffle=True, epoch=0)) == \
        len(buckets.plan_batches(lengths, bounds, 32, shuffle=True, epoch=5))


def test_eval_plan_keeps_order_within_buckets():
    lengths = np.array([10, 100, 12, 50, 9])
    plan = buckets.plan_batches(lengths, [16, 128], 2, shuffle=False)
    assert [p.length for p in plan] == [16, 16, 128]
    assert plan[0].indices.tolist() == [0, 2] and plan[1].indices.tolist() == [4, -1]
    assert plan[2].indices.tolist() == [1, 3]


def test_too_long_example_is_a_clear_error():
    with pytest.raises(FlaxftError, match="data.bucket_boundaries"):
        buckets.plan_batches(np.array([10, 200]), [64, 128], 2, shuffle=False)


@pytest.mark.parametrize("grouping", ["none", "megabatch"])
def test_trainer_style_batches_cover_the_split_and_pad_to_their_longest_example(grouping):
    """data.length_grouping=none|megabatch: the HF Trainer's batches, each padded to the smallest bucket that fits."""
    lengths, bounds = _lengths(1000, seed=4), [32, 64, 96, 128]
    grouped = buckets.plan_batches(lengths, bounds, 32, shuffle=True, seed=1, epoch=0)
    plan = buckets.plan_batches(lengths, bounds, 32, shuffle=True, seed=1, epoch=0, grouping=grouping)
    ids = np.concatenate([b.indices for b in plan])
    assert sorted(ids[ids != buckets.FILLER].tolist()) == list(range(1000))  # each example once
    assert all(len(b.indices) == 32 for b in plan) and (ids == buckets.FILLER).sum() == -1000 % 32
    for b in plan:
        longest = lengths[b.indices[b.indices != buckets.FILLER]].max()
        assert b.length == min(x for x in bounds if x >= longest)
    # batches mix buckets (the grouped plan's never do), so they pad more
    assert any(np.ptp(buckets.assign(lengths[b.indices[b.indices >= 0]], bounds)) > 0 for b in plan)
    assert all(np.ptp(buckets.assign(lengths[b.indices[b.indices >= 0]], bounds)) == 0 for b in grouped)
    assert buckets.padding_efficiency(lengths, plan) < buckets.padding_efficiency(lengths, grouped)
    # a pure function of (seed, epoch)
    again = buckets.plan_batches(lengths, bounds, 32, shuffle=True, seed=1, epoch=0, grouping=grouping)
    assert all((a.indices == b.indices).all() and a.length == b.length for a, b in zip(plan, again))
    other = buckets.plan_batches(lengths, bounds, 32, shuffle=True, seed=1, epoch=1, grouping=grouping)
    assert any((a.indices != b.indices).any() for a, b in zip(plan, other))
    if grouping == "megabatch":  # between bucket and none: less padding than random batches
        random = buckets.plan_batches(lengths, bounds, 32, shuffle=True, seed=1, epoch=0, grouping="none")
        assert buckets.padding_efficiency(lengths, random) < buckets.padding_efficiency(lengths, plan)


@pytest.mark.parametrize("n", [3668, 2490, 100, 7])
def test_megabatch_order_is_the_hf_trainers(n):
    """length_grouped is transformers' get_length_grouped_indices (the Trainer's group_by_length=True) given the
    same permutation: MRPC's and RTE's train sizes, a small split, and one smaller than a batch."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = _lengths(n, seed=n)
    expected = get_length_grouped_indices(lengths.tolist(), 32, generator=torch.Generator().manual_seed(n))
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(n)).numpy()
    assert buckets.length_grouped(permutation, lengths, 32).tolist() == expected


def _skewed_labels(lengths, seed=0):
    """Binary labels whose share of class 1 grows with length (MRPC's paraphrase share per bucket runs 0.62-0.73)."""
    return (np.random.default_rng(seed).random(len(lengths)) < 0.45 + 0.4 * lengths / lengths.max()).astype(np.int32)


@pytest.mark.parametrize("grouping", ["bucket", "none"])
def test_stratified_batches_hold_their_buckets_class_shares(grouping):
    """data.stratify_labels: the same examples and batch shapes, each full batch holding its bucket's (grouping none:
    the split's) class shares to within one example, where the unstratified batches stray further."""
    lengths, bounds = _lengths(1000, seed=5), [32, 64, 96, 128]
    labels = _skewed_labels(lengths)
    plain = buckets.plan_batches(lengths, bounds, 32, shuffle=True, seed=1, epoch=2, grouping=grouping)
    plan = buckets.plan_batches(lengths, bounds, 32, shuffle=True, seed=1, epoch=2, grouping=grouping, labels=labels)
    ids = np.concatenate([b.indices for b in plan])
    assert sorted(ids[ids != buckets.FILLER].tolist()) == list(range(1000))
    if grouping == "bucket":  # which bucket comes when is unchanged, so a grid of seeds still stacks
        assert [b.length for b in plan] == [b.length for b in plain]
    bucket_of = buckets.assign(lengths, bounds)

    def worst_miss(batches):
        misses = []
        for b in batches:
            real = b.indices[b.indices != buckets.FILLER]
            if len(real) == 32:
                pool = np.flatnonzero(bucket_of == bucket_of[real[0]]) if grouping == "bucket" else np.arange(1000)
                misses.append(abs(labels[real].sum() - 32 * labels[pool].mean()))
        return max(misses)

    assert worst_miss(plan) < 1 < 3 < worst_miss(plain)
    again = buckets.plan_batches(lengths, bounds, 32, shuffle=True, seed=1, epoch=2, grouping=grouping, labels=labels)
    assert all((a.indices == b.indices).all() for a, b in zip(plan, again))
    for other in ({"seed": 2, "epoch": 2}, {"seed": 1, "epoch": 3}):
        moved = buckets.plan_batches(lengths, bounds, 32, shuffle=True, grouping=grouping, labels=labels, **other)
        assert any((a.indices != b.indices).any() for a, b in zip(plan, moved))


def test_stratified_deals_every_class_evenly():
    """Three classes of unequal size: every window of 30 holds each class's share to within two examples."""
    rng = np.random.default_rng(0)
    labels = rng.choice(3, 900, p=[0.6, 0.3, 0.1])
    order = buckets.stratified(rng.permutation(900), labels, rng)
    assert sorted(order.tolist()) == list(range(900))
    for start in range(0, 900, 30):
        counts = np.bincount(labels[order[start:start + 30]], minlength=3)
        assert np.all(np.abs(counts - 30 * np.bincount(labels) / 900) < 2)


@pytest.mark.parametrize("stratify", [False, True])
def test_carried_leftovers_leave_one_part_filled_batch_per_epoch(stratify):
    """data.carry_leftovers: a bucket's leftovers join the next longer bucket, so an epoch has the Trainer's batch
    count, ceil(n / B), and one part-filled batch (the longest bucket's); the shapes are the same for every seed."""
    lengths, bounds = _lengths(1000, seed=6), [32, 64, 96, 128]
    labels = _skewed_labels(lengths) if stratify else None
    own = buckets.plan_batches(lengths, bounds, 32, shuffle=True, seed=1, epoch=0, labels=labels)
    plan = buckets.plan_batches(lengths, bounds, 32, shuffle=True, seed=1, epoch=0, labels=labels,
                                carry_leftovers=True)
    assert len(own) > len(plan) == -(-1000 // 32)
    part_filled = [b for b in plan if (b.indices == buckets.FILLER).any()]
    assert len(part_filled) == 1 and part_filled[0].length == bounds[-1]
    assert sum((b.indices == buckets.FILLER).sum() for b in plan) == -1000 % 32
    ids = np.concatenate([b.indices for b in plan])
    assert sorted(ids[ids != buckets.FILLER].tolist()) == list(range(1000))
    fits = np.asarray(bounds)[buckets.assign(lengths, bounds)]
    carried = [i for b in plan for i in b.indices[b.indices != buckets.FILLER] if b.length > fits[i]]
    assert 0 < len(carried) < 4 * 32 and all(lengths[i] <= b.length for b in plan for i in b.indices if i >= 0)
    other_seed = buckets.plan_batches(lengths, bounds, 32, shuffle=True, seed=2, epoch=0, labels=labels,
                                      carry_leftovers=True)
    assert [b.length for b in other_seed] == [b.length for b in plan]  # a grid of seeds still stacks
    assert any((a.indices != b.indices).any() for a, b in zip(plan, other_seed))
    # evaluation keeps every bucket's own batches
    assert [b.length for b in buckets.plan_batches(lengths, bounds, 32, shuffle=False, carry_leftovers=True)] == \
        [b.length for b in buckets.plan_batches(lengths, bounds, 32, shuffle=False)]
