"""Pure train and eval steps over one pytree of training state.

The trainer jits these with explicit shardings (state donated); nothing here touches the host.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs from the devices, as one checkpointable pytree."""
    step: jax.Array        # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array         # raw uint32 key data (checkpoint-friendly); dropout key = fold_in(rng, step)


def forward(model, params, batch, *, rng=None) -> jax.Array:
    """Logits [B, num_labels]; dropout is active when an rng is given."""
    rngs = None if rng is None else {"dropout": rng}
    return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                       deterministic=rng is None, rngs=rngs)


def example_losses(logits: jax.Array, labels: jax.Array, is_regression: bool) -> jax.Array:
    if is_regression:
        return jnp.square(logits[:, 0] - labels.astype(jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean over real rows only: filler rows (weight 0) add nothing."""
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def train_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
               schedule: Callable, is_regression: bool) -> tuple[TrainState, dict]:
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params):
        logits = forward(model, params, batch, rng=dropout_rng)
        return weighted_mean(example_losses(logits, batch["labels"], is_regression), batch["weights"])

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, *, model, is_regression: bool) -> dict[str, jax.Array]:
    """Logits and per-example losses (the host drops filler rows)."""
    logits = forward(model, params, batch)
    return {"logits": logits, "loss": example_losses(logits, batch["labels"], is_regression)}
