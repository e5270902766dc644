"""Means with 95% confidence intervals, and results merged over seeds.

A table cell is a mean over attacked targets (privacy) or over seeds (accuracy). Its interval
is Student's t interval for the mean, ``mean +- t(0.975, n - 1) * s / sqrt(n)`` with ``s`` the
sample standard deviation: the targets of one run are independent draws from the target
pool, and so are the seeds. A difference between two defenses' accuracies is taken per seed
(the two runs of a seed share its data selection, partition and initialisation), so its
interval is the paired one; it is significant when the interval excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scipy.stats import t as student_t

__all__ = ["Estimate", "mean_ci", "merge_attack_results", "merge_train_results", "paired_difference"]


@dataclass(frozen=True)
class Estimate:
    """A mean, its confidence interval's half-width (NaN for fewer than two values) and the count."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of zero (false without an interval)."""
        return not math.isnan(self.half_width) and (self.low > 0 or self.high < 0)

    def text(self, digits: int = 1, scale: float = 1.0, unit: str = "") -> str:
        """``12.3±0.4 dB``, or ``12.3 dB`` when there is no interval."""
        mean = f"{self.mean * scale:.{digits}f}"
        if math.isnan(self.half_width):
            return f"{mean}{unit}"
        return f"{mean}±{self.half_width * scale:.{digits}f}{unit}"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """The mean of ``values`` with the two-sided Student-t interval at ``confidence``."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci: no values")
    mean = math.fsum(values) / n
    if n < 2:
        return Estimate(mean, math.nan, n)
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    quantile = float(student_t.ppf(0.5 + confidence / 2, n - 1))
    return Estimate(mean, quantile * math.sqrt(variance / n), n)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Estimate:
    """The mean of ``a[i] - b[i]`` with its interval (pairs share a seed)."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values against {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b)], confidence)


def merge_attack_results(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One attack cell's result per seed -> one result over every target of every seed: the
    per-target lists concatenated in seed order (so that two attacks on the same seeds stay
    aligned target by target), means, standard deviations and 95% intervals recomputed, and
    the floors (each a mean over its seed's targets) averaged with the seeds' target counts."""
    merged = dict(results[0])
    counts = [len(r.get("psnr_each", [r.get("psnr_mean")])) for r in results]
    for metric in ("psnr", "ssim"):
        each = [v for r in results for v in r.get(f"{metric}_each", [r[f"{metric}_mean"]])]
        estimate = mean_ci(each)
        merged[f"{metric}_each"] = each
        merged[f"{metric}_mean"] = estimate.mean
        merged[f"{metric}_std"] = _std(each)
        merged[f"{metric}_ci"] = estimate.half_width
    total = sum(counts)
    for name in ("label_accuracy", "floor_psnr", "floor_ssim", "class_floor_psnr", "class_floor_ssim"):
        if all(f"{name}_each" in r for r in results):
            each = [v for r in results for v in r[f"{name}_each"]]
            merged[f"{name}_each"], merged[name] = each, math.fsum(each) / len(each)
        elif all(name in r for r in results):
            merged[name] = math.fsum(r[name] * c for r, c in zip(results, counts)) / total
    merged["seeds"] = len(results)
    return merged


def merge_train_results(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One training cell's result per seed -> the mean accuracy and round time, with the
    per-seed accuracies kept (``accuracy_each``) for paired differences."""
    merged = dict(results[0])
    accuracy = [r["accuracy"] for r in results]
    estimate = mean_ci(accuracy)
    merged.update(accuracy=estimate.mean, accuracy_ci=estimate.half_width, accuracy_each=accuracy,
                  art_s=math.fsum(r["art_s"] for r in results) / len(results), seeds=len(results))
    return merged


def _std(values: Sequence[float]) -> float:
    """The population standard deviation, as a single run's result reports it."""
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
