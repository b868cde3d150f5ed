"""Multi-label classification end to end: label sets from JSONL lists and from joined names in CSV, a real-text
run that learns (real SST-2 sentences, MiniLM), its metrics against scikit-learn, `flaxft.predict`'s label sets,
and the export in transformers with problem_type multi_label_classification."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flaxft.cli import run_main
from flaxft.data.labels import LabelCodec
from flaxft.errors import FlaxftError
from flaxft.predict import predict
from flaxft.train import main as train_main

from tests.conftest import ROOT

LABELS = ("long", "negative", "positive", "short")


def test_label_sets_from_lists_and_joined_names():
    lists = LabelCodec.infer([["b", "a"], [], ["c"]], "train.jsonl")
    assert lists.kind == "multi" and lists.names == ("a", "b", "c")
    assert lists.encode([["a"], [], ["c", "b"]], "dev", unlabelled_ok=False) == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]
    joined = LabelCodec.infer(["x|y", "y", " z | x "], "train.tsv", separator="|")
    assert joined.names == ("x", "y", "z") and joined.encode(["z|x"], "dev", unlabelled_ok=False) == [[1, 0, 1]]
    forced = LabelCodec.infer(["x", "y"], "train.csv", problem_type="multi_label_classification")
    assert forced.kind == "multi" and forced.encode(["y"], "dev", unlabelled_ok=False) == [[0, 1]]
    assert LabelCodec.infer(["a", "b"], "train.csv").kind == "str"  # no separator anywhere: single-label
    with pytest.raises(FlaxftError, match=r"dev, row 2: label 'w' never appears in the training labels"):
        joined.encode(["x", "w|x"], "dev", unlabelled_ok=False)
    with pytest.raises(FlaxftError, match="labels are lists but data.problem_type"):
        LabelCodec.infer([["a"], ["b"]], "train.jsonl", problem_type="single_label_classification")


def sst2_label_sets(glue_dir, split: str, n: int, median_words: float = None):
    """(sentence, [sentiment, length class]) for the first n sentences of an SST-2 split; length class: more
    words than the training median or not."""
    with open(glue_dir / "SST-2" / f"{split}.tsv", encoding="utf-8") as f:
        rows = [(r["sentence"].strip(), int(r["label"])) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    rows = [r for r in rows if len(r[0].split()) >= 3][:n]
    median_words = median_words or float(np.median([len(s.split()) for s, _ in rows]))
    return [(s, ["positive" if y else "negative", "long" if len(s.split()) > median_words else "short"])
            for s, y in rows], median_words


def cli(module: str, *args) -> str:
    """`python -m module args` on one CPU device (a MiniLM step on the 8 emulated devices costs several times
    more; the 8-device paths are tested elsewhere); its output."""
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
    done = subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_multi_label_run_learns_predicts_and_exports(minilm_dir, glue_dir, tmp_path):
    torch = pytest.importorskip("torch")
    import transformers
    from sklearn.metrics import f1_score

    train, median = sst2_label_sets(glue_dir, "train", 384)
    dev, _ = sst2_label_sets(glue_dir, "dev", 200, median)
    with open(tmp_path / "train.jsonl", "w", encoding="utf-8") as f:  # lists of labels
        f.writelines(json.dumps({"sentence": s, "labels": y}) + "\n" for s, y in train)
    with open(tmp_path / "dev.csv", "w", encoding="utf-8", newline="") as f:  # names joined by ","
        w = csv.writer(f)
        w.writerow(["sentence", "labels"])
        w.writerows([s, ",".join(y)] for s, y in dev)
    out = tmp_path / "run"
    args = ["--config", str(ROOT / "configs/custom.yaml"), f"model.name_or_path={minilm_dir}",
            f"data.train_file={tmp_path / 'train.jsonl'}", f"data.validation_file={tmp_path / 'dev.csv'}",
            "data.text_columns=[sentence]", "data.label_column=labels", "data.max_seq_length=32", "data.packing=false",
            "data.bucket_boundaries=[32]", "train.batch_size=32", "train.epochs=2", "train.learning_rate=1e-4",
            f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={out}"]
    cli("flaxft.train", *args)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problem_type"] == "multi_label_classification"
    assert set(summary) >= {"eval_f1_micro", "eval_f1_macro", "eval_exact_match", "eval_hamming_loss"}

    truth = np.array([[name in y for name in LABELS] for _, y in dev], np.int64)
    majority = np.array([[name in y for name in LABELS] for _, y in train]).mean(0) > 0.5  # each label's majority
    baseline = f1_score(truth, np.broadcast_to(majority, truth.shape).astype(np.int64), average="micro")
    print(f"dev micro-F1 {summary['eval_f1_micro']:.4f} vs per-label majority baseline {baseline:.4f}")
    assert summary["eval_f1_micro"] >= baseline + 0.25  # baseline: about 0.28 (always "positive" and "short")

    # predict: the label set at predict.threshold and every probability; its scores are scikit-learn's
    result = predict(str(out / "export"), file=str(tmp_path / "dev.csv"), output_dir=str(tmp_path / "pred"))["dev"]
    with open(tmp_path / "pred" / "dev.tsv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["index", "prediction", *(f"prob_{n}" for n in LABELS)] and len(rows) == len(dev) + 1
    predicted = np.array([[float(p) >= 0.5 for p in r[2:]] for r in rows[1:]], np.int64)
    assert [set(filter(None, r[1].split(","))) for r in rows[1:]] == \
        [{n for n, on in zip(LABELS, hot) if on} for hot in predicted]
    assert result.metrics["test_f1_micro"] == pytest.approx(f1_score(truth, predicted, average="micro"), abs=1e-12)
    assert result.metrics["test_f1_micro"] == pytest.approx(summary["eval_f1_micro"], abs=1e-6)  # export = best
    printed = cli("flaxft.predict", "--model", str(out), "--file", str(tmp_path / "dev.csv"), "--output-dir",
                  str(tmp_path / "p9"), "predict.threshold=0.9")  # the run folder, a stricter threshold
    assert "test_f1_micro=" in printed
    with open(tmp_path / "p9" / "dev.tsv", encoding="utf-8") as f:
        stricter = [set(filter(None, r[1].split(","))) for r in list(csv.reader(f, delimiter="\t"))[1:]]
    assert sum(map(len, stricter)) < predicted.sum()

    # the export in transformers: problem_type set, the same logits
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out / "export").eval()
    assert model.config.problem_type == "multi_label_classification"
    assert [model.config.id2label[i] for i in range(4)] == list(LABELS)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "export")
    with torch.no_grad():
        logits = model(**tokenizer([s for s, _ in dev], padding=True, truncation=True, max_length=32,
                                   return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(result.logits, logits, atol=1e-4)


def test_packed_multi_label_run(tiny_model, tmp_path):
    """Packed rows carry a label set per example slot ([rows, slots, labels]); filler slots weigh nothing."""
    rng = np.random.default_rng(0)
    words = "good bad long story film plot".split()
    with open(tmp_path / "train.jsonl", "w", encoding="utf-8") as f:
        for _ in range(96):
            text = " ".join(rng.choice(words, size=int(rng.integers(3, 30))))
            f.write(json.dumps({"text": text, "tags": [w for w in ("good", "bad", "plot") if w in text.split()]}) + "\n")
    out = tmp_path / "run"
    args = ["--config", str(ROOT / "configs/custom.yaml"), f"model.name_or_path={tiny_model}",
            f"data.train_file={tmp_path / 'train.jsonl'}", f"data.validation_file={tmp_path / 'train.jsonl'}",
            "data.label_column=tags", "data.packing=true", "data.packed_length=64", "train.batch_size=16",
            "train.max_steps=3", f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={out}"]
    cli("flaxft.train", *args)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problem_type"] == "multi_label_classification" and summary["packed_length"] == 64
    assert 0 <= summary["eval_f1_micro"] <= 1 and np.isfinite(summary["eval_loss"])
