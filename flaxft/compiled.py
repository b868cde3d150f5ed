"""The train and eval steps compiled ahead of time, one executable per batch shape, and the shardings they
run with: state placed on the mesh by the partition rules, batch rows split over data x fsdp.

A grid (flaxft.grid) stacks its replicas' state and batches on a leading axis split over the mesh's `replica`
axis; its steps are the single-run steps under jax.vmap, each replica with its own learning rate.

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
from flaxft.grid import Grid
from flaxft.losses import Objective
from flaxft.parallel import batch_sharding, replica_sharding, tree_shardings
from flaxft.steps import TrainState, eval_step, train_step

PER_EXAMPLE = ("weights", "cls_index", "labels")  # [rows], or [rows, slots] when packed; the rest is [rows, length]


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """The arrays of a batch: which keys, and slots per row for packed rows (None: one example per row)."""
    token_type_ids: bool
    label_dtype: Any
    slots: Optional[int] = None

    def dtypes(self) -> dict:
        keys = {"input_ids": np.int32, "attention_mask": np.int32, "weights": np.float32, "labels": self.label_dtype}
        if self.token_type_ids:
            keys["token_type_ids"] = np.int32
        if self.slots:
            keys.update(segment_ids=np.int32, position_ids=np.int32, cls_index=np.int32)
        return keys


class CompiledSteps:
    """Holds the mesh's shardings and compiles `train_step` / `eval_step` once per (rows, length)."""

    def __init__(self, mesh, model, rules=(), *, objective: Objective, token_type_ids: bool,
                 grid: Optional[Grid] = None):
        self.mesh, self.model, self.rules, self.grid = mesh, model, rules, grid
        self.objective, self.token_type_ids = objective, token_type_ids
        self.eval_batch_sharding = batch_sharding(mesh)  # every replica evaluates the same batch
        self.batch_sharding = replica_sharding(self.eval_batch_sharding) if grid else self.eval_batch_sharding
        self.replicated = NamedSharding(mesh, P())
        self.per_replica = NamedSharding(mesh, P("replica")) if grid else self.replicated
        self.compile_seconds = 0.0
        self._train: dict[tuple, Any] = {}
        self._eval: dict[tuple, Any] = {}
        self.state_sharding: Optional[TrainState] = None

    # ------------------------------------------------------------------ state

    def _opt_init(self, tx):
        return jax.vmap(tx.init) if self.grid else tx.init

    def shard_state(self, params, tx=None) -> TrainState:
        """The shardings of a TrainState with these (possibly abstract) params and `tx`'s state, by the rules
        (a grid's params carry the replica axis first)."""
        grid = self.grid is not None
        param_sh = tree_shardings(self.mesh, params, self.rules, replicas=grid)
        opt_sh = () if tx is None else tree_shardings(self.mesh, jax.eval_shape(self._opt_init(tx), params),
                                                      self.rules, replicas=grid)
        self.state_sharding = TrainState(step=self.per_replica, params=param_sh, opt_state=opt_sh,
                                         rng=self.per_replica)
        return self.state_sharding

    def place(self, params, tx=None, *, seed: int) -> TrainState:
        """The initial TrainState on the mesh: params (and the optimizer state, with `tx`) sharded by the rules.
        A grid's params are stacked per replica, and each replica's dropout stream comes from its own seed."""
        sharding = self.shard_state(params, tx)
        params = jax.device_put(params, sharding.params)
        opt_state = () if tx is None else jax.jit(self._opt_init(tx), out_shardings=sharding.opt_state)(params)
        seeds = [s for s, _ in self.grid.replicas] if self.grid else [seed]
        rngs = [jax.random.key_data(jax.random.fold_in(jax.random.key(s), 1)) for s in seeds]
        rng, step = (jnp.stack(rngs), jnp.zeros(len(seeds), jnp.int32)) if self.grid else (rngs[0], jnp.zeros((), jnp.int32))
        return TrainState(step=jax.device_put(step, self.per_replica), params=params,
                          opt_state=opt_state, rng=jax.device_put(rng, self.per_replica))

    def param_target(self, shapes):
        """Abstract params laid out on this mesh: the restore target of a checkpoint's params."""
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            shapes, self.shard_state(shapes).params)

    # ------------------------------------------------------------------ executables

    def batch_spec(self, rows: int, length: int, slots: Optional[int] = None, *, training: bool = True) -> dict:
        """Abstract batch: per-example arrays are [rows], or [rows, slots] for packed rows; a grid's training
        batches have the replica axis first."""
        lead = (self.grid.size,) if self.grid and training else ()
        sharding = self.batch_sharding if training else self.eval_batch_sharding
        per_example = (rows,) if slots is None else (rows, slots)
        layout = BatchLayout(self.token_type_ids, self.objective.label_dtype, slots)
        shapes = {k: per_example if k in PER_EXAMPLE else (rows, length) for k in layout.dtypes()}
        shapes["labels"] = per_example + self.objective.label_shape
        return {k: jax.ShapeDtypeStruct(lead + shapes[k], dt, sharding=sharding) for k, dt in layout.dtypes().items()}

    def _compile(self, cache: dict, key: tuple, build: Callable[[], tuple]) -> Any:
        """`build() -> (jitted, *abstract_args)` runs only on a miss."""
        if key not in cache:
            start = time.perf_counter()
            jitted, *args = build()
            cache[key] = jitted.lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return cache[key]

    def train(self, state: TrainState, rows: int, length: int, slots: Optional[int], *, optimizer: Callable,
              learning_rate: float, grad_accum_steps: int, dropout_rng: str):
        """The train step for batches of `rows` x `length` (x `slots` examples per row when packed).
        `optimizer(learning_rate) -> (tx, schedule)`; a grid calls it with each replica's rate."""
        def one(state, batch, lr):
            tx, schedule = optimizer(lr)
            return train_step(state, batch, model=self.model, tx=tx, schedule=schedule, objective=self.objective,
                              grad_accum_steps=grad_accum_steps, dropout_rng=dropout_rng)

        def build():
            if self.grid:
                rates = self.grid.replica_learning_rates
                step = lambda state, batch: jax.vmap(one, spmd_axis_name="replica")(  # noqa: E731
                    state, batch, jnp.asarray(rates))
            else:
                step = functools.partial(one, lr=learning_rate)
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
            step = functools.partial(eval_step, model=self.model, objective=self.objective)
            if self.grid:  # every replica's params on the same batch: outputs [replicas, rows, ...]
                step = jax.vmap(step, in_axes=(0, None), spmd_axis_name="replica")
            jitted = jax.jit(step, in_shardings=(self.state_sharding.params, self.eval_batch_sharding), out_shardings=out)
            return jitted, abstract(params), self.batch_spec(rows, length, training=False)
        return self._compile(self._eval, (rows, length), build)

    @property
    def train_compilations(self) -> int:
        return len(self._train)

    @property
    def eval_compilations(self) -> int:
        return len(self._eval)
