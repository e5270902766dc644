"""`gradguard report DIR`: tables (Markdown, CSV), figures (PNG) and one self-contained HTML page,
all rebuilt from the run folder's results store."""

from __future__ import annotations

import base64
import html
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass, replace
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


#: Terms a reader meets in the tables, each explained in one line under the first table that uses
#: it: (term, whether a table uses it, the explanation).
GLOSSARY: tuple[tuple[str, Callable[[Table], bool], str], ...] = (
    ("floor", lambda t: "floor" in t.title.lower() or any("floor" in h for h in t.header),
     "floor: the score of a guess that uses no gradient at all (the dataset's mean image, or the mean image of "
     "the target's own label); an attack that gets no closer than this learned nothing from the gradient."),
    ("verdict", lambda t: any("of the better floor" in h for h in t.header),
     "verdict column (within ... of the better floor): yes when even the strongest attack's PSNR and SSIM stay "
     "within that margin of the better floor, so the defense holds; no when some attack gets clearly closer."),
    ("muted attack", lambda t: any("mute" in cell for row in t.rows for cell in row[:2]),
     "muted attack (oracle-mute, detect-mute, mute-perturbed): matches only the gradient entries the defense left "
     "clean, leaving out (muting) the ones it perturbed; oracle-mute is told which they are, an upper bound no "
     "real attacker reaches."),
    ("overhead", lambda t: any(h == "ART vs none" for h in t.header),
     "ART vs none: the round time against training without defense, as +x% up to twice as long, then as a "
     "factor (x456: 456 times as long)."),
)


def explain_terms(tables: list[Table]) -> list[Table]:
    """Each table with the one-line explanations of the terms it is the first to use."""
    explained: set[str] = set()
    result = []
    for table in tables:
        notes = [text for term, uses, text in GLOSSARY if term not in explained and uses(table)]
        explained.update(term for term, uses, _ in GLOSSARY if uses(table))
        result.append(replace(table, notes=(*table.notes, *notes)))
    return result


@dataclass(frozen=True)
class Figure:
    """A figure of the report: its heading, the PNG, and one sentence on how to read it."""

    title: str
    path: Path
    how_to_read: str


def _build(folder: Path, store: ResultStore) -> Path:
    out = folder / "report"
    tables: list[Table] = []
    images: list[Figure] = []
    plan = store.meta("plan")
    if plan:
        verdict = (store.meta("profile") or {}).get("verdict", {})
        tables += [privacy_table(store, plan), adaptive_table(store, plan), accuracy_table(store, plan),
                   security_table(store, plan, **verdict), strength_table(plan)]
        for attack, moment in dict.fromkeys((p["attack"], p.get("moment"))
                                            for p in entries(plan, "attack", adaptive=False)):
            on, suffix = (" on the trained model", "_trained") if moment == "trained" else ("", "")
            images.append(Figure(
                f"Reconstructions by {attack}{on}",
                figures.reconstruction_grid(store, plan, attack, out / f"reconstructions_{attack}{suffix}.png",
                                            moment),
                "Left the true image, then what the attack rebuilt from its gradient under each defense, with the "
                "PSNR under it: the less the rebuilt image looks like the truth, the better the defense hides it."))
        if entries(plan, "train"):
            images.append(Figure(
                "Test accuracy per round", figures.accuracy_curves(store, plan, out / "accuracy_curves.png"),
                "One line per defense: the global model's test accuracy as training goes on; a defense that costs "
                "little stays close to the none line."))
        points = utility_points(store, plan)
        if points:
            images.append(Figure(
                "Privacy (the strongest attack's PSNR) vs utility (ACC)",
                figures.privacy_utility(points, out / "privacy_utility.png", ylabel="strongest attack's PSNR (dB)"),
                "One point per defense: right is more accurate, down is more private (lower PSNR); the best "
                "defenses sit bottom right, on or near the dashed Pareto front, and at the dotted floor an attack "
                "learns nothing from the gradient."))
    sweep = store.meta("sweep")
    if sweep:
        tables.append(sweep_table(sweep))
        if all("floor_psnr" in p for p in sweep["points"]):
            tables.append(equal_privacy_table(sweep))
        images.append(Figure(
            "Privacy-utility frontier (sweep)",
            figures.privacy_utility(sweep["points"], out / "sweep.png",
                                    title=f"Frontier: {sweep['attack']} PSNR against ACC",
                                    ylabel=f"{sweep['attack']} PSNR (dB)"),
            "One line per defense, one point per swept strength: right is more accurate, down is more private; "
            "at equal height, the line further right costs less accuracy for the same privacy."))
    if not tables:
        raise GradguardError(f"report: the store in {folder} holds no finished reproduction or sweep yet")
    tables = explain_terms(tables)
    partial = (plan or {}).get("partial")
    if partial and partial["done"] < partial["of"]:  # an unfinished reproduction: said above every table
        note = (f"partial run: {partial['done']} of {partial['of']} table cells finished; shown are the entries "
                f"whose every seed is finished, and every worst case covers those only (rerun the same "
                f"reproduce command to finish)")
        tables = [replace(t, notes=(note, *t.notes)) for t in tables]
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
    notes = "".join(f"<p class='note'>{html.escape(note)}</p>" for note in table.notes)
    return f"<h2>{html.escape(table.title)}</h2>{notes}<table><tr>{head}</tr>{body}</table>"


def render_html(tables: list[Table], images: list[Figure], store: ResultStore) -> str:
    """One page, images embedded as data URIs so it can be mailed or archived as a single file."""
    figures_html = "".join(
        f'<h2>{html.escape(f.title)}</h2><p class="note">{html.escape(f.how_to_read)}</p>'
        f'<figure><img alt="{html.escape(f.title)}" src="data:image/png;base64,'
        f'{base64.b64encode(f.path.read_bytes()).decode()}"><figcaption>{html.escape(f.title)} '
        f'({html.escape(f.path.name)})</figcaption></figure>' for f in images)
    config = {"profile": store.meta("profile"), "sweep": (store.meta("sweep") or {}).get("config"),
              "versions": versions(), "cells": store.count()}
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:4px 8px}th{background:#f3f3f3}"
             "img{max-width:100%}figure{margin:1.5em 0}pre{background:#f7f7f7;padding:1em;overflow:auto}"
             ".note{color:#555;font-size:13px;margin:0.3em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>gradguard report</title>"
            f"<style>{style}</style></head><body><h1>gradguard report</h1>"
            f"<p>PSNR and SSIM of reconstructions against the truth (lower = more private), label accuracy of the "
            f"attack, the global model's test accuracy (ACC) and average round time (ART).</p>"
            + "".join(_html_table(t) for t in tables) + figures_html
            + f"<h2>Configuration and versions</h2><pre>{html.escape(json.dumps(config, indent=2, default=str))}</pre>"
            + "</body></html>")
