"""A grid of (seed, learning rate) replicas in one program: each replica is exactly its single run (buckets and
packing), the grid's outputs (metrics per replica, statistics per learning rate, exports, predict), mesh.replica,
exact resume after SIGKILL, and the errors before compilation."""

import json
import logging
import signal

import numpy as np
import pytest

from flaxft import grid as grids
from flaxft.cli import run_main
from flaxft.config import load_config
from flaxft.data import buckets
from flaxft.errors import FlaxftError
from flaxft.predict import main as predict_main
from flaxft.train import main as train_main
from flaxft.trainer import Trainer

from tests.conftest import ckpt_args, toy_args
from tests.test_checkpoint import start, step_dirs, steps_logged, wait_for


def events(out, replica=None) -> list[dict]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [e for e in lines if e.get("replica") == replica]


def losses(out, replica=None) -> np.ndarray:
    return np.asarray([e["loss"] for e in events(out, replica) if "loss" in e])


def final_eval(out, replica=None) -> dict:
    return [e for e in events(out, replica) if "eval_accuracy" in e][-1]


# ---------------------------------------------------------------------- the grid and its statistics


def test_grid_from_config_and_statistics():
    cfg = load_config(overrides=["train.seeds=[1,2,3]", "train.learning_rate=[2e-5,3e-5]"])
    g = grids.Grid.of(cfg.train)
    assert g.size == 6 and g.replicas[:3] == [(1, 2e-5), (1, 3e-5), (2, 2e-5)]
    assert list(g.seed_index) == [0, 0, 1, 1, 2, 2] and g.name(1) == "seed-1_lr-3e-05"
    assert grids.Grid.of(load_config().train) is None  # scalars: today's single run
    assert grids.Grid.of(load_config(overrides=["train.learning_rate=[5e-5]"]).train).replicas == [(42, 5e-5)]

    acc = {(1, 2e-5): 0.80, (2, 2e-5): 0.84, (3, 2e-5): 0.82, (1, 3e-5): 0.86, (2, 3e-5): 0.70, (3, 3e-5): 0.72}
    per_replica = [{"eval_accuracy": acc[r], "eval_loss": 1 - acc[r]} for r in g.replicas]
    result = grids.aggregate(g, per_replica, "eval_accuracy")
    assert result["best_learning_rate"] == 2e-5  # 0.82 mean vs 0.76
    assert result["eval_accuracy_mean"] == pytest.approx(0.82) and result["eval_accuracy_std"] == pytest.approx(0.02)
    row = result["by_learning_rate"]["3e-05"]
    assert row["seeds"] == [1, 2, 3] and row["eval_accuracy_median"] == pytest.approx(0.72)
    assert (row["eval_accuracy_min"], row["eval_accuracy_max"]) == pytest.approx((0.70, 0.86))
    assert [(r["seed"], r["learning_rate"]) for r in result["replicas"]] == g.replicas
    assert grids.aggregate(g, per_replica, "eval_loss")["best_learning_rate"] == 2e-5  # loss is minimized
    assert grids.checkpoint_metrics(result) == {"eval_accuracy": pytest.approx(0.82), "eval_loss": pytest.approx(0.18)}
    assert grids.best_replica(g, per_replica, "eval_accuracy") == 1 and grids.best_replica(g, per_replica, "eval_loss") == 1
    table = grids.table(result)
    assert "| 2e-05 (best) | 3 | 0.8200 +- 0.0200 |" in table and "| 3e-05 | 3 | 0.7600 +- 0.0872 |" in table


@pytest.mark.parametrize("override, words", [
    ("train.seeds=[42,42]", "distinct seeds"),
    ("train.learning_rate=[1e-5,1e-5]", "lists a rate twice"),
    ("train.learning_rate=[1e-5,-1]", "must be > 0"),
    ("train.seeds=[]", "distinct seeds"),
])
def test_bad_grid_config_is_one_line(override, words):
    with pytest.raises(FlaxftError, match=words):
        load_config(overrides=[override])


def test_mesh_replica_must_divide_the_grid():
    with pytest.raises(FlaxftError, match=r"mesh.replica=4 must divide the grid's 6 replicas"):
        load_config(overrides=["train.seeds=[1,2,3]", "train.learning_rate=[1e-5,2e-5]", "mesh.replica=4"])


def test_bucket_order_is_the_same_for_every_seed():
    """What lets a grid stack its seeds' batches: which bucket comes when depends on the epoch, not the seed;
    which examples share a batch depends on the seed."""
    lengths = np.random.default_rng(0).integers(5, 120, size=500)
    plans = {seed: buckets.plan_batches(lengths, [32, 64, 128], 16, shuffle=True, seed=seed, epoch=1) for seed in (1, 2)}
    assert [b.length for b in plans[1]] == [b.length for b in plans[2]]
    assert any((a.indices != b.indices).any() for a, b in zip(plans[1], plans[2]))
    other_epoch = buckets.plan_batches(lengths, [32, 64, 128], 16, shuffle=True, seed=1, epoch=2)
    assert [b.length for b in other_epoch] != [b.length for b in plans[1]]


# ---------------------------------------------------------------------- replica == single run


@pytest.mark.parametrize("packing", [False, True])
def test_each_replica_is_its_single_run(packing, tiny_model, toy_data, tmp_path):
    """A 2 seeds x 2 learning rates grid vs the single run of its replica (seed 4, rate 3e-4), which shares neither
    the first seed nor the first rate: loss curve (rtol 1e-4) and eval metrics (1e-3). Buckets: three of them, so
    the seeds' batches differ in membership and share shapes."""
    data = ["data.packing=true", "data.max_seq_length=64", "data.max_examples_per_row=8"] if packing else \
        ["data.num_buckets=3"]
    common = ["train.max_steps=10", "train.eval_every_steps=5", "train.log_every_steps=2", "checkpoint.export=none",
              *data]
    grid_out, single_out = tmp_path / "grid", tmp_path / "single"
    args = toy_args(tiny_model, toy_data, grid_out)
    summary = Trainer(load_config(args[1], args[2:] + common + ["train.seeds=[3,4]",
                                                                "train.learning_rate=[1e-3,3e-4]"])).train()
    assert summary["train_compilations"] == (1 if packing else len(summary["buckets"]))
    args = toy_args(tiny_model, toy_data, single_out)
    Trainer(load_config(args[1], args[2:] + common + ["train.seed=4", "train.learning_rate=3e-4"])).train()
    np.testing.assert_allclose(losses(grid_out, 3), losses(single_out), rtol=1e-4)
    ours, theirs = final_eval(grid_out, 3), final_eval(single_out)
    assert (ours["seed"], ours["learning_rate"]) == (4, 3e-4)
    for k in ("eval_accuracy", "eval_f1", "eval_loss"):
        assert abs(ours[k] - theirs[k]) <= 1e-3, (k, ours[k], theirs[k])
    assert abs(summary["replicas"][3]["eval_accuracy"] - theirs["eval_accuracy"]) <= 1e-3
    assert len(losses(grid_out, 0)) == 5  # every replica logs every log step
    assert not np.allclose(losses(grid_out, 0), losses(grid_out, 3))  # the replicas really differ


# ---------------------------------------------------------------------- outputs


@pytest.fixture(scope="module")
def grid_run(tiny_model, toy_data, tmp_path_factory):
    """A finished 3 seeds x 2 learning rates grid, every replica exported."""
    out = tmp_path_factory.mktemp("grid") / "run"
    args = ckpt_args(tiny_model, toy_data, out, "train.max_steps=32", "train.seeds=[1,2,3]",
                     "train.learning_rate=[1e-3,1e-4]", "checkpoint.export=all")
    assert run_main(train_main, args) == 0
    return out


def test_grid_summary_events_tensorboard_and_exports(grid_run):
    summary = json.loads((grid_run / "summary.json").read_text())
    assert summary["grid"] == {"seeds": [1, 2, 3], "learning_rates": [1e-3, 1e-4]}
    assert [(r["seed"], r["learning_rate"]) for r in summary["replicas"]] == [(s, lr) for s in (1, 2, 3)
                                                                              for lr in (1e-3, 1e-4)]
    assert set(summary["by_learning_rate"]) == {"0.001", "0.0001"}
    best = summary["by_learning_rate"][f"{summary['best_learning_rate']:g}"]
    accs = [r["eval_accuracy"] for r in summary["replicas"] if r["learning_rate"] == summary["best_learning_rate"]]
    assert summary["eval_accuracy_mean"] == pytest.approx(np.mean(accs)) == best["eval_accuracy_mean"]
    assert summary["eval_accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
    for stat in grids.STATS:
        assert f"eval_f1_{stat}" in best
    assert summary["best_learning_rate"] == 1e-3  # the toy task needs the larger rate in 32 steps
    for i in range(6):
        assert len(losses(grid_run, i)) == 32 and {"seed", "learning_rate", "current_learning_rate"} <= \
            set(events(grid_run, i)[0])
    names = sorted(p.name for p in (grid_run / "tensorboard").iterdir() if p.is_dir())
    assert names == sorted(f"seed-{s}_lr-{lr:g}" for s in (1, 2, 3) for lr in (1e-3, 1e-4))
    # export/: the best replica, as the single run it equals; export/seed-<s>_lr-<lr>/: every replica
    info = json.loads((grid_run / "export" / "flaxft.json").read_text())
    assert info["config"]["train"]["seeds"] is None and info["config"]["train"]["seed"] == info["replica"]["seed"]
    assert info["config"]["train"]["learning_rate"] == info["replica"]["learning_rate"]
    for s in (1, 2, 3):
        for lr in (1e-3, 1e-4):
            sub = json.loads((grid_run / "export" / f"seed-{s}_lr-{lr:g}" / "flaxft.json").read_text())
            assert (sub["replica"]["seed"], sub["replica"]["learning_rate"]) == (s, lr)
            assert sub["step"] == info["step"] and sub["metrics"]["eval_accuracy"] <= info["metrics"]["eval_accuracy"]
    best_name = f"seed-{info['replica']['seed']}_lr-{info['replica']['learning_rate']:g}"
    assert (grid_run / "export" / "model.safetensors").read_bytes() == \
        (grid_run / "export" / best_name / "model.safetensors").read_bytes()


def test_predict_on_a_grid_run_uses_the_exported_best_replica(grid_run, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="flaxft")
    assert run_main(predict_main, ["--model", str(grid_run), "--split", "validation",
                                   "--output-dir", str(tmp_path / "pred")]) == 0
    assert f"exported model {grid_run / 'export'}" in caplog.text
    assert (tmp_path / "pred" / "validation.tsv").is_file()
    assert run_main(predict_main, ["--model", str(grid_run), "--checkpoint", "latest", "--split", "validation",
                                   "--output-dir", str(tmp_path / "pred2")]) == 2
    assert "is a grid of replicas" in capsys.readouterr().err


def test_replicas_spread_over_a_replica_axis_train_the_same(tiny_model, toy_data, tmp_path):
    """mesh.replica=2 (x data=4) vs all replicas on every device (data=8): the same loss curves."""
    runs = {}
    for name, mesh in [("one", ["mesh.replica=1"]), ("two", ["mesh.replica=2", "mesh.data=4"])]:
        out = tmp_path / name
        args = ckpt_args(tiny_model, toy_data, out, "train.max_steps=6", "train.seeds=[1,2]",
                         "train.learning_rate=1e-3", "checkpoint.export=none", *mesh)
        summary = Trainer(load_config(args[1], args[2:])).train()
        assert summary["mesh"]["replica"] == int(mesh[0][-1])
        runs[name] = out
    for i in range(2):
        np.testing.assert_allclose(losses(runs["one"], i), losses(runs["two"], i), rtol=1e-4)


# ---------------------------------------------------------------------- resume and errors


def test_sigkill_then_resume_of_a_grid_is_exact(tiny_model, toy_data, tmp_path):
    """A 2-replica grid SIGKILLed after a checkpoint and rerun ends where the uninterrupted grid ends: same losses
    per replica, same metrics, same exported bytes."""
    common = ("train.max_steps=12", "checkpoint.every_steps=2", "checkpoint.export=final", "train.seeds=[5,6]")
    ref, run, cache = tmp_path / "ref", tmp_path / "run", tmp_path / "jax-cache"
    ref_proc = start(ckpt_args(tiny_model, toy_data, ref, *common), tmp_path / "ref.log", cache)
    args = ckpt_args(tiny_model, toy_data, run, *common)
    proc = start(args, tmp_path / "run1.log", cache)
    wait_for(proc, lambda: [s for s in step_dirs(run) if s >= 4])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(step_dirs(run))
    assert killed_at < 12 and not (run / "summary.json").exists()
    proc = start(args, tmp_path / "run2.log", cache)
    assert proc.wait(timeout=300) == 0, (tmp_path / "run2.log").read_text()[-3000:]
    assert ref_proc.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    assert f"resuming from {run / 'checkpoints'}" in (tmp_path / "run2.log").read_text()
    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, run))
    assert b["resumed_from_step"] >= killed_at and a["replicas"] == b["replicas"]
    for i in range(2):
        assert losses(ref, i).tolist() == losses(run, i).tolist() and len(losses(run, i)) == 12
    assert max(steps_logged(run)) == 12
    assert (ref / "export" / "model.safetensors").read_bytes() == (run / "export" / "model.safetensors").read_bytes()


def test_a_grid_that_cannot_fit_is_refused_before_compiling(tiny_model, toy_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(grids, "device_memory_bytes", lambda device: 40_000_000)  # tiny BERT: 1M params, 16 MB a replica
    args = ckpt_args(tiny_model, toy_data, tmp_path / "run", "train.seeds=[1,2,3,4]")
    assert run_main(train_main, args) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("flaxft: error: 4 replicas of 1M parameters need about")
    assert "train at most 2 replicas" in last and "mesh.replica" in last
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_of_another_grid_is_refused(grid_run, tiny_model, toy_data, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(grid_run, run)
    args = ckpt_args(tiny_model, toy_data, run, "train.max_steps=16", "train.seeds=[1,2]",
                     "train.learning_rate=[1e-3,1e-4]")
    assert run_main(train_main, args) == 2
    assert "grid=" in capsys.readouterr().err
