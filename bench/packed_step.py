"""Packed rows vs padded batches: one training epoch's step time on a GLUE task's real lengths, per family.

    python bench/packed_step.py --tokenizer DIR --glue ../shared/data/glue [--task mrpc] [--families modernbert]
        [--batch-size 32] [--steps 3] [--json OUT]

The task's training split is tokenized with --tokenizer (its lengths are what the plans see), then one epoch is
planned three ways with the task config's data settings: flaxft's length buckets (the default), every example
padded to max_seq_length (run_flax_glue's fixed 128), and packed rows (data.packing=true: rows of
max_seq_length, about batch_size examples a step). For each distinct batch shape of a plan, the family's
random-init base model (bench/family_step_time.py's shapes) runs the same jitted train step as a run on a real
collated batch of that shape: the median of --steps timed steps after two warm-up steps (the first compiles).
The epoch time is the sum over the plan's steps of its shape's median: the step time alone, without the data
pipeline or compilation. Token efficiency = real tokens / token slots computed (filler rows count as padding).
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


from common import run_on_allocator  # noqa: E402

if __name__ == "__main__":
    run_on_allocator("auto")  # as flaxft's commands run on CPU (flaxft/host_memory.py)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from family_step_time import BASE, flaxft_step, time_steps  # noqa: E402
from flaxft.config import load_config  # noqa: E402
from flaxft.data import buckets  # noqa: E402
from flaxft.data.prepare import BucketPlan, prepare, training_plan  # noqa: E402
from flaxft.data.sources import load_splits  # noqa: E402
from flaxft.data.tasks import get_task  # noqa: E402
from flaxft.data.tokenize import load_tokenizer  # noqa: E402

ROOT = HERE.parent


def epoch_plans(args, token_type_ids: bool):
    """(train split, {plan name: (batches, plan info)}) for one epoch of the task's training split."""
    task = get_task(args.task)
    overrides = [f"data.path={pathlib.Path(args.glue) / task.folder}", f"train.batch_size={args.batch_size}"]
    cfg = load_config(ROOT / "configs" / "glue" / f"{task.name}.yaml", overrides)
    raw = load_splits(cfg.data)
    data = prepare(cfg.data, args.batch_size, raw, load_tokenizer(args.tokenizer), token_type_ids=token_type_ids)
    train = data.splits["train"]
    fixed = [int(buckets.round_up(cfg.data.max_seq_length, cfg.data.pad_to_multiple_of))]
    packed_cfg = load_config(ROOT / "configs" / "glue" / f"{task.name}.yaml", overrides + ["data.packing=true"])
    plans = {f"buckets {data.boundaries}": BucketPlan(train.lengths, data.boundaries, args.batch_size, cfg.train.seed),
             f"padded to {fixed[0]}": BucketPlan(train.lengths, fixed, args.batch_size, cfg.train.seed),
             "packed": training_plan(packed_cfg.data, packed_cfg.train, data, data_parallel=1)}
    return train, {name: (plan.epoch(0), dict(plan.info)) for name, plan in plans.items()}


def shape_of(batch) -> tuple:
    return batch.indices.shape + (batch.length,)  # (rows, length) or (rows, slots, length)


def plan_row(family: str, name: str, batches: list, info: dict, train, args) -> dict:
    step, state, _ = flaxft_step(family, args.dtype)
    counts = collections.Counter(shape_of(b) for b in batches)
    per_shape = {}
    for shape in sorted(counts, key=lambda s: s[-1]):
        sample = next(b for b in batches if shape_of(b) == shape)
        data = {k: jnp.asarray(v) for k, v in sample.collate(train).items()}
        seconds, state = time_steps(step, state, data, args.steps)
        per_shape[shape] = statistics.median(seconds)
        print(f"  {family} {name} shape {shape}: {per_shape[shape]:.3f} s/step x {counts[shape]} steps", flush=True)
    epoch_s = sum(per_shape[s] * n for s, n in counts.items())
    examples = len(train)
    return {"family": family, "plan": name, "steps": len(batches), "info": info,
            "shapes": [{"shape": list(s), "steps": counts[s], "median_s": per_shape[s]} for s in per_shape],
            "token_efficiency": buckets.padding_efficiency(train.lengths, batches),
            "epoch_step_s": epoch_s, "examples_per_s": examples / epoch_s}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True, help="a model folder whose tokenizer gives the lengths")
    p.add_argument("--glue", required=True)
    p.add_argument("--task", default="mrpc")
    p.add_argument("--families", nargs="+", default=["modernbert"], choices=list(BASE))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=3, help="timed steps per batch shape (after two warm-up steps)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    rows = []
    for family in args.families:
        from family_step_time import hf_config
        from flaxft.model import config_from_hf

        train, plans = epoch_plans(args, config_from_hf(hf_config(family).to_dict()).type_vocab_size > 1)
        print(f"{family}: {len(train)} training examples, mean length {train.lengths.mean():.1f}", flush=True)
        rows += [plan_row(family, name, batches, info, train, args) for name, (batches, info) in plans.items()]
    print(f"\n| family | plan | steps | batch shapes (rows x length) | token efficiency | epoch step time s | "
          f"examples/s |  ({args.task}, B={args.batch_size}, {args.dtype}, {jax.devices()[0].device_kind})\n"
          f"|---|---|---:|---|---:|---:|---:|")
    for r in rows:
        shapes = ", ".join(f"{s['shape'][0]}x{s['shape'][-1]}" for s in r["shapes"])
        print(f"| {r['family']} | {r['plan']} | {r['steps']} | {shapes} | {r['token_efficiency']:.3f} | "
              f"{r['epoch_step_s']:.1f} | {r['examples_per_s']:.2f} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"args": vars(args), "device": jax.devices()[0].device_kind,
                                                       "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
