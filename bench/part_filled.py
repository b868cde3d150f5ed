"""Part-filled training batches of the length buckets, with and without data.carry_leftovers (no training).

    python bench/part_filled.py --model DIR --glue ../shared/data/glue [--tasks mrpc rte sst2 cola stsb]

Per GLUE task, with the buckets flaxft's Trainer chooses (the config's defaults, batch 32): the examples in each
bucket, the size of each bucket's part-filled last batch (each one a whole optimizer step), the batches of an epoch
against the Trainer's ceil(n / 32), and the padding efficiency of epoch 0 (mean over seeds 42-49) without and with
data.carry_leftovers=true, which moves each bucket's leftovers into the next longer bucket.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from flaxft.config import load_config  # noqa: E402
from flaxft.data import buckets  # noqa: E402
from flaxft.data.prepare import prepare  # noqa: E402
from flaxft.data.sources import load_splits  # noqa: E402
from flaxft.data.tasks import get_task  # noqa: E402
from flaxft.data.tokenize import load_tokenizer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--glue", required=True)
    p.add_argument("--tasks", nargs="+", default=["mrpc", "rte", "sst2", "cola", "stsb"])
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(42, 50)))
    args = p.parse_args()
    tokenizer = load_tokenizer(args.model)
    print("| task | buckets | examples per bucket | part-filled batch sizes | batches per epoch (carried; Trainer) "
          "| padding efficiency (carried) |")
    print("|---|---|---|---|---|---|")
    for task in args.tasks:
        cfg = load_config(ROOT / "configs" / "glue" / f"{task}.yaml",
                          [f"data.path={pathlib.Path(args.glue) / get_task(task).folder}", "data.packing=false"])
        batch = cfg.train.batch_size
        data = prepare(cfg.data, batch, load_splits(cfg.data), tokenizer, token_type_ids=True)
        lengths = data.splits["train"].lengths
        counts = np.bincount(buckets.assign(lengths, data.boundaries), minlength=len(data.boundaries))
        plans = {carry: [buckets.plan_batches(lengths, data.boundaries, batch, shuffle=True, seed=s, epoch=0,
                                              carry_leftovers=carry) for s in args.seeds] for carry in (False, True)}
        eff = {carry: np.mean([buckets.padding_efficiency(lengths, plan) for plan in plans[carry]]) for carry in plans}
        print(f"| {task} | {data.boundaries} | {', '.join(map(str, counts))} | "
              f"{', '.join(str(c % batch) if c % batch else '-' for c in counts)} | "
              f"{len(plans[False][0])} ({len(plans[True][0])}; {-(-len(lengths) // batch)}) | "
              f"{eff[False]:.4f} ({eff[True]:.4f}) |", flush=True)


if __name__ == "__main__":
    main()
