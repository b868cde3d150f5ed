"""Bad input: one clear line on stderr, a non-zero exit, no traceback, and no summary.json."""

import os
import pathlib
import subprocess
import sys

import pytest

from flaxft.cli import run_main
from flaxft.train import main as train_main
from tests.conftest import ROOT, toy_args, write_sentiment


def run_cli(args, capsys):
    code = run_main(train_main, args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("flaxft: error")]
    return code, lines, err


def assert_clean_failure(code, lines, err, out: pathlib.Path, *words):
    assert code != 0
    assert len(lines) == 1, err[-3000:]
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in err
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("override, words", [
    ("data.train_file=/nonexistent/train.csv", ["/nonexistent/train.csv"]),
    ("model.name_or_path=/nonexistent/model", ["/nonexistent/model", "does not exist"]),
    ("model.name_or_path=someone/some-bert-that-needs-the-hub", ["unreachable", "model.name_or_path"]),
    ("data.text_columns=[review]", ["review"]),
    ("data.label_column=stars", ["stars"]),
    ("train.batch_size=12", ["train.batch_size=12", "multiple of 8"]),
    ("train.learnig_rate=1", ["did you mean 'train.learning_rate'"]),
    ("train.learning_rate=1e12", ["loss became", "train.learning_rate"]),
])
def test_bad_input_is_one_clean_line(override, words, tiny_model, toy_data, tmp_path, capsys):
    if "batch_size=12" in override and int(os.environ.get("JAX_NUM_CPU_DEVICES", "1")) != 8:
        pytest.fail("run the test suite with JAX_NUM_CPU_DEVICES=8 (the README's test command)")
    out = tmp_path / "out"
    extra = [override, "train.max_grad_norm=0", "train.epochs=1"]
    code, lines, err = run_cli(toy_args(tiny_model, toy_data, out, *extra), capsys)
    assert_clean_failure(code, lines, err, out, *words)


def test_label_only_in_validation(tiny_model, toy_data, tmp_path, capsys):
    write_sentiment(tmp_path / "dev.csv", 20, seed=5, labels=("neg", "meh"))
    out = tmp_path / "out"
    code, lines, err = run_cli(toy_args(tiny_model, toy_data, out, f"data.validation_file={tmp_path / 'dev.csv'}"), capsys)
    assert_clean_failure(code, lines, err, out, "meh")


def test_non_utf8_file(tiny_model, toy_data, tmp_path, capsys):
    (tmp_path / "train.csv").write_bytes("text,label\ncaf\xe9 good,pos\nbad film,neg\n".encode("latin-1"))
    out = tmp_path / "out"
    code, lines, err = run_cli(toy_args(tiny_model, toy_data, out, f"data.train_file={tmp_path / 'train.csv'}"), capsys)
    assert_clean_failure(code, lines, err, out, "UTF-8")


def test_empty_split(tiny_model, toy_data, tmp_path, capsys):
    (tmp_path / "dev.csv").write_text("text,label\n")
    out = tmp_path / "out"
    code, lines, err = run_cli(toy_args(tiny_model, toy_data, out, f"data.validation_file={tmp_path / 'dev.csv'}"), capsys)
    assert_clean_failure(code, lines, err, out, "empty")


def test_label_out_of_range(tiny_model, toy_data, tmp_path, capsys):
    (tmp_path / "train.csv").write_text("text,label\ngood film,1\nbad film,0\nok film,-3\n")
    out = tmp_path / "out"
    code, lines, err = run_cli(toy_args(tiny_model, toy_data, out, f"data.train_file={tmp_path / 'train.csv'}"), capsys)
    assert_clean_failure(code, lines, err, out, "-3")


def test_real_process_exit_code_and_no_traceback(tmp_path):
    """The same path as a user's shell: exit status 2 and a single stderr line."""
    proc = subprocess.run([sys.executable, "-m", "flaxft.train", "--config", str(ROOT / "configs/glue/mrpc.yaml"),
                           "data.path=/nonexistent/MRPC", f"output_dir={tmp_path / 'o'}"],
                          capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("flaxft: error:") and "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "summary.json").exists()


def test_debug_flag_shows_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flaxft.train", "--config", "nope.yaml", "--debug"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
