"""The audit's HTML page: verdicts, reconstruction grids large enough to judge by eye, the
frontier plot and the recommendation, in one self-contained file (images as data URIs)."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..experiments import figures
from ..experiments.cells import decode_images
from ..experiments.store import ResultStore
from ..experiments.tables import attack_label, is_oracle
from ..metrics import match
from .result import AuditResult

__all__ = ["MIN_TILE_PX", "reconstruction_grid", "render_page", "tile_scale"]

#: The smallest side, in pixels, of one image in a reconstruction grid.
MIN_TILE_PX = 96
_LABEL_W, _CAPTION_H, _GAP = 130, 28, 8


def tile_scale(height: int, width: int) -> int:
    """The whole-number upscaling (nearest neighbour) that makes an image at least
    :data:`MIN_TILE_PX` pixels on its shorter side."""
    return max(1, math.ceil(MIN_TILE_PX / min(height, width)))


def _best_per_target(pairs: list[tuple[dict, dict]]) -> tuple[torch.Tensor, list[torch.Tensor], list[str], list[float]]:
    """The truth and, per target, the reconstruction of the attack that reconstructs it best."""
    truth = decode_images(pairs[0][1]["truth"])
    images, names, scores = [], [], []
    for target in range(len(truth)):
        entry, found = max(pairs, key=lambda item: item[1]["psnr_each"][target])
        recon = decode_images(found["reconstruction"])
        index = match(recon, truth)
        position = int((index == target).nonzero()[0]) if bool((index == target).any()) else target
        images.append(recon[position])
        names.append(attack_label(entry))
        scores.append(float(found["psnr_each"][target]))
    return truth, images, names, scores


def reconstruction_grid(store: ResultStore, tasks: list[dict[str, Any]], defenses: list[str], batch_size: int,
                        path: Path) -> tuple[Path, int]:
    """Rows: the truth, then each defense's reconstructions by the strongest attack per target;
    each image upscaled to at least :data:`MIN_TILE_PX` pixels. Returns the path and the tile side."""
    from PIL import Image, ImageDraw

    rows: list[tuple[str, list[torch.Tensor], list[str]]] = []
    truth: torch.Tensor | None = None
    for defense in defenses:
        pairs = []
        for entry in tasks:
            if entry["role"] == "attack" and entry["defense"] == defense and entry["batch_size"] == batch_size \
                    and not is_oracle(entry):
                found = store.get(entry["key"])
                if found is not None:
                    pairs.append((entry, found.result))
        if not pairs:
            continue
        truth, images, names, scores = _best_per_target(pairs)
        rows.append((defense, images, [f"{s:.1f} dB\n{n}" for s, n in zip(scores, names)]))
    assert truth is not None
    rows.insert(0, ("truth", list(truth), ["" for _ in truth]))
    channels, height, width = truth.shape[1:]
    scale = tile_scale(height, width)
    tile_h, tile_w = height * scale, width * scale
    cell_w = max(tile_w, 150) + _GAP
    cell_h = tile_h + _CAPTION_H + _GAP
    canvas = Image.new("RGB", (_LABEL_W + cell_w * len(truth), cell_h * len(rows) + _GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, images, captions) in enumerate(rows):
        top = _GAP + r * cell_h
        draw.text((6, top + tile_h // 2 - 6), label, fill="black")
        for c, (image, caption) in enumerate(zip(images, captions)):
            array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            array = np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)
            picture = Image.fromarray(array[..., 0] if channels == 1 else array).convert("RGB")
            left = _LABEL_W + c * cell_w
            canvas.paste(picture, (left, top))
            if caption:
                draw.multiline_text((left, top + tile_h + 1), caption, fill="black", spacing=1)
    canvas.save(path)
    return path, min(tile_h, tile_w)


def _embed(path: Path, title: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}" style="max-width:none">'
            f"<figcaption>{html.escape(title)}</figcaption></figure>")


def _row(cells: list[str], head: bool = False) -> str:
    tag = "th" if head else "td"
    return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


def render_page(result: AuditResult, grids: list[tuple[str, Path]], frontier: Path | None) -> str:
    """The HTML page of an audit."""
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px}"
             "th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow:auto}li{margin:.4em 0}"
             ".holds{color:#175e1f}.leaks{color:#a31b1b}figure{margin:1.5em 0;overflow-x:auto}")
    model, data = result.model, result.dataset
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>gradguard audit: {html.escape(model['label'])}"
             f"</title><style>{style}</style></head><body>",
             f"<h1>gradguard audit: {html.escape(model['label'])} on {html.escape(data['label'])}</h1>",
             f"<p>{html.escape(result.summary)}</p>",
             f"<p>Gradients were taken in <b>{html.escape(result.gradient_mode)} mode</b>: "
             f"{html.escape(model['mode_note'])}</p>", "<h2>Verdicts</h2><ul>"]
    for defense in result.defenses:
        css = "holds" if defense.holds else "leaks"
        parts.append(f"<li class='{css}'>{html.escape(defense.verdict)}</li>")
    parts.append("</ul><h2>Worst case per defense and batch size</h2><table>")
    parts.append(_row(["defense", "setting", "batch size", "worst-case PSNR (attack)", "worst-case SSIM (attack)",
                       "floor PSNR / SSIM", "labels recovered", "holds", "accuracy", "round time"], head=True))
    for defense in result.defenses:
        setting = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in defense.options.items())
        for batch in defense.batches:
            parts.append(_row([
                defense.defense, setting or "-", str(batch.batch_size), f"{batch.psnr:.2f} dB ({batch.psnr_attack})",
                f"{batch.ssim:.3f} ({batch.ssim_attack})", f"{batch.floor_psnr:.2f} dB / {batch.floor_ssim:.3f}",
                f"{100 * batch.label_accuracy:.0f}%", "yes" if batch.holds else "no",
                "-" if defense.accuracy is None else f"{100 * defense.accuracy:.1f}%",
                "-" if defense.round_time_s is None else f"{1000 * defense.round_time_s:.0f} ms"]))
    parts.append("</table>")
    searched = [d for d in result.defenses if d.strength and d.strength.get("tried")]
    if searched:
        parts.append("<h2>Strength searches (worst-case PSNR at each probe, batch size 1)</h2><table>")
        parts.append(_row(["defense", "target PSNR", "probes (strength: PSNR)", "found"], head=True))
        for d in searched:
            assert d.strength is not None
            probes = "; ".join(f"{s:.4g}: {p:.1f} dB" for s, p in d.strength["tried"])
            found = f"{d.strength['strength']:.4g}" + ("" if d.strength.get("met") else " (target not reached)")
            parts.append(_row([d.defense, f"{d.strength['target_psnr']:.2f} dB", probes, found]))
        parts.append("</table>")
    parts.append("<h2>Recommendation</h2>")
    rec = result.recommendation
    if rec is None:
        parts.append("<p>No audited defense held at every batch size: none is recommended. Try a stronger range "
                     "(--budget full) or other defenses (--defenses).</p>")
    else:
        parts.append(f"<p>{html.escape(rec.reason)}.</p><p>Library:</p><pre>from gradguard import Defense\n"
                     f"{html.escape(rec.library)}</pre><p>Flower (client app and server app):</p>"
                     f"<pre>from flwr.clientapp import ClientApp\nfrom gradguard.flower import DefenseMod\n"
                     f"{html.escape(rec.flower_client)}\n\nfrom flwr.serverapp.strategy import FedAvg\n"
                     f"from gradguard.flower import DefendedStrategy\n{html.escape(rec.flower_server)}</pre>")
    parts.append("<h2>Reconstructions</h2><p>Per target, the reconstruction of the attack that reconstructs it best "
                 "(the worst case), with its PSNR; each image enlarged to at least 96 pixels a side.</p>")
    parts += [_embed(path, title) for title, path in grids]
    if frontier is not None:
        parts.append("<h2>Privacy against accuracy</h2>")
        parts.append(_embed(frontier, "Worst-case PSNR against test accuracy per defense at its audited strength; "
                                      "the floor and floor + 2 dB dotted"))
    if result.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in result.notes) + "</ul>")
    config = {"model": model, "dataset": data, "settings": result.settings}
    parts.append(f"<h2>Configuration</h2><pre>{html.escape(json.dumps(config, indent=2, default=str))}</pre>")
    parts.append("</body></html>")
    return "".join(parts)


def frontier_plot(result: AuditResult, path: Path) -> Path | None:
    """Worst-case PSNR against accuracy, one panel per batch size (the figures module's plot)."""
    points = []
    for defense in result.defenses:
        if defense.accuracy is None:
            continue
        for batch in defense.batches:
            points.append({"dataset": f"batch size {batch.batch_size}", "defense": defense.defense, "psnr": batch.psnr,
                           "accuracy": defense.accuracy, "floor_psnr": batch.floor_psnr})
    if not points:
        return None
    return figures.privacy_utility(points, path, title="Audit: worst-case PSNR against accuracy",
                                   ylabel="worst-case PSNR (dB)")
