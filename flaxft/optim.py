"""AdamW with linear warmup then linear decay, global-norm clipping, and no decay on biases/LayerNorm."""

from __future__ import annotations

import jax
import optax

from flaxft.config import TrainConfig


def warmup_linear_decay(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """0 -> peak over warmup_steps, then peak -> 0 at total_steps (Hugging Face's "linear" schedule)."""
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup_steps, 1)),
         optax.linear_schedule(peak, 0.0, max(total_steps - warmup_steps, 1))],
        boundaries=[warmup_steps])


def decay_mask(params):
    """Decay kernels and embeddings; skip biases and LayerNorm scales (as BERT and the HF course do)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) in ("kernel", "embedding"), params)


def warmup_steps_for(cfg: TrainConfig, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total_steps)


def make_optimizer(cfg: TrainConfig, total_steps: int, learning_rate=None) -> tuple[optax.GradientTransformation,
                                                                                   optax.Schedule]:
    """The optimizer and its schedule peaking at `learning_rate` (default cfg.learning_rate; a grid passes each
    replica's rate, a traced scalar inside its vmapped step)."""
    peak = cfg.learning_rate if learning_rate is None else learning_rate
    if isinstance(peak, list):
        raise ValueError("internal error: a list of learning rates is a grid; pass one replica's rate")
    schedule = warmup_linear_decay(peak, warmup_steps_for(cfg, total_steps), total_steps)
    adamw = optax.adamw(schedule, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps,
                        weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw), schedule
    return adamw, schedule
