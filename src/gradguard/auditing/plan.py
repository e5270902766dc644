"""An audit as a plan of cells: validated inputs, pinned references, two profiles, one plan.

:func:`prepare_audit` checks everything the user gave (the model file and name, the weights,
the data, the model's output against the labels, its mode at the audited batch sizes) before
any work, pins the model and the data to their content (so every cell's key changes when they
do), and builds the plan: at batch size 1 the reproduction harness's plan for an audit
profile (every defense's equal-privacy search under the worst case, the attacks at the found
strengths, a training run per defense); at the clients' batch size the same attacks, at the
strengths found at batch size 1. :class:`~gradguard.experiments.runner.CellRunner` runs it
through the results store, so an audit resumes where it stopped.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..attacks import ADAPTIVE, Attack, GradientMatcher, matching_weights
from ..data import ImageDataset, load_dataset
from ..errors import ConfigError
from ..experiments.cells import TrainSettings, seeded_model
from ..experiments.plan import Plan, Task, build_plan
from ..experiments.profiles import CostModel, Profile, SearchSettings, Verdict
from ..grads import batch_gradient, trainable_parameters
from ..models.registry import MODELS
from ..models.user import UserModelSpec, describe_model, is_user_spec, pin
from .config import BUDGETS, AuditConfig

__all__ = ["AuditPlan", "prepare_audit"]

#: The learned inverter's random projection holds parameters x projection floats; above this many
#: the projection is narrowed (and below 16 columns the attack is left out, with a note).
LTI_MAX_FLOATS = 2 ** 28


@dataclass
class AuditPlan:
    """A validated audit, ready to run: the pinned references, what was found about the model
    and the data, the profiles (by batch size) and the plan."""

    config: AuditConfig
    model: str
    dataset: str
    data: ImageDataset
    model_info: dict[str, Any]
    profiles: dict[int, Profile]
    plan: Plan
    notes: list[str] = field(default_factory=list)

    @property
    def model_label(self) -> str:
        return UserModelSpec.parse(self.model).label() if is_user_spec(self.model) else self.model

    def estimate_s(self) -> float:
        return self.plan.estimate_total_s()


def _pin_model(config: AuditConfig) -> str:
    if is_user_spec(config.model):
        return pin(config.model, weights=config.weights, mode=config.mode, normalize=config.normalize)
    if config.model not in MODELS:
        raise ConfigError(f"model: unknown name {config.model!r}; give PATH.py:NAME or package.module:NAME for your "
                          f"own model, or one of {sorted(MODELS)}")
    given = {k: v for k, v in (("weights", config.weights), ("mode", config.mode if config.mode != "train" else None),
                               ("normalize", config.normalize if config.normalize != "model" else None)) if v}
    if given:
        raise ConfigError(f"audit: {sorted(given)} apply to your own model (PATH.py:NAME), not to {config.model!r}")
    return config.model


def _pin_dataset(name: str) -> str:
    if name.startswith("folder:"):
        from ..data.folder import pin_folder

        return pin_folder(name)
    if name.startswith("npz:"):
        return f"npz:{Path(name[4:]).expanduser().resolve()}"
    return name


def _check_modes(model: torch.nn.Module, label: str, shape: tuple[int, int, int], sizes: list[int]) -> None:
    """A model in train mode must take a batch of each audited size (BatchNorm1d refuses one
    value per channel); checked on a copy, so no running statistic moves."""
    if not model.training:
        return
    trial = copy.deepcopy(model)
    for size in sizes:
        try:
            with torch.no_grad():
                trial(torch.rand(size, *shape))
        except Exception as exc:
            raise ConfigError(f"model: {label} fails in train mode on a batch of {size} "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())}); audit it with --mode eval, or "
                              f"choose another --batch-size") from None


def _calibrate(model: torch.nn.Module, data: ImageDataset, config: AuditConfig, lti: dict[str, Any]) -> CostModel:
    """Seconds per unit of work on this model, measured here, so the time estimate fits it: one
    gradient-matching iteration of one image, one local SGD step, the learned inverter."""
    model = copy.deepcopy(model)
    x, y = data.x_train[:1], data.y_train[:1]
    gia = Attack.from_config("gia").config
    reference = trainable_parameters(model)
    observed = [g.detach().unsqueeze(0) for g in batch_gradient(model, x, y)]
    names = [f"p{i}" for i in range(len(reference))]
    matcher = GradientMatcher(model, observed, matching_weights(names, [p.shape for p in reference], gia), gia)
    images = torch.rand(1, 1, *data.image_shape, requires_grad=True)
    labels = y.view(1, 1)

    def iteration() -> None:
        loss, _ = matcher.objective(images, labels)
        torch.autograd.grad(loss.sum(), images)

    def step() -> None:
        batch_gradient(model, data.x_train[:config.batch_size], data.y_train[:config.batch_size])

    timings = {}
    for name, work in (("iteration", iteration), ("step", step)):
        work()  # warm-up
        start = time.perf_counter()
        for _ in range(3):
            work()
        timings[name] = (time.perf_counter() - start) / 3
    one_gradient = timings["step"] / max(1, config.batch_size)
    lti_s = lti.get("aux_images", 500) * one_gradient * 2 + lti.get("epochs", 10) * 0.05
    return CostModel(attack_iteration_s={"gia": timings["iteration"]}, default_iteration_s=timings["iteration"],
                     client_step_s=timings["step"], adaptive_cell_s={"lti": lti_s})


def prepare_audit(config: AuditConfig, data_root: str | Path | None = None) -> AuditPlan:
    """Validate the audit's inputs and build its plan; nothing is computed yet."""
    budget = BUDGETS[config.budget]
    model_ref = _pin_model(config)
    dataset_ref = _pin_dataset(config.dataset)
    data = load_dataset(dataset_ref, data_root)
    most = max(config.images_at(b) for b in config.batch_sizes)
    if most > len(data.x_train) - 1:
        raise ConfigError(f"audit: {most} target images requested, the data has {len(data.x_train)} training images "
                          f"(lower --images or --batch-size)")
    registry_options: dict[str, Any] = {}
    if not is_user_spec(model_ref):
        from ..fl.config import TRAINING_MODEL_OPTIONS

        registry_options = dict(TRAINING_MODEL_OPTIONS.get(model_ref, {}))
    model = seeded_model(data, model_ref, config.seed, True, **registry_options)  # checks the output against labels
    label = UserModelSpec.parse(model_ref).label() if is_user_spec(model_ref) else model_ref
    _check_modes(model, label, data.image_shape, config.batch_sizes)
    info = describe_model(model)
    notes: list[str] = []
    adaptive = [name for name, cls in ADAPTIVE.items() if not cls.oracle]
    lti = dict(budget.lti)
    widest = LTI_MAX_FLOATS // max(1, info["parameters"])
    if widest < lti["projection"]:
        if widest < 16:
            adaptive.remove("lti")
            notes.append(f"lti left out: its random projection of {info['parameters']:,} gradient elements would "
                         f"not fit in memory")
        else:
            lti["projection"] = int(widest)
            notes.append(f"lti's projection narrowed to {widest} features to fit {info['parameters']:,} gradient "
                         f"elements in memory")
    costs = _calibrate(model, data, config, lti)
    base = Profile(
        name="audit", datasets=[dataset_ref], model=model_ref, attack_model_options=registry_options,
        unnormalised_attacks=[], attacks=["gia"], defenses=list(config.defenses), adaptive=adaptive,
        adaptive_with=["gia"], adaptive_rounds=budget.adaptive_rounds, images=config.images_at(1), batch_size=1,
        adaptive_options={"lti": lti}, attack_overrides={"gia": dict(budget.gia)},
        defense_options=config.defense_options,
        search=SearchSettings(target="floor", steps=budget.search_steps, tolerance_db=config.margin_db),
        verdict=Verdict(margin_db=config.margin_db, margin_ssim=config.margin_ssim),
        train=TrainSettings(clients=budget.clients, rounds=budget.rounds, local_steps=budget.local_steps,
                            batch_size=config.batch_size, lr=budget.lr, eval_every=max(1, budget.rounds // 3)),
        costs=costs, seed=config.seed)
    profiles = {1: base}
    first = build_plan(base)
    plan = Plan(searches=first.searches, fixed=first.fixed, costs=costs)
    for task in first.tasks:
        plan.tasks.append(Task(task.id, task.role, task.cell, {**task.labels, "batch_size": 1}, task.strength_from))
    if config.batch_size > 1:
        size = config.batch_size
        batched = base.model_copy(update={"name": f"audit-b{size}", "images": config.images_at(size),
                                          "batch_size": size})
        profiles[size] = batched
        for task in build_plan(batched).tasks:
            if task.role == "attack":  # the training runs are the same cells as at batch size 1
                plan.tasks.append(Task(f"b{size}/{task.id}", task.role, task.cell,
                                       {**task.labels, "batch_size": size}, task.strength_from))
    return AuditPlan(config, model_ref, dataset_ref, data, info, profiles, plan, notes)
