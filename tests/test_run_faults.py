"""Faults around a run (issue #17): a second run on the same output_dir, a lock left by a killed run, running out
of memory, and unexpected exceptions. Each ends with the run going on, or one line saying what happened and what
to do, with nothing already saved lost."""

import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from flaxft import run_lock
from flaxft.cli import run_main
from flaxft.errors import FlaxftError
from flaxft.run_lock import LOCK, Holder, RunLock
from flaxft.train import main as train_main
from tests.conftest import ROOT, ckpt_args
from tests.test_parallel import _free_port
from tests.test_storage import gcs  # noqa: F401 - the GCS emulator fixture

ENV = {**os.environ, "JAX_NUM_CPU_DEVICES": "1", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def _train(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "flaxft.train", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(condition, seconds=300.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("flaxft: error")]


# ---------------------------------------------------------------------------------------------- the run lock


def test_second_run_refuses_and_a_killed_runs_lock_is_taken_over(tiny_model, toy_data, tmp_path):
    """A runs; B on the same output_dir refuses in seconds naming A and touching nothing; A is SIGKILLed after a
    checkpoint; C finds A's lock stale, takes it over with a warning and resumes from A's checkpoint."""
    out = tmp_path / "run"
    args = lambda steps: ckpt_args(tiny_model, toy_data, out, f"train.max_steps={steps}",  # noqa: E731
                                   "checkpoint.every_steps=2", "checkpoint.export=none")
    first = _train(args(100000))
    try:
        _wait_for(lambda: (out / LOCK).exists() or first.poll() is not None)
        holder = RunLock(out).read()
        assert holder.pid == first.pid and holder.host == socket.gethostname()

        start = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "flaxft.train", *args(100000)], env=ENV, capture_output=True,
                                text=True, timeout=300)
        seconds = time.monotonic() - start
        assert second.returncode == 2, second.stderr[-3000:]
        (line,) = _error_lines(second.stderr)
        assert f"pid {first.pid}" in line and f"host {holder.host}" in line and f"started {holder.started}" in line
        assert "another run is using output_dir" in line and "Traceback" not in second.stderr
        assert "newly initialized" not in second.stderr and "training" not in second.stderr  # before any work
        assert seconds < 120, seconds  # import time on a busy 2-core machine; no data or model work
        assert RunLock(out).read() == holder  # A's lock is left alone

        _wait_for(lambda: first.poll() is not None or any(out.glob("checkpoints/[0-9]*")))
        time.sleep(1.0)  # past the first checkpoint's commit
        first.send_signal(signal.SIGKILL)  # not reaped yet: a zombie with A's pid until first.wait()
        time.sleep(0.5)
        saved = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
        assert saved and (out / LOCK).exists()

        last = saved[-1] + 2
        third = subprocess.run([sys.executable, "-m", "flaxft.train", *args(last)], env=ENV, capture_output=True,
                               text=True, timeout=300)
    finally:
        first.kill()
        first.wait()
    assert third.returncode == 0, third.stderr[-3000:]
    for words in (f"pid {first.pid}", "no longer running", "taking it over"):
        assert words in third.stderr, words
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == saved[-1] and summary["global_step"] == last
    assert not (out / LOCK).exists()  # released at the end


def _lock_of(pid, host=None, **fields):
    return dataclasses.replace(Holder.this_process(), pid=pid, pid_start=run_lock.process_start(pid),
                               host=host or socket.gethostname(), **fields)


def _write(folder, holder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK).write_text(holder.to_json())


def test_live_holder_refuses_and_stale_holders_are_taken_over(tmp_path, caplog):
    """Same host: a live pid refuses; a pid whose process started at another time (reused) is stale. Another host:
    a recent heartbeat refuses, one older than STALE_AFTER_SECONDS is stale."""
    live = _lock_of(os.getppid())  # pytest's parent: running, with its real start time
    _write(tmp_path / "a", live)
    with pytest.raises(FlaxftError, match=re.escape(f"host {live.host}, pid {live.pid}, started {live.started}")):
        RunLock(tmp_path / "a").acquire()
    assert RunLock(tmp_path / "a").read() == live  # the holder's lock is left alone

    reused = dataclasses.replace(live, pid_start=live.pid_start + 1)
    away = _lock_of(12345, host="worker-7", heartbeat=time.time() - run_lock.STALE_AFTER_SECONDS - 60)
    fresh = dataclasses.replace(away, heartbeat=time.time() - 30)
    for name, holder, why in [("b", reused, "is now another process"), ("c", away, "last heartbeat was 11 minutes")]:
        _write(tmp_path / name, holder)
        lock = RunLock(tmp_path / name)
        with caplog.at_level(logging.WARNING, logger="flaxft"):
            lock.acquire()
        assert why in caplog.text and "taking it over" in caplog.text
        assert RunLock(tmp_path / name).read().is_process(Holder.this_process())
        lock.release()
        assert not (tmp_path / name / LOCK).exists()
        caplog.clear()
    _write(tmp_path / "d", fresh)
    with pytest.raises(FlaxftError, match="host worker-7, pid 12345"):
        RunLock(tmp_path / "d").acquire()


def test_hold_is_reentrant_and_releases(tmp_path):
    with run_lock.hold(tmp_path / "run"):
        with run_lock.hold(str(tmp_path / "run")):  # the command line, then Trainer.train
            assert (tmp_path / "run" / LOCK).exists()
        assert (tmp_path / "run" / LOCK).exists()
    assert not (tmp_path / "run" / LOCK).exists()


def test_every_process_of_a_refused_multi_process_run_stops(tiny_model, toy_data, tmp_path):
    """Two processes of one run: process 0 finds the lock held by a live run and both stop with one line.
    (Two processes of one run sharing output_dir train together: tests/test_parallel.py's 2-process run.)"""
    out = tmp_path / "run"
    _write(out, _lock_of(os.getpid()))  # this test process holds it
    port = _free_port()
    procs = [_train([*ckpt_args(tiny_model, toy_data, out, "train.max_steps=2"),
                     f"distributed.coordinator_address=127.0.0.1:{port}", "distributed.num_processes=2",
                     f"distributed.process_id={i}"]) for i in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    for i, (p, err) in enumerate(zip(procs, errs)):
        assert p.returncode == 2, err[-3000:]
        (line,) = _error_lines(err)
        assert ("another run is using output_dir" if i == 0 else "process 0 found another run") in line, line
        assert "tokenizing" not in err
    assert f"pid {os.getpid()}" in _error_lines(errs[0])[0]
    assert RunLock(out).read().pid == os.getpid()


# ----------------------------------------------------------------------------------- out of memory, bugs


OOM_DRIVER = """
import resource, sys
import flaxft.loop as loop
from flaxft.cli import run_main
from flaxft.train import main

start = loop._start
def limited_start(trainer, step):  # the address space from here on: the process's now, plus 400 MB
    start(trainer, step)
    used = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (used + (400 << 20), resource.RLIM_INFINITY))
loop._start = limited_start
sys.exit(run_main(main, sys.argv[1:]))
"""


def test_out_of_memory_in_a_step_is_one_line_naming_the_shape_and_the_levers(tiny_model, toy_data, tmp_path):
    """A real out-of-memory: the step's 2048 rows x 128 tokens need more than the 400 MB of address space the
    process may still take (RLIMIT_AS): XLA's RESOURCE_EXHAUSTED becomes one line."""
    out = tmp_path / "run"
    args = ckpt_args(tiny_model, toy_data, out, "train.batch_size=2048", "data.bucket_boundaries=[128]",
                     "train.max_steps=2")
    proc = subprocess.run([sys.executable, "-c", OOM_DRIVER, *args], env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = _error_lines(proc.stderr)
    assert "out of device memory" in line and "bucket 128 x 2048 rows per device" in line, line
    assert "RESOURCE_EXHAUSTED" in line and "Traceback" not in proc.stderr
    for lever in ("train.batch_size (now 2048)", "train.grad_accum_steps", "model.remat=true", "data.max_seq_length"):
        assert lever in line, line
    assert not (out / "summary.json").exists() and not (out / LOCK).exists()


def test_unexpected_error_is_one_line_with_its_traceback_in_error_log(tiny_model, toy_data, tmp_path, capsys,
                                                                      monkeypatch):
    """A bug while the Trainer is being built: one line naming output_dir/error.log, which holds the traceback."""
    def broken(*args, **kwargs):
        raise KeyError("no such thing")
    monkeypatch.setattr("flaxft.trainer.set_up_run", broken)
    out = tmp_path / "run"
    code = run_main(train_main, ckpt_args(tiny_model, toy_data, out, "train.max_steps=2"))
    err = capsys.readouterr().err
    (line,) = _error_lines(err)
    assert code == 1 and "Traceback" not in err
    assert line == f"flaxft: error: KeyError: 'no such thing' (traceback in {out / 'error.log'})"
    log_text = (out / "error.log").read_text()
    assert "Traceback (most recent call last)" in log_text and "in broken" in log_text and "KeyError" in log_text
    assert not (out / LOCK).exists()


def test_predict_keeps_an_unexpected_errors_traceback_too(tiny_model, toy_data, tmp_path, capsys, monkeypatch):
    """flaxft.predict's unexpected errors: one line naming the predictions folder's error.log."""
    from flaxft.predict import main as predict_main

    def broken(*args, **kwargs):
        raise KeyError("no such model")
    monkeypatch.setattr("flaxft.predict.open_model", broken)
    out = tmp_path / "preds"
    code = run_main(predict_main, ["--model", str(tiny_model), "--output-dir", str(out)])
    err = capsys.readouterr().err
    (line,) = _error_lines(err)
    assert code == 1 and "Traceback" not in err
    assert line == f"flaxft: error: KeyError: 'no such model' (traceback in {out / 'error.log'})"
    assert "in broken" in (out / "error.log").read_text()


def test_a_lock_on_cloud_storage(gcs):
    """gs:// has no exclusive create: the lock is written whole and read back; a live holder elsewhere refuses."""
    from etils import epath

    out = f"{gcs}/runs/locked"
    lock = RunLock(out)
    lock.acquire()
    assert RunLock(out).read().is_process(Holder.this_process())
    lock.release()
    assert RunLock(out).read() is None
    (epath.Path(out) / LOCK).write_text(_lock_of(12345, host="worker-7", heartbeat=time.time()).to_json())
    with pytest.raises(FlaxftError, match="host worker-7, pid 12345"):
        RunLock(out).acquire()
