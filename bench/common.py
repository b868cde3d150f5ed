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
