"""Equal-privacy search: the weakest strength of a defense whose privacy matches a target.

Baselines are compared at equal privacy (docs/design.md section 3): for each, the weakest
setting whose attack PSNR is at most the target PSNR + tolerance. Attack PSNR falls (privacy
grows) as strength grows, so the search bisects a monotone function on a log scale and
returns the smallest strength found that meets the target.

:func:`bisection` is the search as a generator (it yields the strength to try next and is sent
the PSNR measured there), so the runner can schedule each probe as an ordinary cell;
:func:`weakest_matching_strength` drives it with a plain function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass(frozen=True)
class SearchResult:
    strength: float
    psnr: float
    met: bool
    tried: list[tuple[float, float]] = field(default_factory=list)


def bisection(target_psnr: float, low: float, high: float, *, steps: int = 6,
              tolerance_db: float = 0.5) -> Generator[float, float, SearchResult]:
    """Smallest strength in [low, high] (log-bisection, ``steps`` evaluations after the bounds)
    with ``psnr(strength) <= target_psnr + tolerance_db``. If even ``high`` does not meet the
    target, returns ``high`` with ``met=False``; if ``low`` already meets it, returns ``low``."""
    if not 0 < low < high:
        raise ConfigError(f"search bounds must satisfy 0 < low < high, got low={low}, high={high}")
    goal = target_psnr + tolerance_db
    tried: list[tuple[float, float]] = []
    at_low = yield low
    tried.append((low, at_low))
    if at_low <= goal:
        return SearchResult(low, at_low, True, tried)
    at_high = yield high
    tried.append((high, at_high))
    if at_high > goal:
        return SearchResult(high, at_high, False, tried)
    best = (high, at_high)
    lo, hi = math.log(low), math.log(high)
    for _ in range(steps):
        mid = math.exp((lo + hi) / 2)
        value = yield mid
        tried.append((mid, value))
        if value <= goal:
            best, hi = (mid, value), math.log(mid)
        else:
            lo = math.log(mid)
    return SearchResult(best[0], best[1], True, tried)


def weakest_matching_strength(psnr_at: Callable[[float], float], target_psnr: float, low: float, high: float,
                              *, steps: int = 6, tolerance_db: float = 0.5) -> SearchResult:
    """:func:`bisection` with ``psnr_at`` evaluated in place."""
    search = bisection(target_psnr, low, high, steps=steps, tolerance_db=tolerance_db)
    strength = next(search)
    while True:
        try:
            strength = search.send(psnr_at(strength))
        except StopIteration as done:
            return done.value
