"""Figures rebuilt from the results store, as PNG files (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .cells import decode_images  # noqa: E402
from .store import ResultStore, cell_key  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _show(ax, image) -> None:
    picture = image.permute(1, 2, 0).squeeze(-1).numpy()
    ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def reconstruction_grid(store: ResultStore, plan: dict[str, Any], attack: str, path: Path, image: int = 0) -> Path:
    """Rows: datasets; columns: the truth, then the reconstruction under each defense column."""
    entries = [p for p in plan["privacy"] if p["attack"] == attack]
    datasets = list(dict.fromkeys(p["dataset"] for p in entries))
    columns = list(dict.fromkeys(p["column"] for p in entries))
    fig, axes = plt.subplots(len(datasets), len(columns) + 1, squeeze=False,
                             figsize=(1.4 * (len(columns) + 1), 1.5 * len(datasets) + 0.4))
    for row, dataset in enumerate(datasets):
        for entry in (p for p in entries if p["dataset"] == dataset):
            cell = store.get(cell_key("attack", entry["config"]))
            if cell is None:
                continue
            col = columns.index(entry["column"]) + 1
            _show(axes[row, col], decode_images(cell.result["reconstruction"])[image])
            axes[row, col].set_xlabel(f"{cell.result['psnr'][image]:.1f} dB", fontsize=7)
            _show(axes[row, 0], decode_images(cell.result["truth"])[image])
        axes[row, 0].set_ylabel(dataset, fontsize=8)
    for col, title in enumerate(["truth"] + columns):
        axes[0, col].set_title(title, fontsize=8)
    fig.suptitle(f"Reconstructions by {attack}", fontsize=9)
    return _save(fig, path)


def accuracy_curves(store: ResultStore, plan: dict[str, Any], path: Path) -> Path:
    """Test accuracy per round, one panel per dataset, one line per defense."""
    datasets = list(dict.fromkeys(t["dataset"] for t in plan["training"]))
    fig, axes = plt.subplots(1, max(1, len(datasets)), squeeze=False, figsize=(4.2 * max(1, len(datasets)), 3.2))
    for ax, dataset in zip(axes[0], datasets):
        for entry in (t for t in plan["training"] if t["dataset"] == dataset):
            cell = store.get(cell_key("train", entry["config"]))
            if cell is not None and cell.result["curve"]:
                rounds, accuracy = zip(*cell.result["curve"])
                ax.plot(rounds, [100 * a for a in accuracy], marker=".", label=entry["defense"])
        ax.set_title(dataset)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def privacy_utility(points: list[dict[str, Any]], path: Path, title: str = "Privacy vs utility") -> Path:
    """PSNR (lower = more private) against ACC; one series per (dataset, defense), joined in
    order of strength, with the Pareto front (no point both more private and more accurate) marked."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    series: dict[str, list[dict[str, Any]]] = {}
    for point in points:
        series.setdefault(f"{point['dataset']}: {point['defense']}", []).append(point)
    for label, pts in series.items():
        pts.sort(key=lambda p: p.get("strength", 0.0))
        ax.plot([100 * p["accuracy"] for p in pts], [p["psnr"] for p in pts], marker="o", label=label)
    front = pareto_front(points)
    ax.plot([100 * p["accuracy"] for p in front], [p["psnr"] for p in front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("test accuracy (%)  → better utility")
    ax.set_ylabel("attack PSNR (dB)  ↓ more private")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return _save(fig, path)


def pareto_front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points that no other point beats on both privacy (lower PSNR) and accuracy (higher)."""
    front = [p for p in points
             if not any(q["psnr"] <= p["psnr"] and q["accuracy"] >= p["accuracy"] and
                        (q["psnr"], q["accuracy"]) != (p["psnr"], p["accuracy"]) for q in points)]
    return sorted(front, key=lambda p: p["accuracy"])
