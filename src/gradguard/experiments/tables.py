"""Tables rebuilt from the results store: privacy (PSNR/SSIM per defense), accuracy (ACC, ART)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import ResultStore, cell_key


@dataclass(frozen=True)
class Table:
    """A titled grid of strings, written as Markdown or CSV."""

    title: str
    header: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.header)
            writer.writerows(self.rows)


def _result(store: ResultStore, kind: str, config: dict[str, Any]) -> dict[str, Any] | None:
    cell = store.get(cell_key(kind, config))
    return cell.result if cell else None


def privacy_table(store: ResultStore, plan: dict[str, Any]) -> Table:
    """Rows: (dataset, attack); columns: each defense; entries: PSNR and SSIM mean ± std, labels."""
    columns = list(dict.fromkeys(p["column"] for p in plan["privacy"]))
    grid: dict[tuple[str, str], dict[str, str]] = {}
    for entry in plan["privacy"]:
        result = _result(store, "attack", entry["config"])
        text = "pending" if result is None else (
            f"{result['psnr_mean']:.1f}±{result['psnr_std']:.1f} dB / {result['ssim_mean']:.2f}±{result['ssim_std']:.2f}"
            f" / {100 * result['label_accuracy']:.0f}%")
        grid.setdefault((entry["dataset"], entry["attack"]), {})[entry["column"]] = text
    rows = [[d, a] + [cells.get(c, "-") for c in columns] for (d, a), cells in grid.items()]
    return Table("Privacy: PSNR / SSIM / label accuracy of reconstructions (lower = more private)",
                 ["dataset", "attack"] + columns, rows)


def accuracy_table(store: ResultStore, plan: dict[str, Any]) -> Table:
    """Rows: (dataset, defense); ACC, ART and ART overhead against ``none`` in the same run."""
    results = {(t["dataset"], t["defense"]): _result(store, "train", t["config"]) for t in plan["training"]}
    rows = []
    for (dataset, defense), result in results.items():
        if result is None:
            rows.append([dataset, defense, "pending", "pending", "pending"])
            continue
        base = results.get((dataset, "none"))
        overhead = f"{100 * (result['art_s'] / base['art_s'] - 1):+.1f}%" if base else "-"
        rows.append([dataset, defense, f"{100 * result['accuracy']:.2f}%", f"{result['art_s'] * 1000:.1f} ms", overhead])
    return Table("Utility: final test accuracy (ACC) and average round time (ART)",
                 ["dataset", "defense", "ACC", "ART", "ART vs none"], rows)


def strength_table(plan: dict[str, Any]) -> Table:
    """Which strength each baseline ran at, and how it was set."""
    rows = []
    for dataset, strengths in plan["strengths"].items():
        for baseline, info in strengths.items():
            option = ", ".join(f"{k}={v:.4g}" for k, v in info["options"].items())
            how = info["method"] if info["method"] != "search" else (
                f"search: PSNR {info['psnr']:.1f} dB vs target {info['target_psnr']:.1f} + 0.5 dB"
                + ("" if info["met"] else " (target not reached at the strongest setting)"))
            rows.append([dataset, baseline, option, how])
    return Table("Baseline strengths at equal privacy", ["dataset", "baseline", "setting", "how it was set"], rows)


def security_table(store: ResultStore, plan: dict[str, Any]) -> Table:
    """Per defense: the best reconstruction over every plain and adaptive attack (the oracle
    apart), against the floor of a guess that uses no gradient (the mean training image)."""
    attacked: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    for entry in plan["privacy"] + plan.get("security", []):
        result = _result(store, "attack", entry["config"])
        if result is None:
            continue
        defense = "soteria" if entry["column"] == "soteria-muted" else entry["column"]
        label = entry["attack"] + ("-muted" if entry["column"] == "soteria-muted" else "")
        attacked.setdefault((entry["dataset"], defense), []).append((label, result))
    accuracy = {(t["dataset"], t["defense"]): _result(store, "train", t["config"]) for t in plan["training"]}
    rows = []
    for (dataset, defense), results in attacked.items():
        fair = [(label, r) for label, r in results if label != "oracle-mute"]
        best_psnr = max(fair, key=lambda item: item[1]["psnr_mean"])
        best_ssim = max(fair, key=lambda item: item[1]["ssim_mean"])
        floor = results[0][1]
        oracle = next((r for label, r in results if label == "oracle-mute"), None)
        detect = next((r for label, r in results if label == "detect-mute"), None)
        trained = accuracy.get((dataset, defense))
        holds = (best_psnr[1]["psnr_mean"] <= floor["floor_psnr"] + 2.0
                 and best_ssim[1]["ssim_mean"] <= floor["floor_ssim"] + 0.05)
        rows.append([
            dataset, defense, f"{floor['floor_psnr']:.1f} dB / {floor['floor_ssim']:.2f}",
            f"{best_psnr[1]['psnr_mean']:.1f} dB ({best_psnr[0]})", f"{best_ssim[1]['ssim_mean']:.2f} ({best_ssim[0]})",
            "yes" if holds else "no",
            "-" if oracle is None else f"{oracle['psnr_mean']:.1f} dB",
            "-" if detect is None or not detect["detection"] else
            f"{detect['detection']['precision']:.2f} / {detect['detection']['recall']:.2f}",
            "-" if trained is None else f"{100 * trained['accuracy']:.2f}%",
        ])
    return Table("Security: best attack per defense (plain and adaptive) against the no-gradient floor",
                 ["dataset", "defense", "floor PSNR / SSIM", "best PSNR (attack)", "best SSIM (attack)",
                  "within 2 dB & 0.05 of floor", "oracle-mute PSNR", "detect-mute precision / recall", "ACC"], rows)
