"""output_dir, data files and predictions on Cloud Storage (gs://), against a local GCS emulator.

The emulator (gcp-storage-emulator) speaks the GCS JSON API; gcsfs (used by etils.epath) reaches it through
STORAGE_EMULATOR_HOST and TensorStore (used by Orbax) through TENSORSTORE_GCS_HTTP_URL, so these tests run
the same code paths as a real bucket: Orbax checkpoints, uploads of metrics/TensorBoard, export, predict.
"""

import json
import logging
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from etils import epath

from flaxft import storage
from flaxft.errors import FlaxftError

from .conftest import ROOT

BUCKET = "flaxft-test"


@pytest.fixture(scope="module")
def gcs():
    """A GCS emulator on a free local port; yields the bucket URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, str(pathlib.Path(__file__).with_name("gcs_emulator.py")), "start", "--host", "127.0.0.1",
                               "--port", str(port), "--in-memory", "--default-bucket", BUCKET],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        server.kill()
        pytest.fail("the GCS emulator did not start")
    logging.getLogger("gcsfs").setLevel(logging.ERROR)  # "no default credentials": expected with an emulator
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STORAGE_EMULATOR_HOST", url)
        env.setenv("TENSORSTORE_GCS_HTTP_URL", url)
        yield f"gs://{BUCKET}"
    server.kill()


def run_config(tiny_model, data, out, tmp_path, *extra):
    from flaxft.config import load_config

    return load_config(ROOT / "configs/custom.yaml", [
        f"model.name_or_path={tiny_model}", f"data.train_file={data}/train.csv",
        f"data.validation_file={data}/dev.csv", "data.text_columns=[text]", "data.packing=false",
        "data.bucket_boundaries=[48]",
        "train.batch_size=16", "train.learning_rate=1e-3", "train.warmup_ratio=0.0", "train.log_every_steps=1",
        "train.eval_every_steps=4", "checkpoint.every_steps=4", "checkpoint.keep=5",
        f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={out}", *extra])


def steps_logged(run: epath.Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_resume_export_predict_on_gcs(gcs, tiny_model, toy_data, tmp_path):
    from flaxft.checkpoint import Checkpoints
    from flaxft.predict import predict
    from flaxft.trainer import Trainer

    data, run = epath.Path(f"{gcs}/data"), epath.Path(f"{gcs}/runs/toy")
    for name in ("train.csv", "dev.csv"):
        (data / name).write_bytes((toy_data / name).read_bytes())

    first = Trainer(run_config(tiny_model, data, run, tmp_path, "train.max_steps=8"))
    first.train()
    assert Checkpoints(run / "checkpoints", read_only=True).steps() == [4, 8]
    assert (run / "config.yaml").read_text() == first.config.to_yaml()
    assert steps_logged(run) == [1, 2, 3, 4, 4, 5, 6, 7, 8, 8]  # every train step, evaluations at 4 and 8
    assert [p.name for p in (run / "tensorboard").iterdir()][0].startswith("events.out.tfevents")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 8 and summary["export"] == f"{run}/export"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "flaxft.json"):
        assert (run / "export" / name).is_file(), name

    # A longer rerun on the same URL resumes from step 8 and appends to the remote log.
    second = Trainer(run_config(tiny_model, data, run, tmp_path, "train.max_steps=12"))
    assert second.resumed_step == 8
    second.train()
    assert steps_logged(run) == [1, 2, 3, 4, 4, 5, 6, 7, 8, 8, 9, 10, 11, 12, 12]
    assert Checkpoints(run / "checkpoints", read_only=True).steps() == [4, 8, 12]
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] == 8

    # Predict from the run's best checkpoint and from its export (the same weights), both on GCS, writing to GCS.
    from_ckpt = predict(str(run), file=f"{data}/dev.csv", checkpoint="best")
    out = run / "predictions" / "dev.tsv"  # named after the file; labelled, so metrics are written too
    assert [str(f) for f in from_ckpt["files"]] == [str(out), str(run / "predictions" / "dev_metrics.json")]
    rows = out.read_text().splitlines()
    assert rows[0].startswith("index\tprediction\tprob_") and len(rows) == 101
    from_export = predict(f"{run}/export", file=f"{data}/dev.csv", output_dir=f"{gcs}/preds")
    assert (epath.Path(f"{gcs}/preds") / "dev.tsv").read_text().splitlines() == rows
    assert from_export["dev"].metrics == pytest.approx(from_ckpt["dev"].metrics)


def test_a_failing_run_still_uploads_its_log(gcs, tiny_model, toy_data, tmp_path):
    """A run that stops with an error (here in evaluation, at step 4) closes its writers: the staged
    metrics.jsonl reaches the bucket with steps 2-4, although the upload interval (60 s) has not passed since
    the first write uploaded step 1."""
    from flaxft.trainer import Trainer

    data, run = epath.Path(f"{gcs}/data-fail"), epath.Path(f"{gcs}/runs/fail")
    for name in ("train.csv", "dev.csv"):
        (data / name).write_bytes((toy_data / name).read_bytes())

    def failing_metric(prediction):
        raise RuntimeError("a metric that fails")

    trainer = Trainer(run_config(tiny_model, data, run, tmp_path, "train.max_steps=8"), compute_metrics=failing_metric)
    with pytest.raises(RuntimeError, match="a metric that fails"):
        trainer.train()
    assert steps_logged(run) == [1, 2, 3, 4] and not (run / "summary.json").exists()


def test_mirror_uploads_changed_files_at_most_every_interval(gcs, tmp_path):
    target = storage.path(f"{gcs}/mirror")
    mirror = storage.Mirror(target, min_interval_s=3600)
    (mirror.local / "log.jsonl").write_text("a\n")
    mirror.sync()
    assert (target / "log.jsonl").read_text() == "a\n"
    (mirror.local / "log.jsonl").write_text("a\nb\n")
    mirror.sync(force=False)  # within the interval: nothing uploaded
    assert (target / "log.jsonl").read_text() == "a\n"
    mirror.close()  # uploads and removes the local folder
    assert (target / "log.jsonl").read_text() == "a\nb\n" and not mirror.local.exists()

    resumed = storage.Mirror(target)
    resumed.fetch("log.jsonl")
    assert (resumed.local / "log.jsonl").read_text() == "a\nb\n"
    resumed.close()


def test_local_mirror_is_the_folder_itself(tmp_path):
    mirror = storage.Mirror(storage.path(tmp_path / "run"))
    assert mirror.local == tmp_path / "run" and mirror.local.is_dir() and not mirror.remote
    mirror.close()
    assert mirror.local.is_dir()


def test_gs_without_gcsfs_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # import gcsfs -> ImportError
    with pytest.raises(FlaxftError, match=r"gs:// paths need gcsfs; install it with: pip install 'flaxft\[gcs\]'"):
        storage.path("gs://bucket/run")


def test_custom_data_files_on_gcs(gcs, toy_data):
    """CSV through flaxft's own reader, JSON Lines through datasets (fsspec/gcsfs): both read gs:// URLs."""
    from flaxft.config import load_config
    from flaxft.data.sources import load_splits

    lines = (toy_data / "dev.csv").read_text().splitlines()[1:]
    jsonl = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in (row.rsplit(",", 1) for row in lines))
    (epath.Path(f"{gcs}/files") / "dev.jsonl").write_text(jsonl)
    (epath.Path(f"{gcs}/files") / "train.csv").write_bytes((toy_data / "train.csv").read_bytes())
    cfg = load_config(ROOT / "configs/custom.yaml", [f"data.train_file={gcs}/files/train.csv",
                                                     f"data.validation_file={gcs}/files/dev.jsonl"])
    raw = load_splits(cfg.data)
    assert len(raw.splits["train"]) == 256 and len(raw.splits["validation"]) == 100
    assert raw.label_names == ("neg", "pos") and raw.text_columns == ("text",)
