"""Faults around checkpoints and exports (issue #17): a full disk, a damaged newest checkpoint, SIGTERM during an
evaluation, a checkpoint write or the export. Each ends with the run going on, or with one line saying what happened
and what to do, nothing lost that was saved and nothing half-written that a rerun would pick up.

A full disk is a small tmpfs mounted for the test (it needs root), sized from a measured checkpoint. SIGTERM at an
exact point comes from the FLAXFT_TEST_SIGTERM_AT hook (flaxft/monitoring.py). Runs that resume are 1-device
subprocesses sharing a compilation cache, so that they compute the same bits as the uninterrupted reference.
"""

import contextlib
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import pytest

from flaxft import storage
from flaxft.checkpoint import DAMAGED, Checkpoints
from flaxft.cli import run_main
from flaxft.config import load_config
from flaxft.data.tokenize import load_tokenizer, tokenize_split
from flaxft.data.tables import string_table
from flaxft.errors import FlaxftError
from flaxft.export import export_model
from flaxft.model import load_pretrained
from flaxft.monitoring import TEST_SIGTERM_AT
from flaxft.predict import main as predict_main
from flaxft.reporting import RunWriter, write_json
from flaxft.trainer import Trainer

from tests.conftest import ckpt_args
from tests.test_checkpoint import cpu_env, step_dirs

# 8 steps (16 per epoch); evaluations at 3, 6 and 8; checkpoints at 2, 4, 6 and 8 (the last two kept, plus the best)
RUN = ("train.max_steps=8", "checkpoint.every_steps=2", "train.eval_every_steps=3", "checkpoint.export=final")
NOISE = ("Traceback", "never retrieved", "Event loop is closed")


def train(args, cache: pathlib.Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flaxft.train", *args], env={**cpu_env(1, cache), **env},
                          capture_output=True, text=True, timeout=300)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("flaxft: error")]


def losses(run: pathlib.Path) -> list[float]:
    return [e["loss"] for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in e]


@contextlib.contextmanager
def small_disk(folder: pathlib.Path, size: int):
    """A tmpfs of `size` bytes at `folder` (root only), unmounted on the way out."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: pathlib.Path) -> None:
    """Take every free byte of the disk holding `folder`."""
    with open(folder / "filler", "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()


class Reference:
    """The uninterrupted run every interrupted one must equal, started at once in the background (the first test's
    interrupted runs go alongside it), and the compilation cache they all share."""

    def __init__(self, args, root: pathlib.Path):
        self.out, self.cache = root / "reference", root / "jax-cache"
        self.log = root / "reference.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "flaxft.train", *args(self.out), *RUN],
                                     env=cpu_env(1, self.cache), stdout=subprocess.DEVNULL, stderr=self.log.open("w"))

    def done(self) -> pathlib.Path:
        assert self.proc.wait(timeout=300) == 0, self.log.read_text()[-3000:]
        return self.out


@pytest.fixture(scope="module")
def reference(tiny_model, toy_data, tmp_path_factory):
    ref = Reference(lambda out: ckpt_args(tiny_model, toy_data, out), tmp_path_factory.mktemp("faults"))
    yield ref
    ref.proc.kill()
    ref.proc.wait()


def test_sigterm_during_evaluation_checkpoint_write_and_export(reference, tiny_model, toy_data, tmp_path):
    """Each SIGTERM stops the run cleanly (status 0, a checkpoint, no summary); the last rerun equals the reference."""
    cache = reference.cache
    run = tmp_path / "run"
    args = ckpt_args(tiny_model, toy_data, run, *RUN)

    proc = train(args, cache, **{TEST_SIGTERM_AT: "evaluation"})  # the first evaluation: step 3
    assert proc.returncode == 0 and "preempted at step 3;" in proc.stderr, proc.stderr[-3000:]
    assert 3 in step_dirs(run) and not (run / "summary.json").exists()

    proc = train(args, cache, **{TEST_SIGTERM_AT: "checkpoint:2"})  # while the write of step 6 runs
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr and "checkpoint at step 6" in proc.stderr
    assert "preempted at step 7;" in proc.stderr and 7 in step_dirs(run) and not (run / "summary.json").exists()

    proc = train(args, cache, **{TEST_SIGTERM_AT: "export"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "during the export" in proc.stderr and "preempted at step 8;" in proc.stderr
    assert not (run / "export").exists() and not (run / "export.tmp").exists()  # abandoned whole
    assert not (run / "summary.json").exists()

    proc = train(args, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(n in proc.stderr for n in NOISE) and not step_dirs(run, tmp=True)
    ref = reference.done()
    assert (run / "export" / "model.safetensors").read_bytes() == (ref / "export" / "model.safetensors").read_bytes()
    assert losses(run) == losses(ref)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, run))
    assert {k: v for k, v in a.items() if k.startswith("eval_") and k != "eval_seconds"} == \
           {k: v for k, v in b.items() if k.startswith("eval_") and k != "eval_seconds"}


def test_disk_full_while_checkpointing_stops_in_one_line_and_resumes(reference, tiny_model, toy_data, tmp_path):
    ref, cache = reference.done(), reference.cache
    checkpoint = storage.tree_bytes(ref / "checkpoints" / "8")
    mnt = tmp_path / "disk"
    # room for two checkpoints and the logs, not for a third: the write of step 6 finds the disk full
    with small_disk(mnt, 2 * checkpoint + checkpoint // 2 + (1 << 20)):
        run = mnt / "run"
        args = ckpt_args(tiny_model, toy_data, run, *RUN, f"data.cache_dir={tmp_path / 'cache'}")
        proc = train(args, cache)
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = error_lines(proc.stderr)
        assert len(lines) == 1 and not any(n in proc.stderr for n in NOISE), proc.stderr[-3000:]
        # a checkpoint (or, when it fills the disk first, a metrics line): the folder, the space needed
        assert lines[0].startswith(f"flaxft: error: no space left on device in '{run}") and "needs about" in lines[0]
        print(lines[0])
        finished = step_dirs(run)
        assert finished and max(finished) < 8 and not step_dirs(run, tmp=True)  # the half-written step is gone
        assert not (run / "summary.json").exists() and not (run / "export").exists()

        subprocess.run(["mount", "-o", f"remount,size={20 * checkpoint}", str(mnt)], check=True)
        proc = train(args, cache)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"resuming from {run / 'checkpoints' / str(max(finished))}" in proc.stderr
        assert (run / "export" / "model.safetensors").read_bytes() == (ref / "export" / "model.safetensors").read_bytes()
        assert losses(run) == losses(ref)


def damage(step_dir: pathlib.Path, how: str) -> pathlib.Path:
    """Truncate or remove the largest file of a step folder (the issue's case); returns it."""
    largest = max((f for f in step_dir.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    if how == "truncate":
        os.truncate(largest, largest.stat().st_size // 3)
    else:
        largest.unlink()
    return largest


@pytest.mark.parametrize("how", ["truncate", "remove"])
def test_damaged_newest_checkpoint_falls_back_to_the_newest_intact(how, reference, tiny_model, toy_data, tmp_path,
                                                                   caplog):
    run = tmp_path / "run"
    shutil.copytree(reference.done(), run)
    (run / "summary.json").unlink()
    assert step_dirs(run)[-2:] == [6, 8]
    damage(run / "checkpoints" / "8", how)
    args = ckpt_args(tiny_model, toy_data, run, *RUN)
    with caplog.at_level(logging.WARNING, logger="flaxft"):
        trainer = Trainer(load_config(args[1], args[2:]))
    assert trainer.resumed_step == 6
    warning = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warning) == 1 and f"'{run / 'checkpoints' / '8'}' is damaged (" in warning[0], warning
    assert "using step 6" in warning[0]
    # kept for inspection, out of the way: the run writes step 8 afresh
    assert (run / DAMAGED / "8").is_dir() and 8 not in Checkpoints(run / "checkpoints", read_only=True).steps()


def test_predict_latest_says_which_checkpoint_or_why_none(reference, tmp_path, caplog, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference.done(), run)
    damage(run / "checkpoints" / "8", "truncate")
    args = ["--model", str(run), "--checkpoint", "latest", "--split", "validation"]
    with caplog.at_level(logging.INFO, logger="flaxft"):
        assert run_main(predict_main, args) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"'{run / 'checkpoints' / '8'}' is damaged (" in m and "using step 6" in m for m in messages), messages
    assert f"predicting validation with the checkpoint {run / 'checkpoints' / '6'}" in messages
    assert (run / "predictions" / "validation.tsv").is_file()
    assert (run / "checkpoints" / "8").is_dir()  # predict reads; it moves nothing

    for step in step_dirs(run):
        if step != 8:
            damage(run / "checkpoints" / str(step), "truncate")
    capsys.readouterr()
    assert run_main(predict_main, args) == 2
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert f"no checkpoint in '{run / 'checkpoints'}' can be restored" in lines[0], lines[0]


NOISY_RESTORE = """
import sys
from flaxft.checkpoint import Checkpoints
from flaxft.cli import run_main
from tests.test_faults import many_arrays

def main(argv):
    Checkpoints(sys.argv[1], read_only=True).restore(1, many_arrays())
    return 0

sys.exit(run_main(main))
"""


def many_arrays():
    """A state of 30 arrays of 1 MB: enough reads in flight for the noise below."""
    import jax.numpy as jnp
    import numpy as np

    from flaxft.steps import TrainState

    params = {f"w{i}": jnp.asarray(np.random.default_rng(i).standard_normal((64, 4096), np.float32)) for i in range(30)}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=(), rng=jnp.zeros(2, jnp.uint32))


def test_a_failed_restore_prints_one_line_not_orbax_tracebacks(tmp_path):
    """Many arrays read at once from a file cut near its end: Orbax's event loop closes on the first error while
    TensorStore reads are in flight, whose callbacks then print "Event loop is closed" tracebacks (and unread
    tasks "exception was never retrieved"), as in the issue (--debug shows them). The command prints one line."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    checkpoints = Checkpoints(folder)
    checkpoints.save(1, many_arrays(), {"step": 1})
    checkpoints.wait()
    data = max((f for f in (folder / "1" / "params").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    os.truncate(data, int(data.stat().st_size * 0.95))
    proc = subprocess.run([sys.executable, "-c", NOISY_RESTORE, str(folder)], env=cpu_env(1, tmp_path / "jax-cache"),
                          capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[1])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("flaxft: error: checkpoint"), proc.stderr[-3000:]
    assert "cannot be restored" in proc.stderr and "Error reading" in proc.stderr  # names the array it could not read


def test_disk_full_on_the_export_metrics_summary_and_tokenization_cache(reference, tiny_model, tmp_path, caplog):
    ref = reference.done()
    mnt = tmp_path / "disk"
    export_size = storage.tree_bytes(ref / "export")
    with small_disk(mnt, export_size * 3 // 2):
        # the export: abandoned whole, the older export untouched
        shutil.copytree(ref / "export", mnt / "export")
        before = {f.name: f.read_bytes() for f in (mnt / "export").iterdir()}
        config, params = load_pretrained(tiny_model, 2, rng=jax.random.key(0))
        tokenizer = load_tokenizer(tiny_model)
        with pytest.raises(FlaxftError, match=re.escape(f"no space left on device in '{mnt}' writing the export")):
            export_model(mnt / "export", params, config, label_names=("neg", "pos"),
                         problem_type="single_label_classification", tokenizer=tokenizer, info={})
        assert {f.name: f.read_bytes() for f in (mnt / "export").iterdir()} == before
        assert [p.name for p in mnt.iterdir()] == ["export"]  # no export.tmp

        # metrics.jsonl and summary.json: one error each, no half file left to read
        writer = RunWriter(storage.path(mnt / "run"), enabled=True)
        fill(mnt)
        with pytest.raises(FlaxftError, match=re.escape(f"no space left on device in '{mnt / 'run'}' writing metrics.jsonl")):
            writer.write(1, {"loss": 0.5})
        with pytest.raises(FlaxftError, match=re.escape(f"in '{mnt / 'run'}' writing summary.json (it needs about")):
            write_json(storage.path(mnt / "run" / "summary.json"), {"eval_accuracy": 1.0})
        assert not (mnt / "run" / "summary.json").exists() and not (mnt / "run" / "summary.json.tmp").exists()

        # the tokenization cache: the run goes on, tokenized in memory, with a warning
        rows = [["good film", "pos"], ["a bad plot", "neg"]] * 500
        ds = string_table(["text", "label"], rows).map(lambda r: {"label": int(r["label"] == "pos")})
        with caplog.at_level(logging.WARNING, logger="flaxft"):
            full = tokenize_split(ds, ["text"], tokenizer, 48, cache_dir=str(mnt / "cache"))
        roomy = tokenize_split(ds, ["text"], tokenizer, 48, cache_dir=str(tmp_path / "cache"))
        assert any(f"no space left on device in '{mnt / 'cache' / 'tokenized'}' writing the tokenization cache"
                   in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
        assert (full.ids == roomy.ids).all() and (full.offsets == roomy.offsets).all()
        # no partial cache file to pick up (the empty lock file that serialises writers may stay)
        assert not [f for f in (mnt / "cache" / "tokenized").iterdir() if not f.name.endswith(".lock")]
        with contextlib.suppress(FlaxftError):  # its buffered TensorBoard header cannot be written either
            writer.close()
