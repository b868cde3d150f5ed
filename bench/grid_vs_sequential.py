"""Seeds in one program vs one run per seed: wall clock of a grid run and of the same single runs back to back.

    python bench/grid_vs_sequential.py --model DIR --glue ../shared/data/glue [--task mrpc] [--seeds 42 43 44 45 46]
        [--lr 2e-5] [--epochs 3] [--batch-size 32] --workdir W --out R.json [--set KEY=VALUE ...]

Each run is `python -m flaxft.train --config configs/glue/TASK.yaml ...` in a fresh process, timed from launch to
exit (start-up, tokenization from the shared cache, compilation, training, evaluation, checkpoints, export).
All runs share one XLA compilation cache that starts empty, as a user's default cache would be on a new machine:
the first single run compiles, the later ones load its executables; the grid compiles its own (vmapped)
programs once. Afterwards each replica's final eval metrics are compared with its single run's. Results are
written after every run (`--out`), and a rerun with the same --out skips the runs already recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

from common import commit, cpu  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(name: str, overrides: list[str], args, results: dict) -> dict:
    if name in results["runs"]:
        print(f"{name}: recorded, skipped", flush=True)
        return results["runs"][name]
    out = pathlib.Path(args.workdir) / name
    shutil.rmtree(out, ignore_errors=True)
    task_folder = {"mrpc": "MRPC", "rte": "RTE", "sst2": "SST-2", "cola": "CoLA", "stsb": "STS-B"}[args.task]
    cmd = [sys.executable, "-m", "flaxft.train", "--config", str(ROOT / "configs/glue" / f"{args.task}.yaml"),
           f"model.name_or_path={args.model}", f"data.path={pathlib.Path(args.glue) / task_folder}",
           f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", f"output_dir={out}",
           f"train.compilation_cache={pathlib.Path(args.workdir) / 'xla-cache'}", "checkpoint.export=best",
           "data.packing=false",  # length buckets, as the runs of record (issue #15) and the seed study's `buckets`
           *args.set, *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    (pathlib.Path(args.workdir) / f"{name}.log").write_text(proc.stdout)
    if proc.returncode:
        sys.exit(f"{name} failed (rc={proc.returncode}); see {pathlib.Path(args.workdir) / f'{name}.log'}")
    summary = json.loads((out / "summary.json").read_text())
    record = {"wall_s": wall, "command": " ".join(cmd), "summary": summary}
    results["runs"][name] = record
    pathlib.Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"{name}: {wall:.1f} s wall, compile {summary['compile_seconds']:.1f} s, train {summary['train_seconds']:.1f} s",
          flush=True)
    return record


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--glue", required=True)
    p.add_argument("--task", default="mrpc")
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44, 45, 46])
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="more config overrides for every run")
    args = p.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    results = json.loads(pathlib.Path(args.out).read_text()) if pathlib.Path(args.out).is_file() else {}
    results.setdefault("args", vars(args))
    results.setdefault("machine", {"commit": commit(), "cpu": cpu()})
    results.setdefault("runs", {})
    if results["args"] != vars(args):
        sys.exit(f"{args.out} was recorded with other arguments: {results['args']}; use another --out")
    if not results["runs"]:
        shutil.rmtree(pathlib.Path(args.workdir) / "xla-cache", ignore_errors=True)  # every invocation starts cold

    seeds = ",".join(map(str, args.seeds))
    grid = run("grid", [f"train.seeds=[{seeds}]", f"train.learning_rate=[{args.lr}]"], args, results)
    singles = [run(f"seed-{s}", [f"train.seed={s}", f"train.learning_rate={args.lr}"], args, results)
               for s in args.seeds]
    sequential = sum(r["wall_s"] for r in singles)
    metric_keys = [k for k in grid["summary"]["replicas"][0] if k.startswith("eval_")]
    worst = max(abs(rep[k] - single["summary"][k]) for rep, single in zip(grid["summary"]["replicas"], singles)
                for k in metric_keys)
    results["result"] = {"grid_wall_s": grid["wall_s"], "sequential_wall_s": sequential,
                         "speedup": sequential / grid["wall_s"], "max_metric_difference": worst,
                         "grid_mean": {k: grid["summary"][f"{k}_mean"] for k in metric_keys},
                         "grid_std": {k: grid["summary"][f"{k}_std"] for k in metric_keys}}
    pathlib.Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("\n| run | wall s | compile s | train s | eval s | train samples/s | " +
          " | ".join(metric_keys) + " |\n|---|---:|---:|---:|---:|---:|" + "---:|" * len(metric_keys))
    for name, r in results["runs"].items():
        s = r["summary"]
        cells = " | ".join(f"{s[k]:.4f}" if k in s else f"{s[k + '_mean']:.4f} +- {s[k + '_std']:.4f}"
                           for k in metric_keys)
        print(f"| {name} | {r['wall_s']:.1f} | {s['compile_seconds']:.1f} | {s['train_seconds']:.1f} | "
              f"{s['eval_seconds']:.1f} | {s['train_samples_per_second']:.1f} | {cells} |")
    print(f"\n{len(singles)} single runs back to back: {sequential:.1f} s; one grid: {grid['wall_s']:.1f} s; "
          f"speed-up {sequential / grid['wall_s']:.2f}x; largest metric difference replica vs single run {worst:.2e}")


if __name__ == "__main__":
    main()
