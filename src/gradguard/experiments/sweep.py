"""Privacy-utility curves: a defense's strength swept over a range, each point attacked and trained."""

from __future__ import annotations

import math
from typing import Any

from ..defenses import DEFENSES
from ..errors import ConfigError
from .plan import Plan, Task, attack_cell_for, train_cell_for
from .profiles import Profile
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
        parsed = [float(v) for v in values.split(",")]
    except ValueError:
        raise ConfigError(f"param: cannot read {values!r}; use LOW:HIGH:logN (LOW, HIGH > 0), LOW:HIGH:linN "
                          f"with N >= 2, or a comma-separated list") from None
    if not all(math.isfinite(v) for v in parsed):
        raise ConfigError(f"param: {spec!r} holds a value that is not finite")
    return name, parsed


def default_spec(defense: str, points: int = 5) -> str:
    """The defense's registered strength range as a ``--param`` spec (log-spaced)."""
    if defense not in DEFENSES:
        raise ConfigError(f"sweep: unknown defense {defense!r}; choose one of {list(DEFENSES)}")
    knob = DEFENSES[defense].strength
    if knob is None:
        with_knob = [n for n, c in DEFENSES.items() if c.strength is not None]
        raise ConfigError(f"sweep: {defense!r} has no strength knob; give --param NAME=VALUES, or sweep one of "
                          f"{with_knob}")
    return f"{knob.option}={knob.low * knob.scale:g}:{knob.high * knob.scale:g}:log{points}"


def sweep_plan(profile: Profile, dataset: str, attack: str, curves: list[tuple[str, str]]) -> tuple[Plan, list]:
    """One attack and one training task per (defense, value); returns the plan and the points' settings."""
    settings = [(defense, option, value) for defense, spec in curves
                for option, values in [parse_values(spec)] for value in values]
    plan = Plan(costs=profile.costs)
    for defense, option, value in settings:
        labels = {"dataset": dataset, "defense": defense, "option": option, "value": value}
        plan.tasks.append(Task(f"{defense}/{option}={value}/attack", "attack",
                               attack_cell_for(profile, dataset, attack, defense, {option: value}),
                               {**labels, "attack": attack, "adaptive": None}))
        plan.tasks.append(Task(f"{defense}/{option}={value}/train", "train",
                               train_cell_for(profile, dataset, defense, {option: value}), labels))
    return plan, settings


def sweep(runner: CellRunner, profile: Profile, dataset: str, attack: str,
          curves: list[tuple[str, str]]) -> dict[str, Any]:
    """For each (defense, param spec), attack and train at every value; the points go to the store."""
    plan, settings = sweep_plan(profile, dataset, attack, curves)
    resolved = runner.run(plan)["tasks"]
    by_setting: dict[tuple, dict[str, Any]] = {}
    for entry in resolved:
        found = runner.store.get(entry["key"])
        assert found is not None
        by_setting.setdefault((entry["defense"], entry["option"], entry["value"]), {})[entry["role"]] = found.result
    points = []
    for defense, option, value in settings:
        got = by_setting[(defense, option, value)]
        points.append({"dataset": dataset, "defense": defense, "option": option, "value": value, "strength": value,
                       "psnr": got["attack"]["psnr_mean"], "ssim": got["attack"]["ssim_mean"],
                       "accuracy": got["train"]["accuracy"]})
    result = {"attack": attack, "points": points,
              "config": {"dataset": dataset, "curves": curves, "profile": profile.model_dump(mode="json")}}
    runner.store.set_meta("sweep", result)
    return result
