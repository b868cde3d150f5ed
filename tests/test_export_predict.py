"""Export to Hugging Face format (transformers PyTorch parity, flaxft reload) and `python -m flaxft.predict`."""

import csv
import json
import shutil

import numpy as np
import pytest
from flax import traverse_util

from flaxft.checkpoint import Checkpoints
from flaxft.cli import run_main
from flaxft.config import load_config
from flaxft.model import load_pretrained
from flaxft.predict import main as predict_main, predict
from flaxft.train import main as train_main

from tests.conftest import ROOT, write_sentiment


def read_tsv(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.reader(f, delimiter="\t"))


def test_export_matches_transformers_pytorch(trained_run):
    torch = pytest.importorskip("torch")
    import transformers

    run, _ = trained_run
    export = run / "export"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "flaxft.json"):
        assert (export / name).is_file(), name
    config = json.loads((export / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"] == {"neg": 0, "pos": 1}
    assert config["architectures"] == ["BertForSequenceClassification"]
    info = json.loads((export / "flaxft.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert info["step"] == summary["best_checkpoint_step"]  # export=best

    ours = predict(str(export), splits=["validation"], output_dir=str(run.parent / "p-export"))["validation"]
    model = transformers.AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    with open(load_config(run / "config.yaml").data.validation_file, encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")).logits
    diff = np.abs(logits.numpy() - ours.logits).max()
    print(f"transformers vs flaxft logits: max |diff| = {diff:.2e}")
    assert diff <= 1e-4
    assert model.config.id2label[int(ours.predictions[0])] == read_tsv(run.parent / "p-export" / "validation.tsv")[1][1]


def test_export_reloads_in_flaxft(trained_run, tmp_path):
    """The exported weights are the best checkpoint's, bit for bit; flaxft predicts the same from either."""
    run, _ = trained_run
    best = json.loads((run / "summary.json").read_text())["best_checkpoint_step"]
    ckpts = Checkpoints(run / "checkpoints", read_only=True)
    _, exported = load_pretrained(run / "export", 2, rng=None)
    saved = ckpts.restore_params(best, exported)
    for path, value in traverse_util.flatten_dict(exported).items():
        assert np.array_equal(np.asarray(value), np.asarray(traverse_util.flatten_dict(saved)[path])), path
    from_export = predict(str(run / "export"), splits=["validation"], output_dir=str(tmp_path / "a"))
    from_run = predict(str(run), splits=["validation"], output_dir=str(tmp_path / "b"))
    np.testing.assert_array_equal(from_export["validation"].logits, from_run["validation"].logits)
    assert from_run["validation"].metrics["test_accuracy"] == ckpts.read_meta(best)["metrics"]["eval_accuracy"]
    assert from_run["compilations"] <= len(from_run["buckets"])


def test_predict_file_cli(trained_run, tmp_path, capsys):
    run, _ = trained_run
    write_sentiment(tmp_path / "mine.csv", 30, seed=7)
    assert run_main(predict_main, ["--model", str(run / "export"), "--file", str(tmp_path / "mine.csv"),
                                   "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "test_accuracy=" in out  # the file has labels: metrics are printed
    rows = read_tsv(tmp_path / "out" / "mine.tsv")
    assert rows[0] == ["index", "prediction", "prob_neg", "prob_pos"] and len(rows) == 31
    assert {r[1] for r in rows[1:]} <= {"neg", "pos"}
    assert all(abs(float(r[2]) + float(r[3]) - 1) < 1e-5 for r in rows[1:])
    assert json.loads((tmp_path / "out" / "mine_metrics.json").read_text())["test_accuracy"] >= 0


def test_predict_glue_test_split_writes_submission(tiny_model, glue_dir, tmp_path, capsys):
    out = tmp_path / "mrpc"
    args = ["--config", str(ROOT / "configs/glue/mrpc.yaml"), f"model.name_or_path={tiny_model}",
            f"data.path={glue_dir / 'MRPC'}", "train.max_steps=2", "train.batch_size=16", "data.max_eval_samples=32",
            "data.packing=false", "data.bucket_boundaries=[64,128]", f"output_dir={out}",
            f"data.cache_dir={tmp_path / 'c'}"]
    assert run_main(train_main, args) == 0
    assert run_main(predict_main, ["--model", str(out), "data.max_eval_samples=null"]) == 0  # default: the test split
    rows = read_tsv(out / "predictions" / "glue" / "MRPC.tsv")
    assert rows[0] == ["index", "prediction"] and len(rows) == 1726  # every test example
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(1725)] and {r[1] for r in rows[1:]} <= {"0", "1"}
    named = read_tsv(out / "predictions" / "test.tsv")
    assert named[0] == ["index", "prediction", "prob_not_equivalent", "prob_equivalent"]
    assert "wrote" in capsys.readouterr().out


def one_error(argv, capsys) -> str:
    assert run_main(predict_main, argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("flaxft: error")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_predict_bad_input_is_one_clear_line(trained_run, tmp_path, capsys):
    run, _ = trained_run
    (tmp_path / "reviews.csv").write_text("review,label\ngood film,pos\n")
    line = one_error(["--model", str(run / "export"), "--file", str(tmp_path / "reviews.csv")], capsys)
    assert "no column 'text'" in line and "review" in line and "data.text_columns" in line

    broken = tmp_path / "export"
    shutil.copytree(run / "export", broken)
    (broken / "model.safetensors").unlink()
    line = one_error(["--model", str(broken), "--split", "validation"], capsys)
    assert "has no weights" in line and "model.safetensors" in line

    line = one_error(["--model", str(tmp_path / "nowhere")], capsys)
    assert "does not exist" in line
