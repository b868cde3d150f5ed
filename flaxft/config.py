"""Typed run configuration: YAML files with a `base:` chain, plus dotted `key=value` overrides.

One dataclass per section; every field carries its help text, which feeds `--help` and the README.
Unknown keys and wrong types are errors (with the closest valid key suggested), never ignored.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import pathlib
import sys
import types
import typing
from typing import Any, Optional

import yaml

from flaxft.errors import FlaxftError


def _field(default: Any, help: str):
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class ModelConfig:
    name_or_path: str = _field("bert-base-uncased", "Hugging Face BERT checkpoint: a local folder or a Hub id.")
    random_init: bool = _field(False, "Ignore the checkpoint's weights and initialize randomly from its config.json.")
    remat: bool = _field(False, "Rematerialize each encoder layer in the backward pass (saves memory on long sequences).")


@dataclasses.dataclass
class DataConfig:
    task: Optional[str] = _field(None, "GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli); null for custom files.")
    path: Optional[str] = _field(None, "Local GLUE task folder (train.tsv, dev.tsv, ...); null loads `hub_dataset` from the Hub.")
    hub_dataset: str = _field("nyu-mll/glue", "Hub dataset id used for GLUE tasks when `path` is null.")
    train_file: Optional[str] = _field(None, "Custom task: training file (.csv, .tsv, .json, .jsonl, .parquet).")
    validation_file: Optional[str] = _field(None, "Custom task: validation file.")
    test_file: Optional[str] = _field(None, "Custom task: test file (labels optional).")
    text_columns: Optional[list[str]] = _field(None, "Custom task: one or two text columns, e.g. [sentence1,sentence2].")
    label_column: str = _field("label", "Custom task: label column (integers, strings, or floats for regression).")
    max_seq_length: int = _field(128, "Truncate tokenized inputs to this many tokens (at most 512).")
    num_buckets: int = _field(4, "Number of sequence-length buckets, chosen from the training lengths.")
    bucket_boundaries: Optional[list[int]] = _field(None, "Explicit bucket lengths (overrides num_buckets), e.g. [32,64,128].")
    pad_to_multiple_of: int = _field(8, "Bucket lengths are multiples of this.")
    packing: bool = _field(False, "Train on packed rows: several examples per row of one length (one compiled train shape); "
                                  "train.batch_size is then the mean number of examples per step.")
    packed_length: Optional[int] = _field(None, "Packed row length (null: max_seq_length rounded up to pad_to_multiple_of).")
    max_examples_per_row: int = _field(32, "Packing: at most this many examples share a row.")
    max_train_samples: Optional[int] = _field(None, "Use only the first N training examples.")
    max_eval_samples: Optional[int] = _field(None, "Use only the first N examples of each evaluation split.")
    cache_dir: Optional[str] = _field(None, "Tokenization cache folder (default ~/.cache/flaxft/tokenized).")


@dataclasses.dataclass
class TrainConfig:
    epochs: float = _field(3.0, "Training epochs (a fraction stops part-way).")
    max_steps: Optional[int] = _field(None, "Total optimizer steps; overrides epochs when set.")
    batch_size: int = _field(32, "Global batch size (all devices together).")
    eval_batch_size: Optional[int] = _field(None, "Global evaluation batch size (default: batch_size).")
    learning_rate: float = _field(2e-5, "Peak AdamW learning rate.")
    weight_decay: float = _field(0.01, "AdamW weight decay (not applied to biases and LayerNorm).")
    warmup_ratio: float = _field(0.1, "Fraction of steps with linear warmup (then linear decay to 0).")
    warmup_steps: Optional[int] = _field(None, "Warmup steps; overrides warmup_ratio when set.")
    adam_b1: float = _field(0.9, "AdamW beta1.")
    adam_b2: float = _field(0.999, "AdamW beta2.")
    adam_eps: float = _field(1e-8, "AdamW epsilon.")
    max_grad_norm: float = _field(1.0, "Clip gradients to this global norm (0 disables).")
    grad_accum_steps: int = _field(1, "Split each batch into N micro-batches and sum their gradients (same update, less memory).")
    seed: int = _field(42, "Seed for initialization, shuffling and dropout.")
    dropout_rng: str = _field("hash", "Dropout mask bits: hash (counter-based hash, about a tenth of threefry's cost on CPU) or threefry "
                                      "(jax.random's default).")
    dtype: str = _field("float32", "Activation/matmul dtype: float32 or bfloat16 (weights stay float32).")
    eval_every_steps: Optional[int] = _field(None, "Also evaluate every N steps (always at each epoch end).")
    log_every_steps: int = _field(10, "Sync and log training loss every N steps.")
    prefetch: int = _field(2, "Batches prepared ahead on a background thread and put on the devices.")
    compilation_cache: Optional[str] = _field(
        "~/.cache/flaxft/xla", "Persistent XLA compilation cache folder (null: off); an identical rerun compiles nothing.")


@dataclasses.dataclass
class MeshConfig:
    data: int = _field(-1, "Data-parallel axis size (-1: all remaining devices).")
    fsdp: int = _field(1, "FSDP axis size: shards large weights and the batch.")
    tensor: int = _field(1, "Tensor-parallel axis size: splits attention heads and the MLP.")


@dataclasses.dataclass
class DistributedConfig:
    coordinator_address: Optional[str] = _field(None, "host:port of process 0 for multi-process runs (automatic on Cloud TPU).")
    num_processes: Optional[int] = _field(None, "Number of processes in a multi-process run.")
    process_id: Optional[int] = _field(None, "This process's index, 0 .. num_processes-1.")


@dataclasses.dataclass
class CheckpointConfig:
    every_steps: Optional[int] = _field(None, "Also save a checkpoint every N steps (null: at epoch ends and the last step only).")
    keep: int = _field(2, "Keep the latest N checkpoints, plus the best one by best_metric.")
    best_metric: Optional[str] = _field(None, "Eval metric that picks the best checkpoint, e.g. eval_f1; eval_loss is minimized "
                                              "(null: the task's main metric).")
    resume_from: Optional[str] = _field(None, "Resume from this checkpoint (a step folder, a checkpoints folder or a run folder) "
                                              "instead of output_dir's latest.")
    export: str = _field("best", "At the end, write output_dir/export in Hugging Face format: best, final or none.")
    async_save: bool = _field(True, "Write checkpoints in the background while training goes on.")


@dataclasses.dataclass
class Config:
    output_dir: str = _field("outputs/run", "Where the resolved config, metrics, TensorBoard events, summary, checkpoints and export go "
                                            "(a local folder or gs://bucket/path; gs:// needs flaxft[gcs]).")
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------- loading


def _is_section(tp) -> bool:
    return dataclasses.is_dataclass(tp)


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls=Config, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every dotted leaf key -> its dataclass field."""
    keys = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if _is_section(hints[f.name]):
            keys.update(all_keys(hints[f.name], f"{prefix}{f.name}."))
        else:
            keys[prefix + f.name] = f
    return keys


def _unknown_key(key: str) -> FlaxftError:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else "run `python -m flaxft.train --help` for the valid keys"
    return FlaxftError(f"unknown config key '{key}'; {hint}")


def _coerce(key: str, value: Any, tp) -> Any:
    """Check/convert one value to the field's type (YAML gives '5e-5' as a string, for instance)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        return _coerce(key, value, args[0])
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(key, v, item_tp) for v in items]
    bad = FlaxftError(f"config key '{key}' must be {getattr(tp, '__name__', tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise TypeError(f"unsupported config type {tp} for {key}")


def _build(cls, values: dict, prefix: str = ""):
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for name in values:
        if name not in names:
            raise _unknown_key(prefix + name)
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if _is_section(tp):
            if not isinstance(value, dict):
                raise FlaxftError(f"config key '{prefix}{name}' is a section; give its keys, e.g. {prefix}{name}.KEY=VALUE")
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, value, tp)
    return cls(**kwargs)


def base_chain(path: pathlib.Path) -> list[tuple[pathlib.Path, dict]]:
    """The config file and the files it pulls in through `base:` (a path relative to the file naming it),
    the config first, each with its values (without `base`)."""
    chain, seen = [], []
    while True:
        if not path.is_file():
            raise FlaxftError(f"config file '{path}' not found; pass an existing YAML file, e.g. --config configs/glue/mrpc.yaml")
        if path.resolve() in seen:
            raise FlaxftError(f"config file '{path}' includes itself through `base:`; remove the cycle")
        seen.append(path.resolve())
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise FlaxftError(f"config file '{path}' is not valid YAML ({str(e).splitlines()[0]}); fix its syntax") from None
        if not isinstance(values, dict):
            raise FlaxftError(f"config file '{path}' must hold a mapping of keys, not {type(values).__name__}")
        base = values.pop("base", None)
        chain.append((path, values))
        if base is None:
            return chain
        path = path.parent / base


def _read_yaml(path: pathlib.Path) -> dict:
    """Read a config file, merged over the files of its `base:` chain."""
    values: dict = {}
    for _, file_values in reversed(base_chain(path)):
        values = _merge(values, file_values)
    return values


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.learning_rate=5e-5` -> (['train', 'learning_rate'], '5e-5'-as-YAML)."""
    if "=" not in text:
        raise FlaxftError(f"override '{text}' is not KEY=VALUE; write e.g. train.batch_size=32")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key in {f.name for f in dataclasses.fields(Config)} - set(all_keys()):
        raise FlaxftError(f"config key '{key}' is a section; override one of its keys, e.g. {key}.KEY=VALUE")
    if key not in all_keys():
        raise _unknown_key(key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # a plain string such as a path with odd characters
    return key.split("."), value


def load_config(path: Optional[str | pathlib.Path] = None, overrides: list[str] = (),
                base: Optional[dict] = None) -> Config:
    """Config = defaults <- YAML file (and its bases) or `base` (a saved Config.to_dict()) <- key=value
    overrides, then validated."""
    from flaxft import storage  # here, not at the top: `python -m flaxft.config` needs only PyYAML

    values = _read_yaml(storage.path(path)) if path is not None else copy.deepcopy(base or {})
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    cfg = _build(Config, values)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    d, t = cfg.data, cfg.train

    def need(ok: bool, msg: str):
        if not ok:
            raise FlaxftError(msg)

    need(8 <= d.max_seq_length <= 512, f"data.max_seq_length={d.max_seq_length} must be between 8 and 512")
    need(d.num_buckets >= 1, "data.num_buckets must be >= 1")
    need(d.pad_to_multiple_of >= 1, "data.pad_to_multiple_of must be >= 1")
    need(d.packed_length is None or d.packed_length >= 8, "data.packed_length must be >= 8 (or null)")
    need(d.max_examples_per_row >= 1, "data.max_examples_per_row must be >= 1")
    for key in ("max_train_samples", "max_eval_samples"):
        limit = getattr(d, key)
        need(limit is None or limit >= 1, f"data.{key}={limit} must be at least 1; unset it to use every row")
    if d.bucket_boundaries is not None:
        b = d.bucket_boundaries
        need(len(b) > 0 and all(x > 0 for x in b) and b == sorted(set(b)),
             f"data.bucket_boundaries={b} must be increasing positive lengths, e.g. [32,64,128]")
    need(d.text_columns is None or 1 <= len(d.text_columns) <= 2,
         "data.text_columns takes one or two columns, e.g. data.text_columns=[sentence1,sentence2]")
    need(t.batch_size >= 1, "train.batch_size must be >= 1")
    need(t.eval_batch_size is None or t.eval_batch_size >= 1, "train.eval_batch_size must be >= 1")
    need(t.epochs > 0 or (t.max_steps or 0) > 0, "train.epochs must be > 0 (or set train.max_steps)")
    need(t.max_steps is None or t.max_steps >= 1, "train.max_steps must be >= 1 (or null to use train.epochs)")
    need(t.learning_rate > 0, "train.learning_rate must be > 0")
    need(0 <= t.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)")
    need(t.log_every_steps >= 1, "train.log_every_steps must be >= 1")
    need(t.eval_every_steps is None or t.eval_every_steps >= 1, "train.eval_every_steps must be >= 1 or null")
    need(t.dtype in ("float32", "bfloat16"), f"train.dtype='{t.dtype}' is not supported; use float32 or bfloat16")
    need(t.dropout_rng in ("hash", "threefry"), f"train.dropout_rng='{t.dropout_rng}' is not supported; use hash or threefry")
    need(t.prefetch >= 1, "train.prefetch must be >= 1")
    need(t.grad_accum_steps >= 1, "train.grad_accum_steps must be >= 1")
    need(t.batch_size % t.grad_accum_steps == 0,
         f"train.batch_size={t.batch_size} must be divisible by train.grad_accum_steps={t.grad_accum_steps}")
    dist = cfg.distributed
    if dist.coordinator_address is not None:
        need(dist.num_processes is not None and dist.process_id is not None,
             "distributed.coordinator_address needs distributed.num_processes and distributed.process_id too")
        need(0 <= dist.process_id < dist.num_processes,
             f"distributed.process_id={dist.process_id} must be in [0, {dist.num_processes})")
    c = cfg.checkpoint
    need(c.every_steps is None or c.every_steps >= 1, "checkpoint.every_steps must be >= 1 or null")
    need(c.keep >= 1, "checkpoint.keep must be >= 1")
    need(c.export in ("best", "final", "none"), f"checkpoint.export='{c.export}' must be best, final or none")
    need(c.best_metric is None or c.best_metric.startswith("eval_"),
         f"checkpoint.best_metric='{c.best_metric}' must be an eval metric such as eval_accuracy or eval_loss")
    for axis in ("data", "fsdp", "tensor"):
        size = getattr(cfg.mesh, axis)
        need(size == -1 or size >= 1, f"mesh.{axis}={size} must be a positive size or -1")


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def markdown_reference() -> str:
    """The README's configuration table: `python -c "import flaxft.config as c; print(c.markdown_reference())"`."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, f in all_keys().items():
        d = _default(f)
        shown = "null" if d is None else str(d).lower() if isinstance(d, bool) else d
        rows.append(f"| `{key}` | `{shown}` | {f.metadata['help']} |")
    return "\n".join(rows)


def help_text() -> str:
    """The config reference printed by `--help` (and pasted into the README)."""
    lines = []
    for key, f in all_keys().items():
        lines.append(f"  {key:<26} {f.metadata['help']} (default: {_default(f)})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`python -m flaxft.config --files FILE`: what tpu/common.sh copies to the TPU workers."""
    parser = argparse.ArgumentParser(prog="python -m flaxft.config", description="Inspect a flaxft config file.")
    parser.add_argument("--files", metavar="FILE", required=True,
                        help="print FILE and the files of its `base:` chain, FILE first, one absolute path a line")
    args = parser.parse_args(argv)
    for path, _ in base_chain(pathlib.Path(args.files)):
        print(path.resolve())
    return 0


if __name__ == "__main__":
    from flaxft.cli import run_main

    sys.exit(run_main(main))
