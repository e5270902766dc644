"""`gradguard report DIR`: tables (Markdown, CSV), figures (PNG) and one self-contained HTML page,
all rebuilt from the run folder's results store."""

from __future__ import annotations

import base64
import html
import json
import platform
from pathlib import Path
from typing import Any

from ..errors import GradguardError
from ..outlock import FolderLock
from . import figures
from .store import ResultStore
from .tables import (
    Table,
    accuracy_table,
    adaptive_table,
    entries,
    privacy_table,
    result,
    security_table,
    strength_table,
    worst_cases,
)


def versions() -> dict[str, str]:
    import numpy
    import torch

    from .. import __version__

    return {"gradguard": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "threads": str(torch.get_num_threads())}


def utility_points(store: ResultStore, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """(worst-case PSNR over every non-oracle attack, ACC) for every trained defense of a
    reproduction. One attack alone would hide what another finds (DLG fails against every
    defense at equal privacy, GIA does not; Soteria falls to the muted attack)."""
    worst = worst_cases(store, plan)
    points = []
    for entry in entries(plan, "train"):
        trained = result(store, entry)
        key = (entry["dataset"], entry["defense"])
        if trained and key in worst:
            points.append({"dataset": entry["dataset"], "defense": entry["defense"], "psnr": worst[key].psnr,
                           "ssim": worst[key].ssim, "accuracy": trained["accuracy"]})
    return points


def build_report(folder: str | Path) -> Path:
    """Write every table and figure of the run in ``folder`` under ``folder/report``; returns the HTML path."""
    folder = Path(folder)
    if not (folder / ResultStore.FILENAME).is_file():
        raise GradguardError(f"report: no results store in {folder} (run `gradguard reproduce` or `sweep` there first)")
    store = ResultStore(folder)
    # Two builds at once (a run ending while `gradguard report` rebuilds) take turns: both read the
    # same store, so the one that writes last leaves complete files instead of a mix of two.
    with FolderLock(folder / "report", "gradguard report", wait=True, option="report"):
        return _build(folder, store)


def _build(folder: Path, store: ResultStore) -> Path:
    out = folder / "report"
    tables: list[Table] = []
    images: list[tuple[str, Path]] = []
    plan = store.meta("plan")
    if plan:
        verdict = (store.meta("profile") or {}).get("verdict", {})
        tables += [privacy_table(store, plan), adaptive_table(store, plan), accuracy_table(store, plan),
                   security_table(store, plan, **verdict), strength_table(plan)]
        for attack in dict.fromkeys(p["attack"] for p in entries(plan, "attack", adaptive=False)):
            images.append((f"Reconstructions by {attack}",
                           figures.reconstruction_grid(store, plan, attack, out / f"reconstructions_{attack}.png")))
        if entries(plan, "train"):
            curves = figures.accuracy_curves(store, plan, out / "accuracy_curves.png")
            images.append(("Test accuracy per round", curves))
        points = utility_points(store, plan)
        if points:
            images.append(("Privacy (the strongest attack's PSNR) vs utility (ACC)", figures.privacy_utility(
                points, out / "privacy_utility.png", ylabel="strongest attack's PSNR (dB)")))
    sweep = store.meta("sweep")
    if sweep:
        tables.append(sweep_table(sweep))
        if all("floor_psnr" in p for p in sweep["points"]):
            tables.append(equal_privacy_table(sweep))
        images.append(("Privacy-utility frontier (sweep)", figures.privacy_utility(
            sweep["points"], out / "sweep.png", title=f"Frontier: {sweep['attack']} PSNR against ACC",
            ylabel=f"{sweep['attack']} PSNR (dB)")))
    if not tables:
        raise GradguardError(f"report: the store in {folder} holds no finished reproduction or sweep yet")
    for index, table in enumerate(tables):
        table.write_csv(out / f"table{index + 1}.csv")
    (out / "tables.md").write_text("\n".join(t.markdown() for t in tables))
    page = out / "index.html"
    page.write_text(render_html(tables, images, store))
    return page


def sweep_table(sweep: dict[str, Any]) -> Table:
    rows = [[p["dataset"], p["defense"], f"{p['option']}={p['value']:.4g}",
             f"{p['psnr']:.2f} ({p.get('psnr_attack', sweep['attack'])})",
             f"{p['ssim']:.3f} ({p.get('ssim_attack', sweep['attack'])})",
             f"{p['floor_psnr']:.2f} / {p['floor_ssim']:.3f}" if "floor_psnr" in p else "-",
             f"{100 * p['accuracy']:.2f}%"] for p in sweep["points"]]
    return Table(f"Privacy-utility frontier ({sweep['attack']}): PSNR and SSIM per strength, against the floor",
                 ["dataset", "defense", "setting", "PSNR (dB, strongest attack)", "SSIM (strongest attack)",
                  "floor PSNR / SSIM", "ACC"], rows)


def equal_privacy_table(sweep: dict[str, Any], margin_db: float = 1.0) -> Table:
    """ACC of each swept defense where its worst case reaches the floor + ``margin_db``."""
    from .sweep import equal_privacy

    rows = []
    for row in equal_privacy(sweep["points"], margin_db):
        where = f"{row['option']}={row['value']:.4g}" + ("" if row["reached"] else " (not reached: strongest swept)")
        rows.append([row["defense"], where, f"{row['psnr']:.2f} dB (goal {row['goal_psnr']:.2f})",
                     f"{100 * row['accuracy']:.2f}%"])
    return Table(f"Accuracy at equal worst-case privacy (PSNR = floor + {margin_db:g} dB)",
                 ["defense", "strength", "worst-case PSNR", "ACC"], rows)


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    return f"<h2>{html.escape(table.title)}</h2><table><tr>{head}</tr>{body}</table>"


def render_html(tables: list[Table], images: list[tuple[str, Path]], store: ResultStore) -> str:
    """One page, images embedded as data URIs so it can be mailed or archived as a single file."""
    figures_html = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{html.escape(title)} '
        f'({html.escape(path.name)})</figcaption></figure>' for title, path in images)
    config = {"profile": store.meta("profile"), "sweep": (store.meta("sweep") or {}).get("config"),
              "versions": versions(), "cells": store.count()}
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:4px 8px}th{background:#f3f3f3}"
             "img{max-width:100%}figure{margin:1.5em 0}pre{background:#f7f7f7;padding:1em;overflow:auto}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>gradguard report</title>"
            f"<style>{style}</style></head><body><h1>gradguard report</h1>"
            f"<p>PSNR and SSIM of reconstructions against the truth (lower = more private), label accuracy of the "
            f"attack, the global model's test accuracy (ACC) and average round time (ART).</p>"
            + "".join(_html_table(t) for t in tables) + figures_html
            + f"<h2>Configuration and versions</h2><pre>{html.escape(json.dumps(config, indent=2, default=str))}</pre>"
            + "</body></html>")
