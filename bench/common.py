"""Arguments every benchmark run takes, so flaxft and the HF Trainer are always run alike."""

import argparse


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
    return p
