"""How label-skewed are the training batches of each batching? (issue #16: a suspect for the buckets' accuracy gap)

    python bench/label_mix.py --model DIR --glue ../shared/data/glue [--tasks mrpc rte] [--seeds 42 ... 49]

For each task and batching (one-bucket batches, packed rows, the Trainer's batches padded to buckets:
random = data.length_grouping=none, its group_by_length mega-batches = data.length_grouping=megabatch, and
one-bucket batches dealt out by class = data.stratify_labels=true, and one-bucket batches whose leftovers join
the next bucket = data.carry_leftovers=true) it plans epoch 0 for every seed exactly as
training does and scores each batch's share of the positive class (label 1) against the split's share p as a
binomial z-score (flaxft.data.label_mix). Random batches give a z spread of ~1 (a little under: they are drawn
without replacement); a spread above that, or more than ~5 % of batches beyond |z| > 2, means batches are
label-skewed.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from flaxft.config import DataConfig  # noqa: E402
from flaxft.data import buckets, packing  # noqa: E402
from flaxft.data.label_mix import batch_label_z  # noqa: E402
from flaxft.data.prepare import prepare  # noqa: E402
from flaxft.data.sources import load_splits  # noqa: E402
from flaxft.data.tasks import get_task  # noqa: E402
from flaxft.data.tokenize import load_tokenizer  # noqa: E402


BATCHINGS = {"buckets": {}, "packed": None, "random": {"grouping": "none"}, "megabatch": {"grouping": "megabatch"},
             "buckets-stratified": {"stratify": True}, "buckets-carry": {"carry_leftovers": True}}  # plan_batches'


def plan(name: str, lengths, labels, boundaries, seed: int, batch_size: int = 32, packed_length: int = 128,
         slots: int = 32):
    if name == "packed":
        rows = packing.pack(lengths, packed_length, slots, seed=seed)
        return packing.plan_epoch(lengths, packed_length, slots, packing.rows_per_step(rows, batch_size, 1),
                                  seed=seed, epoch=0)
    kwargs = dict(BATCHINGS[name])
    return buckets.plan_batches(lengths, boundaries, batch_size, shuffle=True, seed=seed, epoch=0,
                                labels=labels if kwargs.pop("stratify", False) else None, **kwargs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--glue", required=True)
    p.add_argument("--tasks", nargs="+", default=["mrpc", "rte"])
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(42, 50)))
    args = p.parse_args()
    tokenizer = load_tokenizer(args.model)
    print("| task | positive share | buckets | batching | batches | z std | batches with abs(z) > 2 |")
    print("|---|---:|---|---|---:|---:|---:|")
    for task in args.tasks:
        d = DataConfig(task=task, path=str(pathlib.Path(args.glue) / get_task(task).folder))
        data = prepare(d, 32, load_splits(d), tokenizer, token_type_ids=True)
        train = data.splits["train"]
        share = float(train.labels.mean())
        for name in BATCHINGS:
            z = np.concatenate([batch_label_z(plan(name, train.lengths, train.labels, data.boundaries, seed),
                                              train.labels) for seed in args.seeds])
            print(f"| {task} | {share:.3f} | {data.boundaries} | {name} | {len(z)} | {z.std():.2f} | "
                  f"{100 * np.mean(np.abs(z) > 2):.1f} % |", flush=True)


if __name__ == "__main__":
    main()
