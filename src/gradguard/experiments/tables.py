"""Tables rebuilt from the results store and a resolved plan (``store.meta("plan")``).

The plan's ``tasks`` are entries ``{role, dataset, attack, adaptive, defense, key}``: role
``attack`` (``adaptive`` None for a plain attack) or ``train``; ``key`` is the stored cell. Its
``strengths`` map ``dataset/defense`` to how that defense's strength was set.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .stats import Estimate, merge_attack_results, merge_train_results, paired_difference
from .store import ResultStore


@dataclass(frozen=True)
class Table:
    """A titled grid of strings, written as Markdown or CSV; ``notes`` are one-line explanations
    printed under the title (the report puts each term's meaning where the term is first used)."""

    title: str
    header: list[str]
    rows: list[list[str]]
    notes: tuple[str, ...] = ()

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""] + [f"- {note}" for note in self.notes] + [""] * bool(self.notes)
        lines += ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.header)
            writer.writerows(self.rows)


def is_oracle(entry: dict[str, Any]) -> bool:
    """An oracle attacker assumes a leak the design forbids: an upper bound, never the verdict."""
    from ..attacks import ADAPTIVE

    adaptive = entry.get("adaptive")
    return bool(adaptive) and adaptive in ADAPTIVE and ADAPTIVE[adaptive].oracle


def attack_label(entry: dict[str, Any]) -> str:
    """``gia`` for a plain attack, ``detect-mute + gia`` for an adaptive one, ``lti`` for one
    that reconstructs by itself; ``gia @ trained`` on the trained model (``moment`` trained)."""
    label = " + ".join(part for part in (entry.get("adaptive"), entry.get("attack")) if part)
    return f"{label} @ trained" if entry.get("moment") == "trained" else label


def entry_labels(task: dict[str, Any]) -> tuple:
    """The table entry a plan task fills: its labels but those that differ per seed (the seed,
    its task id and cell key); the seeds of one entry are merged."""
    return tuple((k, v) for k, v in task.items() if k not in ("seed", "key", "id"))


def entries(plan: dict[str, Any], role: str, adaptive: bool | None = None) -> list[dict[str, Any]]:
    """The plan's entries of one role; for attacks, only plain (False) or only adaptive (True) ones.
    The seeds of a multi-seed run are one entry: its ``keys`` are the cells of every seed, in seed
    order, and :func:`result` merges them."""
    chosen = [e for e in plan["tasks"] if e["role"] == role]
    if adaptive is not None:
        chosen = [e for e in chosen if bool(e.get("adaptive")) == adaptive]
    grouped: dict[tuple, list[dict[str, Any]]] = {}
    for entry in chosen:
        grouped.setdefault(entry_labels(entry), []).append(entry)
    merged = []
    for group in grouped.values():
        group = sorted(group, key=lambda e: e.get("seed") or 0)
        merged.append({**group[0], "keys": [e["key"] for e in group], "seeds": [e.get("seed") for e in group]})
    return merged


def result(store: ResultStore, entry: dict[str, Any]) -> dict[str, Any] | None:
    """An entry's result, merged over its seeds (None until every seed's cell is stored), with
    95% intervals (``psnr_ci``, ``ssim_ci`` over the targets; ``accuracy_ci`` over the seeds)."""
    found = []
    for key in entry.get("keys", [entry["key"]]):
        cell = store.get(key)
        if cell is None:
            return None
        found.append(cell.result)
    if entry.get("role") == "train":
        return merge_train_results(found)
    return merge_attack_results(found) if "psnr_mean" in found[0] else found[0]


def _estimate(found: dict[str, Any], metric: str) -> Estimate:
    """A stored mean with its 95% interval (none for a single value)."""
    return Estimate(found[metric if metric == "accuracy" else f"{metric}_mean"], found.get(f"{metric}_ci", math.nan),
                    0)


def _privacy_text(found: dict[str, Any] | None) -> str:
    if found is None:
        return "pending"
    return (f"{_estimate(found, 'psnr').text(1, unit=' dB')} / {_estimate(found, 'ssim').text(2)}"
            f" / {100 * found['label_accuracy']:.0f}%")


def _grid(store: ResultStore, chosen: list[dict[str, Any]], title: str) -> Table:
    columns = list(dict.fromkeys(e["defense"] for e in chosen))
    grid: dict[tuple[str, str], dict[str, str]] = {}
    for entry in chosen:
        grid.setdefault((entry["dataset"], attack_label(entry)), {})[entry["defense"]] = \
            _privacy_text(result(store, entry))
    rows = [[d, a] + [cells.get(c, "-") for c in columns] for (d, a), cells in grid.items()]
    return Table(title, ["dataset", "attack"] + columns, rows)


def privacy_table(store: ResultStore, plan: dict[str, Any]) -> Table:
    """Rows: (dataset, plain attack, at each moment of training); columns: each defense; entries:
    PSNR and SSIM, each a mean ± its 95% interval over the targets, and the labels recovered."""
    return _grid(store, entries(plan, "attack", adaptive=False),
                 "Privacy: PSNR / SSIM / label accuracy of reconstructions (lower = more private; "
                 "± the 95% interval of the mean over the targets)")


def adaptive_table(store: ResultStore, plan: dict[str, Any]) -> Table:
    """Rows: (dataset, adaptive attack + the attack inverting its gradient); columns: the defenses
    it applies to ("-" elsewhere)."""
    return _grid(store, entries(plan, "attack", adaptive=True),
                 "Adaptive attacks: PSNR / SSIM / label accuracy against the defenses each applies to")


def accuracy_table(store: ResultStore, plan: dict[str, Any]) -> Table:
    """Rows: (dataset, defense); ACC (± its 95% interval over seeds), ACC against ``none`` paired
    by seed (``*``: the interval excludes zero), ART and its overhead against ``none``."""
    results = {(e["dataset"], e["defense"]): result(store, e) for e in entries(plan, "train")}
    rows = []
    for (dataset, defense), found in results.items():
        if found is None:
            rows.append([dataset, defense, "pending", "pending", "pending", "pending"])
            continue
        base = results.get((dataset, "none"))
        overhead = overhead_text(found["art_s"] / base["art_s"]) if base else "-"
        difference = "-"
        if base is not None and defense != "none":
            paired = paired_difference(found["accuracy_each"], base["accuracy_each"])
            difference = paired.text(2, 100, " pts") + (" *" if paired.excludes_zero() else "")
        acc = _estimate(found, "accuracy").text(2, 100, "%")
        rows.append([dataset, defense, acc, difference, f"{found['art_s'] * 1000:.1f} ms", overhead])
    return Table("Utility: final test accuracy (ACC, ± its 95% interval over seeds) and average round time (ART)",
                 ["dataset", "defense", "ACC", "ACC vs none (paired by seed; * significant)", "ART", "ART vs none"],
                 rows)


def _number(value: Any) -> str:
    """A number to 4 significant digits; any other option value (a mode's name) as it is."""
    return f"{value:.4g}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def overhead_text(ratio: float) -> str:
    """A time ratio against no defense, readable at any size: ``+12.5%`` up to twice as long,
    then ``x3.4`` and ``x456`` (``+45503.8%`` says the same, but nobody reads it)."""
    if ratio < 2:
        return f"{100 * (ratio - 1):+.1f}%"
    return f"x{ratio:.1f}" if ratio < 10 else f"x{ratio:.0f}"


def strength_table(plan: dict[str, Any]) -> Table:
    """Which strength each defense with a strength knob ran at, and how it was set."""
    rows = []
    for search_id, info in plan["strengths"].items():
        dataset, _, defense = search_id.rpartition("/")
        option = ", ".join(f"{k}={_number(v)}" for k, v in info["options"].items())
        how = info["method"] if info["method"] != "search" else (
            f"search: PSNR {info['psnr']:.1f} dB vs target {info['target_psnr']:.1f} dB"
            + ("" if info["met"] else " (target not reached at the strongest setting)"))
        rows.append([dataset, defense, option, how])
    return Table("Strengths at equal privacy", ["dataset", "defense", "setting", "how it was set"], rows)


def attacks_per_defense(store: ResultStore, plan: dict[str, Any]) -> dict[tuple[str, str], list[tuple[dict, dict]]]:
    """Per (dataset, defense): every finished attack on it, plain and adaptive: (entry, result)."""
    attacked: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    for entry in entries(plan, "attack"):
        found = result(store, entry)
        if found is not None:
            attacked.setdefault((entry["dataset"], entry["defense"]), []).append((entry, found))
    return attacked


@dataclass(frozen=True)
class WorstCase:
    """A defense's privacy as the worst case over attacks: per target, the best PSNR and the
    best SSIM of any non-oracle attack (plain, adaptive, learned), averaged over the targets;
    the attack with the highest mean of each; the better of the two no-gradient guesses."""

    psnr: float
    ssim: float
    psnr_attack: str
    ssim_attack: str
    label_accuracy: float
    floor_psnr: float
    floor_ssim: float
    mean_floor: tuple[float, float]
    class_floor: tuple[float, float]

    def holds(self, margin_db: float, margin_ssim: float) -> bool:
        return self.psnr <= self.floor_psnr + margin_db and self.ssim <= self.floor_ssim + margin_ssim


def worst_case(attacked: list[tuple[dict, dict]]) -> WorstCase | None:
    """The worst case over the non-oracle attacks in ``attacked`` ((entry, result) pairs on the
    same targets), or None when there are none."""
    fair = [(e, r) for e, r in attacked if not is_oracle(e)]
    if not fair:
        return None
    psnr = torch.tensor([r.get("psnr_each", r["psnr"]) for _, r in fair])
    ssim = torch.tensor([r.get("ssim_each", r["ssim"]) for _, r in fair])
    by_psnr = max(fair, key=lambda item: item[1]["psnr_mean"])
    by_ssim = max(fair, key=lambda item: item[1]["ssim_mean"])
    first = fair[0][1]
    mean_floor = (first["floor_psnr"], first["floor_ssim"])
    class_floor = (first.get("class_floor_psnr", mean_floor[0]), first.get("class_floor_ssim", mean_floor[1]))
    return WorstCase(float(psnr.max(0).values.mean()), float(ssim.max(0).values.mean()), attack_label(by_psnr[0]),
                     attack_label(by_ssim[0]), max(r["label_accuracy"] for _, r in fair),
                     max(mean_floor[0], class_floor[0]), max(mean_floor[1], class_floor[1]), mean_floor, class_floor)


def worst_cases(store: ResultStore, plan: dict[str, Any]) -> dict[tuple[str, str], WorstCase]:
    """Per (dataset, defense): its worst case over every finished non-oracle attack."""
    found = {key: worst_case(attacked) for key, attacked in attacks_per_defense(store, plan).items()}
    return {key: value for key, value in found.items() if value is not None}


def security_table(store: ResultStore, plan: dict[str, Any], margin_db: float = 2.0,
                   margin_ssim: float = 0.05) -> Table:
    """Per defense: the worst case over every plain, adaptive and learned attack (the oracle
    apart), against the better of two guesses that use no gradient: the dataset's mean training
    image, and the mean image of the target's own label (what a leaked label alone gives)."""
    accuracy = {(e["dataset"], e["defense"]): result(store, e) for e in entries(plan, "train")}
    rows = []
    for (dataset, defense), attacked in attacks_per_defense(store, plan).items():
        worst = worst_case(attacked)
        if worst is None:
            continue
        oracle = max((r["psnr_mean"] for e, r in attacked if is_oracle(e)), default=None)
        detected = [(attack_label(e), r["detection"]) for e, r in attacked if r.get("detection")]
        trained = accuracy.get((dataset, defense))
        rows.append([
            dataset, defense, f"{worst.mean_floor[0]:.1f} dB / {worst.mean_floor[1]:.2f}",
            f"{worst.class_floor[0]:.1f} dB / {worst.class_floor[1]:.2f}",
            f"{worst.psnr:.1f} dB ({worst.psnr_attack})", f"{worst.ssim:.2f} ({worst.ssim_attack})",
            "yes" if worst.holds(margin_db, margin_ssim) else "no",
            f"{100 * worst.label_accuracy:.0f}%",
            "-" if oracle is None else f"{oracle:.1f} dB",
            "; ".join(f"{label}: {d['precision']:.2f} / {d['recall']:.2f}" for label, d in detected) or "-",
            "-" if trained is None else f"{100 * trained['accuracy']:.2f}%",
        ])
    return Table("Security: worst case over every attack per defense against the no-gradient floors",
                 ["dataset", "defense", "floor: mean image", "floor: own label's mean image",
                  "worst-case PSNR (strongest attack)", "worst-case SSIM (strongest attack)",
                  f"within {margin_db:g} dB & {margin_ssim:g} of the better floor", "labels recovered",
                  "oracle PSNR", "detection precision / recall", "ACC"], rows)
