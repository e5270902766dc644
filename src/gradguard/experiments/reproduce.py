"""The reproduction: the paper's privacy and accuracy tables for one profile, cell by cell.

Order of work, per dataset: attack ``none`` and ``graddefense``; find each baseline's strength
at equal privacy (or take it from the profile); then attack every column and train every
defense. With worker processes, every dataset is one chain and, once its strengths are known,
its attacks and its training run side by side, so the slow cells (Soteria's training) start
early instead of leaving a worker idle at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import DatasetNotFoundError
from .profiles import ADAPTIVE_TARGETS, KNOBS, TRAINED_DEFENSES, Profile
from .runner import CellRunner
from .search import weakest_matching_strength

MUTED_LAYER = "fc.weight"  # the last linear layer's weight gradient: where Soteria perturbs


def attack_config(profile: Profile, dataset: str, attack: str, defense: str, options: dict[str, Any],
                  muted: bool = False, adaptive: str | None = None) -> dict[str, Any]:
    overrides = dict(profile.attack_overrides.get(attack, {}))
    if muted:
        overrides["mute"] = [MUTED_LAYER]
    adaptive_config = None
    if adaptive is not None:
        adaptive_config = {"name": adaptive, **({"rounds": profile.adaptive_rounds} if adaptive == "multi-round" else {})}
    return {"dataset": dataset, "model": profile.model, "model_options": profile.attack_model_options,
            "normalised": attack not in profile.unnormalised_attacks, "attack": attack, "attack_overrides": overrides,
            "defense": defense, "defense_options": options, "images": profile.images,
            "batch_size": profile.batch_size, "seed": profile.seed, "adaptive": adaptive_config}


def train_config(profile: Profile, dataset: str, defense: str, options: dict[str, Any]) -> dict[str, Any]:
    return {"dataset": dataset, "model": profile.model, "defense": defense, "defense_options": options,
            **profile.train.model_dump(), "seed": profile.seed}


def check_datasets(profile: Profile, data_root) -> None:
    """Fail before any work when a dataset is missing, listing every missing one."""
    from ..data import DATASETS, resolve_root

    root = resolve_root(data_root)
    missing = [name for name in set(profile.datasets) | set(profile.train_datasets or [])
               if name in DATASETS and DATASETS[name].find(root) is None]
    if missing:
        hints = "; ".join(f"{n}: {DATASETS[n].how_to_get}" for n in sorted(missing))
        raise DatasetNotFoundError(f"missing datasets under {root}: {sorted(missing)} ({hints}; "
                                   f"or pass --data-root, e.g. the folder that holds mnist.npz)")


def strength_for(runner: CellRunner, profile: Profile, dataset: str, baseline: str) -> dict[str, Any]:
    """The baseline's options at equal privacy with graddefense, and how they were set."""
    knob = KNOBS[baseline]
    if baseline in profile.strengths:
        strength = profile.strengths[baseline]
        return {"options": knob.options(strength), "strength": strength, "method": "profile"}
    target = runner.compute("attack", attack_config(profile, dataset, profile.search_attack, "graddefense", {}))

    def search() -> dict[str, Any]:
        def psnr_at(strength: float) -> float:
            cfg = attack_config(profile, dataset, profile.search_attack, baseline, knob.options(strength))
            return runner.compute("attack", cfg)["psnr_mean"]

        found = weakest_matching_strength(psnr_at, target["psnr_mean"], knob.low, knob.high,
                                          steps=profile.search_steps)
        return {"options": knob.options(found.strength), "strength": found.strength, "method": "search",
                "met": found.met, "psnr": found.psnr, "target_psnr": target["psnr_mean"], "tried": found.tried}

    key = {"dataset": dataset, "baseline": baseline, "profile": profile.model_dump()}
    return runner.derive("strength", key, search)


def column_defense(column: str) -> str:
    return "soteria" if column == "soteria-muted" else column


def side_by_side(runner: CellRunner, *chains: Callable[[], Any]) -> list[Any]:
    """Run independent chains of cells in threads when the runner has worker processes (they only
    wait there); one after another otherwise."""
    if runner.jobs <= 1 or len(chains) <= 1:
        return [chain() for chain in chains]
    with ThreadPoolExecutor(len(chains)) as threads:
        return [f.result() for f in [threads.submit(chain) for chain in chains]]


def attack_cells(runner: CellRunner, profile: Profile, dataset: str, options: dict[str, dict[str, Any]]) -> dict:
    """The privacy columns and the adaptive attacks of one dataset."""
    privacy = []
    for attack in profile.attacks:
        for column in profile.defenses:
            cfg = attack_config(profile, dataset, attack, column_defense(column), options[column_defense(column)],
                                muted=column == "soteria-muted")
            runner.compute("attack", cfg)
            privacy.append({"dataset": dataset, "attack": attack, "column": column, "config": cfg})
    security = []
    for adaptive in profile.adaptive:
        for defense in dict.fromkeys(column_defense(c) for c in profile.defenses):
            if defense in ADAPTIVE_TARGETS[adaptive]:
                cfg = attack_config(profile, dataset, profile.search_attack, defense, options[defense], adaptive=adaptive)
                runner.compute("attack", cfg)
                security.append({"dataset": dataset, "attack": adaptive, "column": defense, "config": cfg})
    return {"privacy": privacy, "security": security}


def train_cells(runner: CellRunner, profile: Profile, dataset: str, options: dict[str, dict[str, Any]]) -> list:
    """One training run per defense of one dataset (none when the dataset is not trained on)."""
    training = []
    if dataset in (profile.train_datasets or profile.datasets):
        for defense in TRAINED_DEFENSES:
            if defense in {column_defense(c) for c in profile.defenses}:
                cfg = train_config(profile, dataset, defense, options[defense])
                runner.compute("train", cfg)
                training.append({"dataset": dataset, "defense": defense, "config": cfg})
    return training


def run_dataset(runner: CellRunner, profile: Profile, dataset: str) -> dict[str, Any]:
    """Every cell of one dataset; returns the plan (which cell fills which table entry)."""
    options: dict[str, dict[str, Any]] = {"none": {}, "graddefense": {}, "graddefense-paper": {}}
    strengths = {}
    for baseline in KNOBS:
        if baseline in {column_defense(c) for c in profile.defenses}:
            strengths[baseline] = strength_for(runner, profile, dataset, baseline)
            options[baseline] = strengths[baseline]["options"]
    attacked, training = side_by_side(runner, lambda: attack_cells(runner, profile, dataset, options),
                                      lambda: train_cells(runner, profile, dataset, options))
    return {**attacked, "training": training, "strengths": strengths}


def reproduce(runner: CellRunner, profile: Profile) -> dict[str, Any]:
    """Run (or resume) every cell of ``profile``; the plan is saved in the store for the report."""
    check_datasets(profile, runner.data_root)
    runner.store.set_meta("profile", profile.model_dump())
    parts = side_by_side(runner, *[lambda d=d: run_dataset(runner, profile, d) for d in profile.datasets])
    plan = {"privacy": [p for part in parts for p in part["privacy"]],
            "security": [a for part in parts for a in part["security"]],
            "training": [t for part in parts for t in part["training"]],
            "strengths": {d: part["strengths"] for d, part in zip(profile.datasets, parts)}}
    runner.store.set_meta("plan", plan)
    return plan
