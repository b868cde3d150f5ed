"""What training and prediction share: the mesh, the model (family, config, module) and the prepared data.

Everything that can fail on bad input fails here, before anything is written or compiled.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional

import jax
import numpy as np

from flaxft import storage
from flaxft.config import Config
from flaxft.data.prepare import RunData, prepare
from flaxft.data.sources import RawData, load_splits
from flaxft.data.tokenize import load_tokenizer
from flaxft.errors import FlaxftError
from flaxft.hub import resolve_model
from flaxft.losses import SINGLE_LABEL, Objective, balanced_class_weights
from flaxft.model import EncoderConfig, build, family_of, read_config
from flaxft.model.registry import Family
from flaxft.parallel import check_batch_size, make_mesh


@dataclasses.dataclass
class RunSetup:
    config: Config
    output_dir: Any                      # epath.Path: a local folder or gs://bucket/run
    mesh: jax.sharding.Mesh
    model_dir: pathlib.Path
    model_config: EncoderConfig
    family: Family
    module: Any                          # the family's flax module
    data: RunData
    objective: Objective                 # the loss: problem type, label smoothing, class weights

    @property
    def eval_batch_size(self) -> int:
        return self.config.train.eval_batch_size or self.config.train.batch_size


def set_up_run(cfg: Config, raw: Optional[RawData] = None, *, trained_boundaries: Optional[list[int]] = None,
               training: bool = True) -> RunSetup:
    """Mesh, model and data for `cfg`; `raw` replaces data loading, `trained_boundaries` keeps a trained model's
    buckets (prediction)."""
    mesh = make_mesh(cfg.mesh)
    if training:
        check_batch_size(cfg.train.batch_size, mesh, micro_batches=cfg.train.grad_accum_steps)
    check_batch_size(cfg.train.eval_batch_size or cfg.train.batch_size, mesh, "train.eval_batch_size")
    model_dir = resolve_model(cfg.model.name_or_path)
    model_config = read_config(model_dir)
    raw = raw if raw is not None else load_splits(cfg.data)
    if training and "train" not in raw.splits:
        raise FlaxftError("no training split; set data.train_file (or data.path to a GLUE task folder)")
    tokenizer = load_tokenizer(model_dir)
    check_model_fits(cfg, model_config, tokenizer)
    family = family_of(model_config)
    objective = objective_of(cfg, raw)
    data = prepare(cfg.data, cfg.train.batch_size, raw, tokenizer, token_type_ids=family.token_type_ids,
                   trained_boundaries=trained_boundaries)
    module = build(model_config, raw.num_labels, dtype=cfg.train.dtype, remat=cfg.model.remat)
    return RunSetup(cfg, storage.path(cfg.output_dir), mesh, model_dir, model_config, family, module, data, objective)


def objective_of(cfg: Config, raw: RawData) -> Objective:
    """The run's loss. Balanced class weights come from the training labels; without a training split
    (prediction) they are left out, so a test loss there is unweighted."""
    weights, problem = cfg.train.class_weights, raw.problem_type
    if weights is not None and problem != SINGLE_LABEL:
        raise FlaxftError(f"train.class_weights applies to single-label classification, and these labels are "
                          f"{problem}; unset train.class_weights")
    if cfg.train.label_smoothing and problem != SINGLE_LABEL:
        raise FlaxftError(f"train.label_smoothing applies to single-label classification, and these labels are "
                          f"{problem}; unset train.label_smoothing")
    if weights == "balanced":
        train = raw.splits.get("train")
        weights = None if train is None else balanced_class_weights(np.asarray(train["label"]), raw.label_names)
    elif weights is not None and len(weights) != raw.num_labels:
        raise FlaxftError(f"train.class_weights has {len(weights)} weights for {raw.num_labels} classes "
                          f"({', '.join(raw.label_names)}); give one per class, in that order")
    return Objective(problem, raw.num_labels, cfg.train.label_smoothing,
                     None if weights is None else tuple(float(w) for w in weights))


def check_model_fits(cfg: Config, model_config: EncoderConfig, tokenizer) -> None:
    """The inputs' limits that depend on the model: sequence length and vocabulary."""
    if cfg.data.max_seq_length > model_config.max_length:
        raise FlaxftError(f"data.max_seq_length={cfg.data.max_seq_length} exceeds the model's "
                          f"{model_config.max_length} positions; lower data.max_seq_length")
    largest = max(tokenizer.get_vocab().values())
    if largest >= model_config.vocab_size:
        raise FlaxftError(f"the tokenizer has token ids up to {largest} but the model's embedding table has "
                          f"{model_config.vocab_size} rows; use the tokenizer saved with the checkpoint")
