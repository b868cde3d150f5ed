"""The train and eval steps compiled ahead of time, one executable per batch shape, and the shardings they
run with: state placed on the mesh by the partition rules, batch rows split over data x fsdp.

A batch shape outside the planned buckets (or packed length) is an error, never a silent recompilation;
the hot loop pays a dict lookup per step.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from flaxft.checkpoint import abstract
from flaxft.parallel import batch_sharding, tree_shardings
from flaxft.steps import TrainState, eval_step, train_step

PER_EXAMPLE = ("weights", "cls_index", "labels")  # [rows], or [rows, slots] when packed; the rest is [rows, length]


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """The arrays of a batch: which keys, and slots per row for packed rows (None: one example per row)."""
    token_type_ids: bool
    is_regression: bool
    slots: Optional[int] = None

    def dtypes(self) -> dict:
        keys = {"input_ids": np.int32, "attention_mask": np.int32, "weights": np.float32,
                "labels": np.float32 if self.is_regression else np.int32}
        if self.token_type_ids:
            keys["token_type_ids"] = np.int32
        if self.slots:
            keys.update(segment_ids=np.int32, position_ids=np.int32, cls_index=np.int32)
        return keys


class CompiledSteps:
    """Holds the mesh's shardings and compiles `train_step` / `eval_step` once per (rows, length)."""

    def __init__(self, mesh, model, rules=(), *, is_regression: bool, token_type_ids: bool):
        self.mesh, self.model, self.rules = mesh, model, rules
        self.is_regression, self.token_type_ids = is_regression, token_type_ids
        self.batch_sharding = batch_sharding(mesh)
        self.replicated = NamedSharding(mesh, P())
        self.compile_seconds = 0.0
        self._train: dict[tuple, Any] = {}
        self._eval: dict[tuple, Any] = {}
        self.state_sharding: Optional[TrainState] = None

    # ------------------------------------------------------------------ state

    def shard_state(self, params, tx=None) -> TrainState:
        """The shardings of a TrainState with these (possibly abstract) params and `tx`'s state, by the rules."""
        param_sh = tree_shardings(self.mesh, params, self.rules)
        opt_sh = () if tx is None else tree_shardings(self.mesh, jax.eval_shape(tx.init, params), self.rules)
        self.state_sharding = TrainState(step=self.replicated, params=param_sh, opt_state=opt_sh,
                                         rng=self.replicated)
        return self.state_sharding

    def place(self, params, tx=None, *, seed: int) -> TrainState:
        """The initial TrainState on the mesh: params (and the optimizer state, with `tx`) sharded by the rules."""
        sharding = self.shard_state(params, tx)
        params = jax.device_put(params, sharding.params)
        opt_state = () if tx is None else jax.jit(tx.init, out_shardings=sharding.opt_state)(params)
        rng = jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))
        return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), self.replicated), params=params,
                          opt_state=opt_state, rng=jax.device_put(rng, self.replicated))

    def param_target(self, shapes):
        """Abstract params laid out on this mesh: the restore target of a checkpoint's params."""
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            shapes, self.shard_state(shapes).params)

    # ------------------------------------------------------------------ executables

    def batch_spec(self, rows: int, length: int, slots: Optional[int] = None) -> dict:
        """Abstract batch: per-example arrays are [rows], or [rows, slots] for packed rows."""
        per_example = (rows,) if slots is None else (rows, slots)
        layout = BatchLayout(self.token_type_ids, self.is_regression, slots)
        return {k: jax.ShapeDtypeStruct(per_example if k in PER_EXAMPLE else (rows, length), dt,
                                        sharding=self.batch_sharding) for k, dt in layout.dtypes().items()}

    def _compile(self, cache: dict, key: tuple, build: Callable[[], tuple]) -> Any:
        """`build() -> (jitted, *abstract_args)` runs only on a miss."""
        if key not in cache:
            start = time.perf_counter()
            jitted, *args = build()
            cache[key] = jitted.lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return cache[key]

    def train(self, state: TrainState, rows: int, length: int, slots: Optional[int], *, tx, schedule,
              grad_accum_steps: int, dropout_rng: str):
        """The train step for batches of `rows` x `length` (x `slots` examples per row when packed)."""
        def build():
            step = functools.partial(train_step, model=self.model, tx=tx, schedule=schedule,
                                     is_regression=self.is_regression, grad_accum_steps=grad_accum_steps,
                                     dropout_rng=dropout_rng)
            jitted = jax.jit(step, in_shardings=(self.state_sharding, self.batch_sharding),
                             out_shardings=(self.state_sharding, self.replicated), donate_argnums=(0,))
            return jitted, abstract(state), self.batch_spec(rows, length, slots)
        return self._compile(self._train, (rows, length, slots), build)

    def eval(self, params, rows: int, length: int):
        """The eval step (logits and per-example losses) for batches of `rows` x `length`."""
        def build():
            # Per-example outputs stay split like the batch rows: the host reads the shards, and no all-gather
            # runs on the devices (XLA:CPU's in-process all-gather could stall for good, in tests, while other
            # programs were queued). Several processes need every row on each host: replicate there.
            out = self.batch_sharding if jax.process_count() == 1 else self.replicated
            jitted = jax.jit(functools.partial(eval_step, model=self.model, is_regression=self.is_regression),
                             in_shardings=(self.state_sharding.params, self.batch_sharding), out_shardings=out)
            return jitted, abstract(params), self.batch_spec(rows, length)
        return self._compile(self._eval, (rows, length), build)

    @property
    def train_compilations(self) -> int:
        return len(self._train)

    @property
    def eval_compilations(self) -> int:
        return len(self._eval)
