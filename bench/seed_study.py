"""The accuracy seed study (issue #16): flaxft's batchings against the Hugging Face Trainer, many seeds, run by run.

    python bench/seed_study.py run --model DIR --glue ../shared/data/glue --tasks mrpc rte \
        --seeds 42 43 44 45 46 47 48 49 --systems packed hf buckets buckets-threefry
    python bench/seed_study.py report [--tasks mrpc rte] [--markdown] [--against buckets]

Every run is one fresh process (bench/flaxft_run.py or bench/hf_trainer.py, the same recipe for every system:
3 epochs, batch 32, lr 5e-5 unless told) and lands as one JSON file, results/<task>/<system>/seed<N>.json, the
moment it ends. `run` skips the runs whose file is already there, so a study is extended across sittings by
running the same command again (with more seeds or systems); runs go seed by seed, so the paired comparison
grows evenly. `report` prints, per task, each system's mean and standard deviation over its seeds, and its
per-seed differences from the Trainer (--against: another system) on the seeds both have (mean, std, and a 95 %
t-interval of the mean).

Each run also records `machine_load` (bench/common.py): the shares of the machine's CPU that other processes and
the hypervisor (steal) took while it ran. Only runs where both stayed under 5 % count as quiet, and only quiet runs
make the speed columns: the mean train samples/s per system and CPU, and the closing table's speed against the
Trainer, seed-paired on the same CPU so that both runs come from the same sitting.

`import EARLIER.json` files the runs of a bench/compare.py result (same recipe) into the study, marked with
where they came from; `import-grid GRID.json --commit C` files bench/grid_vs_sequential.py's single runs (length
buckets, hash bits, same recipe) as `buckets` runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time

from common import commit, cpu, cpu_counters, final_eval_metrics, machine_load  # noqa: E402  (bench/ on sys.path)

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results" / "seed_study"

# system -> (script, arguments): every flaxft system names its batching, so a change of defaults changes nothing here
SYSTEMS = {
    "hf": ("hf_trainer.py", []),
    "packed": ("flaxft_run.py", ["--packing"]),
    "buckets": ("flaxft_run.py", ["--set", "data.packing=false", "train.dropout_rng=hash", "data.length_grouping=bucket",
                                  "data.stratify_labels=false", "data.carry_leftovers=false"]),
    "buckets-threefry": ("flaxft_run.py", ["--set", "data.packing=false", "train.dropout_rng=threefry"]),
    "packed-threefry": ("flaxft_run.py", ["--packing", "--set", "train.dropout_rng=threefry"]),
    # the Trainer's batches padded to buckets: random (its default) and its group_by_length=True mega-batches;
    # they separate batch composition from everything else
    "buckets-random": ("flaxft_run.py", ["--set", "data.packing=false", "data.length_grouping=none"]),
    "buckets-megabatch": ("flaxft_run.py", ["--set", "data.packing=false", "data.length_grouping=megabatch"]),
    # one-bucket batches dealt out by class: each holds its bucket's label shares (label skew off, lengths kept)
    "buckets-stratified": ("flaxft_run.py", ["--set", "data.packing=false", "data.stratify_labels=true"]),
    # each bucket's leftovers join the next longer bucket: one part-filled batch per epoch (MRPC's own: 1 example)
    "buckets-carry": ("flaxft_run.py", ["--set", "data.packing=false", "data.carry_leftovers=true"]),
    "buckets-carry-stratified": ("flaxft_run.py", ["--set", "data.packing=false", "data.carry_leftovers=true",
                                                   "data.stratify_labels=true"]),
}
COMPARE_NAMES = {"flaxft": "buckets", "flaxft-packed": "packed", "hf": "hf"}  # bench/compare.py's system names
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 24: 2.064, 29: 2.045}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the study's missing runs")
    r.add_argument("--model", required=True)
    r.add_argument("--glue", required=True)
    r.add_argument("--tasks", nargs="+", default=["mrpc", "rte"])
    r.add_argument("--seeds", type=int, nargs="+", default=list(range(42, 50)))
    r.add_argument("--systems", nargs="+", default=["packed", "hf", "buckets", "buckets-threefry"],
                   choices=list(SYSTEMS))
    r.add_argument("--epochs", type=float, default=3)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--lr", type=float, default=5e-5)
    r.add_argument("--workdir", default="/tmp/seed_study", help="logs and flaxft output dirs (deleted per run)")
    r.add_argument("--results", default=str(RESULTS))
    r.add_argument("--max-steps", type=int, help="quick check only: results go to --results as well")
    q = sub.add_parser("report", help="summarise the runs so far")
    q.add_argument("--results", default=str(RESULTS))
    q.add_argument("--tasks", nargs="+")
    q.add_argument("--markdown", action="store_true")
    q.add_argument("--against", default="hf", metavar="SYSTEM",
                   help="pair every system's seeds with this one's (buckets: the A/Bs against plain one-bucket batches)")
    i = sub.add_parser("import", help="file a bench/compare.py result's runs into the study")
    i.add_argument("compare_json")
    i.add_argument("--results", default=str(RESULTS))
    i.add_argument("--skip", nargs="*", default=[], metavar="SYSTEM:SEED", help="runs to leave out (to rerun)")
    g = sub.add_parser("import-grid", help="file bench/grid_vs_sequential.py's single runs into the study as buckets")
    g.add_argument("grid_json")
    g.add_argument("--commit", required=True, help="the flaxft commit the runs used (that result does not record it)")
    g.add_argument("--results", default=str(RESULTS))
    return p.parse_args(argv)


def run_path(results: pathlib.Path, task: str, system: str, seed: int) -> pathlib.Path:
    return results / task / system / f"seed{seed}.json"


def run_one(args, task: str, system: str, seed: int, target: pathlib.Path) -> None:
    script, extra = SYSTEMS[system]
    work = pathlib.Path(args.workdir) / f"{task}_{system}_seed{seed}"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    tmp_json, log = work / "result.json", work / "run.log"
    cmd = [sys.executable, str(HERE / script), "--task", task, "--model", args.model, "--glue", args.glue,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
           "--seed", str(seed), "--out", str(tmp_json)]
    if args.max_steps:
        cmd += ["--max-steps", str(args.max_steps)]
    if script == "flaxft_run.py":
        cmd += ["--output-dir", str(work / "out")]
    cmd += extra
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["BENCH_LAUNCH_TIME"] = repr(time.time())
    env["JAX_NUM_CPU_DEVICES"] = "1"
    start, counters = time.time(), cpu_counters()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=HERE.parent).returncode
    load = machine_load(counters, cpu_counters(), time.time() - start)
    if rc:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-15:])
        sys.exit(f"{task} {system} seed {seed} failed (exit {rc}); last lines of {log}:\n{tail}")
    result = json.loads(tmp_json.read_text())
    result.update(study_system=system, commit=commit(), cpu=cpu(), command=" ".join(cmd[1:]),
                  finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), wall_seconds=time.time() - start,
                  machine_load=load)
    result.pop("trained_batches", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(result, indent=1) + "\n")
    partial.replace(target)  # a run is in the study whole or not at all
    subprocess.run(["rm", "-rf", str(work / "out")], check=False)


def run_study(args) -> None:
    results = pathlib.Path(args.results)
    todo = [(t, s, seed) for seed in args.seeds for t in args.tasks for s in args.systems
            if not run_path(results, t, s, seed).exists()]
    print(f"{len(todo)} runs to go: {todo}", flush=True)
    for n, (task, system, seed) in enumerate(todo, 1):
        start = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] {n}/{len(todo)} {task} {system} seed {seed} ...", flush=True)
        run_one(args, task, system, seed, run_path(results, task, system, seed))
        m = json.loads(run_path(results, task, system, seed).read_text())["metrics"]
        print(f"    {time.time() - start:.0f} s  {m}", flush=True)


def import_compare(args) -> None:
    earlier = json.loads(pathlib.Path(args.compare_json).read_text())
    a = earlier["args"]
    if (a["epochs"], a["batch_size"], a["lr"], a.get("max_steps")) != (3, 32, 5e-5, None):
        sys.exit(f"{args.compare_json}: not the study's recipe (3 epochs, batch 32, lr 5e-5)")
    results = pathlib.Path(args.results)
    for name, rows in earlier["results"].items():
        system = COMPARE_NAMES.get(name)
        for r in rows if system else []:
            target = run_path(results, a["task"], system, r["seed"])
            if f"{system}:{r['seed']}" in args.skip or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps({**r, "study_system": system, "imported_from": args.compare_json},
                                         indent=1) + "\n")
            print(f"imported {target}")


def import_grid(args) -> None:
    """The single runs of a grid-vs-sequential benchmark are length-bucket runs (one bucket per batch, hash bits):
    the study's `buckets` system, if the recipe is the study's. Each one's final evaluation is read from its
    metrics.jsonl, as bench/flaxft_run.py reads it; a seed already in the study is compared, not replaced."""
    bench = json.loads(pathlib.Path(args.grid_json).read_text())
    a = bench["args"]
    if (a["epochs"], a["batch_size"], a["lr"], a["set"]) != (3, 32, 5e-5, []):
        sys.exit(f"{args.grid_json}: not the study's recipe (3 epochs, batch 32, lr 5e-5, no overrides)")
    results = pathlib.Path(args.results)
    for name, run in bench["runs"].items():
        if not name.startswith("seed-"):
            continue
        seed, s = int(name[len("seed-"):]), run["summary"]
        metrics = final_eval_metrics(pathlib.Path(a["workdir"]) / name)
        target = run_path(results, a["task"], "buckets", seed)
        if target.exists():
            earlier = json.loads(target.read_text())["metrics"]
            print(f"{target} is there: {earlier}; the grid benchmark's run: {metrics}"
                  f" ({'equal' if earlier == metrics else 'DIFFERENT'})")
            continue
        result = {"system": "flaxft buckets", "task": a["task"], "seed": seed, "epochs": s["epochs"],
                  "global_step": s["global_step"], "batch_size": a["batch_size"], "learning_rate": a["lr"],
                  "dtype": "float32", **{k: s[k] for k in ("train_seconds", "train_samples_per_second",
                                                           "train_tokens_per_second", "padding_efficiency",
                                                           "compile_seconds", "eval_seconds")},
                  "metrics": metrics, "study_system": "buckets", "commit": args.commit, "cpu": cpu(),
                  "command": run["command"], "wall_seconds": run["wall_s"], "imported_from": args.grid_json}
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=1) + "\n")
        print(f"imported {target}: {metrics}")


def load(results: pathlib.Path, tasks) -> dict:
    """{task: {system: {seed: result}}}"""
    out: dict = {}
    for f in sorted(results.glob("*/*/seed*.json")):
        task, system = f.parent.parent.name, f.parent.name
        if tasks and task not in tasks:
            continue
        out.setdefault(task, {}).setdefault(system, {})[int(f.stem[4:])] = json.loads(f.read_text())
    return out


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def interval(diffs: list[float]) -> str:
    if len(diffs) < 2:
        return "n/a"
    m, s = mean_std(diffs)
    t = T95.get(len(diffs) - 1) or T95[max(k for k in T95 if k <= len(diffs) - 1)]
    h = t * s / math.sqrt(len(diffs))
    return f"[{m - h:+.2f}, {m + h:+.2f}]"


def is_quiet(run: dict, threshold: float = 0.05) -> bool:
    """Whether a run's speed is a result: nothing else used over 5 % of the machine's CPU, nor did the hypervisor
    steal it, while it ran (runs from before machine_load was recorded are not known to be quiet)."""
    load = run.get("machine_load")
    return bool(load) and load["others"] < threshold and load["steal"] < threshold


# AMD family 25 models seen on the study's machines (XLA compiles for the host's features: speeds differ by CPU)
CPU_NAMES = {"AMD EPYC family 25 model 1": "Zen 3", "AMD EPYC family 25 model 17": "Zen 4"}


def cpu_name(run: dict) -> str:
    cpu = run.get("cpu", "unknown CPU")
    return CPU_NAMES.get(cpu, cpu)


def quiet_speeds(runs: dict) -> str:
    """Mean train samples/s of the quiet runs, per CPU: speeds of different machines are never averaged together."""
    by_cpu: dict[str, list[float]] = {}
    for r in runs.values():
        if is_quiet(r):
            by_cpu.setdefault(cpu_name(r), []).append(r["train_samples_per_second"])
    return "; ".join(f"{statistics.mean(v):.1f} ({len(v)}, {name})" for name, v in sorted(by_cpu.items()))


def speed_ratio(runs: dict, base: dict) -> tuple[float, int] | None:
    """Mean of train samples/s ratios over the seeds where both runs were quiet and ran on the same CPU (seed by
    seed, so both ran in the same sitting in the study's order), and how many there were."""
    seeds = [s for s in sorted(set(runs) & set(base))
             if is_quiet(runs[s]) and is_quiet(base[s]) and runs[s].get("cpu") == base[s].get("cpu")]
    if not seeds:
        return None
    return statistics.mean(runs[s]["train_samples_per_second"] / base[s]["train_samples_per_second"]
                           for s in seeds), len(seeds)


def paired_diffs(runs: dict, base: dict, key: str) -> list[float]:
    """Points by which `runs` beat `base` on `key`, seed by seed, over the seeds both have."""
    return [100 * (runs[s]["metrics"][key] - base[s]["metrics"][key]) for s in sorted(set(runs) & set(base))]


def report(args) -> str:
    lines = []
    study = load(pathlib.Path(args.results), args.tasks)
    for task, systems in study.items():
        metric_keys = list(next(iter(next(iter(systems.values())).values()))["metrics"])
        base_name = args.against
        base = systems.get(base_name, {})
        shown = "HF" if base_name == "hf" else base_name
        lines += [f"### {task.upper()}", "",
                  "| system | seeds | " + " | ".join(f"dev {k} mean +- std" for k in metric_keys)
                  + " | train samples/s, quiet runs (n, CPU) | "
                  + " | ".join(f"{k} - {shown}, paired: mean +- std [95 % CI]" for k in metric_keys)
                  + " | paired seeds |",
                  "|---|---|" + "---:|" * (2 * len(metric_keys) + 2)]
        for system in sorted(systems, key=lambda s: (s != base_name, s)):
            runs = systems[system]
            cells = [system, " ".join(str(s) for s in sorted(runs))]
            for k in metric_keys:
                m, s = mean_std([100 * r["metrics"][k] for r in runs.values()])
                cells.append(f"{m:.2f} +- {s:.2f}")
            cells.append(quiet_speeds(runs))
            paired = sorted(set(runs) & set(base))
            for k in metric_keys:
                if system == base_name or len(paired) < 1:
                    cells.append("")
                    continue
                d = paired_diffs(runs, base, k)
                m, s = mean_std(d)
                cells.append(f"{m:+.2f} +- {s:.2f} {interval(d)}")
            cells.append("" if system == base_name else str(len(paired)))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Per seed ({' / '.join(metric_keys[:2])}):", "",
                  "| system | " + " | ".join(str(s) for s in sorted({s for r in systems.values() for s in r})) + " |",
                  "|---|" + "---:|" * len({s for r in systems.values() for s in r})]
        seeds = sorted({s for r in systems.values() for s in r})
        for system in sorted(systems, key=lambda s: (s != "hf", s)):
            runs = systems[system]
            cells = [system] + [" / ".join(f"{100 * runs[s]['metrics'][k]:.2f}" for k in metric_keys[:2])
                                if s in runs else "" for s in seeds]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += target_table(study)
    return "\n".join(lines)


def target_table(study: dict, min_seeds: int = 8, min_speedup: float = 1.5) -> list[str]:
    """Issue #16's bar for a default, per system and task: within 0.5 points of the Trainer's mean accuracy and F1
    on the same seeds (the paired mean difference >= -0.5), on at least `min_seeds` seeds, and at least
    `min_speedup` times its train samples/s (seed-paired quiet runs)."""
    lines = ["### Against the issue's bar (mean over the seeds shared with the Trainer >= its mean - 0.5 points, "
             f"{min_seeds} seeds; >= {min_speedup}x its train samples/s)", "",
             "| system | task | paired seeds | accuracy - HF | f1 - HF | accuracy verdict "
             "| train samples/s / HF's (quiet pairs) | speed verdict |",
             "|---|---|---:|---:|---:|---|---:|---|"]
    for system in sorted({s for systems in study.values() for s in systems} - {"hf"}):
        for task, systems in study.items():
            runs, hf = systems.get(system, {}), systems.get("hf", {})
            paired = sorted(set(runs) & set(hf))
            if not paired:
                continue
            diffs = {k: statistics.mean(paired_diffs(runs, hf, k)) for k in ("accuracy", "f1")
                     if k in hf[paired[0]]["metrics"]}
            ok = all(d >= -0.5 for d in diffs.values())
            verdict = ("meets" if ok else "misses") + ("" if len(paired) >= min_seeds else " so far (too few seeds)")
            f1 = f"{diffs['f1']:+.2f}" if "f1" in diffs else ""
            ratio = speed_ratio(runs, hf)
            speed = f"{ratio[0]:.2f}x ({ratio[1]})" if ratio else ""
            speed_verdict = ("meets" if ratio[0] >= min_speedup else "misses") if ratio else "no quiet pair yet"
            lines.append(f"| {system} | {task} | {len(paired)} | {diffs['accuracy']:+.2f} | {f1} | {verdict} "
                         f"| {speed} | {speed_verdict} |")
    return lines + [""]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.command == "run":
        run_study(args)
    elif args.command == "import":
        import_compare(args)
    elif args.command == "import-grid":
        import_grid(args)
    else:
        print(report(args))


if __name__ == "__main__":
    main()
