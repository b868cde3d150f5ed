"""The Trainer: config -> data -> model -> sharded, jitted steps -> train / evaluate / predict.

A Python API in the spirit of the Hugging Face Trainer (train, evaluate, predict, a compute_metrics
hook) on top of pure step functions. The host stays out of the hot loop: batches are prepared
ahead on a thread, and device values reach the host only at log and evaluation points.

Runs are resumable: checkpoints (flaxft.checkpoint) hold the whole TrainState, and the data position
is the step alone, so a rerun on the same output_dir continues exactly where the last checkpoint was.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import pathlib
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from flaxft import metrics as glue_metrics
from flaxft import storage
from flaxft.checkpoint import (
    CHECKPOINTS,
    Checkpoints,
    abstract,
    default_best_metric,
    locate,
)
from flaxft.config import Config
from flaxft.data import buckets, packing
from flaxft.data.loading import RawData, load_splits
from flaxft.data.pipeline import device_batches
from flaxft.data.tokenize import TokenizedSplit, load_tokenizer, tokenize_split
from flaxft.errors import FlaxftError
from flaxft.export import EXPORT, export_model
from flaxft.host_memory import INSTALL_HINT, host_allocator
from flaxft.hub import resolve_model
from flaxft.model import build, family_of, load_pretrained, param_shapes, read_config
from flaxft.monitoring import CompileCounter, PreemptionGuard, Tally, enable_compilation_cache
from flaxft.optim import make_optimizer
from flaxft.parallel import batch_sharding, check_batch_size, data_parallel_size, make_mesh, tree_shardings
from flaxft.reporting import RunWriter, write_json
from flaxft.steps import TrainState, eval_step, train_step

log = logging.getLogger("flaxft")

BATCH_KEYS = {"input_ids": np.int32, "token_type_ids": np.int32, "attention_mask": np.int32,
              "weights": np.float32}
PACKED_KEYS = {"segment_ids": np.int32, "position_ids": np.int32, "cls_index": np.int32}
PER_EXAMPLE = ("weights", "cls_index", "labels")  # [rows], or [rows, slots] when packed; the rest is [rows, length]


@dataclasses.dataclass
class EvalPrediction:
    """What a compute_metrics hook receives (same fields as transformers.EvalPrediction)."""
    predictions: np.ndarray   # logits [n, num_labels]
    label_ids: np.ndarray


@dataclasses.dataclass
class PredictionOutput:
    predictions: np.ndarray    # class ids, or regression values
    logits: np.ndarray         # [n, num_labels]
    probabilities: Optional[np.ndarray]  # softmax of logits (classification only)
    label_ids: Optional[np.ndarray]
    metrics: dict[str, float]


class Trainer:
    """Fine-tune a BERT classifier/regressor.

    >>> trainer = Trainer(load_config("configs/glue/mrpc.yaml", ["data.path=../shared/data/glue/MRPC"]))
    >>> summary = trainer.train()
    >>> trainer.evaluate()["eval_accuracy"]

    `raw` replaces data loading with your own splits (see flaxft.data.loading.from_datasets);
    `compute_metrics(EvalPrediction) -> dict` adds (or overrides) evaluation metrics.
    If output_dir holds checkpoints, the Trainer starts from the latest (train() then continues the run).
    Everything that can fail on bad input fails here, before anything is written.

    `predict_only=True` (used by flaxft.predict) needs no training split and builds no optimizer;
    `boundaries` are then the trained buckets and `params_from=(Checkpoints, step)` supplies the weights.
    """

    def __init__(self, config: Config, *, raw: Optional[RawData] = None,
                 compute_metrics: Optional[Callable[[EvalPrediction], dict]] = None, predict_only: bool = False,
                 boundaries: Optional[list[int]] = None, params_from: Optional[tuple[Checkpoints, int]] = None):
        self.config = cfg = config
        self.compute_metrics = compute_metrics
        self.predict_only = predict_only
        self.output_dir = storage.path(cfg.output_dir)  # a local folder or gs://bucket/run
        enable_compilation_cache(cfg.train.compilation_cache)
        self.mesh = make_mesh(cfg.mesh)
        if not predict_only:
            check_batch_size(cfg.train.batch_size, self.mesh, micro_batches=cfg.train.grad_accum_steps)
        self.eval_batch_size = cfg.train.eval_batch_size or cfg.train.batch_size
        check_batch_size(self.eval_batch_size, self.mesh, "train.eval_batch_size")

        self.model_dir = resolve_model(cfg.model.name_or_path)
        self.raw = raw if raw is not None else load_splits(cfg.data)
        if "train" not in self.raw.splits and not predict_only:
            raise FlaxftError("no training split; set data.train_file (or data.path to a GLUE task folder)")
        self.tokenizer = load_tokenizer(self.model_dir)
        self.splits: dict[str, TokenizedSplit] = {
            name: tokenize_split(ds, self.raw.text_columns, self.tokenizer, cfg.data.max_seq_length, cfg.data.cache_dir)
            for name, ds in self.raw.splits.items()}
        self.boundaries = self._choose_buckets(boundaries)

        if params_from is not None:  # predict from a checkpoint: no need to read the pretrained weights
            self.model_config, params = read_config(self.model_dir), None
        else:
            self.model_config, params = load_pretrained(
                self.model_dir, self.raw.num_labels, rng=jax.random.key(cfg.train.seed), random_init=cfg.model.random_init)
        if cfg.data.max_seq_length > self.model_config.max_length:
            raise FlaxftError(f"data.max_seq_length={cfg.data.max_seq_length} exceeds the model's "
                              f"{self.model_config.max_length} positions; lower data.max_seq_length")
        self.family = family_of(self.model_config)
        self.model = build(self.model_config, self.raw.num_labels, dtype=cfg.train.dtype, remat=cfg.model.remat)
        self._train_execs: dict[int, Any] = {}
        self._eval_execs: dict[int, Any] = {}
        self.compile_seconds = 0.0
        self.resumed_step: Optional[int] = None

        if predict_only:
            if params_from is not None:
                params = self._restore_params(*params_from)
            self.state = self._init_state(params, with_optimizer=False)
            return
        self.packing = self._pack() if cfg.data.packing else None
        self.steps_per_epoch = len(self._train_plan(0))
        self.total_steps = cfg.train.max_steps or math.ceil(cfg.train.epochs * self.steps_per_epoch)
        self.tx, self.schedule = make_optimizer(cfg.train, self.total_steps)
        self.state = self._init_state(params)
        c = cfg.checkpoint
        self.best_metric = c.best_metric or default_best_metric(self.raw.task, self.raw.is_regression)
        self.checkpoints = Checkpoints(self.output_dir / CHECKPOINTS, keep=c.keep, best_metric=self.best_metric,
                                       async_save=c.async_save)
        self._resume()

    # ------------------------------------------------------------------ set-up

    def _choose_buckets(self, trained: Optional[list[int]] = None) -> list[int]:
        d = self.config.data
        longest = max(int(s.lengths.max()) for s in self.splits.values() if len(s))
        if trained:  # prediction: the trained buckets, plus one more if these inputs are longer
            top = int(buckets.round_up(longest, d.pad_to_multiple_of))
            return list(trained) + ([top] if top > trained[-1] else [])
        if d.bucket_boundaries:
            return list(d.bucket_boundaries)  # buckets.assign reports an example longer than the last
        top = int(min(buckets.round_up(longest, d.pad_to_multiple_of), max(d.max_seq_length, longest)))
        lengths = self.splits["train"].lengths if "train" in self.splits else np.concatenate(
            [s.lengths for s in self.splits.values()])
        return buckets.choose_boundaries(lengths, d.num_buckets, self.config.train.batch_size, d.pad_to_multiple_of,
                                         top)

    def _pack(self) -> dict:
        """The packed shape: row length, slots and rows per step (every epoch re-packs; see flaxft.data.packing)."""
        d, t = self.config.data, self.config.train
        length = d.packed_length or int(buckets.round_up(d.max_seq_length, d.pad_to_multiple_of))
        packed = packing.pack(self.splits["train"].lengths, length, d.max_examples_per_row, seed=t.seed)
        rows = packing.rows_per_step(packed, t.batch_size, data_parallel_size(self.mesh) * t.grad_accum_steps)
        info = {"packed_length": length, "max_examples_per_row": d.max_examples_per_row, "packed_rows_per_step": rows,
                "examples_per_step_mean": len(self.splits["train"]) / len(packed) * rows}
        log.info("packing: %d training examples in %d rows of %d tokens; %d rows (about %.1f examples) per step",
                 len(self.splits["train"]), len(packed), length, rows, info["examples_per_step_mean"])
        return info

    def _train_plan(self, epoch: int) -> list[buckets.Batch]:
        t = self.config.train
        if self.packing:
            return packing.plan_epoch(self.splits["train"].lengths, self.packing["packed_length"],
                                      self.packing["max_examples_per_row"], self.packing["packed_rows_per_step"],
                                      seed=t.seed, epoch=epoch)
        return buckets.plan_batches(self.splits["train"].lengths, self.boundaries, t.batch_size,
                                    shuffle=True, seed=t.seed, epoch=epoch)

    def _init_state(self, params, with_optimizer: bool = True) -> TrainState:
        replicated = NamedSharding(self.mesh, P())
        param_sh = tree_shardings(self.mesh, params, self.family.partition_rules)
        params = jax.device_put(params, param_sh)
        if with_optimizer:
            opt_shapes = jax.eval_shape(self.tx.init, params)
            opt_sh = tree_shardings(self.mesh, opt_shapes, self.family.partition_rules)
            opt_state = jax.jit(self.tx.init, out_shardings=opt_sh)(params)
        else:
            opt_sh = opt_state = ()
        rng = jax.random.key_data(jax.random.fold_in(jax.random.key(self.config.train.seed), 1))
        self.state_sharding = TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated)
        self.batch_sharding = batch_sharding(self.mesh)
        return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=params,
                          opt_state=opt_state, rng=jax.device_put(rng, replicated))

    def _restore_params(self, checkpoints: Checkpoints, step: int):
        """Params saved at `step`, placed on this mesh (restored straight into their shardings)."""
        shapes = traverse_util.unflatten_dict(param_shapes(self.model_config, self.raw.num_labels))
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                              shapes, tree_shardings(self.mesh, shapes, self.family.partition_rules))
        return checkpoints.restore_params(step, target)

    # ------------------------------------------------------------------ checkpoints

    def _meta(self, step: int, metrics: dict) -> dict:
        """What a checkpoint records besides the arrays: the data position, the config, labels, buckets."""
        raw = self.raw
        return {
            "step": step, "epoch": step // self.steps_per_epoch, "batch_in_epoch": step % self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "train_examples": len(self.splits["train"]), "metrics": metrics,
            "task": raw.task.name if raw.task else None, "label_names": list(raw.label_names or []) or None,
            "is_regression": raw.is_regression, "num_labels": raw.num_labels, "text_columns": list(raw.text_columns),
            "buckets": self.boundaries, "packing": self.packing, "num_devices": jax.device_count(),
            "mesh": dict(self.mesh.shape),
            "model_config": self.model_config.to_hf(), "config": self.config.to_dict(),
        }

    def _resume(self) -> None:
        """Continue from output_dir's latest checkpoint; else from checkpoint.resume_from (a new run from
        another run's checkpoint: once this run has checkpoints of its own, reruns resume from those)."""
        source, step = self.checkpoints, self.checkpoints.latest_step()
        if step is None and self.config.checkpoint.resume_from:
            directory, step = locate(self.config.checkpoint.resume_from)
            source = Checkpoints(directory, read_only=True)
            step = source.latest_step() if step is None else step
            if step is None or step not in source.steps():
                raise FlaxftError(f"checkpoint.resume_from: no finished checkpoint in "
                                  f"'{self.config.checkpoint.resume_from}'")
        if step is None:
            return
        meta = source.read_meta(step)
        self._check_compatible(meta, source.path(step))
        self.state = source.restore(step, self.state)
        self.resumed_step = int(self.state.step)
        log.info("resuming from %s: step %d (epoch %d, batch %d of %d)", source.path(step), self.resumed_step,
                 meta["epoch"] + 1, meta["batch_in_epoch"], self.steps_per_epoch)

    def _check_compatible(self, meta: dict, where: pathlib.Path) -> None:
        """Refuse a checkpoint whose run differs in what the arrays or the data order depend on."""
        raw, t = self.raw, self.config.train
        saved_t = meta.get("config", {}).get("train", {})
        ours = {"task": raw.task.name if raw.task else None, "label_names": list(raw.label_names or []) or None,
                "num_labels": raw.num_labels, "train.batch_size": t.batch_size, "train.seed": t.seed,
                "data.max_seq_length": self.config.data.max_seq_length,
                "buckets": self.boundaries, "packing": self.packing, "train_examples": len(self.splits["train"]),
                "steps_per_epoch": self.steps_per_epoch, "model_config": self.model_config.to_hf()}
        theirs = {**meta, "train.batch_size": saved_t.get("batch_size"), "train.seed": saved_t.get("seed"),
                  "data.max_seq_length": meta.get("config", {}).get("data", {}).get("max_seq_length")}
        for key, value in ours.items():
            if theirs.get(key) != value:
                shown = "a different model" if key == "model_config" else f"{key}={theirs.get(key)}, not {value}"
                raise FlaxftError(f"checkpoint '{where}' was saved with {shown}; rerun with the settings it was "
                                  "saved with, or use a new output_dir to start over")
        if meta.get("total_steps") != self.total_steps:
            log.warning("the checkpoint's run had %s steps, this one has %d: the learning-rate schedule changes",
                        meta.get("total_steps"), self.total_steps)

    def _save(self, step: int, metrics: dict) -> None:
        start = time.perf_counter()
        if self.checkpoints.save(step, self.state, self._meta(step, metrics), metrics):
            seconds = time.perf_counter() - start
            self.checkpoint_seconds += seconds
            log.info("checkpoint at step %d %s(%.2f s blocking)", step, "with metrics " if metrics else "", seconds)

    def _trim_metrics_log(self, step: int) -> None:
        """Drop metrics.jsonl events past the resumed step: the rerun logs them again."""
        path = self.output_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                pass  # a line cut short by a killed process
        storage.write_text(path, "".join(kept))

    def export(self, folder: Optional[str | pathlib.Path] = None, which: Optional[str] = None):
        """Write the best (by checkpoint.best_metric) or final model in Hugging Face format (to output_dir/export)."""
        which = which or self.config.checkpoint.export
        folder = storage.path(folder) if folder else self.output_dir / EXPORT
        params, step, metrics = self.state.params, int(self.state.step), {}
        if which == "best":
            self.checkpoints.wait()
            best = self.checkpoints.best_step()
            if best is not None:
                metrics = self.checkpoints.read_meta(best)["metrics"]
                if best != step:
                    params, step = self.checkpoints.restore_params(best, abstract(self.state.params)), best
        info = {k: v for k, v in self._meta(step, metrics).items() if k not in ("model_config", "num_devices", "mesh")}
        export_model(folder, params, self.model_config, label_names=self.raw.label_names,
                     is_regression=self.raw.is_regression, tokenizer=self.tokenizer, info=info)
        why = f"best by {self.best_metric}={metrics[self.best_metric]:.4f}" if metrics else "final"
        log.info("exported the model of step %d (%s) to %s", step, why, folder)
        return folder

    def _batch_spec(self, rows: int, length: int, regression: bool, slots: Optional[int] = None) -> dict:
        """Abstract batch: per-example arrays are [rows], or [rows, slots] for packed rows."""
        per_example = (rows,) if slots is None else (rows, slots)
        keys = {**BATCH_KEYS, **PACKED_KEYS} if slots else dict(BATCH_KEYS)
        keys["labels"] = np.float32 if regression else np.int32
        return {k: jax.ShapeDtypeStruct(per_example if k in PER_EXAMPLE else (rows, length), dt,
                                        sharding=self.batch_sharding) for k, dt in keys.items()}

    def _compile(self, cache: dict, length: int, build: Callable[[], tuple]) -> Any:
        """Ahead-of-time compile per bucket length: a shape outside the buckets is an error, never a recompile.

        `build() -> (jitted, *abstract_args)` runs only on a miss, so the hot loop pays a dict lookup.
        """
        if length not in cache:
            start = time.perf_counter()
            jitted, *args = build()
            cache[length] = jitted.lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return cache[length]

    def _train_exec(self, length: int):
        def build():
            step = functools.partial(train_step, model=self.model, tx=self.tx, schedule=self.schedule,
                                     is_regression=self.raw.is_regression,
                                     grad_accum_steps=self.config.train.grad_accum_steps,
                                     dropout_rng=self.config.train.dropout_rng)
            jitted = jax.jit(step, in_shardings=(self.state_sharding, self.batch_sharding),
                             out_shardings=(self.state_sharding, NamedSharding(self.mesh, P())), donate_argnums=(0,))
            if self.packing:
                spec = self._batch_spec(self.packing["packed_rows_per_step"], length, self.raw.is_regression,
                                        self.packing["max_examples_per_row"])
            else:
                spec = self._batch_spec(self.config.train.batch_size, length, self.raw.is_regression)
            return jitted, abstract(self.state), spec
        return self._compile(self._train_execs, length, build)

    def _eval_exec(self, length: int):
        def build():
            # Per-example outputs stay split like the batch rows: the host reads the shards, and no all-gather
            # runs on the devices (XLA:CPU's in-process all-gather could stall for good, in tests, while other
            # programs were queued). Several processes need every row on each host: replicate there.
            rows = self.batch_sharding if jax.process_count() == 1 else NamedSharding(self.mesh, P())
            jitted = jax.jit(functools.partial(eval_step, model=self.model, is_regression=self.raw.is_regression),
                             in_shardings=(self.state_sharding.params, self.batch_sharding), out_shardings=rows)
            return jitted, abstract(self.state.params), self._batch_spec(self.eval_batch_size, length,
                                                                         self.raw.is_regression)
        return self._compile(self._eval_execs, length, build)

    # ------------------------------------------------------------------ training

    def _train_batches(self, start_step: int):
        """(epoch, planned batch, device batch) from `start_step` on: the data position is the step alone,
        since each epoch's plan is a pure function of (seed, epoch) with a fixed number of batches."""
        train = self.splits["train"]
        for epoch in range(start_step // self.steps_per_epoch, math.ceil(self.total_steps / self.steps_per_epoch)):
            first = epoch * self.steps_per_epoch
            plan = self._train_plan(epoch)[max(start_step - first, 0):self.total_steps - first]
            for b, batch in zip(plan, device_batches(train, plan, self.batch_sharding, self.config.train.prefetch)):
                yield epoch, b, batch

    def train(self) -> dict[str, Any]:
        """Train to the end (or until SIGTERM), checkpointing on the way; returns the summary.

        After SIGTERM it saves a checkpoint at the next step boundary and returns
        {"preempted": True, "global_step": N} without a summary.json: rerunning continues the run.
        """
        t, c = self.config.train, self.config.checkpoint
        step = int(self.state.step)
        done = self.output_dir / "summary.json"
        if step == self.total_steps and done.is_file():
            log.info("this run had already finished (%s); nothing to do", done)
            return json.loads(done.read_text(encoding="utf-8"))
        (self.output_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:
            storage.write_text(self.output_dir / "config.yaml", self.config.to_yaml())
            if self.resumed_step is None:
                (self.output_dir / "metrics.jsonl").unlink(missing_ok=True)
            else:
                self._trim_metrics_log(step)
        writer = RunWriter(self.output_dir)
        log.info("training %d steps (%d per epoch) on %d devices %s; %s", self.total_steps,
                 self.steps_per_epoch, jax.device_count(), dict(self.mesh.shape),
                 f"packed rows of {self.packing['packed_length']}" if self.packing else f"buckets {self.boundaries}")
        if jax.default_backend() == "cpu" and host_allocator() == "system":
            log.info("host allocator: glibc malloc, which page-faults XLA:CPU's step buffers back in every step; "
                     "CPU steps run about 15%% faster on tcmalloc: %s (the flaxft commands then preload it)", INSTALL_HINT)
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=step, desc="train", unit="step",
                   disable=jax.process_index() != 0, dynamic_ncols=True, mininterval=2.0)
        tally = Tally(self.splits["train"].lengths)
        first_step_seconds = None
        pending: list[dict] = []      # device metrics not yet read: read at log points only
        eval_metrics: dict[str, float] = {}
        self.checkpoint_seconds = 0.0
        preempted = False
        try:
            with CompileCounter() as compiles, PreemptionGuard() as sigterm:
                for epoch, b, batch in self._train_batches(step):
                    self.state, m = self._train_exec(b.length)(self.state, batch)
                    pending.append(m)
                    if first_step_seconds is None:  # one sync, for time-to-first-step (load + compile + step)
                        jax.block_until_ready(m)
                        first_step_seconds = tally.train_seconds()
                    tally.add(b)
                    step += 1
                    bar.update(1)
                    if step % t.log_every_steps == 0 or step == self.total_steps:
                        self._log_train(step, epoch, pending, writer, bar, tally.examples / tally.train_seconds())
                        pending = []
                    last = step == self.total_steps
                    end_of_epoch = step % self.steps_per_epoch == 0
                    evaluated = end_of_epoch or last or bool(t.eval_every_steps and step % t.eval_every_steps == 0)
                    if evaluated:
                        with tally.pause():  # evaluation time is not training time
                            eval_metrics = self._evaluate_all(step, epoch + 1, writer)
                    preempted = not last and (sigterm.requested or self.checkpoints.reached_preemption(step))
                    if preempted:
                        log.warning("preemption notice (SIGTERM): saving a checkpoint at step %d, then stopping", step)
                    if end_of_epoch or last or preempted or (c.every_steps and step % c.every_steps == 0):
                        with tally.pause():  # only the device-to-host copy blocks; the write is in the background
                            self._save(step, eval_metrics if evaluated else {})
                    if preempted:
                        break
        finally:
            bar.close()  # ends the bar's line, so an error message starts on its own line
            self.checkpoints.wait()  # a checkpoint being written is committed before we stop, whatever happened
        if preempted:
            writer.close()
            log.warning("preempted at step %d; checkpoint saved in %s; rerun the same command to resume",
                        step, self.checkpoints.path(step))
            return {"preempted": True, "global_step": step}
        train_seconds = tally.train_seconds()
        if not eval_metrics and self.resumed_step == step:  # stopped after its last checkpoint, before the summary
            eval_metrics = self.evaluate()
        export_dir = self.export() if c.export != "none" else None
        summary = {
            **eval_metrics,
            "global_step": step,
            "epochs": step / self.steps_per_epoch,
            "train_examples": len(self.splits["train"]),
            "train_seconds": train_seconds,
            "eval_seconds": tally.paused_seconds - self.checkpoint_seconds,
            "compile_seconds": self.compile_seconds,
            "first_step_seconds": first_step_seconds,
            "checkpoint_seconds": self.checkpoint_seconds,
            "train_samples_per_second": tally.examples / train_seconds,
            "train_tokens_per_second": tally.tokens / train_seconds,
            "padding_efficiency": tally.tokens / max(tally.slots, 1),
            "buckets": self.boundaries,
            **(self.packing or {}),
            "train_compilations": len(self._train_execs),
            "eval_compilations": len(self._eval_execs),
            "observed_compilations": compiles.count,
            "compile_cache_hits": compiles.cache_hits,
            "num_devices": jax.device_count(),
            "host_allocator": host_allocator(),
            "mesh": dict(self.mesh.shape),
            "task": self.raw.task.name if self.raw.task else "custom",
            "model": str(self.config.model.name_or_path),
            "resumed_from_step": self.resumed_step,
            "best_checkpoint_step": self.checkpoints.best_step(),
            "export": str(export_dir) if export_dir else None,
        }
        writer.close()
        if jax.process_index() == 0:
            write_json(self.output_dir / "summary.json", summary)
        log.info("done: %s", {k: summary[k] for k in summary if k.startswith("eval_") or k.endswith("_per_second")})
        return summary

    def _log_train(self, step: int, epoch: int, pending: list[dict], writer: RunWriter, bar, samples_per_s: float):
        host = jax.device_get(pending)  # the only host sync in the loop
        loss = float(np.mean([m["loss"] for m in host]))
        if not math.isfinite(loss):
            raise FlaxftError(f"training loss became {loss} at step {step}; lower train.learning_rate "
                              f"(now {self.config.train.learning_rate}) or check the labels and inputs")
        event = {"epoch": epoch + 1, "loss": loss, "learning_rate": float(host[-1]["learning_rate"]),
                 "grad_norm": float(np.mean([m["grad_norm"] for m in host])), "samples_per_second": samples_per_s}
        writer.write(step, event)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{event['learning_rate']:.2e}", samples_s=f"{samples_per_s:.1f}")

    # ------------------------------------------------------------------ evaluation

    def _run_eval(self, split: TokenizedSplit) -> tuple[np.ndarray, np.ndarray]:
        """Logits and losses for every example of `split`, in order; each is evaluated exactly once."""
        plan = buckets.plan_batches(split.lengths, self.boundaries, self.eval_batch_size, shuffle=False)
        outs = [self._eval_exec(b.length)(self.state.params, batch)
                for b, batch in zip(plan, device_batches(split, plan, self.batch_sharding, self.config.train.prefetch))]
        logits = np.zeros((len(split), self.raw.num_labels), np.float32)
        losses = np.zeros(len(split), np.float32)
        for b, out in zip(plan, jax.device_get(outs)):  # one host transfer for the whole split
            real = b.indices != buckets.FILLER
            logits[b.indices[real]] = out["logits"][real]
            losses[b.indices[real]] = out["loss"][real]
        return logits, losses

    def _metrics(self, logits: np.ndarray, losses: np.ndarray, labels: np.ndarray, prefix: str,
                 suffix: str = "") -> dict[str, float]:
        raw = self.raw
        preds = logits[:, 0] if raw.is_regression else logits.argmax(-1)
        if raw.task:
            kind = raw.task.metric
        else:  # custom data: the key set depends on the label set, never on what one eval split holds
            kind = "regression" if raw.is_regression else "binary" if raw.num_labels == 2 else "classification"
        values = {"loss": float(losses.mean()), **glue_metrics.compute_metrics(kind, preds, labels)}
        if self.compute_metrics is not None:
            values.update(self.compute_metrics(EvalPrediction(predictions=logits, label_ids=labels)))
        return {f"{prefix}{k}{suffix}": float(v) for k, v in values.items()}

    def evaluate(self, split: Optional[str] = None) -> dict[str, float]:
        """Metrics named eval_<metric> on the task's evaluation splits (or on `split`).

        Extra evaluation splits get a suffix, as in run_glue: MNLI mismatched gives eval_accuracy_mm.
        """
        names = [split] if split else [s for s in self.raw.eval_splits if s in self.splits]
        out: dict[str, float] = {}
        for i, name in enumerate(names):
            if name not in self.splits:
                raise FlaxftError(f"no '{name}' split to evaluate; available: {sorted(self.splits)}")
            data = self.splits[name]
            if not data.has_labels:
                raise FlaxftError(f"split '{name}' has no labels to evaluate; use predict() instead")
            suffix = "" if i == 0 else "_" + ("mm" if name.endswith("mismatched") else name)
            out.update(self._metrics(*self._run_eval(data), data.labels, "eval_", suffix))
        return out

    def _evaluate_all(self, step: int, epoch: int, writer: RunWriter) -> dict[str, float]:
        metrics = self.evaluate()
        if metrics:
            writer.write(step, {"epoch": epoch, **metrics})
            writer.flush()  # a remote output_dir gets the log and TensorBoard events now
            log.info("eval @ step %d (epoch %d): %s", step, epoch, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return metrics

    def predict(self, split: str = "test") -> PredictionOutput:
        """Predictions for a split; metrics too when it has labels."""
        if split not in self.splits:
            raise FlaxftError(f"no '{split}' split to predict; available: {sorted(self.splits)}")
        data = self.splits[split]
        logits, losses = self._run_eval(data)
        probs = None if self.raw.is_regression else scipy.special.softmax(logits, axis=-1)
        preds = logits[:, 0] if self.raw.is_regression else logits.argmax(-1)
        labels = data.labels if data.has_labels else None
        metrics = self._metrics(logits, losses, labels, "test_") if labels is not None else {}
        return PredictionOutput(preds, logits, probs, labels, metrics)
