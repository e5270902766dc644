"""Privacy-utility curves: a defense's strength swept over a range, each point attacked and trained."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError
from .profiles import Profile
from .reproduce import attack_config, side_by_side, train_config
from .runner import CellRunner


def parse_values(spec: str) -> tuple[str, list[float]]:
    """``sigma=1e-4:1e-1:log8`` (8 log-spaced values), ``p=10:90:lin5`` or ``sigma=0.1,0.2``."""
    name, sep, values = spec.partition("=")
    if not sep or not name:
        raise ConfigError(f"param: expected NAME=VALUES (e.g. sigma=1e-4:1e-1:log8), got {spec!r}")
    try:
        if ":" in values:
            low, high, steps = values.split(":")
            kind, count = steps[:3], int(steps[3:])
            low_f, high_f = float(low), float(high)
            if kind not in ("log", "lin") or count < 2 or (kind == "log" and min(low_f, high_f) <= 0):
                raise ValueError
            if kind == "log":
                a, b = math.log(low_f), math.log(high_f)
                return name, [math.exp(a + (b - a) * i / (count - 1)) for i in range(count)]
            return name, [low_f + (high_f - low_f) * i / (count - 1) for i in range(count)]
        return name, [float(v) for v in values.split(",")]
    except ValueError:
        raise ConfigError(f"param: cannot read {values!r}; use LOW:HIGH:logN (LOW, HIGH > 0), LOW:HIGH:linN "
                          f"with N >= 2, or a comma-separated list") from None


def sweep(runner: CellRunner, profile: Profile, dataset: str, attack: str,
          curves: list[tuple[str, str]]) -> dict[str, Any]:
    """For each (defense, param spec), attack and train at every value (points side by side with
    worker processes); the points go to the store."""
    settings = [(defense, option, value) for defense, spec in curves
                for option, values in [parse_values(spec)] for value in values]

    def point(defense: str, option: str, value: float) -> dict[str, Any]:
        options = {option: value}
        attacked = runner.compute("attack", attack_config(profile, dataset, attack, defense, options))
        trained = runner.compute("train", train_config(profile, dataset, defense, options))
        return {"dataset": dataset, "defense": defense, "option": option, "value": value, "strength": value,
                "psnr": attacked["psnr_mean"], "ssim": attacked["ssim_mean"], "accuracy": trained["accuracy"]}

    points = side_by_side(runner, *[lambda s=s: point(*s) for s in settings])
    result = {"attack": attack, "points": points,
              "config": {"dataset": dataset, "curves": curves, "profile": profile.model_dump()}}
    runner.store.set_meta("sweep", result)
    return result
