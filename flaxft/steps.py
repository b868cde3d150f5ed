"""Pure train and eval steps over one pytree of training state.

The trainer jits these with explicit shardings (state donated); nothing here touches the host.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from flaxft.dropout_bits import dropout_key
from flaxft.losses import Objective


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs from the devices, as one checkpointable pytree."""
    step: jax.Array        # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array         # raw uint32[2] key data (checkpoint-friendly); dropout key = fold_in(rng, step)


def forward(model, params, batch, *, rng=None) -> jax.Array:
    """Logits [B, num_labels], or [B, K, num_labels] for a packed batch (one per example slot);
    dropout is active when an rng is given."""
    rngs = None if rng is None else {"dropout": rng}
    packed = {k: batch[k] for k in ("position_ids", "segment_ids", "cls_index") if k in batch}
    return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                       **packed, deterministic=rng is None, rngs=rngs)


def micro_batches(batch: dict, n: int) -> dict:
    """[B, ...] -> [n, B/n, ...] taking rows i, i+n, i+2n, ... for micro-batch i, so that every
    micro-batch is spread over all data-parallel devices (each holds a contiguous block of rows)."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def train_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
               schedule: Callable, objective: Objective, grad_accum_steps: int = 1,
               dropout_rng: str = "hash") -> tuple[TrainState, dict]:
    """One optimizer update on a global batch, optionally as a sum over micro-batches.

    The loss is the objective's mean over the real examples of the whole batch (weights: one per row, or per
    example slot [B, K] when packed; class weights as torch reduces them), so N micro-batches give the same
    update as one batch N times larger. `dropout_rng` picks how dropout masks are drawn (flaxft.dropout_bits).
    """
    step_rng = jax.random.fold_in(dropout_key(state.rng, dropout_rng), state.step)
    # the denominator depends only on the labels: the whole batch's, fixed before any micro-batch
    total_weight = jnp.maximum(jnp.sum(objective.denominators(batch["labels"]) * batch["weights"]), 1e-12)

    def loss_fn(params, micro, rng):
        logits = forward(model, params, micro, rng=rng)
        numerators, _ = objective.terms(logits, micro["labels"])
        return jnp.sum(numerators * micro["weights"]) / total_weight

    if grad_accum_steps == 1:
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, step_rng)
    else:
        def accumulate(carry, xs):
            i, micro = xs
            loss, grads = jax.value_and_grad(loss_fn)(state.params, micro, jax.random.fold_in(step_rng, i))
            return jax.tree.map(jnp.add, carry, (loss, grads)), None

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
        xs = (jnp.arange(grad_accum_steps), micro_batches(batch, grad_accum_steps))
        (loss, grads), _ = jax.lax.scan(accumulate, zeros, xs)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, *, model, objective: Objective) -> dict[str, jax.Array]:
    """Logits and each example's loss terms (numerator, denominator: flaxft.losses); the host drops filler rows."""
    logits = forward(model, params, batch)
    numerators, denominators = objective.terms(logits, batch["labels"])
    return {"logits": logits, "loss": numerators, "loss_weight": denominators}
