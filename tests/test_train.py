"""End to end: the real CLI and Trainer on a tiny BERT, plus one short run on MiniLM + real MRPC."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from flaxft.cli import run_main
from flaxft.config import load_config
from flaxft.host_memory import SETTING
from flaxft.train import main as train_main
from flaxft.trainer import Trainer

from tests.conftest import ROOT, WORDS, toy_args


def test_cli_trains_evaluates_and_reports(tiny_model, toy_data, tmp_path):
    out = tmp_path / "run"
    assert run_main(train_main, toy_args(tiny_model, toy_data, out, "data.num_buckets=3")) == 0
    summary = json.loads((out / "summary.json").read_text())
    # it really learns the toy task
    assert summary["eval_accuracy"] >= 0.9, summary
    for key in ["eval_f1", "global_step", "train_seconds", "train_samples_per_second", "train_tokens_per_second",
                "padding_efficiency", "buckets", "train_compilations", "eval_compilations", "num_devices",
                "compile_seconds", "host_allocator"]:
        assert key in summary
    assert summary["epochs"] == 6 and summary["global_step"] >= 6 * 256 // 16
    assert summary["stopped_early"] is False and summary["stopped_at_step"] is None
    assert summary["num_devices"] == jax.device_count()
    # every step and eval compiles once per bucket, and nothing else compiles in the loop
    n_buckets = len(summary["buckets"])
    assert 1 <= summary["train_compilations"] <= n_buckets and summary["eval_compilations"] <= n_buckets
    assert summary["observed_compilations"] == summary["train_compilations"] + summary["eval_compilations"]
    assert 0 < summary["first_step_seconds"] < summary["train_seconds"]
    # in-process (pytest started long before), the process clock covers the Trainer's set-up and the step
    assert summary["first_step_seconds_from_start"] > summary["first_step_seconds"]
    assert 0.1 < summary["peak_host_memory_gb"] < 24
    assert summary["padding_efficiency"] > 0.6  # toy data: 256 examples, several part-filled batches
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_events = [e for e in events if "loss" in e]
    eval_events = [e for e in events if "eval_accuracy" in e]
    assert all("step" in e for e in events)
    assert len(eval_events) == 6  # once per epoch
    assert train_events[-1]["loss"] < train_events[0]["loss"]
    assert load_config(out / "config.yaml").train.learning_rate == 1e-3  # resolved config round-trips
    assert any((out / "tensorboard").iterdir())


def test_api_string_labels_predict_and_compute_metrics_hook(tiny_model, toy_data, tmp_path):
    cfg = load_config(ROOT / "configs/custom.yaml", toy_args(tiny_model, toy_data, tmp_path / "api")[2:] +
                      ["train.epochs=2"])
    seen = {}

    def hook(p):
        seen["shape"] = p.predictions.shape
        return {"my_metric": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    trainer = Trainer(cfg, compute_metrics=hook)
    assert trainer.raw.label_names == ("neg", "pos")
    trainer.train()
    metrics = trainer.evaluate()
    assert seen["shape"] == (100, 2)
    assert metrics["eval_my_metric"] == pytest.approx(metrics["eval_accuracy"])
    pred = trainer.predict("validation")
    assert pred.predictions.shape == (100,) and pred.probabilities.shape == (100, 2)
    np.testing.assert_allclose(pred.probabilities.sum(-1), 1.0, rtol=1e-5)
    assert pred.metrics["test_accuracy"] == pytest.approx(metrics["eval_accuracy"])


def test_regression_task(tiny_model, tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train", 96), ("dev", 40)):
        rows = ["sentence1\tsentence2\tscore"]
        for _ in range(n):
            k = int(rng.integers(0, 6))
            rows.append(f"{' '.join(['good'] * k)} movie\tplot {' '.join(rng.choice(WORDS, 3))}\t{k * 1.0 + 0.5}")
        (tmp_path / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "reg"
    args = ["--config", str(ROOT / "configs/custom.yaml"), f"model.name_or_path={tiny_model}",
            f"data.train_file={tmp_path / 'train.tsv'}", f"data.validation_file={tmp_path / 'dev.tsv'}",
            "data.text_columns=[sentence1,sentence2]", "data.label_column=score", "train.batch_size=16",
            "data.packing=false",
            # 16 epochs: 8 were enough for some random tiny models and not others (pearson -0.4 / 0.9)
            "train.learning_rate=1e-3", "train.epochs=16", f"output_dir={out}", f"data.cache_dir={tmp_path / 'c'}"]
    assert run_main(train_main, args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_pearson"] > 0.5, summary
    assert "eval_spearmanr" in summary and "eval_mse" in summary


def test_real_minilm_on_real_mrpc_short_run(minilm_dir, glue_dir, tmp_path):
    """The real checkpoint and data through the whole CLI as shipped: a few steps on packed rows (the default: one
    train compilation; evaluation on length buckets), metrics, compile counts."""
    out = tmp_path / "mrpc"
    args = ["--config", str(ROOT / "configs/glue/mrpc.yaml"), f"model.name_or_path={minilm_dir}",
            f"data.path={glue_dir / 'MRPC'}", "train.max_steps=6", "train.batch_size=32",
            "data.max_eval_samples=96", f"output_dir={out}", f"data.cache_dir={tmp_path / 'c'}"]
    assert run_main(train_main, args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 6
    assert {"eval_accuracy", "eval_f1", "eval_loss"} <= set(summary)
    assert summary["padding_efficiency"] > 0.6  # 6 steps only; the full-epoch figure is in the issue note
    assert summary["train_compilations"] == 1 and summary["packed_rows_per_step"] >= 8
    assert summary["eval_compilations"] <= len(summary["buckets"]) <= 4
    assert summary["observed_compilations"] == summary["train_compilations"] + summary["eval_compilations"]
    assert summary["train_examples"] == 3668


def test_second_identical_run_compiles_nothing_new(tiny_model, toy_data, tmp_path):
    """The persistent compilation cache: the rerun's step executables all come from disk."""
    summaries = []
    for run in ("first", "second"):
        out = tmp_path / run
        args = toy_args(tiny_model, toy_data, out, "train.max_steps=3", "data.bucket_boundaries=[64]",
                        f"train.compilation_cache={tmp_path / 'xla'}", "checkpoint.export=none")
        env = {**{k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", SETTING)}, "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run([sys.executable, "-m", "flaxft.train", *args], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        summaries.append(json.loads((out / "summary.json").read_text()))
    first, second = summaries
    assert first["observed_compilations"] == 2 and first["compile_cache_hits"] == 0  # one train + one eval bucket
    assert second["observed_compilations"] == 2 and second["compile_cache_hits"] == 2
    assert second["compile_seconds"] < first["compile_seconds"]
    # the command re-executed itself onto mimalloc (pip-installed with flaxft on Linux; flaxft/host_memory.py)
    assert first["host_allocator"] == ("mimalloc" if sys.platform.startswith("linux") else "system")
