"""``gradguard.audit(model, dataset, ...) -> AuditResult``: run an audit and write its files."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..data import ImageDataset
from ..errors import ConfigError, config_errors
from ..experiments.plan import Plan, Task
from ..experiments.runner import CellRunner
from ..experiments.store import ResultStore
from ..models.user import UserModelSpec, file_sha256, is_user_spec
from .config import BUDGETS, AuditConfig
from .plan import AuditPlan, prepare_audit
from .result import AuditResult, choose, collect

__all__ = ["audit", "model_reference", "run_audit"]

MODE_NOTES = {
    "train": "BatchNorm layers normalise with the batch's own statistics and dropout is on, as in a client's "
             "local training step; the attacker matches with the same BatchNorm behaviour and dropout off (it "
             "cannot know the client's dropout masks)",
    "eval": "BatchNorm layers use their running statistics and dropout is off (--mode eval); a client that "
            "trains in train mode leaks differently",
}


def _reference_of(factory: Any) -> str:
    """``module:NAME`` or ``/abs/file.py:NAME`` for a class or function defined at a module's top level."""
    name = getattr(factory, "__qualname__", "")
    if not name or "." in name or "<" in name:
        raise ConfigError(f"audit: {factory!r} is not a class or function defined at the top level of a module; "
                          f"pass PATH.py:NAME")
    module = getattr(factory, "__module__", None)
    if module and module != "__main__":
        return f"{module}:{name}"
    try:
        path = inspect.getfile(factory)
    except TypeError:
        path = ""
    if not path.endswith(".py"):
        raise ConfigError(f"audit: {name} is not defined in a .py file (a notebook or the REPL); move it to a file "
                          f"and pass PATH.py:{name}")
    return f"{Path(path).resolve()}:{name}"


def model_reference(model: Any, out: Path, weights: str | Path | None) -> tuple[str, str | None]:
    """The model as text (and the weights file): a reference as it is, a class or function by its
    module, an ``nn.Module`` instance by its class, with its weights saved under ``out``."""
    if isinstance(model, str):
        return model, None if weights is None else str(weights)
    if isinstance(model, nn.Module):
        if type(model).__module__.split(".")[0] == "torch":
            raise ConfigError(f"audit: an nn.Module instance is rebuilt from its class, and {type(model).__name__} "
                              f"is torch's own; pass the function that builds it (or PATH.py:NAME) and weights=")
        reference = _reference_of(type(model))
        if weights is None:
            import torch

            out.mkdir(parents=True, exist_ok=True)
            partial = out / "model-weights.tmp"
            torch.save(model.state_dict(), partial)
            final = out / f"model-weights-{file_sha256(partial)[:12]}.pt"
            partial.replace(final)
            weights = final
        return reference, str(weights)
    if callable(model):
        return _reference_of(model), None if weights is None else str(weights)
    raise ConfigError(f"audit: model must be PATH.py:NAME, package.module:NAME, a registered name, an nn.Module class "
                      f"or function, or an nn.Module instance; got {type(model).__name__}")


def dataset_reference(dataset: Any, out: Path) -> str:
    """The data as text: a name or reference as it is, an :class:`ImageDataset` saved as an
    interchange ``.npz`` under ``out`` (named by its content's hash)."""
    if isinstance(dataset, str):
        return dataset
    if not isinstance(dataset, ImageDataset):
        raise ConfigError(f"audit: dataset must be a name, npz:PATH, folder:PATH or an ImageDataset; "
                          f"got {type(dataset).__name__}")

    def as_uint8(x):
        array = (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        return array[..., 0] if array.shape[-1] == 1 else array

    out.mkdir(parents=True, exist_ok=True)
    partial = out / "dataset.tmp.npz"
    np.savez(partial, x_train=as_uint8(dataset.x_train), y_train=dataset.y_train.numpy(),
             x_test=as_uint8(dataset.x_test), y_test=dataset.y_test.numpy())
    final = out / f"dataset-{file_sha256(partial)[:12]}.npz"
    partial.replace(final)
    return f"npz:{final.resolve()}"


#: How many times a searched strength that meets the PSNR target but not the SSIM margin is doubled.
ESCALATIONS = 3


def _escalate(prepared: AuditPlan, runner: CellRunner, resolved: dict[str, Any],
              on_more: Callable[[int], None] | None) -> dict[str, Any]:
    """The equal-privacy search bisects on the worst-case PSNR (floor + margin). A strength it
    finds can still leave the worst-case SSIM above the floor + its margin: then the strength is
    doubled (up to the knob's top, at most :data:`ESCALATIONS` times) until both hold, each step
    an ordinary set of cells (stored, so a rerun resumes)."""
    from ..defenses import DEFENSES

    config = prepared.config
    tasks = list(resolved["tasks"])
    strengths = dict(resolved["strengths"])
    for search in prepared.plan.searches:
        info = strengths.get(search.id)
        knob = DEFENSES[search.defense].strength
        if info is None or knob is None or info.get("method") != "search" or not info.get("met"):
            continue
        strength = float(info["strength"])
        steps: list[dict[str, Any]] = []
        while True:
            found = collect(runner.store, {"tasks": tasks, "strengths": strengths}, [search.defense],
                            config.margin_db, config.margin_ssim)[0]
            if found.holds or len(steps) >= ESCALATIONS or strength >= knob.high:
                break
            strength = min(knob.high, 2 * strength)
            options = {**config.defense_options.get(search.defense, {}), **knob.options(strength)}
            mine = [t for t in prepared.plan.tasks if t.labels["defense"] == search.defense]
            plan = Plan(tasks=[Task(t.id, t.role, t.cell.model_copy(update={"defense_options": options}), t.labels)
                               for t in mine], costs=prepared.plan.costs)
            if on_more is not None:
                on_more(plan.size)
            fresh = runner.run(plan)["tasks"]
            tasks = [t for t in tasks if t["defense"] != search.defense] + fresh
            worst = max(found.batches, key=lambda b: b.ssim - b.floor_ssim)
            steps.append({"from": info["strength"] if not steps else steps[-1]["to"], "to": strength,
                          "psnr": worst.psnr, "ssim": worst.ssim, "floor_ssim": worst.floor_ssim})
            strengths[search.id] = {**info, "options": options, "strength": strength,
                                    "method": "search, then doubled until the SSIM margin held", "escalated": steps}
    return {"tasks": tasks, "strengths": strengths}


def run_audit(prepared: AuditPlan, runner: CellRunner, out: Path,
              on_more: Callable[[int], None] | None = None) -> AuditResult:
    """Run (or resume) the plan through ``runner`` and write ``audit.json`` and ``audit.html`` in
    ``out``; ``on_more(units)`` is told when work is added to the plan (a strength doubled)."""
    from .page import frontier_plot, reconstruction_grid, render_page  # matplotlib: only when a page is drawn

    config = prepared.config
    start = time.perf_counter()
    resolved = runner.run(prepared.plan)
    resolved = _escalate(prepared, runner, resolved, on_more)
    runner.store.set_meta("audit", {"config": config.model_dump(mode="json"), "model": prepared.model,
                                    "dataset": prepared.dataset, "resolved": resolved})
    defenses = collect(runner.store, resolved, list(config.defenses), config.margin_db, config.margin_ssim)
    notes = list(prepared.notes)
    undefended = next((d for d in defenses if d.defense == "none" and d.accuracy is not None), None)
    chance = 1 / prepared.data.num_classes
    if undefended is not None and undefended.accuracy is not None and undefended.accuracy < 1.5 * chance:
        notes.append(f"the training run without defense reached {100 * undefended.accuracy:.1f}% accuracy, near "
                     f"chance ({100 * chance:.0f}%): the accuracy costs say little; check that the model trains at "
                     f"lr {BUDGETS[config.budget].lr:g}, or use --budget full")
    budget = BUDGETS[config.budget]
    recommendation = choose(defenses, budget.lr * budget.local_steps, budget.lr, budget.local_steps)
    data = prepared.data
    spec = UserModelSpec.parse(prepared.model) if is_user_spec(prepared.model) else None
    model_info = {"reference": prepared.model, "label": prepared.model_label, **prepared.model_info,
                  "sha256": spec.sha256 if spec else None, "weights": spec.weights if spec else None,
                  "normalize": spec.normalize if spec else "data", "mode_note": MODE_NOTES[prepared.model_info["mode"]]}
    dataset_info = {"reference": prepared.dataset, "label": config.dataset if isinstance(config.dataset, str) else "",
                    "image_shape": list(data.image_shape), "classes": data.num_classes, "train": len(data.x_train),
                    "test": len(data.x_test), "mean": list(data.mean), "std": list(data.std)}
    settings = {**config.model_dump(mode="json"), "batch_sizes": config.batch_sizes,
                "images_per_batch_size": {str(b): config.images_at(b) for b in config.batch_sizes},
                "budget_settings": budget.model_dump(mode="json"),
                "attacks": {str(b): sorted({f"{a or ''}{' + ' if a and ad else ''}{ad or ''}" for a, ad in
                                            _attack_set(prepared, b)}) for b in config.batch_sizes}}
    holding = [d.defense for d in defenses if d.holds]
    summary = (f"{prepared.model_label} on {config.dataset}: {len(defenses)} defenses audited against the worst case "
               f"of {len(settings['attacks']['1'])} attacks at batch size{'s' if len(config.batch_sizes) > 1 else ''} "
               f"{' and '.join(str(b) for b in config.batch_sizes)}; holding: {', '.join(holding) or 'none'}; "
               + (f"recommended: {recommendation.defense} "
                  f"({', '.join(f'{k}={v}' for k, v in recommendation.options.items()) or 'as configured'})."
                  if recommendation else "no recommendation (no defense held)."))
    result = AuditResult(model_info, dataset_info, settings, prepared.model_info["mode"], defenses, recommendation,
                         summary, notes)
    out.mkdir(parents=True, exist_ok=True)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    grids = []
    tile = None
    for size in config.batch_sizes:
        path, tile = reconstruction_grid(runner.store, resolved["tasks"], list(config.defenses), size,
                                         figures / f"reconstructions_batch{size}.png")
        grids.append((f"Reconstructions at batch size {size}", path))
    frontier = frontier_plot(result, figures / "frontier.png")
    from dataclasses import replace

    result = replace(result, settings={**settings, "grid_tile_px": tile}, seconds=time.perf_counter() - start,
                     out=out, json_path=out / "audit.json", html_path=out / "audit.html")
    assert result.html_path is not None and result.json_path is not None
    result.html_path.write_text(render_page(result, grids, frontier))
    result.write_json(result.json_path)
    return result


def _attack_set(prepared: AuditPlan, batch_size: int) -> list[tuple[str | None, str | None]]:
    return [(t.labels.get("attack"), t.labels.get("adaptive")) for t in prepared.plan.tasks
            if t.role == "attack" and t.labels["batch_size"] == batch_size]


def audit(model: Any, dataset: Any, *, out: str | Path = "runs/audit", weights: str | Path | None = None,
          mode: str = "train", normalize: str = "model", images: int = 4, batch_size: int = 4,
          defenses: list[str] | None = None, defense_options: dict[str, dict[str, Any]] | None = None,
          budget: str = "quick", seed: int = 0, data_root: str | Path | None = None, jobs: int = 1) -> AuditResult:
    """Audit ``model`` on ``dataset``: for each defense, the weakest strength whose worst case
    over every attack stays within 2 dB / 0.05 SSIM of the no-gradient floor, its worst case at
    batch size 1 and ``batch_size``, its accuracy cost, a verdict, and the recommended
    configuration. Writes ``audit.json``, ``audit.html`` and the results store (which makes a
    rerun resume) in ``out``.

    ``model``: ``"PATH.py:NAME"``, ``"package.module:NAME"``, a registered name, an ``nn.Module``
    class or a function returning one (called with whichever of num_classes, in_channels and
    image_size it accepts), or an instance (rebuilt from its class, with its weights).
    ``dataset``: a name, ``"npz:PATH"``, ``"folder:PATH"`` (ImageFolder layout) or an
    :class:`~gradguard.data.ImageDataset`.
    """
    out = Path(out)
    model_text, weights_text = model_reference(model, out, weights)
    with config_errors("audit"):
        config = AuditConfig(model=model_text, dataset=dataset_reference(dataset, out), weights=weights_text,
                             mode=mode, normalize=normalize, images=images, batch_size=batch_size,
                             **({"defenses": defenses} if defenses is not None else {}),
                             defense_options=defense_options or {}, budget=budget, seed=seed)
    prepared = prepare_audit(config, data_root)
    with CellRunner(ResultStore(out), data_root=Path(data_root) if data_root else None, jobs=jobs) as runner:
        return run_audit(prepared, runner, out)
