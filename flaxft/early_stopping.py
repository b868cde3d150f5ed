"""Early stopping (train.early_stopping_patience), decided as transformers' EarlyStoppingCallback decides it.

After each evaluation the watched value (checkpoint.best_metric) either improves on the best value so far by
more than the threshold, which resets the patience counter, or the counter grows by one; training stops once
the counter reaches the patience. As in transformers, the best value so far follows every improvement, even
one within the threshold (the Trainer's state.best_metric), so small gains cannot add up to a reset.

The state is a small frozen value saved in every checkpoint's meta: a resumed run stops at the same step as
an uninterrupted one, and a run that stopped is not trained further when rerun.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    best: Optional[float] = None  # the best value so far; None before the first evaluation
    patience_counter: int = 0     # evaluations since the last improvement by more than the threshold
    stopped: bool = False         # the counter reached the patience: training stops at this evaluation

    def to_meta(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: dict) -> "EarlyStopping":
        return cls(**meta)


def update(state: EarlyStopping, value: float, *, patience: int, threshold: float,
           greater_is_better: bool) -> EarlyStopping:
    """The state after an evaluation whose watched metric is `value`."""
    better = (lambda a, b: a > b) if greater_is_better else (lambda a, b: a < b)  # NaN is never better
    # As transformers: the first evaluation always resets, and the best starts from -inf (+inf when
    # minimizing), so a first NaN leaves it at -inf rather than at a value nothing can beat.
    best = state.best if state.best is not None else -math.inf if greater_is_better else math.inf
    improved = state.best is None or (better(value, best) and abs(value - best) > threshold)
    counter = 0 if improved else state.patience_counter + 1
    return EarlyStopping(best=value if better(value, best) else best, patience_counter=counter,
                         stopped=counter >= patience)
