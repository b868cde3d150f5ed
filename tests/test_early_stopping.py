"""Early stopping (train.early_stopping_patience): the patience rule against transformers' own code, a run that
stops on a plateau and exports its best checkpoint, a preempted run that stops where an uninterrupted one does,
a stopped run that trains no further when rerun, and the errors."""

import json
import logging
import math
import shutil
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import traverse_util

from flaxft.checkpoint import Checkpoints
from flaxft.config import load_config
from flaxft.early_stopping import EarlyStopping, update
from flaxft.errors import FlaxftError
from flaxft.model import load_pretrained
from flaxft.trainer import Trainer

from tests.conftest import ckpt_args

# ---------------------------------------------------------------------- the rule, against transformers


def hf_decisions(values, patience: int, threshold: float, greater_is_better: bool) -> list[tuple]:
    """transformers' code on `values`, in the order of its Trainer._maybe_log_save_evaluate: the evaluation runs
    EarlyStoppingCallback.on_evaluate, then Trainer._determine_best_metric updates state.best_metric.
    Per evaluation: (stop now, patience counter, best so far)."""
    pytest.importorskip("torch")
    from transformers import TrainerControl
    from transformers.trainer import Trainer as HFTrainer
    from transformers.trainer_callback import EarlyStoppingCallback

    args = SimpleNamespace(metric_for_best_model="eval_m", greater_is_better=greater_is_better, save_strategy="no")
    hf = SimpleNamespace(args=args, state=SimpleNamespace(best_metric=None, global_step=0))
    callback, out = EarlyStoppingCallback(patience, threshold), []
    for v in values:
        control = TrainerControl()  # a fresh one: each evaluation's own decision
        callback.on_evaluate(args, hf.state, control, metrics={"eval_m": v})
        HFTrainer._determine_best_metric(hf, {"eval_m": v}, trial=None)
        out.append((control.should_training_stop, callback.early_stopping_patience_counter, hf.state.best_metric))
    return out


def ours(values, patience: int, threshold: float, greater_is_better: bool) -> list[tuple]:
    state, out = EarlyStopping(), []
    for v in values:
        state = update(state, float(v), patience=patience, threshold=threshold, greater_is_better=greater_is_better)
        out.append((state.stopped, state.patience_counter, state.best))
    return out


def sequences(greater_is_better: bool) -> list[list[float]]:
    """Plateaus, gains inside and outside the threshold, regressions, NaN (first and later), random walks."""
    sign = 1 if greater_is_better else -1
    hand = [sign * v for v in (0.50, 0.505, 0.52, 0.52, 0.515, 0.53, 0.531, 0.532, 0.533, 0.6, 0.59, 0.6, 0.6)]
    rng = np.random.default_rng(0)
    walks = [list(np.round(rng.normal(size=40).cumsum() * 0.01, 3)) for _ in range(6)]
    walks[1][5] = walks[2][0] = math.nan
    return [hand, [math.nan, math.nan, 0.3, 0.3], *walks]


@pytest.mark.parametrize("greater_is_better", [True, False])
def test_patience_rule_matches_transformers(greater_is_better):
    for values in sequences(greater_is_better):
        for patience in (1, 2, 3):
            for threshold in (0.0, 0.005, 0.02):
                want = hf_decisions(values, patience, threshold, greater_is_better)
                assert ours(values, patience, threshold, greater_is_better) == want, (values, patience, threshold)
    assert any(stop for stop, _, _ in ours(sequences(greater_is_better)[0], 2, 0.01, greater_is_better))


# ---------------------------------------------------------------------- runs

# eval_score by step: 0.805 beats 0.8 by less than the threshold (0.01), so step 6 counts against the patience
# but is the best checkpoint; 0.79 at step 8 is the second evaluation without improvement: patience 2 stops there.
SCORES = {2: 0.5, 4: 0.8, 6: 0.805, 8: 0.79}
EARLY = ("train.max_steps=16", "train.eval_every_steps=2", "checkpoint.every_steps=2", "checkpoint.keep=10",
         "checkpoint.best_metric=eval_score", "train.early_stopping_patience=2", "train.early_stopping_threshold=0.01")


def trainer(tiny_model, toy_data, out, *extra) -> Trainer:
    """A toy run whose eval_score follows SCORES by step (0.6 after): a deterministic plateau."""
    args = ckpt_args(tiny_model, toy_data, out, *EARLY, *extra)
    holder = {}
    t = Trainer(load_config(args[1], args[2:]),
                compute_metrics=lambda p: {"score": SCORES.get(holder["trainer"].global_step, 0.6)})
    holder["trainer"] = t
    return t


def events(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def export_equals_checkpoint(out, step: int) -> bool:
    _, exported = load_pretrained(out / "export", 2, rng=None)
    saved = traverse_util.flatten_dict(Checkpoints(out / "checkpoints", read_only=True).restore_params(step, exported))
    return all(np.array_equal(np.asarray(v), np.asarray(saved[k])) for k, v in traverse_util.flatten_dict(exported).items())


@pytest.fixture(scope="module")
def stopped_run(tiny_model, toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("early") / "run"
    t = trainer(tiny_model, toy_data, out)
    return out, t.train(), jax.device_get(t.state.params)


def test_stops_on_a_plateau_and_exports_the_best_checkpoint(stopped_run):
    out, summary, _ = stopped_run
    evals = [e for e in events(out) if "eval_score" in e]
    decisions = hf_decisions([e["eval_score"] for e in evals], patience=2, threshold=0.01, greater_is_better=True)
    expected = next(e["step"] for e, (stop, _, _) in zip(evals, decisions) if stop)
    assert summary["stopped_early"] is True and summary["stopped_at_step"] == expected == summary["global_step"] < 16
    assert max(e["step"] for e in events(out)) == expected  # nothing trained or evaluated past the stop
    best = summary["best_checkpoint_step"]
    assert best == max(evals, key=lambda e: e["eval_score"])["step"] != expected
    assert export_equals_checkpoint(out, best) and not export_equals_checkpoint(out, expected)
    meta = Checkpoints(out / "checkpoints", read_only=True).read_meta(expected)
    assert meta["early_stopping"] == {"best": max(SCORES.values()), "patience_counter": 2, "stopped": True}


def test_rerunning_a_stopped_run_trains_no_further(stopped_run, tiny_model, toy_data, tmp_path, caplog):
    out, summary, _ = stopped_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    before = events(run)
    with caplog.at_level(logging.INFO, logger="flaxft"):
        again = trainer(tiny_model, toy_data, run).train()
    assert f"already stopped early at step {summary['global_step']}" in caplog.text
    assert again == json.loads((run / "summary.json").read_text()) and events(run) == before

    # killed after its last checkpoint, before the summary: the rerun evaluates and exports, but trains nothing
    (run / "summary.json").unlink()
    shutil.rmtree(run / "export")
    again = trainer(tiny_model, toy_data, run).train()
    assert again["global_step"] == summary["global_step"] and again["stopped_early"] is True
    metrics = [k for k in summary if k.startswith("eval_") and k != "eval_seconds"]
    assert {k: again[k] for k in metrics} == {k: summary[k] for k in metrics} and "eval_accuracy" in metrics
    assert events(run) == before
    assert export_equals_checkpoint(run, summary["best_checkpoint_step"])


def test_interrupted_run_stops_where_an_uninterrupted_one_does(stopped_run, tiny_model, toy_data, tmp_path):
    """Killed after its checkpoint at step 6, where the patience counter is 1: a resumed run that forgot the count
    would reset at step 8 (its first evaluation) and stop at 12; it stops at 8, with the same weights. A preemption
    notice at that very step (SIGTERM) saves and exits; the checkpoint still says the run stopped, so the rerun
    finishes it without training."""
    out, summary, params = stopped_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    shutil.rmtree(run / "checkpoints" / "8")
    shutil.rmtree(run / "export")
    (run / "summary.json").unlink()
    resumed = trainer(tiny_model, toy_data, run)
    assert resumed.resumed_step == 6 and resumed.early_stopping == EarlyStopping(best=0.805, patience_counter=1)
    resumed.checkpoints.reached_preemption = lambda step: step == 8  # as SIGTERM would, at step 8
    assert resumed.train() == {"preempted": True, "global_step": 8}
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(resumed.state.params))):
        np.testing.assert_array_equal(a, b)
    again = trainer(tiny_model, toy_data, run).train()
    assert again["stopped_at_step"] == summary["stopped_at_step"] and again["resumed_from_step"] == 8
    assert again["best_checkpoint_step"] == summary["best_checkpoint_step"]
    assert export_equals_checkpoint(run, summary["best_checkpoint_step"])


def test_a_grid_stops_early_too(tiny_model, toy_data, tmp_path):
    """A grid watches its checkpoints' metric, the best rate's mean over seeds (here every replica scores alike)."""
    summary = trainer(tiny_model, toy_data, tmp_path / "run", "train.seeds=[1,2]", "checkpoint.export=none").train()
    assert summary["stopped_at_step"] == 8 and summary["best_checkpoint_step"] == 6


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize("override, message", [
    ("train.early_stopping_patience=0", "train.early_stopping_patience=0 must be >= 1"),
    ("train.early_stopping_threshold=-0.1", "train.early_stopping_threshold=-0.1 must be >= 0"),
])
def test_bad_settings_are_one_line_errors(override, message):
    with pytest.raises(FlaxftError, match=message):
        load_config(None, [override])


def test_no_evaluation_split_is_an_error(tiny_model, toy_data, tmp_path):
    args = ckpt_args(tiny_model, toy_data, tmp_path / "run", "data.validation_file=null",
                     "train.early_stopping_patience=2")
    with pytest.raises(FlaxftError, match="train.early_stopping_patience needs a labelled evaluation split"):
        Trainer(load_config(args[1], args[2:]))
