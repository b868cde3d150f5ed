"""`python -m flaxft.predict --model RUN_OR_EXPORT [--split NAME ... | --file FILE] [key=value ...]`

Predictions from a training run folder (its best checkpoint, or --checkpoint latest|STEP) or from an
exported Hugging Face folder, for splits of the training data (default: the test splits) or for a file
of your own. Writes ``<split>.tsv`` (index, predicted label or value, class probabilities), GLUE
submission files for GLUE test splits, and prints metrics when the data has labels.

It runs the training's own evaluation path (flaxft.evaluation.Predictor): the trained length buckets (plus
one more only if the inputs are longer), one ahead-of-time compilation per bucket at most.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import sys
from typing import Optional

from flaxft import storage
from flaxft.checkpoint import CHECKPOINTS, Checkpoints, CorruptCheckpoint, default_best_metric
from flaxft.cli import keep_traceback_in, run_main
from flaxft.config import Config, load_config
from flaxft.data.labels import LabelCodec
from flaxft.data.sources import RawData, from_file, load_splits
from flaxft.data.tasks import get_task
from flaxft.errors import FlaxftError
from flaxft.export import EXPORT, INFO_FILE, read_labels
from flaxft.losses import MULTI_LABEL, REGRESSION, SINGLE_LABEL
from flaxft.grid import Grid
from flaxft.host_memory import preload_host_malloc

log = logging.getLogger("flaxft")

USAGE = ("python -m flaxft.predict --model RUN_OR_EXPORT [--split NAME ... | --file FILE] [--output-dir DIR] "
         "[--checkpoint best|latest|STEP] [key=value ...] [--debug]")
# GLUE server file names; it wants label names for these tasks and class ids for the others.
GLUE_FILES = {("cola", "test"): "CoLA", ("sst2", "test"): "SST-2", ("mrpc", "test"): "MRPC", ("stsb", "test"): "STS-B",
              ("qqp", "test"): "QQP", ("mnli", "test_matched"): "MNLI-m", ("mnli", "test_mismatched"): "MNLI-mm",
              ("qnli", "test"): "QNLI", ("rte", "test"): "RTE", ("wnli", "test"): "WNLI"}
NAMED_LABELS = ("mnli", "qnli", "rte")


@dataclasses.dataclass
class Source:
    """Where the model comes from: its config, what training knew (labels, text columns, buckets), its weights."""
    config: Config
    info: dict
    params_from: Optional[tuple[Checkpoints, list[int]]]  # the checkpoints and the steps to try, in order
    description: str


def _overridden(overrides: list[str], key: str) -> bool:
    return any(o.split("=", 1)[0].strip() == key for o in overrides)


def _config(saved: dict, overrides: list[str], model: Optional[dict] = None) -> Config:
    """The training config on this machine's devices (default mesh), with `model` keys set, then the overrides."""
    base = {k: v for k, v in saved.items() if k not in ("mesh", "distributed")}
    base["model"] = {**base.get("model", {}), **(model or {})}
    return load_config(base=base, overrides=overrides)


def open_model(path: str, overrides: list[str], checkpoint: str = "best") -> Source:
    """A training run folder (config.yaml + checkpoints/) or an exported model folder (config.json + weights),
    local or on Cloud Storage (an exported model is then downloaded; checkpoints are read in place)."""
    p = storage.path(path)
    if not p.is_dir():
        raise FlaxftError(f"--model: folder '{path}' does not exist; give a training output_dir or its export/ folder")
    if (p / "config.json").is_file():
        p = storage.local_copy(p)  # the tokenizer and weights loaders read local files
        info_file = p / INFO_FILE
        try:
            info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        except ValueError as e:
            raise FlaxftError(f"'{info_file}' is not JSON ({e}); re-export the model") from None
        names, problem_type, num_labels = read_labels(p)
        info = {**info, "label_names": list(names) if names else None, "is_regression": problem_type == REGRESSION,
                "problem_type": problem_type, "num_labels": num_labels}
        cfg = _config(info.get("config") or {}, overrides, model={"name_or_path": str(p), "random_init": False})
        return Source(cfg, info, None, f"exported model {p}")
    if (p / CHECKPOINTS).is_dir():
        if not (p / "config.yaml").is_file():
            raise FlaxftError(f"--model: '{p}' has checkpoints/ but no config.yaml; is it a flaxft output_dir?")
        cfg = _config(load_config(p / "config.yaml").to_dict(), overrides)  # p may be a gs:// URL
        if Grid.of(cfg.train):  # its checkpoints hold every replica: predict with the exported best one
            if checkpoint == "best" and (p / EXPORT / "config.json").is_file():
                return open_model(str(p / EXPORT), overrides)
            raise FlaxftError(f"--model: '{p}' is a grid of replicas; predict with its exported best replica "
                              f"(--model {p / EXPORT}, written when checkpoint.export is not none) or with one of "
                              f"{p / EXPORT}/seed-<s>_lr-<lr>/ (checkpoint.export=all)")
        steps = sorted(Checkpoints(p / CHECKPOINTS, read_only=True).steps(), reverse=True)
        if not steps:
            raise FlaxftError(f"--model: '{p / CHECKPOINTS}' holds no finished checkpoint; train first")
        probe = _run_meta(Checkpoints(p / CHECKPOINTS, read_only=True), steps)
        task = get_task(probe["task"]) if probe.get("task") else None  # the default best metric depends on it
        ckpts = Checkpoints(p / CHECKPOINTS, read_only=True,
                            best_metric=cfg.checkpoint.best_metric or default_best_metric(task, problem_type_of(probe)))
        # the steps to try, in order: a damaged best or latest checkpoint falls back to the newest intact one
        if checkpoint == "best":
            best = ckpts.best_step()
            steps = [best] + [s for s in steps if s != best] if best is not None else steps
        elif checkpoint.isdigit() and int(checkpoint) in steps:
            steps = [int(checkpoint)]
        elif checkpoint != "latest":
            raise FlaxftError(f"--checkpoint {checkpoint}: use best, latest or one of the steps {sorted(steps)}")
        return Source(cfg, probe, (ckpts, steps), f"checkpoints in {ckpts.directory}")
    raise FlaxftError(f"--model: '{p}' is neither an exported model (no config.json) nor a flaxft run folder "
                      "(no checkpoints/); give the output_dir of a training run or its export/ folder")


def _run_meta(ckpts: Checkpoints, steps: list[int]) -> dict:
    """What the run's checkpoints all record alike (task, labels, text columns, buckets), from the newest whose meta
    reads; which checkpoint's weights are used is decided when they are restored (flaxft.evaluation.Predictor)."""
    for step in steps:
        try:
            return ckpts.read_meta(step)
        except CorruptCheckpoint as e:
            last = e
    raise FlaxftError(f"--model: no checkpoint in '{ckpts.directory}' can be read (the newest: {last.reason}); "
                      "predict with the run's export/ folder, or train again")


# ------------------------------------------------------------------ data


def _file_data(file: str, source: Source, overrides: list[str]) -> RawData:
    """Your own file (.csv, .tsv, .json, .jsonl, .parquet): the model's text columns, labels optional (names or ids)."""
    cfg, info = source.config, source.info
    wanted = cfg.data.text_columns if _overridden(overrides, "data.text_columns") else info.get("text_columns")
    codec = LabelCodec.named(None if info["is_regression"] else tuple(info["label_names"]), problem_type_of(info),
                             cfg.data.label_separator)
    task = get_task(info["task"]) if info.get("task") else None
    return from_file(file, wanted, cfg.data.label_column, codec, task)


def _split_data(splits: list[str], source: Source) -> RawData:
    """Splits of the training data (data.* of the run; override data.path if it moved)."""
    raw = load_splits(source.config.data)
    wanted = splits or list(raw.test_splits)
    if not wanted:
        raise FlaxftError(f"the data has no test split (splits: {', '.join(raw.splits)}); "
                          "pass --split validation or --file FILE")
    for name in wanted:
        if name not in raw.splits:
            raise FlaxftError(f"--split {name}: no such split; available: {', '.join(raw.splits)}")
    if raw.num_labels != source.info["num_labels"]:
        raise FlaxftError(f"the data has {raw.num_labels} classes but the model predicts {source.info['num_labels']}")
    return dataclasses.replace(raw, splits={n: raw.splits[n] for n in wanted})


# ------------------------------------------------------------------ output


def _write_tsv(path, header: list[str], rows) -> None:
    text = io.StringIO()
    w = csv.writer(text, delimiter="\t", lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    storage.write_text(path, text.getvalue())


def _glue_value(prediction, raw: RawData):
    """A score with 3 decimals (STS-B), a label name (MNLI, QNLI, RTE) or a class id (the rest)."""
    if raw.is_regression:
        return f"{prediction:.3f}"
    return raw.label_names[prediction] if raw.task.name in NAMED_LABELS else int(prediction)


def problem_type_of(info: dict) -> str:
    """A run's or a model's problem type (runs saved before multi-label recorded only is_regression)."""
    return info.get("problem_type") or (REGRESSION if info["is_regression"] else SINGLE_LABEL)


def write_predictions(out_dir, name: str, pred, raw: RawData) -> list:
    """<name>.tsv with every prediction, and the GLUE submission file when `name` is a GLUE test split.
    Multi-label: the predicted label set (names joined by the run's separator; empty when none) and every
    label's probability."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{name}.tsv"]
    if raw.problem_type == MULTI_LABEL:
        names, sep = raw.label_names, raw.labels.separator
        _write_tsv(written[0], ["index", "prediction", *(f"prob_{n}" for n in names)],
                   ((i, sep.join(n for n, on in zip(names, hot) if on), *(f"{p:.6f}" for p in probs))
                    for i, (hot, probs) in enumerate(zip(pred.predictions, pred.probabilities))))
    elif raw.is_regression:
        _write_tsv(written[0], ["index", "prediction"], ((i, f"{v:.6f}") for i, v in enumerate(pred.predictions)))
    else:
        names = raw.label_names or tuple(f"LABEL_{i}" for i in range(raw.num_labels))
        _write_tsv(written[0], ["index", "prediction", *(f"prob_{n}" for n in names)],
                   ((i, names[c], *(f"{p:.6f}" for p in probs))
                    for i, (c, probs) in enumerate(zip(pred.predictions, pred.probabilities))))
    glue = GLUE_FILES.get((raw.task.name, name)) if raw.task else None
    if glue:
        written.append(out_dir / "glue" / f"{glue}.tsv")
        written[-1].parent.mkdir(exist_ok=True)
        _write_tsv(written[-1], ["index", "prediction"],
                   ((i, _glue_value(v, raw)) for i, v in enumerate(pred.predictions)))
    if pred.metrics:
        written.append(out_dir / f"{name}_metrics.json")
        storage.write_text(written[-1], json.dumps(pred.metrics, indent=2) + "\n")
    return written


def predictions_dir(model: str, output_dir: Optional[str] = None):
    """Where predictions go: `output_dir`, else the run's predictions/ (an export's run when it sits in one)."""
    if output_dir:
        return storage.path(output_dir)
    p = storage.path(model)
    run_dir = p.parent if p.name == EXPORT and (p.parent / "config.yaml").is_file() else p
    return run_dir / "predictions"


def predict(model: str, *, splits: list[str] = (), file: Optional[str] = None, output_dir: Optional[str] = None,
            checkpoint: str = "best", overrides: list[str] = (), runtime_setup: bool = False) -> dict:
    """Predict and write the files; returns {split: PredictionOutput} plus "compilations" and "files".

    `runtime_setup` does the command line's process-wide set-up (flaxft.runtime.setup) with the model's config."""
    from flaxft.evaluation import Predictor  # heavy imports after the arguments are checked
    from flaxft.monitoring import CompileCounter

    if file and splits:
        raise FlaxftError("give --split or --file, not both")
    source = open_model(model, list(overrides), checkpoint)
    if runtime_setup:
        from flaxft import runtime

        runtime.setup(source.config)
    raw = _file_data(file, source, list(overrides)) if file else _split_data(list(splits), source)
    predictor = Predictor(source.config, raw, boundaries=source.info.get("buckets"), params_from=source.params_from)
    used = source.description if predictor.step is None else f"checkpoint {source.params_from[0].path(predictor.step)}"
    log.info("predicting %s with the %s", ", ".join(raw.splits), used)
    out_dir = predictions_dir(model, output_dir)
    results, files = {}, []
    with CompileCounter() as compiles:
        for name in raw.splits:
            results[name] = predictor.predict(name)
            files += write_predictions(out_dir, name, results[name], raw)
    return {**results, "compilations": compiles.count, "buckets": predictor.boundaries, "files": files}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m flaxft.predict", usage=USAGE, description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="a training output_dir (uses its checkpoints) or an export/ folder")
    parser.add_argument("--split", action="append", default=[],
                        help="split to predict (repeatable; default: the test splits)")
    parser.add_argument("--file", help="your own .csv/.tsv/.json/.jsonl/.parquet file with the model's text columns")
    parser.add_argument("--output-dir", help="where predictions go (default: RUN/predictions)")
    parser.add_argument("--checkpoint", default="best", help="run folder only: best (default), latest or a step number")
    parser.add_argument("overrides", nargs="*",
                        help="config overrides, e.g. data.path=../glue/MRPC train.eval_batch_size=64")
    args = parser.parse_args(argv)
    if args.output_dir or storage.path(args.model).is_dir():  # not for a Hub id: no folder of ours to write into
        keep_traceback_in(predictions_dir(args.model, args.output_dir))
    from flaxft import runtime

    runtime.setup()  # before Orbax reads checkpoints (the config comes with the model: see predict())
    out = predict(args.model, splits=args.split, file=args.file, output_dir=args.output_dir,
                  checkpoint=args.checkpoint, overrides=args.overrides, runtime_setup=True)
    for name, pred in out.items():
        if hasattr(pred, "metrics") and pred.metrics:
            print(f"{name}: " + " ".join(f"{k}={v:.4f}" for k, v in pred.metrics.items()))
    log.info("%d compilation(s) for buckets %s", out["compilations"], out["buckets"])
    print("wrote " + " ".join(str(f) for f in out["files"]))
    return 0


def cli() -> None:
    preload_host_malloc()  # see flaxft/host_memory.py
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
