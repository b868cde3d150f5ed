"""flaxft.metrics: every kind agrees with scikit-learn/scipy, loads offline fast, and rejects bad input."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from flaxft.errors import FlaxftError
from flaxft.metrics import FLOAT_KINDS, GLUE_METRIC_PATH, KINDS, compute_metrics, load_metric

ROOT = pathlib.Path(__file__).resolve().parents[1]
ACCURACY_KINDS = ["sst2", "mnli", "mnli_mismatched", "mnli_matched", "qnli", "rte", "wnli", "hans"]
TOL = 1e-9

# sklearn warns when a class is never predicted (F1 = 0 by convention); both sides see the same inputs.
pytestmark = [
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning"),
    pytest.mark.filterwarnings("ignore:A single label was found:UserWarning"),
]


def expected(kind, preds, refs):
    """The same metrics computed directly with scikit-learn / scipy."""
    if kind in ACCURACY_KINDS:
        return {"accuracy": accuracy_score(refs, preds)}
    if kind in ("mrpc", "qqp"):
        return {"accuracy": accuracy_score(refs, preds), "f1": f1_score(refs, preds)}
    if kind == "cola":
        return {"matthews_correlation": matthews_corrcoef(refs, preds)}
    if kind in ("stsb", "regression"):
        out = {"pearson": pearsonr(preds, refs)[0], "spearmanr": spearmanr(preds, refs)[0]}
        if kind == "regression":
            out["mse"] = np.mean((np.asarray(preds) - np.asarray(refs)) ** 2)
        return out
    out = {"accuracy": accuracy_score(refs, preds), "f1_macro": f1_score(refs, preds, average="macro")}
    if kind == "binary":
        out["f1"] = f1_score(refs, preds)
    return out


def cases(kind):
    """(name, predictions, references): random inputs with fixed seeds plus edge cases."""
    rng = np.random.default_rng(sum(map(ord, kind)))
    n = 257
    if kind in ("stsb", "regression"):
        refs = rng.uniform(0, 5, n)
        return [
            ("random", refs + rng.normal(0, 1, n), refs),
            ("ties", np.round(refs + rng.normal(0, 1, n)), np.round(refs)),  # spearman with ties
            ("perfect", refs.copy(), refs),
            ("anti", -refs, refs),
        ]
    classes = 3 if kind.startswith("mnli") or kind in ("hans", "classification") else 2
    if kind == "classification":
        classes = 5
    refs = rng.integers(0, classes, n)
    return [
        ("random", rng.integers(0, classes, n), refs),
        ("mostly_right", np.where(rng.random(n) < 0.8, refs, rng.integers(0, classes, n)), refs),
        ("all_zero", np.zeros(n, dtype=int), refs),  # MCC denominator 0; F1 of class 1 undefined
        ("all_one", np.ones(n, dtype=int), refs),
        ("perfect", refs.copy(), refs),
        ("inverted", (classes - 1) - refs, refs),
        ("tiny", np.array([1]), np.array([1])),
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_matches_sklearn_and_scipy(kind):
    for name, preds, refs in cases(kind):
        got = compute_metrics(kind, preds, refs)
        want = expected(kind, preds, refs)
        assert set(got) == set(want), (kind, name)
        for key, value in got.items():
            assert type(value) is float, (kind, name, key)
            assert value == pytest.approx(float(want[key]), abs=TOL, nan_ok=True), (kind, name, key)


def test_lists_jax_style_inputs_and_regression_column():
    # Python lists and (n, 1) regression outputs are accepted as-is.
    assert compute_metrics("sst2", [0, 1, 1, 0], [0, 1, 0, 0]) == {"accuracy": 0.75}
    preds = np.array([[0.1], [0.5], [0.3], [0.9]])
    got = compute_metrics("regression", preds, [0.0, 1.0, 2.0, 3.0])
    assert got["pearson"] == pytest.approx(pearsonr(preds[:, 0], [0.0, 1.0, 2.0, 3.0])[0], abs=TOL)


def test_constant_regression_is_nan_not_error():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = compute_metrics("stsb", [1.0, 1.0, 1.0], [0.0, 1.0, 2.0])
    assert np.isnan(got["pearson"]) and np.isnan(got["spearmanr"])


def test_instances_do_not_share_state():
    a, b = load_metric("sst2"), load_metric("sst2")
    a.add_batch(predictions=[1, 1], references=[1, 1])
    b.add_batch(predictions=[0, 0], references=[1, 1])
    a.add_batch(predictions=[0], references=[1])
    assert a.compute() == {"accuracy": pytest.approx(2 / 3)}
    assert b.compute() == {"accuracy": 0.0}


def test_unknown_kind_raises_flaxft_error():
    with pytest.raises(FlaxftError, match="unknown metric kind 'sst-2'.*sst2.*regression"):
        load_metric("sst-2")
    with pytest.raises(FlaxftError, match="unknown metric kind"):
        compute_metrics("accuracy", [0], [0])


def test_logits_instead_of_class_ids_raise_flaxft_error():
    with pytest.raises(FlaxftError, match="argmax"):
        compute_metrics("mrpc", np.zeros((4, 2)), [0, 1, 0, 1])
    with pytest.raises(FlaxftError, match="equal length"):
        compute_metrics("mrpc", [0, 1], [0, 1, 1])


def test_f1_needs_binary_labels():
    with pytest.raises(ValueError):
        compute_metrics("binary", [0, 1, 2], [0, 1, 2])


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    import evaluate
    from flaxft.metrics import GLUE_METRIC_PATH, KINDS, load_metric
    t1 = time.perf_counter()
    via_evaluate = evaluate.load(GLUE_METRIC_PATH, "mrpc", keep_in_memory=True)
    for kind in KINDS:
        load_metric(kind)
    t2 = time.perf_counter()
    out = via_evaluate.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    direct = load_metric("mrpc").compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "via_evaluate": out, "direct": direct}))
    """
)


def test_loads_offline_fast_and_concurrently(tmp_path):
    """Two processes at once, HF offline variables unset, isolated caches: both finish quickly, no cache files."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_METRICS_CACHE=str(tmp_path / "metrics"))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    wall = time.perf_counter() - start
    print(f"\nmetric load: wall {wall:.1f}s for 2 processes; per process " + ", ".join(
        f"import {r['import_s']:.1f}s + load {r['load_s']:.2f}s" for r in results))
    assert wall < 60
    for r in results:
        assert r["load_s"] < 30
        assert r["via_evaluate"] == r["direct"] == {"accuracy": 0.75, "f1": pytest.approx(2 / 3)}
    # keep_in_memory: no Arrow cache files or locks left behind that another process could collide with.
    leftovers = [p for p in (tmp_path / "metrics").rglob("*") if p.is_file()]
    assert leftovers == []


def test_kinds_match_the_metric_module():
    from flaxft.metrics.glue import glue

    assert pathlib.Path(GLUE_METRIC_PATH, "glue.py").is_file()
    assert KINDS == glue.ALL_TASKS
    assert FLOAT_KINDS == glue.FLOAT_TASKS


def test_importing_flaxft_metrics_is_cheap():
    code = "import sys, flaxft.metrics; assert 'evaluate' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
