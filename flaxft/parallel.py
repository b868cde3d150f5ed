"""Device mesh, partition rules and batch placement.

The mesh has four named axes (replica, data, fsdp, tensor). A grid's replicas (flaxft.grid) are split over
`replica`, a leading axis of their state and batches; within a replica the batch is split over data x fsdp; parameters
and optimizer state follow PARAM_RULES, matched by regular expression against the parameter's path
("encoder/layer_0/attention/query/kernel", or ".../mu/..." inside the optimizer state). Parameter names are
the same in every encoder family (flaxft.model.layers); a family adds rules for parameters of its own.
"""

from __future__ import annotations

import functools
import logging
import math
import re

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from flaxft.config import MeshConfig
from flaxft.errors import FlaxftError

log = logging.getLogger("flaxft")

AXES = ("replica", "data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# First match wins. Dense kernels are [in, out]: splitting `out` of query/key/value splits heads.
PARAM_RULES: list[tuple[str, P]] = [
    (r"word_embeddings/embedding$", P("tensor", "fsdp")),
    (r"attention/(query|key|value)/kernel$", P("fsdp", "tensor")),
    (r"attention/(query|key|value)/bias$", P("tensor")),
    (r"attention/output/kernel$", P("tensor", "fsdp")),
    (r"mlp/input/kernel$", P("fsdp", "tensor")),
    (r"mlp/input/bias$", P("tensor")),
    (r"mlp/output/kernel$", P("tensor", "fsdp")),
    (r".*", P()),
]
# Tried before a family's rules: optimizer state that does not have its parameter's shape. Adafactor's
# factored second moments (a row and a column vector per matrix, (1,) for the others) are small: replicated.
STATE_RULES: list[tuple[str, P]] = [(r"(^|/)v_(row|col)/", P())]


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    """Build the (replica, data, fsdp, tensor) mesh; one axis may be -1 to take the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [cfg.replica, cfg.data, cfg.fsdp, cfg.tensor]
    if sizes.count(-1) > 1:
        raise FlaxftError(f"mesh sizes {dict(zip(AXES, sizes))}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise FlaxftError(
                f"mesh {dict(zip(AXES, sizes))} does not fit {len(devices)} devices; "
                f"choose sizes whose product divides {len(devices)}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise FlaxftError(
            f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices but {len(devices)} are present; "
            "set mesh.data=-1 to use all of them")
    # Auto axes: jit's in/out shardings drive GSPMD; shapes inside the step stay unsharded types.
    return jax.make_mesh(tuple(sizes), AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of every batch array are split over data x fsdp; the sequence axis is not split."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replica_sharding(sharding: NamedSharding) -> NamedSharding:
    """The same layout with a leading replica axis split over the mesh's `replica` axis."""
    return NamedSharding(sharding.mesh, P("replica", *sharding.spec))


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_size(batch_size: int, mesh: Mesh, key: str = "train.batch_size", micro_batches: int = 1) -> None:
    """Each (micro-)batch must split evenly over the data-parallel devices."""
    n = data_parallel_size(mesh) * micro_batches
    if batch_size % n:
        where = f"{micro_batches} micro-batches over " if micro_batches > 1 else ""
        raise FlaxftError(
            f"{key}={batch_size} cannot be split into {where}the {data_parallel_size(mesh)} data-parallel devices "
            f"(mesh data x fsdp); use a multiple of {n}, e.g. {key}={max(n, batch_size // n * n)}")


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


@functools.cache
def _log_dropped(pattern: str, axis: str, size: int, dim: int) -> None:
    """Once per rule and axis: a mesh axis that a parameter's dimension cannot be split over."""
    log.info("partition rule %r: mesh axis %s (size %d) does not divide a dimension of %d; that dimension is "
             "not split over it", pattern, axis, size, dim)


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh, rules=()) -> P:
    """The first matching rule's spec for this leaf (STATE_RULES, `rules`, then PARAM_RULES), dropping axes that
    don't divide the dimension evenly (logged once per rule)."""
    for pattern, spec in (*STATE_RULES, *rules, *PARAM_RULES):
        if re.search(pattern, path):
            break
    if len(spec) > len(shape):
        return P()
    dims = []
    for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        size = 1 if axis is None else math.prod(mesh.shape[a] for a in np.atleast_1d(axis))
        if size > 1 and dim % size:
            _log_dropped(pattern, str(axis), size, dim)
        dims.append(axis if size > 1 and dim % size == 0 else None)
    return P(*dims)


def tree_shardings(mesh: Mesh, tree, rules=(), *, replicas: bool = False):
    """NamedShardings for every leaf of a (possibly abstract) pytree, following `rules` (a family's own),
    then PARAM_RULES; with `replicas`, every leaf has a leading replica axis (split over the mesh's `replica`)
    and the rules apply to the rest of its shape."""
    def one(path, leaf):
        shape = np.shape(leaf)
        if not replicas:
            return NamedSharding(mesh, spec_for(_path_str(path), shape, mesh, rules))
        return NamedSharding(mesh, P("replica", *spec_for(_path_str(path), shape[1:], mesh, rules)))
    return jax.tree_util.tree_map_with_path(one, tree)


def local_rows(sharding: NamedSharding, rows: int, replicas: int = 0) -> slice:
    """The block of global batch rows that this process's devices hold (all rows on one host); a grid's batch
    ([replicas, rows, ...]) keeps every replica on each process."""
    shape = (replicas, rows) if replicas else (rows,)
    index_map = sharding.addressable_devices_indices_map(shape)
    starts = [idx[-1].start or 0 for idx in index_map.values()]
    stops = [rows if idx[-1].stop is None else idx[-1].stop for idx in index_map.values()]
    block = slice(min(starts), max(stops))
    if block.stop - block.start != rows // jax.process_count():
        raise FlaxftError(f"this process's devices hold batch rows {block.start}..{block.stop} of {rows}, not one "
                          "contiguous block of its share; use a mesh whose data x fsdp axes follow the processes")
    if replicas and jax.process_count() > 1 and sharding.mesh.shape["replica"] > 1:
        raise FlaxftError("mesh.replica > 1 splits a grid's replicas over processes, which flaxft does not support "
                          "yet; use mesh.replica=1 with several processes")
    return block


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Place this process's rows of a global batch on its devices (works single- and multi-host)."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
