"""Percentiles as every report in the project computes them."""

from __future__ import annotations

import math
from typing import Iterable


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already-collected samples."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def percentiles(values: Iterable[float], qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    samples = list(values)
    return {f"p{q}": round(percentile(samples, q), 3) for q in qs}
