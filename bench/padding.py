"""Padding efficiency of one training epoch: flaxft's buckets vs dynamic padding vs fixed length (no training).

    python bench/padding.py --model DIR --glue ../shared/data/glue [--tasks mrpc sst2 rte cola stsb]

Efficiency = real tokens / token slots computed, over one epoch of the training split at --batch-size:
- flaxft buckets: the boundaries flaxft's Trainer chooses (buckets.choose_boundaries with the config's
  num_buckets and pad_to_multiple_of) and the batches buckets.plan_batches makes (filler rows count as padding);
- dynamic: DataCollatorWithPadding on random batches (each batch padded to its longest example; the last
  batch is short, no filler rows);
- fixed: every example padded to --fixed (128, like run_flax_glue.py), the last batch filled up with filler rows.
--sweep K:M ... adds the bucket efficiency with num_buckets=K and pad_to_multiple_of=M; "ceiling" is the best
any plan with lengths a multiple of the config's pad_to_multiple_of could do (each example padded only to its
own rounded-up length, no filler rows).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import datasets
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flaxft.config import load_config
from flaxft.data import buckets
from flaxft.data.sources import load_splits
from flaxft.data.tasks import get_task
from flaxft.data.tokenize import load_tokenizer, tokenize_split


def flaxft_boundaries(split_lengths: list[np.ndarray], train_lengths: np.ndarray, max_seq_length: int,
                      batch_size: int, num_buckets: int, multiple: int) -> list[int]:
    """Same choice as Trainer._choose_buckets: the top bucket fits the longest example of any split."""
    longest = max(int(x.max()) for x in split_lengths if len(x))
    top = int(min(buckets.round_up(longest, multiple), max(max_seq_length, longest)))
    return buckets.choose_boundaries(train_lengths, num_buckets, batch_size, multiple, top)


def dynamic_efficiency(lengths: np.ndarray, batch_size: int, seed: int) -> float:
    order = np.random.default_rng(seed).permutation(len(lengths))
    batches = np.array_split(order, range(batch_size, len(order), batch_size))
    return float(lengths.sum()) / sum(len(rows) * int(lengths[rows].max()) for rows in batches)


def task_row(name: str, args, tok) -> dict:
    task = get_task(name)
    folder = pathlib.Path(args.glue) / task.folder
    data = load_config(ROOT / "configs" / "glue" / f"{task.name}.yaml", [f"data.path={folder}"]).data
    raw = load_splits(data)
    lengths = [tokenize_split(ds, raw.text_columns, tok, data.max_seq_length, data.cache_dir).lengths
               for ds in raw.splits.values()]
    train = lengths[0]  # the train split comes first

    def plan(num_buckets: int, multiple: int):
        bounds = flaxft_boundaries(lengths, train, data.max_seq_length, args.batch_size, num_buckets, multiple)
        return bounds, buckets.plan_batches(train, bounds, args.batch_size, shuffle=True, seed=args.seed, epoch=0)

    bounds, batches = plan(data.num_buckets, data.pad_to_multiple_of)
    fixed = buckets.plan_batches(train, [args.fixed], args.batch_size, shuffle=True, seed=args.seed, epoch=0)
    sweep = {km: buckets.padding_efficiency(train, plan(*map(int, km.split(":")))[1]) for km in args.sweep}
    return {"task": task.name, "train_examples": len(train), "mean_length": float(train.mean()),
            "max_length": int(train.max()), "num_buckets": data.num_buckets, "multiple": data.pad_to_multiple_of,
            "boundaries": bounds, "bucket_steps": len(batches), "plain_steps": -(-len(train) // args.batch_size),
            "buckets": buckets.padding_efficiency(train, batches),
            "dynamic": dynamic_efficiency(train, args.batch_size, args.seed),
            "fixed": buckets.padding_efficiency(train, fixed), "sweep": sweep,
            "ceiling": float(train.sum() / buckets.round_up(train, data.pad_to_multiple_of).sum())}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--glue", required=True)
    p.add_argument("--tasks", nargs="+", default=["mrpc", "sst2", "rte", "cola", "stsb"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--fixed", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--sweep", nargs="*", default=[], metavar="K:M",
                   help="also try num_buckets=K with pad_to_multiple_of=M, e.g. 8:8 16:2")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    datasets.disable_progress_bars()

    tok = load_tokenizer(args.model)
    rows = [task_row(name, args, tok) for name in args.tasks]

    k0, m0 = rows[0]["num_buckets"], rows[0]["multiple"]
    sweep = "".join(f" {k} buckets, multiple {m} |" for k, m in (km.split(":") for km in args.sweep))
    print(f"| task | train examples | mean / max tokens | boundaries (steps/epoch vs unbucketed) | "
          f"flaxft {k0} buckets | dynamic (HF collator) | fixed {args.fixed} |{sweep} ceiling (multiple {m0}) |")
    print("|---|---:|---:|---|---:|---:|---:|" + "---:|" * (len(args.sweep) + 1))
    for r in rows:
        print(f"| {r['task']} | {r['train_examples']} | {r['mean_length']:.1f} / {r['max_length']} | "
              f"{r['boundaries']} ({r['bucket_steps']} vs {r['plain_steps']}) | {r['buckets']:.3f} | "
              f"{r['dynamic']:.3f} | {r['fixed']:.3f} |" + "".join(f" {v:.3f} |" for v in r["sweep"].values())
              + f" {r['ceiling']:.3f} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
