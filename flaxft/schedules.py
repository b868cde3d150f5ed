"""Learning-rate schedules: Hugging Face's (`transformers.get_scheduler`) step for step, times the peak rate.

Written in jnp rather than as LambdaLR multipliers so that the peak may be a traced scalar: a grid
(flaxft.grid) builds each replica's schedule inside its vmapped train step. Every schedule but `constant`
starts with HF's linear warmup, step / max(1, warmup), while step < warmup.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

HALF_WAVE, ONE_RESTART = 0.5, 1.0  # HF's num_cycles defaults: cosine, cosine_with_restarts


def _after_warmup(name: str, step, peak, warmup: int, total: int, num_cycles, lr_end: float, power: float):
    """The rate from the end of warmup on (HF's formulas, in float32)."""
    span = max(1, total - warmup)
    progress = (step - warmup) / span
    if name == "linear":
        return peak * jnp.maximum(0.0, (total - step) / span)
    if name == "cosine":
        cycles = HALF_WAVE if num_cycles is None else num_cycles
        return peak * jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * cycles * 2.0 * progress)))
    if name == "cosine_with_restarts":
        cycles = ONE_RESTART if num_cycles is None else num_cycles
        # (cycles * progress) % 1 as a remainder of step counts, so a restart lands exactly on its step
        phase = jnp.mod(cycles * (step - warmup), span) / span
        return jnp.where(progress >= 1.0, 0.0, peak * 0.5 * (1.0 + jnp.cos(jnp.pi * phase)))
    if name == "polynomial":
        # HF: lr_end past the last step; clipping the remaining fraction at 0 gives the same
        remaining = jnp.clip(1.0 - progress, 0.0, 1.0)
        return (peak - lr_end) * remaining**power + lr_end
    if name == "inverse_sqrt":
        timescale = warmup or 10_000  # HF's default timescale
        return peak / jnp.sqrt((step + timescale - warmup) / timescale)
    if name == "constant_with_warmup":
        return peak * jnp.ones_like(step)
    raise ValueError(f"internal error: no schedule '{name}'")


def hf_schedule(name: str, peak, warmup: int, total: int, *, num_cycles=None, lr_end: float = 1e-7,
                power: float = 1.0) -> optax.Schedule:
    """step -> learning rate, equal to transformers.get_scheduler(name, optimizer with lr=peak, warmup, total,
    scheduler_specific_kwargs) at every step. `constant` ignores warmup, as HF's does."""
    def schedule(count):
        step = jnp.asarray(count, jnp.float32)
        if name == "constant":
            return peak * jnp.ones_like(step)
        warm = peak * step / max(1, warmup)
        return jnp.where(step < warmup, warm,
                         _after_warmup(name, step, peak, warmup, total, num_cycles, lr_end, power))
    return schedule
