"""Arguments every benchmark run takes, so flaxft and the HF Trainer are always run alike."""

import argparse
import json
import os
import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parent


def run_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--task", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--glue", required=True, help="folder holding the GLUE task folders (MRPC, SST-2, ...)")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--max-eval-samples", type=int)
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--allocator", choices=["system", "auto", "mimalloc", "tcmalloc"],
                   help="host malloc (default: auto for flaxft, as its commands do; system for the HF Trainer)")
    return p


def run_on_allocator(allocator: str) -> str:
    """Go on under glibc's malloc ('system') or re-execute this script once on another malloc: 'auto' is what the
    flaxft commands pick (flaxft/host_memory.py), 'mimalloc'/'tcmalloc' that library. Call it before anything
    heavy is imported; returns the allocator in use."""
    from flaxft.host_memory import REEXECUTED, chosen_library, find_library, host_allocator, reexec_on

    current = host_allocator()
    if allocator == current or (allocator == "auto" and current != "system"):
        return current
    if current != "system" or os.environ.get(REEXECUTED):
        sys.exit(f"--allocator {allocator}, but this process runs on {current}: unset LD_PRELOAD")
    if allocator == "system":
        return current
    library = chosen_library({}) if allocator == "auto" else find_library(allocator)
    if library is None:
        if allocator == "auto":
            return current
        sys.exit(f"--allocator {allocator}: no lib{allocator} on this machine")
    try:
        reexec_on(library)
    except OSError as e:
        sys.exit(f"--allocator {allocator}: could not re-execute {sys.orig_argv}: {e}")


def commit() -> str:
    """The checkout's commit, +dirty when flaxft/, bench/ (results aside) or configs/ have changes not committed."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH, capture_output=True, text=True)
    paths = ["flaxft", "bench", "configs", ":(exclude)bench/results"]
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=BENCH.parent, capture_output=True,
                           text=True).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def cpu() -> str:
    """The CPU as XLA and PyTorch see it (family/model tell e.g. AMD Zen 3 from Zen 4: results' rounding differs)."""
    info = pathlib.Path("/proc/cpuinfo").read_text() if pathlib.Path("/proc/cpuinfo").exists() else ""
    field = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in info.splitlines()[:30]) if v}
    return f"{field.get('model name', '?')} family {field.get('cpu family', '?')} model {field.get('model', '?')}"


def final_eval_metrics(output_dir) -> dict:
    """A flaxft run's final evaluation, {metric: value} without eval_loss: the last evaluation record of its
    metrics.jsonl (summary.json mixes the metrics with run-level keys such as eval_seconds)."""
    lines = (pathlib.Path(output_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    final = [e for e in map(json.loads, filter(str.strip, lines)) if "eval_loss" in e][-1]
    return {k[len("eval_"):]: v for k, v in final.items() if k.startswith("eval_") and k != "eval_loss"}


def cpu_counters() -> dict | None:
    """CPU seconds so far: the machine's busy time, the time the hypervisor gave to other guests (steal), and this
    process's finished children's; None without /proc/stat. Two readings around a child run: see machine_load."""
    import resource

    stat = pathlib.Path("/proc/stat")
    if not stat.exists():
        return None
    ticks = [int(x) for x in stat.read_text().split("\n", 1)[0].split()[1:]] + [0] * 8
    hz = os.sysconf("SC_CLK_TCK")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"busy": sum(ticks[i] for i in (0, 1, 2, 5, 6)) / hz,  # user nice system irq softirq
            "steal": ticks[7] / hz, "children": children.ru_utime + children.ru_stime}


def machine_load(before, after, wall_seconds: float) -> dict | None:
    """Shares of the machine's CPU capacity during a child run: `others` used by processes other than the child
    (0.0 = quiet; 0.5 on 2 cores = another process kept a core busy), `steal` taken by the hypervisor for other
    guests. A speed is a result only where both are near 0."""
    if before is None or after is None or wall_seconds <= 0:
        return None
    capacity = wall_seconds * os.cpu_count()
    others = (after["busy"] - before["busy"]) - (after["children"] - before["children"])
    return {"others": round(max(0.0, others) / capacity, 4),
            "steal": round((after["steal"] - before["steal"]) / capacity, 4)}
