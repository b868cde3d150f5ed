"""One `python -m flaxft.train` run (or one multi-process run) measured for the scale benchmark (issue #17).

    python bench/scale_run.py --label cold-1m --out bench/results/scale_1m.json -- \
        --config configs/base.yaml model.name_or_path=$MINILM data.train_file=/tmp/rows1m.csv train.max_steps=2 ...
    python bench/scale_run.py --processes 2 ...   # adds distributed.* keys, one process each

Each process runs under `/usr/bin/time -v`: its wall time and peak resident memory (VmHWM: what the kernel counts,
memory-mapped file pages that the process touched included). From summary.json: `first_step_seconds_from_start`
(process start to the end of the first training step: reading, tokenizing, compiling, one step) and
`first_step_seconds` (train() start to the end of the first step). The record is appended to --out (a JSON list).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _time_v(text: str) -> dict:
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    cpu = re.search(r"Percent of CPU this job got: (\d+)%", text)
    return {"peak_rss_gb": int(peak.group(1)) / 1e6, "wall_seconds": seconds, "cpu_percent": int(cpu.group(1))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", required=True)
    p.add_argument("--out", type=pathlib.Path, required=True)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--devices", type=int, default=1, help="JAX_NUM_CPU_DEVICES of each process")
    p.add_argument("--logs", type=pathlib.Path, help="folder for each process's stderr (default: next to --out)")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the arguments of python -m flaxft.train")
    args = p.parse_args(argv)
    train_args = [a for a in args.train_args if a != "--"]
    output_dir = next(a.split("=", 1)[1] for a in train_args if a.startswith("output_dir="))
    logs = args.logs or args.out.with_suffix("").with_name(args.out.stem + "_logs")
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(args.devices), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT)}
    port = _free_port()
    procs, files = [], []
    started = time.time()
    for i in range(args.processes):
        extra = [] if args.processes == 1 else [f"distributed.coordinator_address=127.0.0.1:{port}",
                                                f"distributed.num_processes={args.processes}",
                                                f"distributed.process_id={i}"]
        timing = logs / f"{args.label}.p{i}.time"
        err = open(logs / f"{args.label}.p{i}.log", "w")
        cmd = ["/usr/bin/time", "-v", "-o", str(timing), sys.executable, "-m", "flaxft.train", *train_args, *extra]
        procs.append(subprocess.Popen(cmd, env=env, stdout=err, stderr=subprocess.STDOUT, cwd=ROOT))
        files.append((timing, err))
    codes = [proc.wait() for proc in procs]
    record = {"label": args.label, "date_utc": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(),
              "command": " ".join(["python -m flaxft.train", *train_args]), "processes": args.processes,
              "devices_per_process": args.devices, "exit_codes": codes, "load_average_1m_at_end": os.getloadavg()[0],
              "per_process": []}
    for timing, err in files:
        err.close()
        record["per_process"].append(_time_v(timing.read_text()))
    summary_file = pathlib.Path(output_dir) / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        record.update({k: summary.get(k) for k in ("first_step_seconds_from_start", "first_step_seconds",
                                                   "train_examples", "global_step", "buckets", "host_allocator")})
        record.update({k: v for k, v in summary.items() if k.startswith("eval_")})
    record["peak_rss_gb_max"] = max(r["peak_rss_gb"] for r in record["per_process"])
    record["wall_seconds_max"] = max(r["wall_seconds"] for r in record["per_process"])
    results = json.loads(args.out.read_text()) if args.out.is_file() else []
    args.out.write_text(json.dumps(results + [record], indent=2) + "\n")
    print(json.dumps(record, indent=2))
    if any(codes):
        sys.exit(f"a process failed (exit codes {codes}); see {logs}")


if __name__ == "__main__":
    main()
