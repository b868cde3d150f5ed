"""Where the time of one jitted train step goes, by part of the model (XLA:CPU profile).

    python bench/step_profile.py --model DIR [--batch-size 32 --length 64 --steps 3] [--allocator system]

Profiles a few train steps (bench/step_time.py's step: MiniLM, float32, dropout on, one device), maps
every executed XLA op to the model code that produced it (the op_name metadata of the compiled HLO),
and prints milliseconds per step for: matmuls (XLA:CPU runs most as YNNPACK "ynn_fusion" calls) and
everything else, split into dropout, GELU, LayerNorm, softmax, attention reshapes, embeddings and the
optimizer update. The weight-gradient matmuls run as Eigen "dot" thunks whose trace spans end at dispatch:
their time shows up as gaps between traced ops, reported as "untraced gaps (Eigen weight-gradient dots)".
Ops on the two threads can overlap, so the parts add up to more than the step.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import run_on_allocator  # noqa: E402
from step_time import build_step, time_step  # noqa: E402

# First match wins: (part, pattern on the op_name of the HLO instruction).
PARTS = [("dropout", r"Dropout"), ("GELU", r"mlp/(?!input|output)"), ("LayerNorm", r"_norm/|embeddings/norm"),
         ("softmax", r"softmax|attention/(div|exp|reduce_max|sub)"), ("embeddings", r"embeddings"),
         ("attention reshapes/transposes", r"attention/(reshape|transpose)"),
         ("other model ops", r"EncoderClassifier"), ("optimizer update, loss", r".")]


def op_names(hlo_text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"%([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"", hlo_text)}


def breakdown(trace_file: pathlib.Path, names: dict[str, str], steps: int) -> dict[str, float]:
    """ms per step per part, from a perfetto trace's complete events (XLA ops run one after another)."""
    with gzip.open(trace_file) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    ms = collections.Counter()
    ops = [e for e in events if e.get("ph") == "X" and not e.get("name", "").startswith(
        ("ThunkExecutor", "$", "SlinkyThreadPool", "end:", "Pjit", "CommonPjRt", "ParseArguments", "Threadpool",
         "PythonRef", "Wait for"))]
    ops.sort(key=lambda e: e["ts"])
    end = ops[0]["ts"] if ops else 0
    for e in ops:  # time covered by no traced op, between the first op and the last
        ms["untraced gaps (Eigen weight-gradient dots)"] += max(0.0, e["ts"] - end) / 1e3 / steps
        end = max(end, e["ts"] + e["dur"])
    for e in ops:
        name = e["name"]
        if name.startswith(("ynn_fusion", "dot")):
            part = "matmuls"
        else:
            op = names.get(name, "")
            part = next(p for p, pattern in PARTS if re.search(pattern, op)) if op else "unnamed (copies)"
        ms[part] += e["dur"] / 1e3 / steps
    return dict(ms)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--allocator", choices=["system", "auto", "mimalloc", "tcmalloc"], default="auto",
                   help="host malloc (auto: what flaxft's commands pick, flaxft/host_memory.py)")
    args = p.parse_args()
    print(f"host malloc: {run_on_allocator(args.allocator)}")
    step, state, data = build_step(args.model, "float32", True, args.batch_size, args.length)
    names = op_names(step.lower(state, data).compile().as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        seconds = time_step(args.model, "float32", True, args.batch_size, args.length, args.steps, trace_dir)
        (trace,) = pathlib.Path(trace_dir).rglob("perfetto_trace.json.gz")
        parts = breakdown(trace, names, args.steps)
    total = sum(parts.values())
    print(f"train step (B={args.batch_size}, L={args.length}, float32, dropout on): {1e3 * seconds:.0f} ms/step; "
          f"XLA ops {total:.0f} ms/step")
    print("| part | ms/step | share |")
    print("| --- | ---: | ---: |")
    for part, value in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"| {part} | {value:.0f} | {100 * value / total:.0f}% |")


if __name__ == "__main__":
    main()
