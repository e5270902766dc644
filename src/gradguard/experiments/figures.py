"""Figures rebuilt from the results store, as PNG files (matplotlib, Agg backend)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .cells import decode_images
from .store import ResultStore
from .tables import entries


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _show(ax, image) -> None:
    picture = image.permute(1, 2, 0).squeeze(-1).numpy()
    ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _most_leaked_image(store: ResultStore, entries: list[dict[str, Any]]) -> int:
    """Index of the image the attack without defense reconstructs best (0 without a ``none`` column):
    the image on which a defense has the most to hide."""
    undefended = next((e for e in entries if e["defense"] == "none"), None)
    cell = undefended and store.get(undefended["key"])
    return max(range(len(cell.result["psnr"])), key=cell.result["psnr"].__getitem__) if cell else 0


def reconstruction_grid(store: ResultStore, plan: dict[str, Any], attack: str, path: Path,
                        moment: str | None = None) -> Path:
    """Rows: datasets; columns: the truth, then the reconstruction under each defense column, for
    each dataset's most leaked image; ``moment`` "trained" for the attacks on the trained model."""
    chosen = [e for e in entries(plan, "attack", adaptive=False)
              if e["attack"] == attack and e.get("moment") == moment]
    datasets = list(dict.fromkeys(p["dataset"] for p in chosen))
    columns = list(dict.fromkeys(p["defense"] for p in chosen))
    fig, axes = plt.subplots(len(datasets), len(columns) + 1, squeeze=False,
                             figsize=(1.4 * (len(columns) + 1), 1.5 * len(datasets) + 0.5))
    for row, dataset in enumerate(datasets):
        here = [p for p in chosen if p["dataset"] == dataset]
        image = _most_leaked_image(store, here)
        for entry in here:
            cell = store.get(entry["key"])
            if cell is None:
                continue
            col = columns.index(entry["defense"]) + 1
            _show(axes[row, col], decode_images(cell.result["reconstruction"])[image])
            scores = cell.result
            axes[row, col].set_xlabel(f"PSNR {scores['psnr'][image]:.1f} dB\nSSIM {scores['ssim'][image]:.2f}",
                                      fontsize=7)
            _show(axes[row, 0], decode_images(cell.result["truth"])[image])
        axes[row, 0].set_ylabel(f"{dataset} #{image}", fontsize=8)
    for col, title in enumerate(["truth"] + columns):
        axes[0, col].set_title(title, fontsize=8)
    on = " on the trained model" if moment == "trained" else ""
    fig.suptitle(f"Reconstructions by {attack}{on} (per dataset, the image it reconstructs best without defense)",
                 fontsize=9)
    return _save(fig, path)


#: Each image of an attack grid is drawn at least this many pixels wide: a 28-pixel digit at
#: its own size is a smudge in an image viewer, and its reconstruction's errors cannot be seen.
MIN_IMAGE_PX = 96


def attack_grid(truth, reconstructions, psnr: list[float], ssim: list[float], title: str, path: Path,
                dpi: int = 100) -> Path:
    """The truth above each reconstruction, scaled up without smoothing (nearest neighbour, so
    every original pixel stays a visible square) to at least :data:`MIN_IMAGE_PX` pixels per
    image, the rows labelled, each reconstruction's PSNR and SSIM under it, and ``title`` (the
    attack, the defense and the dataset) above."""
    count = len(truth)
    side = max(MIN_IMAGE_PX, truth.shape[-1]) / dpi + 0.2  # inches per image, margin included
    width = max(side * count + 1.0, 3.0)
    lines = textwrap.wrap(title, width=int(width * 12))  # about 12 characters per inch at 9 pt
    fig, axes = plt.subplots(2, count, squeeze=False, figsize=(width, 2 * side + 0.8 + 0.2 * len(lines)), dpi=dpi)
    for k in range(count):
        for row, image in ((0, truth[k]), (1, reconstructions[k].clamp(0, 1))):
            picture = image.detach().cpu().permute(1, 2, 0).squeeze(-1).numpy()
            axes[row, k].imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1,
                                interpolation="nearest")
            axes[row, k].set_xticks([])
            axes[row, k].set_yticks([])
        axes[1, k].set_xlabel(f"PSNR {psnr[k]:.1f} dB\nSSIM {ssim[k]:.2f}", fontsize=8)
    axes[0, 0].set_ylabel("truth", fontsize=9)
    axes[1, 0].set_ylabel("reconstruction", fontsize=9)
    fig.suptitle("\n".join(lines), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def accuracy_curves(store: ResultStore, plan: dict[str, Any], path: Path) -> Path:
    """Test accuracy per round, one panel per dataset, one line per defense."""
    trained = entries(plan, "train")
    datasets = list(dict.fromkeys(t["dataset"] for t in trained))
    fig, axes = plt.subplots(1, max(1, len(datasets)), squeeze=False, figsize=(4.2 * max(1, len(datasets)), 3.2))
    for ax, dataset in zip(axes[0], datasets):
        for entry in (t for t in trained if t["dataset"] == dataset):
            cell = store.get(entry["key"])
            if cell is not None and cell.result["curve"]:
                rounds, accuracy = zip(*cell.result["curve"])
                ax.plot(rounds, [100 * a for a in accuracy], marker=".", label=entry["defense"])
        ax.set_title(dataset)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def privacy_utility(points: list[dict[str, Any]], path: Path, title: str = "Privacy vs utility",
                    ylabel: str = "attack PSNR (dB)") -> Path:
    """PSNR (lower = more private) against ACC, one panel per dataset; one series per defense (the
    same colour in every panel), joined in order of strength, with the panel's Pareto front dashed."""
    datasets = list(dict.fromkeys(p["dataset"] for p in points))
    colours = {d: f"C{i % 10}" for i, d in enumerate(dict.fromkeys(p["defense"] for p in points))}
    fig, axes = plt.subplots(1, len(datasets), squeeze=False, figsize=(4.2 * len(datasets), 3.6))
    for ax, dataset in zip(axes[0], datasets):
        here = [p for p in points if p["dataset"] == dataset]
        for defense, colour in colours.items():
            series = sorted((p for p in here if p["defense"] == defense), key=lambda p: p.get("strength", 0.0))
            if series:
                ax.plot([100 * p["accuracy"] for p in series], [p["psnr"] for p in series], marker="o",
                        color=colour, label=defense)
        front = pareto_front(here)
        ax.plot([100 * p["accuracy"] for p in front], [p["psnr"] for p in front], "k--", lw=1, label="Pareto front")
        floors = [p["floor_psnr"] for p in here if "floor_psnr" in p]
        if floors:
            ax.axhline(max(floors), color="grey", lw=1, ls=":", label="floor (no-gradient guess)")
            ax.axhline(max(floors) + 2, color="grey", lw=0.8, ls="-.", label="floor + 2 dB")
        ax.set_title(dataset, fontsize=9)
        ax.set_xlabel("test accuracy (%)  → better utility")
        ax.set_ylabel(f"{ylabel}  ↓ more private")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def pareto_front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points that no other point beats on both privacy (lower PSNR) and accuracy (higher); pass
    the points of one dataset at a time."""
    front = [p for p in points
             if not any(q["psnr"] <= p["psnr"] and q["accuracy"] >= p["accuracy"] and
                        (q["psnr"], q["accuracy"]) != (p["psnr"], p["accuracy"]) for q in points)]
    return sorted(front, key=lambda p: p["accuracy"])
