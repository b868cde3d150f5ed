"""flaxft vs the Hugging Face Trainer, one after the other in one invocation, on the same machine and data.

    python bench/compare.py --task mrpc --model DIR --glue ../shared/data/glue --epochs 3 --batch-size 32 \
        --lr 5e-5 --seeds 42 43 44 --out bench/results/mrpc.json [--max-steps N --max-eval-samples N]

For each seed it runs, each in a fresh process: flaxft with length buckets, flaxft with packed rows
(data.packing=true), flaxft with every batch padded to 128 (one bucket, what run_flax_glue.py did), and the
HF Trainer course recipe, on glibc's malloc (hf) and on mimalloc (hf-mimalloc; hf-tcmalloc on request), the
host allocator the flaxft runs use (flaxft/host_memory.py). First it measures the
matmul peak (bench/roofline.py) for MFU. It prints one markdown table (a row per run and a mean per
system), the speedup of flaxft over the faster HF variant and the issue's targets, and writes everything
to --out.

`--baseline-checkout DIR` adds the system flaxft-baseline: the default flaxft run of another checkout (an
earlier commit, e.g. `git worktree add DIR COMMIT`), with that checkout's own bench/flaxft_run.py and
package, so a before/after comparison is one invocation on one machine.

`--reuse EARLIER.json` takes the runs of an earlier invocation's --out (same task, model, epochs, batch size,
learning rate and seed; same machine) instead of running them again, with that invocation's matmul peak: a study
is extended run by run (e.g. a new flaxft variant against Trainer runs of 25 minutes each already measured). The
table marks reused rows and the JSON records where they came from.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from roofline import bert_dims, utilization

SYSTEMS = {  # name -> (script, extra arguments)
    "flaxft": ("flaxft_run.py", []),
    "flaxft-packed": ("flaxft_run.py", ["--packing"]),
    "flaxft-fixed128": ("flaxft_run.py", ["--fixed-length", "128"]),
    "hf": ("hf_trainer.py", []),
    "hf-mimalloc": ("hf_trainer.py", ["--allocator", "mimalloc"]),  # the HF side on flaxft's allocator too
    "hf-tcmalloc": ("hf_trainer.py", ["--allocator", "tcmalloc"]),
    "flaxft-baseline": ("flaxft_run.py", []),  # run from --baseline-checkout
}
COLUMNS = [("train samples/s", "train_samples_per_second", "{:.1f}"),
           ("real tokens/s", "train_tokens_per_second", "{:.0f}"),
           ("padding eff.", "padding_efficiency", "{:.3f}"),
           ("compile s", "compile_seconds", "{:.1f}"),
           ("first step s", "first_step_seconds_from_launch", "{:.1f}"),
           ("train s", "train_seconds", "{:.1f}"),
           ("total wall s", "wall_seconds", "{:.1f}")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="mrpc")
    p.add_argument("--model", required=True, help="checkpoint folder of any supported family (both sides load it)")
    p.add_argument("--glue", required=True, help="folder holding the GLUE task folders")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--systems", nargs="+", default=["flaxft", "flaxft-packed", "flaxft-fixed128", "hf", "hf-mimalloc"],
                   choices=list(SYSTEMS))
    p.add_argument("--max-steps", type=int, help="quick check: stop each run after N steps")
    p.add_argument("--max-eval-samples", type=int, help="quick check: score only the first N dev examples")
    p.add_argument("--peak-gflops", type=float, help="skip the matmul measurement and use this float32 peak")
    p.add_argument("--baseline-checkout", help="another flaxft checkout, run as the system flaxft-baseline")
    p.add_argument("--workdir", default="/tmp/flaxft-bench", help="per-run JSON, logs and flaxft output dirs")
    p.add_argument("--out", default="bench/results/compare.json", help="all results as JSON")
    p.add_argument("--reuse", help="an earlier --out JSON whose matching runs are taken instead of rerun")
    return p.parse_args(argv)


def run(cmd: list[str], log: pathlib.Path, checkout: pathlib.Path = HERE.parent) -> float:
    """Run a command in `checkout` (its flaxft first on the path) with its output in `log`; its wall time."""
    # every run starts on glibc's malloc; each script re-executes itself onto tcmalloc when it runs on it
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["BENCH_LAUNCH_TIME"] = repr(time.time())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(checkout), env.get("PYTHONPATH", "")) if p)
    start = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, check=False, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=checkout).returncode
    wall = time.time() - start
    if rc:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-20:])
        sys.exit(f"{' '.join(cmd)} failed (exit {rc}); last lines of {log}:\n{tail}")
    return wall


def reusable_runs(args) -> dict:
    """{"roofline": ..., "runs": {(system, seed): row}} from --reuse: the rows of the requested systems and seeds
    whose recipe matches this invocation's (anything else in that file is ignored)."""
    if not args.reuse:
        return {}
    earlier = json.loads(pathlib.Path(args.reuse).read_text())
    recipe = ("task", "epochs", "batch_size", "lr", "max_steps", "max_eval_samples")
    if any(earlier["args"].get(k) != getattr(args, k) for k in recipe) or \
            pathlib.Path(earlier["args"]["model"]).name != pathlib.Path(args.model).name:
        sys.exit(f"--reuse {args.reuse}: its runs used a different recipe "
                 f"({ {k: earlier['args'].get(k) for k in ('model', *recipe)} }); rerun them instead")
    runs = {(name, r["seed"]): {**r, "reused_from": args.reuse}
            for name, rows in earlier["results"].items() if name in args.systems
            for r in rows if r["seed"] in args.seeds}
    return {"roofline": earlier["roofline"], "runs": runs}


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "python": platform.python_version()}


def mean_row(rows: list[dict]) -> dict:
    m = {key: statistics.mean(r[key] for r in rows) for _, key, _ in COLUMNS}
    m["metrics"] = {k: statistics.mean(r["metrics"][k] for r in rows) for k in rows[0]["metrics"]}
    m["mfu"] = statistics.mean(r["mfu"] for r in rows)
    m["hfu"] = statistics.mean(r["hfu"] for r in rows)
    m["seed"] = "mean"
    m["host_allocator"] = rows[0].get("host_allocator", "system")
    return m


def table(results: dict[str, list[dict]]) -> str:
    metric_keys = [k for k in next(iter(results.values()))[0]["metrics"]]
    head = (["system", "seed", "host malloc"] + [c[0] for c in COLUMNS] + [f"dev {k}" for k in metric_keys]
            + ["MFU", "HW util"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rows in results.items():
        system = rows[0]["system"] + (" (baseline checkout)" if name == "flaxft-baseline" else "")
        for r in rows + ([mean_row(rows)] if len(rows) > 1 else []):
            cells = [system + (" (reused)" if r.get("reused_from") else ""), str(r["seed"]),
                     r.get("host_allocator", "system")]
            cells += [fmt.format(r[key]) for _, key, fmt in COLUMNS]
            cells += [f"{100 * r['metrics'][k]:.2f}" for k in metric_keys]
            cells += [f"{100 * r['mfu']:.1f}%", f"{100 * r['hfu']:.1f}%"]
            if r["seed"] == "mean":
                cells = [f"**{c}**" for c in cells]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(results: dict[str, list[dict]], quick: bool = False) -> list[str]:
    hfs = {name: mean_row(results[name]) if len(results[name]) > 1 else results[name][0]
           for name in ("hf", "hf-mimalloc", "hf-tcmalloc") if name in results}
    if not hfs:
        return []
    best = max(hfs, key=lambda name: hfs[name]["train_samples_per_second"])  # the faster HF allocator
    hf = hfs[best]
    out = [f"HF baseline: {best} ({hf['train_samples_per_second']:.1f} samples/s, the faster of {sorted(hfs)})"]
    for name in ("flaxft", "flaxft-baseline", "flaxft-packed", "flaxft-fixed128"):
        if name not in results:
            continue
        ours = mean_row(results[name]) if len(results[name]) > 1 else results[name][0]
        speedup = ours["train_samples_per_second"] / hf["train_samples_per_second"]
        deltas = {k: 100 * (ours["metrics"][k] - hf["metrics"][k]) for k in hf["metrics"]}
        line = f"{name} / HF train samples/s: {speedup:.2f}x; dev metric difference (points): " + \
            ", ".join(f"{k} {v:+.2f}" for k, v in deltas.items())
        if name != "flaxft-fixed128" and quick:
            line += "  -> quick check (--max-steps): targets not assessed"
        elif name != "flaxft-fixed128":
            ok = speedup >= 1.5 and all(abs(v) <= 1.0 for v in deltas.values())
            line += f"  -> target (>= 1.5x, within 1 point): {'MET' if ok else 'NOT MET'}"
        out.append(line)
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    work = pathlib.Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    common = ["--task", args.task, "--model", args.model, "--glue", args.glue, "--epochs", str(args.epochs),
              "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    if args.max_steps:
        common += ["--max-steps", str(args.max_steps)]
    if args.max_eval_samples:
        common += ["--max-eval-samples", str(args.max_eval_samples)]

    reused = reusable_runs(args)
    if reused:
        roof = {**reused["roofline"], "reused_from": args.reuse}
        print(f"reusing {len(reused['runs'])} runs and the matmul peak of {args.reuse}")
    elif args.peak_gflops:
        roof = {"peak_gflops_float32": args.peak_gflops, "measured": False}
    else:
        print("measuring the float32 matmul peak ...", flush=True)
        run([py, str(HERE / "roofline.py"), "--model", args.model, "--dtypes", "float32", "--torch",
             "--json", str(work / "roofline.json")], work / "roofline.log")
        roof = {**json.loads((work / "roofline.json").read_text()), "measured": True}
    peak = roof["peak_gflops_float32"] * 1e9
    dims = bert_dims(args.model)

    if "flaxft-baseline" in args.systems and not args.baseline_checkout:
        sys.exit("the system flaxft-baseline needs --baseline-checkout DIR")
    results: dict[str, list[dict]] = {name: [] for name in args.systems}
    for seed in args.seeds:
        for name in args.systems:
            script, extra = SYSTEMS[name]
            checkout = pathlib.Path(args.baseline_checkout if name == "flaxft-baseline" else HERE.parent).resolve()
            if (name, seed) in reused.get("runs", {}):
                results[name].append(reused["runs"][name, seed])
                print(f"    {name} seed {seed}: reused from {args.reuse}", flush=True)
                continue
            tag = f"{args.task}_{name}_seed{seed}"
            out = work / f"{tag}.json"
            cmd = [py, str(checkout / "bench" / script), *common, "--seed", str(seed), *extra, "--out", str(out)]
            print(f"[{time.strftime('%H:%M:%S')}] {name} seed {seed}: {' '.join(cmd)}", flush=True)
            wall = run(cmd, work / f"{tag}.log", checkout)
            r = {**json.loads(out.read_text()), "wall_seconds": wall}
            r.update(utilization(dims, r["token_stats"], r["train_seconds"], peak, r["num_labels"]))
            results[name].append(r)
            print(f"    {r['train_samples_per_second']:.1f} samples/s, wall {wall:.0f} s, dev {r['metrics']}",
                  flush=True)

    report = table(results)
    lines = verdict(results, quick=bool(args.max_steps or args.max_eval_samples))
    print("\n" + report + "\n\n" + "\n".join(lines))
    print(f"\nMFU = model FLOPs (real tokens) / train s / peak; HW util = same with padded tokens; "
          f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": vars(args), "machine": machine(), "roofline": roof, "results": results,
                                "table": report, "verdict": lines}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
