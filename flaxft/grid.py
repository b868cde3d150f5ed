"""A grid of replicas: every (seed, learning rate) pair of `train.seeds` x `train.learning_rate`, trained side by
side in one program (flaxft.compiled vmaps the steps over a leading replica axis), and what a grid reports:
per-replica metrics, statistics over seeds per learning rate, the best learning rate, the table at the end.

Replica i is (seeds[i // len(rates)], rates[i % len(rates)]): the seeds vary slowest. A run with a scalar
learning rate and no `train.seeds` is not a grid (`Grid.of(...)` is None) and keeps the single-run layout.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from flaxft.errors import FlaxftError
from flaxft.metrics import lower_is_better

STATS = ("mean", "std", "median", "min", "max")


@dataclasses.dataclass(frozen=True)
class Grid:
    seeds: tuple[int, ...]
    learning_rates: tuple[float, ...]

    @classmethod
    def of(cls, train_cfg) -> Optional["Grid"]:
        """The grid `train_cfg` asks for (a list in train.seeds or train.learning_rate), else None."""
        rates = train_cfg.learning_rate
        if train_cfg.seeds is None and not isinstance(rates, list):
            return None
        return cls(tuple(train_cfg.seeds or [train_cfg.seed]), tuple(rates if isinstance(rates, list) else [rates]))

    @property
    def size(self) -> int:
        return len(self.seeds) * len(self.learning_rates)

    @property
    def replicas(self) -> list[tuple[int, float]]:
        return [(s, lr) for s in self.seeds for lr in self.learning_rates]

    @property
    def seed_index(self) -> np.ndarray:
        """For each replica, the index of its seed in `seeds` (whose data plan it reads)."""
        return np.repeat(np.arange(len(self.seeds)), len(self.learning_rates))

    @property
    def replica_learning_rates(self) -> np.ndarray:
        return np.tile(np.asarray(self.learning_rates, np.float32), len(self.seeds))

    def name(self, i: int) -> str:
        """The replica's folder name: seed-42_lr-2e-05."""
        seed, lr = self.replicas[i]
        return f"seed-{seed}_lr-{lr:g}"

    def tags(self, i: int) -> dict:
        seed, lr = self.replicas[i]
        return {"replica": i, "seed": seed, "learning_rate": lr}

    def to_meta(self) -> dict:
        return {"seeds": list(self.seeds), "learning_rates": list(self.learning_rates)}


# ---------------------------------------------------------------------- results over replicas


def aggregate(grid: Grid, per_replica: list[dict[str, float]], main_metric: str) -> dict:
    """What summary.json keeps of a grid's evaluation: `replicas`, `by_learning_rate` (statistics over seeds),
    `best_learning_rate` (by `main_metric`'s mean; eval_loss is minimized) and, at the top level, the best
    rate's eval_<metric>_mean and _std."""
    replicas = [{"seed": s, "learning_rate": lr, **m} for (s, lr), m in zip(grid.replicas, per_replica)]
    by_lr = {}
    for lr in grid.learning_rates:
        rows = [r for r in replicas if r["learning_rate"] == lr]
        by_lr[f"{lr:g}"] = {"learning_rate": lr, "seeds": [r["seed"] for r in rows],
                            **{f"{k}_{stat}": _stat(stat, [r[k] for r in rows])
                               for k in per_replica[0] for stat in STATS}}
    sign = 1 if lower_is_better(main_metric) else -1
    best = min(by_lr.values(), key=lambda v: sign * v[f"{main_metric}_mean"])
    top = {f"{k}_{stat}": best[f"{k}_{stat}"] for k in per_replica[0] for stat in ("mean", "std")}
    return {**top, "best_learning_rate": best["learning_rate"], "by_learning_rate": by_lr, "replicas": replicas}


def _stat(stat: str, values: list[float]) -> float:
    v = np.asarray(values, np.float64)
    return float({"mean": np.mean, "std": lambda x: np.std(x, ddof=1) if len(x) > 1 else 0.0,
                  "median": np.median, "min": np.min, "max": np.max}[stat](v))


def checkpoint_metrics(result: dict) -> dict[str, float]:
    """A grid checkpoint's metrics for picking the best step: each metric's mean over the best rate's seeds,
    under its plain name (eval_accuracy), so checkpoint.best_metric reads as for a single run."""
    return {k[:-len("_mean")]: v for k, v in result.items() if k.endswith("_mean")}


def best_replica(grid: Grid, per_replica: list[dict[str, float]], metric: str) -> int:
    """The replica with the best `metric` (eval_loss: the lowest); ties go to the first."""
    values = np.asarray([m[metric] for m in per_replica])
    return int(np.argmin(values) if lower_is_better(metric) else np.argmax(values))


def table(result: dict) -> str:
    """One row per learning rate: mean +- std over seeds of every eval metric (the best rate marked)."""
    metrics = [k[:-len("_mean")] for k in next(iter(result["by_learning_rate"].values())) if k.endswith("_mean")]
    head = "| learning rate | seeds | " + " | ".join(metrics) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(metrics)]
    for key, row in result["by_learning_rate"].items():
        mark = " (best)" if row["learning_rate"] == result["best_learning_rate"] else ""
        cells = " | ".join(f"{row[m + '_mean']:.4f} +- {row[m + '_std']:.4f}" for m in metrics)
        lines.append(f"| {key}{mark} | {len(row['seeds'])} | {cells} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- memory


def device_memory_bytes(device) -> Optional[int]:
    """What one device can hold: the accelerator's limit, or on CPU this host's memory shared by its devices."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        import jax

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(jax.local_device_count(), 1)
    return None


def check_fits(grid: Grid, num_params: int, mesh, device_bytes: Optional[int]) -> None:
    """Refuse, before anything is compiled, a grid whose training state cannot fit: float32 weights, two Adam
    moments and gradients per replica, replicas split over mesh.replica and each replica's weights over
    fsdp x tensor (an estimate from above: not every weight splits)."""
    if device_bytes is None:
        return
    per_replica_device = num_params * 4 * 4 / (mesh.shape["fsdp"] * mesh.shape["tensor"])
    local_replicas = -(-grid.size // mesh.shape["replica"])
    need = per_replica_device * local_replicas
    if need > 0.9 * device_bytes:
        fit = int(0.9 * device_bytes // per_replica_device) * mesh.shape["replica"]
        fix = (f"train at most {fit} replicas (fewer train.seeds or learning rates) or spread them over more devices "
               "with mesh.replica" if fit else "shard each replica further (mesh.fsdp, mesh.tensor) or raise mesh.replica")
        raise FlaxftError(
            f"{grid.size} replicas of {num_params / 1e6:.0f}M parameters need about {need / 2**30:.2f} GiB a device for "
            f"weights, Adam moments and gradients, more than the {device_bytes / 2**30:.2f} GiB a device has; {fix}")
