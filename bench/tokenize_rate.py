"""Tokenization speed (issue #17): flaxft's tokenize_split (cold: empty cache) against the raw batched fast
tokenizer on the same rows, alternated so both see the same machine load.

    python bench/tokenize_rate.py --csv /tmp/rows1m.csv --rows 200000 --model $MINILM --repeats 2 --out R.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flaxft.config import load_config  # noqa: E402
from flaxft.data.sources import load_splits  # noqa: E402
from flaxft.data.tokenize import BATCH, load_tokenizer, tokenize_split  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", required=True)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--model", required=True)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=pathlib.Path)
    args = p.parse_args(argv)
    cfg = load_config(str(ROOT / "configs/base.yaml"), [f"data.train_file={args.csv}",
                                                        f"data.max_train_samples={args.rows}"])
    raw = load_splits(cfg.data)
    ds = raw.splits["train"]
    texts = ds.with_format("arrow")["text"].to_pylist()
    results = {"rows": len(ds), "batch": BATCH, "flaxft": [], "raw_tokenizer": []}
    for _ in range(args.repeats):
        tok = load_tokenizer(args.model)
        start = time.perf_counter()
        for i in range(0, len(texts), BATCH):
            tok(texts[i:i + BATCH], truncation=True, max_length=args.max_seq_length, return_attention_mask=False)
        results["raw_tokenizer"].append(len(texts) / (time.perf_counter() - start))
        with tempfile.TemporaryDirectory() as cache:
            tok = load_tokenizer(args.model)
            start = time.perf_counter()
            tokenize_split(ds, raw.text_columns, tok, args.max_seq_length, cache)
            results["flaxft"].append(len(texts) / (time.perf_counter() - start))
    results["ratio_of_best"] = max(results["flaxft"]) / max(results["raw_tokenizer"])
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
