"""Synthetic data sets for the scale benchmark (issue #17): what a big run reads, without the data.

    python bench/synthetic_rows.py csv OUT.csv --rows 1000000            # text,label: short texts, 3 string labels
    python bench/synthetic_rows.py glue OUT_DIR --task mnli --rows 393000 # GLUE's TSV layout (mnli or qqp)

Texts are 4-24 pseudo-words drawn from a fixed vocabulary of 5,000, so a WordPiece tokenizer splits them into
about 10-40 tokens, like GLUE's short sentences. Rows are a pure function of --seed. The GLUE folders have the
official files and columns (MNLI: train.tsv, dev_matched.tsv, dev_mismatched.tsv with the parse columns; QQP:
train.tsv, dev.tsv), so `data.task=mnli data.path=OUT_DIR` reads them as it reads the real ones.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fi", "go", "hu", "je", "pa", "zo",
             "tra", "ster", "ment", "ion", "al", "ing", "er", "ly")
LABELS = ("negative", "neutral", "positive")
MNLI_LABELS = ("entailment", "neutral", "contradiction")


def vocabulary(rng: np.random.Generator, size: int = 5000) -> np.ndarray:
    words = {"".join(rng.choice(SYLLABLES, rng.integers(1, 4))) for _ in range(size * 3)}
    return np.array(sorted(words)[:size])


def sentences(rng: np.random.Generator, vocab: np.ndarray, n: int, low: int = 4, high: int = 25) -> list[str]:
    counts = rng.integers(low, high, n)
    words = vocab[rng.integers(0, len(vocab), counts.sum())]
    ends = np.cumsum(counts)
    return [" ".join(words[e - c:e]) for c, e in zip(counts, ends)]


def write_csv(path: pathlib.Path, rows: int, seed: int, chunk: int = 100_000) -> None:
    rng = np.random.default_rng(seed)
    vocab = vocabulary(rng)
    with open(path, "w", encoding="utf-8") as f:
        f.write("text,label\n")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            labels = rng.integers(0, len(LABELS), n)
            f.writelines(f"{t},{LABELS[y]}\n" for t, y in zip(sentences(rng, vocab, n), labels))


def _parse(sentence: str) -> str:
    """A stand-in for MNLI's parse columns (same order of size as the sentence)."""
    return "( " + " ".join(f"( {w} )" for w in sentence.split()) + " )"


def write_mnli_file(path: pathlib.Path, rng, vocab, n: int, dev: bool) -> None:
    header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1"]
    header += ["label2", "label3", "label4", "label5", "gold_label"] if dev else ["gold_label"]
    votes = 5 if dev else 1
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        premises, hypotheses = sentences(rng, vocab, n, 8, 30), sentences(rng, vocab, n, 4, 14)
        for i, (p, h, y) in enumerate(zip(premises, hypotheses, rng.integers(0, 3, n))):
            label = MNLI_LABELS[y]
            f.write("\t".join([str(i), str(i // 3), f"{i}e", "fiction", _parse(p), _parse(h), _parse(p), _parse(h),
                               p, h, *[label] * votes, label]) + "\n")


def write_qqp_file(path: pathlib.Path, rng, vocab, n: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n")
        q1, q2 = sentences(rng, vocab, n, 4, 20), sentences(rng, vocab, n, 4, 20)
        for i, (a, b, y) in enumerate(zip(q1, q2, rng.integers(0, 2, n))):
            f.write(f"{i}\t{2 * i}\t{2 * i + 1}\t{a}?\t{b}?\t{y}\n")


def write_glue(folder: pathlib.Path, task: str, rows: int, seed: int, dev_rows: int) -> None:
    rng = np.random.default_rng(seed)
    vocab = vocabulary(rng)
    folder.mkdir(parents=True, exist_ok=True)
    if task == "mnli":
        write_mnli_file(folder / "train.tsv", rng, vocab, rows, dev=False)
        for name in ("dev_matched.tsv", "dev_mismatched.tsv"):
            write_mnli_file(folder / name, rng, vocab, dev_rows, dev=True)
    else:
        write_qqp_file(folder / "train.tsv", rng, vocab, rows)
        write_qqp_file(folder / "dev.tsv", rng, vocab, dev_rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["csv", "glue"])
    p.add_argument("out", type=pathlib.Path, help="the CSV file (csv) or the task folder (glue)")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--task", choices=["mnli", "qqp"], default="mnli")
    p.add_argument("--dev-rows", type=int, default=10_000, help="rows of each GLUE dev file")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.kind == "csv":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_csv(args.out, args.rows, args.seed)
    else:
        write_glue(args.out, args.task, args.rows, args.seed, args.dev_rows)


if __name__ == "__main__":
    main()
