"""Checkpoints: exact resume after SIGKILL and SIGTERM, restore on other topologies, crash safety, bad checkpoints.

Device counts are fixed per process, so runs on 1 or 4 devices are subprocesses (the test process has 8).
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import traverse_util

from flaxft.checkpoint import TMP_MARK, Checkpoints
from flaxft.cli import run_main
from flaxft.config import load_config
from flaxft.errors import FlaxftError
from flaxft.train import main as train_main
from flaxft.trainer import Trainer

from tests.conftest import ckpt_args


def cpu_env(devices: int, cache: pathlib.Path) -> dict:
    """`devices` CPU devices; reruns take their executables from JAX's compilation cache (same program, same bits)."""
    return {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def start(args, log: pathlib.Path, cache: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flaxft.train", *args], env=cpu_env(1, cache), stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def wait_for(proc: subprocess.Popen, condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"process ended (rc={proc.returncode}) before the condition held"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def steps_logged(out: pathlib.Path) -> list[int]:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [e["step"] for e in map(json.loads, lines[:-1] if lines and not lines[-1].endswith("}") else lines)
            if "loss" in e]


def step_dirs(out: pathlib.Path, tmp: bool = False) -> list[int]:
    names = [p.name for p in (out / "checkpoints").glob("*")] if (out / "checkpoints").is_dir() else []
    return sorted(int(n.split(".")[0]) for n in names if (TMP_MARK in n) == tmp and n.split(".")[0].isdigit())


def flat(params) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def test_sigkill_and_sigterm_then_resume_is_bitwise_identical(tiny_model, toy_data, tmp_path):
    """1 device: an uninterrupted run vs. one SIGKILLed mid-epoch (while a checkpoint is written, if the poll
    catches one), resumed, SIGTERMed, and resumed again. Same params (bytes of the exported weights), same losses,
    same eval metrics."""
    common = ("train.max_steps=20", "checkpoint.every_steps=2", "checkpoint.export=final")  # 16 steps per epoch
    ref, run = tmp_path / "ref", tmp_path / "run"
    cache = tmp_path / "jax-cache"
    ref_proc = start(ckpt_args(tiny_model, toy_data, ref, *common), tmp_path / "ref.log", cache)
    args = ckpt_args(tiny_model, toy_data, run, *common)

    # SIGKILL as soon as a checkpoint after step 2 is being written (or at the latest once step 6 is committed)
    proc = start(args, tmp_path / "run1.log", cache)
    wait_for(proc, lambda: [s for s in step_dirs(run, tmp=True) if s >= 4] or 6 in step_dirs(run))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished, half = step_dirs(run), step_dirs(run, tmp=True)
    assert finished and max(finished) < 16, finished  # killed mid-epoch, after at least one checkpoint
    assert not (run / "summary.json").exists()
    print(f"killed with checkpoints {finished} finished and {half} half-written")

    # rerun: resumes from the latest finished checkpoint, never a half-written one; SIGTERM it a few steps later
    proc = start(args, tmp_path / "run2.log", cache)
    log2 = tmp_path / "run2.log"
    wait_for(proc, lambda: "training 20 steps" in log2.read_text() and max(steps_logged(run), default=0) >= max(finished) + 3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, log2.read_text()[-3000:]
    text = log2.read_text()
    assert f"resuming from {run / 'checkpoints' / str(max(finished))}: step {max(finished)}" in text
    assert "preempted at step" in text and "rerun the same command to resume" in text
    stopped = int(text.split("preempted at step ")[1].split(";")[0])
    assert max(finished) + 3 <= stopped < 20 and stopped in step_dirs(run)
    assert not (run / "summary.json").exists() and not step_dirs(run, tmp=True)

    # rerun: completes
    proc = start(args, tmp_path / "run3.log", cache)
    assert proc.wait(timeout=300) == 0, (tmp_path / "run3.log").read_text()[-3000:]
    assert f"step {stopped}" in (tmp_path / "run3.log").read_text()
    assert ref_proc.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-3000:]

    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, run))
    assert b["global_step"] == 20 and b["resumed_from_step"] == stopped
    assert {k: v for k, v in a.items() if k.startswith("eval_") and k != "eval_seconds"} == \
           {k: v for k, v in b.items() if k.startswith("eval_") and k != "eval_seconds"}
    assert (ref / "export" / "model.safetensors").read_bytes() == (run / "export" / "model.safetensors").read_bytes()
    events = {d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (ref, run)}
    assert [e["step"] for e in events[run] if "loss" in e] == list(range(1, 21))  # each step logged once
    assert [e["loss"] for e in events[ref] if "loss" in e] == [e["loss"] for e in events[run] if "loss" in e]
    assert step_dirs(ref)[-2:] == [18, 20] and len(step_dirs(ref)) <= 3  # checkpoint.keep=2, plus the best


@pytest.mark.parametrize("async_save", [True, False])
def test_keeps_the_latest_and_the_best(async_save, tmp_path):
    import jax.numpy as jnp

    from flaxft.steps import TrainState

    state = TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.ones(3)}, opt_state=(), rng=jnp.zeros(2, jnp.uint32))
    ckpts = Checkpoints(tmp_path, keep=2, best_metric="eval_loss", async_save=async_save)  # lower loss is better
    for step, metrics in [(1, {"eval_loss": 0.1}), (2, {}), (3, {"eval_loss": 0.5}), (4, {}), (5, {"eval_loss": 0.9})]:
        assert ckpts.save(step, state.replace(step=jnp.int32(step)), {"step": step}, metrics)
    ckpts.wait()
    assert ckpts.steps() == [1, 4, 5] and ckpts.best_step() == 1
    assert int(ckpts.restore(4, state).step) == 4 and ckpts.read_meta(4) == {"step": 4}
    with pytest.raises(FlaxftError, match="checkpoint.best_metric=eval_loss is not an evaluation metric"):
        ckpts.save(6, state, {"step": 6}, {"eval_accuracy": 1.0})


TOPOLOGY_SCRIPT = """
import json, sys
import jax, numpy as np
from flax import traverse_util
from flaxft.checkpoint import Checkpoints, abstract
from flaxft.config import load_config
from flaxft.trainer import Trainer

args, run8 = json.loads(sys.argv[1]), sys.argv[2]
trainer = Trainer(load_config(args[1], args[2:]))
out = {"devices": jax.device_count(), "resumed": trainer.resumed_step,
       "query_spec": str(trainer.state.params["encoder"]["layer_0"]["attention"]["query"]["kernel"].sharding.spec)}
# the 8-device step-8 params, restored exactly onto this mesh
restored = Checkpoints(run8 + "/checkpoints", read_only=True).restore_params(8, abstract(trainer.state.params))
ref = np.load(run8 + "/params8.npz")
out["exact"] = all(np.array_equal(np.asarray(v), ref["/".join(k)]) for k, v in traverse_util.flatten_dict(restored).items())
# and training on from step 4 lands close to where 8 devices did
trainer.train()
out["max_diff"] = max(float(np.abs(np.asarray(v) - ref["/".join(k)]).max())
                      for k, v in traverse_util.flatten_dict(jax.device_get(trainer.state.params)).items())
print("RESULT " + json.dumps(out))
"""


@pytest.mark.parametrize("devices, mesh", [(1, []), (4, ["mesh.data=2", "mesh.tensor=2"])])
def test_checkpoint_from_8_devices_restores_on_other_topologies(devices, mesh, trained_run, tiny_model, toy_data,
                                                                tmp_path):
    run8, params8 = trained_run
    if not (run8 / "params8.npz").exists():
        np.savez(run8 / "params8.npz", **flat(params8))
    args = ckpt_args(tiny_model, toy_data, tmp_path / "run", "train.max_steps=8", "checkpoint.export=none",
                     f"checkpoint.resume_from={run8 / 'checkpoints' / '4'}", *mesh)
    proc = subprocess.run([sys.executable, "-c", TOPOLOGY_SCRIPT, json.dumps(args), str(run8)],
                          env=cpu_env(devices, tmp_path / "jax-cache"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ")[1])
    assert out["devices"] == devices and out["resumed"] == 4
    assert ("tensor" in out["query_spec"]) == bool(mesh)  # really laid out on the new mesh
    assert out["exact"]
    assert out["max_diff"] < 1e-5, out


def copy_run(trained_run, tmp_path) -> pathlib.Path:
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    (run / "summary.json").unlink()
    return run


def test_half_written_checkpoint_is_never_picked(trained_run, tiny_model, toy_data, tmp_path):
    run = copy_run(trained_run, tmp_path)
    half = run / "checkpoints" / f"12{TMP_MARK}-1700000000"  # what SIGKILL during a write leaves
    shutil.copytree(run / "checkpoints" / "8", half)
    shutil.rmtree(half / "meta")
    args = ckpt_args(tiny_model, toy_data, run, "train.max_steps=12")
    trainer = Trainer(load_config(args[1], args[2:]))
    assert trainer.resumed_step == 8
    assert Checkpoints(run / "checkpoints", read_only=True).steps() == [4, 8]


def cli_error(args, capsys) -> str:
    assert run_main(train_main, args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("flaxft: error")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_corrupt_checkpoints_are_one_clear_line(trained_run, tiny_model, toy_data, tmp_path, capsys):
    """Every checkpoint corrupt: one line (a damaged newest one alone falls back: tests/test_faults.py)."""
    run = copy_run(trained_run, tmp_path)
    for step in (4, 8):
        for f in (run / "checkpoints" / str(step) / "params").rglob("*"):
            if f.is_file() and "manifest" not in f.name and f.suffix != ".json":
                f.write_bytes(b"garbage")
    line = cli_error(ckpt_args(tiny_model, toy_data, run, "train.max_steps=12"), capsys)
    assert f"no checkpoint in '{run / 'checkpoints'}' can be restored (steps 8, 4;" in line, line
    assert Checkpoints(run / "checkpoints", read_only=True).steps() == [4, 8]  # nothing moved when none restores


@pytest.mark.parametrize("override, words", [
    ("train.batch_size=32", ["train.batch_size=16, not 32", "new output_dir"]),
    ("data.bucket_boundaries=[64]", ["buckets=[48], not [64]"]),
    ("train.optimizer=lion", ["train.optimizer=adamw, not lion"]),
    ("data.length_grouping=megabatch", ["data.length_grouping=bucket, not megabatch"]),
    ("data.stratify_labels=true", ["data.stratify_labels=False, not True"]),
])
def test_incompatible_checkpoint_is_one_clear_line(override, words, trained_run, tiny_model, toy_data, tmp_path,
                                                    capsys):
    run = copy_run(trained_run, tmp_path)
    line = cli_error(ckpt_args(tiny_model, toy_data, run, "train.max_steps=8", override), capsys)
    for w in words:
        assert w in line, line


def test_resume_from_nothing_is_an_error(tiny_model, toy_data, tmp_path):
    args = ckpt_args(tiny_model, toy_data, tmp_path / "run", f"checkpoint.resume_from={tmp_path}")
    with pytest.raises(FlaxftError, match="no finished checkpoint"):
        Trainer(load_config(args[1], args[2:]))
