"""One flaxft fine-tuning run, timed for the benchmark; writes one JSON file.

    python bench/flaxft_run.py --task mrpc --model DIR --glue ../shared/data/glue --seed 42 --out R.json
        [--epochs 3 --batch-size 32 --lr 5e-5] [--fixed-length 128] [--max-steps N] [--max-eval-samples N]

It is `python -m flaxft.train --config configs/glue/TASK.yaml ...` (same config, same Trainer.train()), run
in-process so that the set-up time before train() is known; everything else comes from summary.json
(its first_step_seconds is train() start to the end of step 1, waited for once).
"""

from __future__ import annotations

import os
import time

LAUNCH = float(os.environ.get("BENCH_LAUNCH_TIME", time.time()))  # the driver's clock when it started us

import json
import math
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import final_eval_metrics, run_on_allocator, run_parser  # noqa: E402  (bench/ is on sys.path when run as a script)


def parse_args(argv=None):
    p = run_parser(__doc__.splitlines()[0])
    p.add_argument("--fixed-length", type=int, help="pad every batch to this length (one bucket)")
    p.add_argument("--packing", action="store_true",
                   help="train on packed rows (data.packing=true); without it, length buckets (data.packing=false)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--output-dir", help="flaxft output_dir (default: next to --out)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="more flaxft config overrides, e.g. --set train.dropout_rng=threefry")
    return p.parse_args(argv)


def overrides(args, glue_folder: str, output_dir: str) -> list[str]:
    o = [f"model.name_or_path={args.model}", f"data.path={glue_folder}", f"train.epochs={args.epochs}",
         f"train.batch_size={args.batch_size}", f"train.learning_rate={args.lr}", f"train.seed={args.seed}",
         f"train.dtype={args.dtype}", f"output_dir={output_dir}"]
    if args.max_steps:
        o.append(f"train.max_steps={args.max_steps}")
    if args.max_eval_samples:
        o.append(f"data.max_eval_samples={args.max_eval_samples}")
    if args.fixed_length:
        o.append(f"data.bucket_boundaries=[{args.fixed_length}]")
    o.append(f"data.packing={str(args.packing).lower()}")  # explicit: results keep their meaning across defaults
    return o + args.set


def trained_batches(trainer):
    """(real lengths, padded length, rows) of every batch the run trained on: the same plan Trainer.train()
    follows (each epoch's plan, bucketed or packed, is a pure function of seed and epoch), cut at total_steps."""
    from flaxft.data import buckets

    lengths, left = trainer.plan.lengths, trainer.total_steps
    for epoch in range(math.ceil(trainer.total_steps / trainer.steps_per_epoch)):
        plan = trainer.plan.epoch(epoch)
        for b in plan[:left]:
            yield lengths[b.indices[b.indices != buckets.FILLER]], b.length, len(b.indices)
        left -= len(plan)


def main(argv=None) -> None:
    args = parse_args(argv)
    allocator = run_on_allocator(args.allocator or "auto")
    from flaxft.config import load_config
    from flaxft.data.tasks import get_task

    task = get_task(args.task)
    out = pathlib.Path(args.out)
    output_dir = args.output_dir or str(out.with_suffix("")) + "_run"
    cfg = load_config(ROOT / "configs" / "glue" / f"{task.name}.yaml",
                      overrides(args, str(pathlib.Path(args.glue) / task.folder), output_dir))

    import jax

    from flaxft import runtime
    from flaxft.trainer import Trainer

    setup_start = time.time()
    runtime.setup(cfg)  # what `python -m flaxft.train` does first (the persistent compilation cache among it)
    trainer = Trainer(cfg)
    setup_seconds = time.time() - setup_start

    train_call = time.time()
    summary = trainer.train()
    done = time.time()

    from roofline import token_stats

    metrics = final_eval_metrics(output_dir)
    result = {
        "system": (f"flaxft fixed-{args.fixed_length}" if args.fixed_length
                   else "flaxft packed" if args.packing else "flaxft buckets"),
        "task": task.name, "seed": args.seed, "epochs": summary["epochs"], "global_step": summary["global_step"],
        "batch_size": args.batch_size, "learning_rate": args.lr, "dtype": args.dtype,
        "train_seconds": summary["train_seconds"],
        "train_samples_per_second": summary["train_samples_per_second"],
        "train_tokens_per_second": summary["train_tokens_per_second"],
        "padding_efficiency": summary["padding_efficiency"],
        "compile_seconds": summary["compile_seconds"],
        "eval_seconds": summary["eval_seconds"],
        "setup_seconds": setup_seconds,
        "first_step_seconds_from_launch": train_call - LAUNCH + summary["first_step_seconds"],
        "first_step_seconds_from_train_call": summary["first_step_seconds"],
        "wall_seconds_in_process": done - LAUNCH,
        "metrics": metrics,
        "eval_examples": len(trainer.setup.data.splits[trainer.setup.data.raw.eval_splits[0]]),
        "num_labels": trainer.setup.data.raw.num_labels,
        "buckets": summary["buckets"],
        "token_stats": token_stats(trained_batches(trainer)),
        "num_devices": summary["num_devices"],
        "host_allocator": allocator,
        "jax_version": jax.__version__,
        "output_dir": output_dir,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("system", "seed", "train_samples_per_second", "metrics")}))


if __name__ == "__main__":
    main()
