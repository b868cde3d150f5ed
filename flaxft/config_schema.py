"""What a run's configuration holds: one dataclass per section, every field with its help text (which feeds
`--help` and the README's table), and the checks of values that need no files or devices.

Reading YAML files and `key=value` overrides into a Config is flaxft.config's job.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Optional, Union

import yaml

from flaxft.errors import FlaxftError

LENGTH_GROUPINGS = ("bucket", "megabatch", "none")
OPTIMIZERS = ("adamw", "adafactor", "lion", "sgd")
LR_SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt")
# train.<key> -> (the train.<choice> it belongs to, the choices that read it): set elsewhere, it is an error
USED_ONLY_BY = {
    "num_cycles": ("lr_schedule", ("cosine", "cosine_with_restarts")),
    "lr_end": ("lr_schedule", ("polynomial",)),
    "power": ("lr_schedule", ("polynomial",)),
    "adam_b1": ("optimizer", ("adamw", "lion")),
    "adam_b2": ("optimizer", ("adamw", "lion")),
    "adam_eps": ("optimizer", ("adamw",)),
    "momentum": ("optimizer", ("sgd",)),
}


def _field(default: Any, help: str):
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class ModelConfig:
    name_or_path: str = _field("bert-base-uncased", "Hugging Face checkpoint (model_type bert, roberta, xlm-roberta, camembert, electra, "
                                                             "distilbert, mpnet, deberta-v2 or modernbert): a local folder or a Hub id.")
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
    label_column: str = _field("label", "Custom task: label column (integers, strings, or floats for regression; lists, or names "
                                        "joined by label_separator, for multi-label).")
    problem_type: Optional[str] = _field(None, "Custom task: single_label, multi_label or regression (null: detected from the "
                                               "training labels; lists or joined names mean multi_label).")
    label_separator: str = _field(",", "Multi-label CSV/TSV cells: the character joining a row's label names.")
    max_seq_length: int = _field(128, "Truncate tokenized inputs to this many tokens (at most 512).")
    num_buckets: int = _field(4, "Number of sequence-length buckets, chosen from the training lengths.")
    bucket_boundaries: Optional[list[int]] = _field(None, "Explicit bucket lengths (overrides num_buckets), e.g. [32,64,128].")
    pad_to_multiple_of: int = _field(8, "Bucket lengths are multiples of this.")
    length_grouping: str = _field("bucket", "Bucketed training batches (data.packing=false): bucket (each batch from one length bucket: least "
                                            "padding), megabatch (the HF Trainer's group_by_length=True: random mega-batches of "
                                            "up to 50 batches, sorted by length and cut into batches) or none (the HF Trainer's "
                                            "default random batches); megabatch and none pad each batch to the smallest bucket "
                                            "that fits it. Not with packing or a grid unless bucket.")
    stratify_labels: bool = _field(False, "Single-label classification, bucket or none batches: deal each bucket's (none: the "
                                          "split's) shuffled examples out class by class, so every training batch holds the "
                                          "classes in the bucket's shares (+-1 example) instead of a random draw's.")
    carry_leftovers: bool = _field(False, "Bucket batches: the examples left over when a bucket is cut into full training "
                                          "batches join the next longer bucket's (padded to it), so an epoch ends in one "
                                          "part-filled batch, as the HF Trainer's, not one per bucket (which can hold a "
                                          "single example yet take a whole optimizer step).")
    packing: bool = _field(True, "Train on packed rows: several examples per row of one length (one compiled train shape); "
                                 "train.batch_size is then the mean number of examples per step. The default: as accurate "
                                 "as the HF Trainer's random batches on MRPC where one-bucket batches are not (issue #16). "
                                 "false: length-bucketed padded batches (data.length_grouping).")
    packed_length: Optional[int] = _field(None, "Packed row length (null: max_seq_length rounded up to pad_to_multiple_of).")
    max_examples_per_row: int = _field(32, "Packing: at most this many examples share a row.")
    max_train_samples: Optional[int] = _field(None, "Use only the first N training examples.")
    max_eval_samples: Optional[int] = _field(None, "Use only the first N examples of each evaluation split.")
    cache_dir: Optional[str] = _field(None, "Tokenization cache folder (default ~/.cache/flaxft/tokenized).")
    skip_bad_rows: bool = _field(False, "Skip training and validation rows that cannot be used (wrong number of fields, not "
                                        "UTF-8, empty text, missing or malformed label), counted in the log and "
                                        "summary.json's skipped_rows; false: the first is an error naming its row.")


@dataclasses.dataclass
class TrainConfig:
    epochs: float = _field(3.0, "Training epochs (a fraction stops part-way).")
    max_steps: Optional[int] = _field(None, "Total optimizer steps; overrides epochs when set.")
    batch_size: int = _field(32, "Global batch size (all devices together).")
    eval_batch_size: Optional[int] = _field(None, "Global evaluation batch size (default: batch_size).")
    learning_rate: Union[float, list[float]] = _field(2e-5, "Peak learning rate; a list, e.g. [2e-5,3e-5,5e-5], trains one "
                                                            "replica per rate in the same program (a grid, with train.seeds).")
    optimizer: str = _field("adamw", "adamw, adafactor, lion or sgd (optax's). adafactor is HF's Adafactor with an external "
                                     "rate (scale_parameter=False, relative_step=False: update clipping 1.0, every matrix "
                                     "factored); lion takes its betas from adam_b1/adam_b2 (the paper's are 0.9/0.99) and "
                                     "usually a rate 3-10x below AdamW's; sgd uses train.momentum.")
    weight_decay: float = _field(0.01, "Weight decay times the scheduled rate, in every optimizer (decoupled in adamw, lion "
                                       "and adafactor; added to the gradient in sgd, as torch's); not applied to biases "
                                       "and LayerNorm.")
    lr_schedule: str = _field("linear", "Hugging Face's schedule (transformers.get_scheduler), after the warmup: linear (to 0), "
                                        "cosine, cosine_with_restarts, polynomial, constant_with_warmup, inverse_sqrt "
                                        "(timescale: the warmup steps, or 10000 without warmup) or constant (which ignores "
                                        "warmup, as HF's does).")
    warmup_ratio: float = _field(0.1, "Fraction of steps with linear warmup from 0 to the peak rate.")
    warmup_steps: Optional[int] = _field(None, "Warmup steps; overrides warmup_ratio when set.")
    num_cycles: Optional[float] = _field(None, "cosine: waves over the decay (null: 0.5, a half wave down to 0); "
                                               "cosine_with_restarts: cycles, each from the peak to 0 (null: 1).")
    lr_end: float = _field(1e-7, "polynomial: the rate at the last step (below every learning rate).")
    power: float = _field(1.0, "polynomial: the power of the decay (1: linear).")
    adam_b1: float = _field(0.9, "AdamW beta1 (lion's too).")
    adam_b2: float = _field(0.999, "AdamW beta2 (lion's too).")
    adam_eps: float = _field(1e-8, "AdamW epsilon.")
    momentum: float = _field(0.9, "sgd: momentum (0: none).")
    layer_lr_decay: Optional[float] = _field(None, "Layer-wise rate decay in (0, 1] (null: off): the head and anything above "
                                                   "the last layer get the rate, encoder layer i of n rate x decay^(n-i), the "
                                                   "embeddings and tables all layers share rate x decay^(n+1).")
    max_grad_norm: float = _field(1.0, "Clip gradients to this global norm (0 disables).")
    label_smoothing: float = _field(0.0, "Classification: label smoothing of the cross-entropy, as "
                                         "torch.nn.CrossEntropyLoss(label_smoothing=...).")
    class_weights: Optional[Union[str, list[float]]] = _field(
        None, "Classification: balanced (n_samples / (n_classes * count), from the training labels, as scikit-learn) or a "
              "list of one weight per class; the loss (and eval_loss, then marked class-weighted) is torch's weighted mean.")
    grad_accum_steps: int = _field(1, "Split each batch into N micro-batches and sum their gradients (same update, less memory).")
    seed: int = _field(42, "Seed for initialization, shuffling and dropout.")
    seeds: Optional[list[int]] = _field(None, "Train one replica per seed in the same program, e.g. [42,43,44,45,46] "
                                              "(replaces train.seed); with a list of learning rates, every (seed, rate) pair.")
    dropout_rng: str = _field("hash", "Dropout mask bits: hash (counter-based hash, about a tenth of threefry's cost on CPU) or threefry "
                                      "(jax.random's default).")
    dtype: str = _field("float32", "Activation/matmul dtype: float32 or bfloat16 (weights stay float32).")
    eval_every_steps: Optional[int] = _field(None, "Also evaluate every N steps (always at each epoch end).")
    early_stopping_patience: Optional[int] = _field(
        None, "Stop after N evaluations in a row without an improvement of checkpoint.best_metric by more than "
              "early_stopping_threshold (transformers' EarlyStoppingCallback rule), then export as at the end; a grid "
              "watches the best learning rate's mean over seeds, the value that picks its best checkpoint (null: off).")
    early_stopping_threshold: float = _field(0.0, "Early stopping: an evaluation resets the patience count only if it "
                                                  "beats the best value so far by more than this (absolute).")
    log_every_steps: int = _field(10, "Sync and log training loss every N steps.")
    prefetch: int = _field(2, "Batches prepared ahead on a background thread and put on the devices.")
    compilation_cache: Optional[str] = _field(
        "~/.cache/flaxft/xla", "Persistent XLA compilation cache folder (null: off); an identical rerun compiles nothing.")


@dataclasses.dataclass
class MeshConfig:
    replica: int = _field(1, "Replica axis size: spreads a grid's replicas (train.seeds x learning rates) over devices.")
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
    export: str = _field("best", "At the end, write output_dir/export in Hugging Face format: best, final or none; all also "
                                 "writes every replica of a grid to export/seed-<s>_lr-<lr>/.")
    async_save: bool = _field(True, "Write checkpoints in the background while training goes on.")


@dataclasses.dataclass
class PredictConfig:
    threshold: float = _field(0.5, "Multi-label: a label is predicted when its probability (sigmoid) is at least this; also "
                                   "the threshold of the eval metrics.")


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
    predict: PredictConfig = dataclasses.field(default_factory=PredictConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def is_section(tp) -> bool:
    return dataclasses.is_dataclass(tp)


def all_keys(cls=Config, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every dotted leaf key -> its dataclass field."""
    keys = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if is_section(hints[f.name]):
            keys.update(all_keys(hints[f.name], f"{prefix}{f.name}."))
        else:
            keys[prefix + f.name] = f
    return keys


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
    need(d.length_grouping in LENGTH_GROUPINGS,
         f"data.length_grouping='{d.length_grouping}' is not one of {', '.join(LENGTH_GROUPINGS)}")
    need(d.length_grouping == "bucket" or not d.packing,
         f"data.length_grouping={d.length_grouping} asks for padded batches but data.packing=true packs rows; "
         "set one of them")
    need(d.length_grouping == "bucket" or not (t.seeds or isinstance(t.learning_rate, list)),
         f"data.length_grouping={d.length_grouping} gives each seed batches of its own lengths, which a grid "
         "(train.seeds or a list of learning rates) cannot stack; use data.length_grouping=bucket or "
         "data.packing=true for a grid")
    need(not d.stratify_labels or not d.packing,
         "data.stratify_labels=true deals out padded batches but data.packing=true packs rows; set one of them")
    need(not d.stratify_labels or d.length_grouping != "megabatch",
         "data.stratify_labels=true is undone by data.length_grouping=megabatch, which sorts each mega-batch by length; "
         "use it with bucket or none")
    need(not d.carry_leftovers or (d.length_grouping == "bucket" and not d.packing),
         "data.carry_leftovers=true moves examples between length buckets, so it needs data.length_grouping=bucket "
         "and data.packing=false")
    for key in ("max_train_samples", "max_eval_samples"):
        limit = getattr(d, key)
        need(limit is None or limit >= 1, f"data.{key}={limit} must be at least 1; unset it to use every row")
    if d.bucket_boundaries is not None:
        b = d.bucket_boundaries
        need(len(b) > 0 and all(x > 0 for x in b) and b == sorted(set(b)),
             f"data.bucket_boundaries={b} must be increasing positive lengths, e.g. [32,64,128]")
    need(d.text_columns is None or 1 <= len(d.text_columns) <= 2,
         "data.text_columns takes one or two columns, e.g. data.text_columns=[sentence1,sentence2]")
    need(d.problem_type in (None, "single_label", "multi_label", "regression"),
         f"data.problem_type='{d.problem_type}' is not known; use single_label, multi_label, regression or null (detect)")
    need(bool(d.label_separator.strip()) or d.label_separator == "\t",
         f"data.label_separator={d.label_separator!r} must be a visible character such as , or |")
    need(0 <= t.label_smoothing < 1, f"train.label_smoothing={t.label_smoothing} must be in [0, 1)")
    need(not (t.label_smoothing and d.problem_type in ("multi_label", "regression")),
         f"train.label_smoothing applies to single-label classification, not data.problem_type={d.problem_type}; unset one")
    need(not (t.class_weights is not None and d.problem_type in ("multi_label", "regression")),
         f"train.class_weights applies to single-label classification, not data.problem_type={d.problem_type}; unset one")
    cw = t.class_weights
    need(cw is None or cw == "balanced" or (isinstance(cw, list) and len(cw) > 0 and
                                            all(isinstance(w, (int, float)) and w > 0 for w in cw)),
         f"train.class_weights={cw} must be balanced or a list of positive weights, one per class, e.g. [1.0,3.0]")
    need(0 < cfg.predict.threshold < 1, f"predict.threshold={cfg.predict.threshold} must be between 0 and 1")
    need(t.batch_size >= 1, "train.batch_size must be >= 1")
    need(t.eval_batch_size is None or t.eval_batch_size >= 1, "train.eval_batch_size must be >= 1")
    need(t.epochs > 0 or (t.max_steps or 0) > 0, "train.epochs must be > 0 (or set train.max_steps)")
    need(t.max_steps is None or t.max_steps >= 1, "train.max_steps must be >= 1 (or null to use train.epochs)")
    rates = t.learning_rate if isinstance(t.learning_rate, list) else [t.learning_rate]
    need(len(rates) > 0 and all(r > 0 for r in rates), f"train.learning_rate={t.learning_rate} must be > 0 (or a list of such)")
    need(len(set(rates)) == len(rates), f"train.learning_rate={t.learning_rate} lists a rate twice; list each once")
    need(t.seeds is None or (len(t.seeds) > 0 and len(set(t.seeds)) == len(t.seeds)),
         f"train.seeds={t.seeds} must list distinct seeds, e.g. [42,43,44], or be null")
    need(0 <= t.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)")
    _validate_optimizer(t, rates, need)
    need(t.log_every_steps >= 1, "train.log_every_steps must be >= 1")
    need(t.eval_every_steps is None or t.eval_every_steps >= 1, "train.eval_every_steps must be >= 1 or null")
    need(t.early_stopping_patience is None or t.early_stopping_patience >= 1,
         f"train.early_stopping_patience={t.early_stopping_patience} must be >= 1 (or null: no early stopping)")
    need(t.early_stopping_threshold >= 0,
         f"train.early_stopping_threshold={t.early_stopping_threshold} must be >= 0 (an absolute improvement)")
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
    need(c.export in ("best", "final", "all", "none"), f"checkpoint.export='{c.export}' must be best, final, all or none")
    need(c.best_metric is None or c.best_metric.startswith("eval_"),
         f"checkpoint.best_metric='{c.best_metric}' must be an eval metric such as eval_accuracy or eval_loss")
    for axis in ("replica", "data", "fsdp", "tensor"):
        size = getattr(cfg.mesh, axis)
        need(size == -1 or size >= 1, f"mesh.{axis}={size} must be a positive size or -1")
    replicas = len(t.seeds or [t.seed]) * len(rates)
    need(cfg.mesh.replica in (1, -1) or replicas % cfg.mesh.replica == 0,
         f"mesh.replica={cfg.mesh.replica} must divide the grid's {replicas} replicas (train.seeds x learning rates)")


def _validate_optimizer(t: TrainConfig, rates: list, need) -> None:
    """The optimizer, the schedule and the keys only some of them read."""
    need(t.optimizer in OPTIMIZERS, f"train.optimizer='{t.optimizer}' is not supported; use one of {', '.join(OPTIMIZERS)}")
    need(t.lr_schedule in LR_SCHEDULES,
         f"train.lr_schedule='{t.lr_schedule}' is not supported; use one of {', '.join(LR_SCHEDULES)}")
    defaults = {f.name: _default(f) for f in dataclasses.fields(TrainConfig)}
    for key, (kind, readers) in USED_ONLY_BY.items():
        value, choice = getattr(t, key), getattr(t, kind)
        need(value == defaults[key] or choice in readers,
             f"train.{key}={value} has no effect with train.{kind}={choice}; unset it, or use train.{kind}="
             f"{' or '.join(readers)}")
    warmup_set = bool(t.warmup_steps) or t.warmup_ratio not in (0.0, defaults["warmup_ratio"])
    need(t.lr_schedule != "constant" or not warmup_set,
         "train.lr_schedule=constant ignores warmup (as Hugging Face's does); use constant_with_warmup, "
         "or unset train.warmup_steps and train.warmup_ratio")
    need(t.warmup_steps is None or t.warmup_steps >= 0, "train.warmup_steps must be >= 0 (or null to use warmup_ratio)")
    need(t.num_cycles is None or t.num_cycles > 0, f"train.num_cycles={t.num_cycles} must be > 0 (or null: HF's default)")
    need(t.power > 0, f"train.power={t.power} must be > 0")
    need(t.lr_end >= 0, f"train.lr_end={t.lr_end} must be >= 0")
    need(t.lr_schedule != "polynomial" or t.lr_end < min(rates),
         f"train.lr_end={t.lr_end} must be below train.learning_rate={t.learning_rate} (polynomial decays from the "
         "peak to lr_end)")
    need(0 <= t.momentum < 1, f"train.momentum={t.momentum} must be in [0, 1)")
    need(t.layer_lr_decay is None or 0 < t.layer_lr_decay <= 1,
         f"train.layer_lr_decay={t.layer_lr_decay} must be in (0, 1] (1: every layer at the full rate), or null for off")


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
