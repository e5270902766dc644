"""Equal-privacy search: the weakest strength of a baseline whose privacy matches a target.

Baselines are compared with ``graddefense`` at equal privacy (DESIGN.md section 3): for each,
the weakest setting whose attack PSNR is at most the target PSNR + tolerance. Attack PSNR
falls (privacy grows) as strength grows, so the search bisects a monotone function on a
log scale and returns the smallest strength found that meets the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class SearchResult:
    strength: float
    psnr: float
    met: bool
    tried: list[tuple[float, float]] = field(default_factory=list)


def weakest_matching_strength(psnr_at: Callable[[float], float], target_psnr: float, low: float, high: float,
                              *, steps: int = 6, tolerance_db: float = 0.5) -> SearchResult:
    """Smallest strength in [low, high] (log-bisection, ``steps`` evaluations after the bounds)
    with ``psnr_at(strength) <= target_psnr + tolerance_db``. If even ``high`` does not meet the
    target, returns ``high`` with ``met=False``; if ``low`` already meets it, returns ``low``."""
    if not 0 < low < high:
        raise ValueError(f"search bounds must satisfy 0 < low < high, got low={low}, high={high}")
    goal = target_psnr + tolerance_db
    tried: list[tuple[float, float]] = []

    def evaluate(s: float) -> float:
        value = psnr_at(s)
        tried.append((s, value))
        return value

    at_low = evaluate(low)
    if at_low <= goal:
        return SearchResult(low, at_low, True, tried)
    best = (high, evaluate(high))
    if best[1] > goal:
        return SearchResult(high, best[1], False, tried)
    lo, hi = math.log(low), math.log(high)
    for _ in range(steps):
        mid = math.exp((lo + hi) / 2)
        value = evaluate(mid)
        if value <= goal:
            best, hi = (mid, value), math.log(mid)
        else:
            lo = math.log(mid)
    return SearchResult(best[0], best[1], True, tried)
