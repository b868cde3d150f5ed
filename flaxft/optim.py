"""The optimizer: adamw, adafactor, lion or sgd (optax's) under a Hugging Face learning-rate schedule, with
global-norm clipping, no weight decay on biases and LayerNorm, and optional layer-wise rate decay."""

from __future__ import annotations

import re

import jax
import optax

from flaxft.config import TrainConfig
from flaxft.errors import FlaxftError
from flaxft.schedules import hf_schedule


def decay_mask(params):
    """Decay kernels and embeddings; skip biases, LayerNorm scales and attention-bias tables (MPNet's relative
    position bias): the HF Trainer's rule, which skips every parameter with "bias" or a norm in its name."""
    def decayed(path, _):
        names = [str(getattr(k, "key", "")) for k in path]
        return names[-1] in ("kernel", "embedding") and not any("bias" in n for n in names)
    return jax.tree_util.tree_map_with_path(decayed, params)


def warmup_steps_for(cfg: TrainConfig, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total_steps)


def make_schedule(cfg: TrainConfig, total_steps: int, peak) -> optax.Schedule:
    return hf_schedule(cfg.lr_schedule, peak, warmup_steps_for(cfg, total_steps), total_steps,
                       num_cycles=cfg.num_cycles, lr_end=cfg.lr_end, power=cfg.power)


def _base_optimizer(cfg: TrainConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    """The optimizer proper. Weight decay is multiplied by the scheduled rate in each, as in torch/HF."""
    wd = cfg.weight_decay
    if cfg.optimizer == "adamw":
        return optax.adamw(schedule, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps, weight_decay=wd, mask=decay_mask)
    if cfg.optimizer == "lion":
        return optax.lion(schedule, b1=cfg.adam_b1, b2=cfg.adam_b2, weight_decay=wd, mask=decay_mask)
    if cfg.optimizer == "adafactor":
        # HF's Adafactor(scale_parameter=False, relative_step=False): the rate means what it says; every matrix
        # factored (min_dim_size_to_factor=1, as HF's); optax adds weight_decay_rate after the rate, so pass
        # wd x rate (HF's p -= wd * lr * p)
        return optax.adafactor(schedule, min_dim_size_to_factor=1, multiply_by_parameter_scale=False,
                               weight_decay_rate=lambda count: wd * schedule(count), weight_decay_mask=decay_mask)
    if cfg.optimizer == "sgd":
        # torch's SGD(weight_decay=): the decay joins the gradient before momentum and the rate
        return optax.chain(optax.add_decayed_weights(wd, mask=decay_mask),
                           optax.sgd(schedule, momentum=cfg.momentum or None))
    raise FlaxftError(f"train.optimizer='{cfg.optimizer}' is not supported")


_LAYER = re.compile(r"^encoder/layer_(\d+)/")
_BELOW_LAYERS = re.compile(r"^(embeddings|attention_bias)/|^encoder/relative_")  # what every layer reads
_ABOVE_LAYERS = re.compile(r"^(head|encoder/final_norm)/")


def depth(path: str, num_layers: int) -> int:
    """How many layers below the head a parameter sits: 0 for the head and anything above the last layer,
    n - i in encoder layer i of n, n + 1 for the embeddings and the tables shared by all layers (MPNet's
    relative bias, DeBERTa's relative embeddings). Parameter names are flaxft's in every family."""
    if layer := _LAYER.match(path):
        return num_layers - int(layer.group(1))
    if _BELOW_LAYERS.match(path):
        return num_layers + 1
    if _ABOVE_LAYERS.match(path):
        return 0
    raise FlaxftError(f"internal error: parameter '{path}' has no depth for train.layer_lr_decay; "
                      "add its name to flaxft.optim.depth")


def depth_scales(tree, decay: float):
    """decay ** depth for every leaf of a parameter-shaped tree (its layer count read from the leaf names)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in leaves]
    num_layers = 1 + max((int(m.group(1)) for p in paths if (m := _LAYER.match(p))), default=-1)
    return jax.tree_util.tree_unflatten(treedef, [decay ** depth(p, num_layers) for p in paths])


def scale_by_depth(tx: optax.GradientTransformation, decay: float) -> optax.GradientTransformation:
    """`tx` with each parameter's update times decay ** depth: per-layer rates. The state is tx's own, so a
    checkpoint resumes with or without the decay."""
    def update(updates, state, params=None):
        updates, state = tx.update(updates, state, params)
        return jax.tree.map(lambda u, s: u * s, updates, depth_scales(updates, decay)), state
    return optax.GradientTransformation(tx.init, update)


def make_optimizer(cfg: TrainConfig, total_steps: int, learning_rate=None) -> tuple[optax.GradientTransformation,
                                                                                   optax.Schedule]:
    """The optimizer and its schedule peaking at `learning_rate` (default cfg.learning_rate; a grid passes each
    replica's rate, a traced scalar inside its vmapped step)."""
    peak = cfg.learning_rate if learning_rate is None else learning_rate
    if isinstance(peak, list):
        raise ValueError("internal error: a list of learning rates is a grid; pass one replica's rate")
    schedule = make_schedule(cfg, total_steps, peak)
    tx = _base_optimizer(cfg, schedule)
    if cfg.max_grad_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), tx)
    if cfg.layer_lr_decay is not None:
        tx = scale_by_depth(tx, cfg.layer_lr_decay)
    return tx, schedule
