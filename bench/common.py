"""Arguments every benchmark run takes, so flaxft and the HF Trainer are always run alike."""

import argparse
import os
import sys


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
    p.add_argument("--allocator", choices=["system", "tcmalloc"],
                   help="host malloc (default: tcmalloc for flaxft, as its commands do; system for the HF Trainer)")
    return p


def run_on_allocator(allocator: str) -> str:
    """Go on under glibc's malloc ('system') or re-execute this script once with tcmalloc preloaded
    (flaxft/host_memory.py). Call it before anything heavy is imported; returns the allocator in use."""
    from flaxft.host_memory import INSTALL_HINT, REEXECUTED, find_tcmalloc, host_allocator, reexec_on_tcmalloc

    current = host_allocator()
    if allocator == current:
        return current
    if allocator == "system":
        sys.exit(f"--allocator system, but this process runs on {current}: unset LD_PRELOAD")
    library = find_tcmalloc()
    if library is None or os.environ.get(REEXECUTED):
        sys.exit(f"--allocator tcmalloc: no loadable tcmalloc on this machine; {INSTALL_HINT}")
    try:
        reexec_on_tcmalloc(library)
    except OSError as e:
        sys.exit(f"--allocator tcmalloc: could not re-execute {sys.orig_argv}: {e}")
