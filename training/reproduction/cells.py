"""One experiment cell over its seeds, and the one rule that says when two cells differ by less than their spread.

A cell is every finished run of one setting (``stingy-bench run --seeds 0 1 2``: one run per seed; without
``--seeds``: one run). Its accuracy is the mean over the runs that did not diverge, its spread their sample
standard deviation (``ddof = 1``). Two cells ``a`` and ``b`` are told apart only when

    |mean(a) - mean(b)| > spread(a, b) = sqrt(std(a)^2 + std(b)^2)

``spread`` is the standard deviation of the difference between one run of ``a`` and one run of ``b`` (a cell
of one finite run counts std 0). A difference not larger than the spread is "within the spread" (two cells of
identical runs included). When neither cell has two finite runs the spread is unknown (None) and no difference
is marked as within it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import mean, stdev
from typing import Any

from training.baseline import accuracy_of


@dataclass(frozen=True)
class Cell:
    """The finished runs (results rows) of one setting, one per seed; empty when none finished."""

    rows: tuple[dict[str, Any], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rows)

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def accuracies(self) -> list[float]:
        """Test accuracies of the runs that did not diverge, in row order."""
        return [value for value in map(accuracy_of, self.rows) if value is not None]

    @property
    def diverged(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row.get("diverged")]

    @property
    def mean(self) -> float | None:
        """Mean test accuracy over the runs that did not diverge (None when every run diverged or none ran)."""
        values = self.accuracies
        return mean(values) if values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation of those accuracies (None with fewer than two)."""
        values = self.accuracies
        return stdev(values) if len(values) > 1 else None

    def seed(self, seed: int | None) -> dict[str, Any] | None:
        """The run trained with ``seed`` (rows record their ``seed``; rows of older folders record none)."""
        return next((row for row in self.rows if row.get("seed") == seed), None)


def spread(a: Cell, b: Cell) -> float | None:
    """``sqrt(std(a)^2 + std(b)^2)``, a one-run cell counting 0; None when neither cell has two finite runs."""
    if a.std is None and b.std is None:
        return None
    return math.hypot(a.std or 0.0, b.std or 0.0)


def within_spread(a: Cell, b: Cell) -> bool:
    """True when both cells have a mean and ``|mean(a) - mean(b)| <= spread(a, b)``: the data cannot tell them apart."""
    width = spread(a, b)
    if width is None or a.mean is None or b.mean is None:
        return False
    return abs(a.mean - b.mean) <= width
