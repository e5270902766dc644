"""Privacy-utility curves: a defense's strength swept over a range, each point attacked and trained."""

from __future__ import annotations

import math
from typing import Any

from ..defenses import DEFENSES
from ..errors import ConfigError
from .plan import Plan, Task, attack_cell_for, train_cell_for, worst_case_attacks
from .profiles import Profile
from .runner import CellRunner
from .tables import worst_case


def parse_curve(spec: str) -> tuple[str, list[float], dict[str, Any]]:
    """``sigma=1e-3:1:log5;clip=1;allocation=risk``: the swept option and its values (as
    :func:`parse_values`), then options held fixed along the curve."""
    swept, *rest = [part.strip() for part in spec.split(";")]
    name, values = parse_values(swept)
    fixed: dict[str, Any] = {}
    for pair in filter(None, rest):
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"param: expected KEY=VALUE after ';', got {pair!r} in {spec!r}")
        fixed[key.strip().replace("-", "_")] = _value(text.strip())
    return name, values, fixed


def _value(text: str) -> Any:
    """A fixed option's value: a number, true/false, none, or the text itself."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"param: {text!r} is not a finite number")
        return value
    return text


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


def sweep_plan(profile: Profile, dataset: str, attacks: list[str] | None,
               curves: list[tuple[str, str]]) -> tuple[Plan, list]:
    """Per (defense, value): one attack task per attack of the worst case (the given ``attacks``,
    or the profile's plain attacks and every adaptive attack that applies) and one training task;
    returns the plan and the points' settings."""
    settings = []
    for defense, spec in curves:
        option, values, fixed = parse_curve(spec)
        curve = defense + (" (" + ", ".join(f"{k}={v}" for k, v in fixed.items()) + ")" if fixed else "")
        settings += [(curve, defense, option, value, fixed) for value in values]
    plan = Plan(costs=profile.costs)
    for curve, defense, option, value, fixed in settings:
        options = {**fixed, option: value}
        labels = {"dataset": dataset, "defense": defense, "curve": curve, "option": option, "value": value}
        pairs = [(a, None) for a in attacks] if attacks is not None else worst_case_attacks(profile, defense)
        for attack, adaptive in pairs:
            plan.tasks.append(Task(f"{curve}/{option}={value}/{adaptive}/{attack}/attack", "attack",
                                   attack_cell_for(profile, dataset, attack, defense, options, adaptive),
                                   {**labels, "attack": attack, "adaptive": adaptive}))
        plan.tasks.append(Task(f"{curve}/{option}={value}/train", "train",
                               train_cell_for(profile, dataset, defense, options), labels))
    return plan, settings


def sweep(runner: CellRunner, profile: Profile, dataset: str, attacks: list[str] | None,
          curves: list[tuple[str, str]]) -> dict[str, Any]:
    """For each (defense, param spec), attack (worst case over the attack set) and train at every
    value; the points go to the store."""
    plan, settings = sweep_plan(profile, dataset, attacks, curves)
    resolved = runner.run(plan)["tasks"]
    attacked: dict[tuple, list[tuple[dict, dict]]] = {}
    trained: dict[tuple, dict[str, Any]] = {}
    for entry in resolved:
        found = runner.store.get(entry["key"])
        assert found is not None
        point = (entry["curve"], entry["option"], entry["value"])
        if entry["role"] == "train":
            trained[point] = found.result
        else:
            attacked.setdefault(point, []).append((entry, found.result))
    points = []
    for curve, _, option, value, _ in settings:
        worst = worst_case(attacked[(curve, option, value)])
        assert worst is not None
        points.append({"dataset": dataset, "defense": curve, "option": option, "value": value, "strength": value,
                       "psnr": worst.psnr, "ssim": worst.ssim, "psnr_attack": worst.psnr_attack,
                       "ssim_attack": worst.ssim_attack, "floor_psnr": worst.floor_psnr,
                       "floor_ssim": worst.floor_ssim, "label_accuracy": worst.label_accuracy,
                       "accuracy": trained[(curve, option, value)]["accuracy"]})
    result = {"attack": "worst case" if attacks is None else ", ".join(attacks), "points": points,
              "config": {"dataset": dataset, "curves": curves, "attacks": attacks,
                         "profile": profile.model_dump(mode="json")}}
    runner.store.set_meta("sweep", result)
    return result


def equal_privacy(points: list[dict[str, Any]], margin_db: float = 1.0) -> list[dict[str, Any]]:
    """Per defense of a sweep: the accuracy where its worst-case PSNR reaches the floor +
    ``margin_db``, interpolated between the two swept strengths around that crossing (log scale
    in the strength, linear in PSNR and accuracy). ``reached`` is False when no swept strength
    gets there (the accuracy is then that of the strongest setting, the most private one)."""
    rows = []
    for defense in dict.fromkeys(p["defense"] for p in points):
        series = sorted((p for p in points if p["defense"] == defense), key=lambda p: p["value"])
        goal = series[0]["floor_psnr"] + margin_db
        row = {"defense": defense, "option": series[0]["option"], "goal_psnr": goal, "reached": False,
               "value": series[-1]["value"], "accuracy": series[-1]["accuracy"], "psnr": series[-1]["psnr"]}
        if series[0]["psnr"] <= goal:  # already the weakest swept setting is private enough
            row.update(reached=True, value=series[0]["value"], psnr=series[0]["psnr"], accuracy=series[0]["accuracy"])
        for weak, strong in zip(series, series[1:]):
            if not row["reached"] and weak["psnr"] > goal >= strong["psnr"]:
                t = (weak["psnr"] - goal) / (weak["psnr"] - strong["psnr"])
                lo, hi = math.log(max(weak["value"], 1e-300)), math.log(max(strong["value"], 1e-300))
                row.update(reached=True, value=math.exp(lo + t * (hi - lo)), psnr=goal,
                           accuracy=weak["accuracy"] + t * (strong["accuracy"] - weak["accuracy"]))
        rows.append(row)
    return rows
