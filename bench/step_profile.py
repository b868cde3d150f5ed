"""Where the time of one jitted train step goes, by part of the model (XLA:CPU profile).

    python bench/step_profile.py --model DIR [--batch-size 32 --length 64 --steps 3]

Profiles a few train steps (bench/step_time.py's step: MiniLM, float32, dropout on, one device), maps
every executed XLA op to the model code that produced it (the op_name metadata of the compiled HLO),
and prints milliseconds per step for: matmuls (XLA:CPU runs them as YNNPACK "ynn_fusion" calls) and
everything else, split into dropout, GELU, LayerNorm, softmax, attention reshapes, embeddings and the
optimizer update.
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
from step_time import build_step, time_step  # noqa: E402

# First match wins: (part, pattern on the op_name of the HLO instruction).
PARTS = [("dropout", r"Dropout"), ("GELU", r"intermediate/(?!dense)"), ("LayerNorm", r"LayerNorm"),
         ("softmax", r"softmax|self/(div|exp|reduce_max|sub)"), ("embeddings", r"embeddings"),
         ("attention reshapes/transposes", r"attention/self/(reshape|transpose)"),
         ("other model ops", r"BertForSequenceClassification"), ("optimizer update, loss", r".")]


def op_names(hlo_text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"%([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"", hlo_text)}


def breakdown(trace_file: pathlib.Path, names: dict[str, str], steps: int) -> dict[str, float]:
    """ms per step per part, from a perfetto trace's complete events (XLA ops run one after another)."""
    with gzip.open(trace_file) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    ms = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(("ThunkExecutor", "$", "SlinkyThreadPool", "end:", "Pjit",
                                                   "CommonPjRt", "ParseArguments")):
            continue
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
    args = p.parse_args()
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
