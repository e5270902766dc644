"""Reproduction profiles: which datasets, attacks, defenses and budgets a run covers.

A profile is data. Its defenses, attacks and adaptive attacks default to everything
registered (``None``), so a defense registered in its own module appears in every such
profile, its tables and its equal-privacy search by its registration alone: its strength knob
(:attr:`Defense.strength`), whether it trains (:attr:`Defense.trains`) and which adaptive
attacks apply to it (:meth:`AdaptiveAttack.applies_to`) are declared next to it. Names are
checked against the registries when the plan is built (:meth:`Profile.check_names`).

``quick`` runs on the embedded ``mnist-sample`` within minutes on 2 CPU cores (the README's
main job); ``paper`` runs every defense on the paper's datasets at the strengths calibrated on
``mnist-sample`` (a test on data the strengths were not chosen on), converged, 16 targets x 3
seeds, at initialisation and after training; ``compare`` is its 4-target, one-seed, 30-round
check (about half an hour); examples/profiles/paper-search.json searches each strength instead;
``security`` runs the default against every attack; ``tiny`` exists for the test suite. A
profile can also be read from a JSON or TOML file with the same fields (:func:`load_profile`).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import ConfigError, config_errors
from .cells import TrainSettings

__all__ = ["PROFILES", "CostModel", "Profile", "SearchSettings", "TrainSettings", "Verdict", "get_profile",
           "load_profile"]


#: When in training an attack observes the gradients: at initialisation, or after the training schedule
Moment = Literal["init", "trained"]


def _init_only() -> list[Moment]:
    return ["init"]


class SearchSettings(BaseModel):
    """How a defense with a strength knob is set to equal privacy: its weakest strength whose
    worst-case PSNR (over every plain and non-oracle adaptive attack of the profile) is at most
    the better no-gradient floor + ``tolerance_db`` (``target="floor"``), or at most the
    ``reference`` defense's PSNR under ``attack`` + ``tolerance_db`` (``target="reference"``,
    the paper's comparison, one attack)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal["floor", "reference"] = Field("floor", description="what the searched PSNR must reach")
    attack: str = Field("dlg", description="with target='reference': the attack whose PSNR is matched")
    reference: str = Field("graddefense", description="with target='reference': the defense whose PSNR under that "
                                                      "attack is the target (run as configured, never searched)")
    steps: int = Field(4, ge=0, description="bisection probes after the two bounds of the strength range")
    tolerance_db: float = Field(1.0, ge=0, description="a strength matches when its PSNR <= target + this")


class Verdict(BaseModel):
    """When the security table says a defense holds: its best non-oracle attack within these
    margins of the floor (a guess that uses no gradient: the dataset's mean training image)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    margin_db: float = Field(2.0, ge=0, description="PSNR margin above the floor's PSNR")
    margin_ssim: float = Field(0.05, ge=0, description="SSIM margin above the floor's SSIM")


class CostModel(BaseModel):
    """Seconds per unit of work on one core of the 2-core development machine (LeNet), for the
    duration estimate of a plan. A local step took 3-7 ms in the converged training cells of
    examples/profiles/converged-accuracy.json (one thread per worker, two workers); Soteria's
    per-step cost is its ranking of a batch of 32, measured in the `paper` run's training cells
    (ranking 8 samples per client and round: 0.15 s on MNIST and Fashion-MNIST, 1.0 s on
    CIFAR-10, so 0.6 s and 4.1 s per 32), DP-SGD's its per-sample gradients (8-10 ms)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attack_iteration_s: dict[str, float] = Field(default_factory=lambda: {"dlg": 0.01, "gia": 0.001},
                                                 description="per attack iteration, image and restart")
    default_iteration_s: float = Field(0.01, gt=0, description="for attacks not listed above")
    client_step_s: float = Field(0.004, gt=0, description="one local SGD step of one client")
    defense_step_s: dict[str, float] = Field(default_factory=lambda: {"soteria": 0.6, "dpsgd": 0.009},
                                             description="a defense's extra cost per local step")
    dataset_defense_step_s: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {"cifar10": {"soteria": 4.1}},
        description="per dataset, defense costs that differ from defense_step_s (Soteria's ranking grows faster "
                    "than the input: 32x32x3 costs 7 times 28x28)")
    adaptive_cell_s: dict[str, float] = Field(default_factory=lambda: {"lti": 60.0},
                                              description="an adaptive attack's own cost per cell (training a "
                                                          "learned inverter)")
    defends_aux: list[str] = Field(default_factory=lambda: ["lti"],
                                   description="adaptive attacks that pass each of their aux images through the "
                                               "defense (a defense's cost per step / 32 per image)")

    def iteration_s(self, attack: str) -> float:
        return self.attack_iteration_s.get(attack, self.default_iteration_s)

    def defense_s(self, defense: str, dataset: str) -> float:
        """A defense's extra cost per local step (batch 32) on ``dataset``."""
        return self.dataset_defense_step_s.get(dataset, {}).get(defense, self.defense_step_s.get(defense, 0.0))


class Profile(BaseModel):
    """Everything a reproduction run does; its cells' configurations key the results store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    datasets: list[str] = Field(min_length=1)
    model: str = "lenet"
    attack_model_options: dict[str, Any] = Field(default_factory=lambda: {"dlg_init": True},
                                                 description="the attacked model as DLG attacks it: at initialisation")
    unnormalised_attacks: list[str] = Field(default_factory=lambda: ["dlg"],
                                            description="attacks run on the model without its normalisation layer")
    attacks: list[str] | None = Field(None, description="plain attacks (rows of the privacy table); None: every "
                                                        "registered attack preset")
    defenses: list[str] | None = Field(None, description="defenses (columns); None: every registered defense")
    adaptive: list[str] | None = Field(None, description="adaptive attacks, each run against the defenses it "
                                                         "applies to; None: every registered one")
    adaptive_with: list[str] | None = Field(None, description="the plain attacks an adaptive attacker's prepared "
                                                              "gradient is inverted with; None: every attack")
    adaptive_rounds: int = Field(4, ge=2, description="observations the multi-round attacker combines")
    images: int = Field(4, ge=1, description="training images attacked per dataset and cell")
    batch_size: int = Field(1, ge=1, description="images per attacked gradient")
    target_pool: int = Field(4000, ge=1, description="targets are drawn from the first this many training images "
                                                     "(for CIFAR-10, the ones with exact pixels)")
    aux_images: int = Field(3000, ge=1, description="training images an adaptive attacker owns (never targets; "
                                                    "the learned inverter trains on them)")
    adaptive_options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="options per adaptive "
                                                        "attack (e.g. the learned inverter's size)")
    attack_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    strengths: dict[str, float] = Field(default_factory=dict, description="fixed strengths; other defenses with "
                                                                          "a strength knob are searched")
    defense_options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="options held fixed per "
                                                       "defense (e.g. clip for the relative mode); the strength knob "
                                                       "is set on top")
    search: SearchSettings = Field(default_factory=SearchSettings)
    verdict: Verdict = Field(default_factory=Verdict)
    train: TrainSettings = Field(default_factory=TrainSettings)
    train_per_dataset: dict[str, TrainSettings] = Field(default_factory=dict, description="the schedule for the "
                                                        "named datasets instead of `train` (e.g. CIFAR-10 needs "
                                                        "more rounds than MNIST to converge); every defense of a "
                                                        "dataset trains with the same")
    train_datasets: list[str] | None = Field(None, description="datasets trained on; None: the same datasets")
    costs: CostModel = Field(default_factory=CostModel)
    moments: list[Moment] = Field(
        default_factory=_init_only, min_length=1,
        description="when in training the gradients are attacked: 'init' (the model at its initialisation, DLG's "
                    "setting) and/or 'trained' (the model after the profile's training schedule without defense, "
                    "same seed); every attack runs at each, and a defense's worst case is over both")
    seed: int = Field(0, description="the first seed: data selection, partitions, initialisation and noise")
    seeds: int = Field(1, ge=1, description="independent repetitions with seeds seed, seed + 1, ...; the tables "
                                            "give means with 95% intervals over their targets (privacy) and over "
                                            "the seeds (accuracy); searched strengths are searched on the first")

    @model_validator(mode="after")
    def _whole_batches(self) -> Profile:
        if self.images % self.batch_size:
            raise ValueError(f"images={self.images} must be a multiple of batch_size={self.batch_size}")
        return self

    @model_validator(mode="after")
    def _distinct_names(self) -> Profile:
        # a repeated dataset would compute the same cells twice at once; a repeated attack or
        # defense would repeat a row or column of the tables
        for field in ("datasets", "attacks", "defenses", "adaptive", "moments"):
            names = getattr(self, field)
            if names is not None and len(set(names)) != len(names):
                raise ValueError(f"{field}={names} names an entry twice")
        return self

    @model_validator(mode="after")
    def _schedules_for_known_datasets(self) -> Profile:
        unknown = [name for name in self.train_per_dataset if name not in self.datasets]
        if unknown:
            raise ValueError(f"train_per_dataset names {unknown}, which are not among datasets={self.datasets}")
        return self

    # -- the names a run covers, resolved against the registries when the plan is built --

    def defense_names(self) -> list[str]:
        from ..defenses import DEFENSES

        return list(DEFENSES) if self.defenses is None else list(self.defenses)

    def attack_names(self) -> list[str]:
        from ..attacks import ATTACKS

        return list(ATTACKS) if self.attacks is None else list(self.attacks)

    def adaptive_names(self) -> list[str]:
        from ..attacks import ADAPTIVE

        return list(ADAPTIVE) if self.adaptive is None else list(self.adaptive)

    def adaptive_base_attacks(self) -> list[str]:
        return self.attack_names() if self.adaptive_with is None else list(self.adaptive_with)

    def seed_list(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))

    def schedule(self, dataset: str) -> TrainSettings:
        """The training schedule of ``dataset``: its own from ``train_per_dataset``, else ``train``."""
        return self.train_per_dataset.get(dataset, self.train)

    def trained_datasets(self) -> list[str]:
        return list(self.datasets) if self.train_datasets is None else list(self.train_datasets)

    def check_names(self) -> None:
        """Every defense, attack and adaptive attack the profile names is registered, and the
        search's attack and reference are among them; otherwise a ConfigError lists the valid names."""
        from ..attacks import ADAPTIVE, ATTACKS
        from ..defenses import DEFENSES

        def check(what: str, names: list[str], registry: dict[str, Any]) -> None:
            unknown = list(dict.fromkeys(n for n in names if n not in registry))
            if unknown:
                raise ConfigError(f"profile {self.name!r}: unknown {what} {unknown}; choose from {list(registry)}")

        check("defense", self.defense_names() + list(self.strengths) + list(self.defense_options)
              + [self.search.reference], DEFENSES)
        check("attack", self.attack_names() + self.adaptive_base_attacks() + list(self.unnormalised_attacks)
              + list(self.attack_overrides) + [self.search.attack], ATTACKS)
        check("adaptive attack", self.adaptive_names() + list(self.adaptive_options), ADAPTIVE)
        fixed = [n for n in self.strengths if DEFENSES[n].strength is None]
        if fixed:
            raise ConfigError(f"profile {self.name!r}: strengths given for {fixed}, which have no strength knob; "
                              f"defenses with one: {[n for n, c in DEFENSES.items() if c.strength is not None]}")


def _tiny_overrides() -> dict[str, dict[str, Any]]:
    return {"dlg": {"iterations": 2, "lbfgs_max_iter": 2}, "gia": {"iterations": 2, "restarts": 1}}


# Strengths where each defense's worst case reaches the floor + 1 dB on mnist-sample, measured with
# `gradguard sweep` (README, "The privacy-utility frontier"); soteria and dpsgd at their defaults.
_FRONTIER_STRENGTHS = {"graddefense": 0.2, "dp-gaussian": 0.024, "dp-laplace": 0.017, "gc": 0.9995, "soteria": 0.8,
                       "dpsgd": 1.0}
# The noise baselines in their relative mode; soteria ranks its features once per client and round in
# training (its attacked gradients still get their own ranking): its exact per-step ranking would
# take longer than all the other cells together.
_FRONTIER_OPTIONS = {"dp-gaussian": {"clip": 3.16}, "dp-laplace": {"clip": 3.16}, "soteria": {"mask_per": "round"}}

# Schedules that bring `none` to >= 90% / 80% / 50% (MNIST / Fashion-MNIST / CIFAR-10, LeNet,
# 10 clients, batch 32, seed 0), read off accuracy curves of `none` (README, "Converged
# training"): MNIST 91.0% after 60 rounds of 10 local steps and 91.8% after 80; Fashion-MNIST
# 80.4% after 80 and 81.2% after 100; CIFAR-10 (lr 0.3, 20 local steps; 0.6 and 1.2 were
# slower) 50.2% after 200 rounds and 51.8% after 240. Each is taken with a margin for other seeds.
_CONVERGED = {
    "mnist": TrainSettings(clients=10, rounds=80, local_steps=10, lr=0.1, eval_every=5),
    "fashion-mnist": TrainSettings(clients=10, rounds=120, local_steps=10, lr=0.1, eval_every=5),
    "cifar10": TrainSettings(clients=10, rounds=240, local_steps=20, lr=0.3, eval_every=10),
}

PROFILES: dict[str, Profile] = {
    "tiny": Profile(  # for the test suite: every code path, almost no optimisation
        name="tiny", datasets=["mnist-sample"], images=1, search=SearchSettings(steps=1), adaptive_rounds=2,
        strengths={"dp-gaussian": 0.1, "dp-laplace": 0.1, "soteria": 0.5, "dpsgd": 1.0},
        attack_overrides=_tiny_overrides(), aux_images=64,
        adaptive_options={"lti": {"aux_images": 64, "projection": 16, "hidden": 16, "epochs": 1}},
        costs=CostModel(adaptive_cell_s={"lti": 1.0}),
        train=TrainSettings(clients=2, rounds=2, local_steps=1, batch_size=8, eval_every=1),
    ),
    "quick": Profile(
        name="quick", datasets=["mnist-sample"], images=2, adaptive_with=["gia"],
        adaptive_options={"lti": {"aux_images": 1500, "epochs": 20, "projection": 512, "hidden": 256}},
        costs=CostModel(adaptive_cell_s={"lti": 5.0}),
        defense_options=_FRONTIER_OPTIONS, strengths=_FRONTIER_STRENGTHS,
        attack_overrides={"dlg": {"iterations": 100, "restarts": 2}, "gia": {"iterations": 300, "restarts": 1}},
        # 1,000 local steps in all: `none` reaches 82-86% on mnist-sample (seeds 0 and 1), where 12 rounds of
        # 5 steps stopped at 70%
        train=TrainSettings(clients=5, rounds=20, local_steps=10, eval_every=5),
    ),
    "paper": Profile(  # the comparison at a scale that converges: 16 targets x 3 seeds, both moments
        name="paper", datasets=["mnist", "fashion-mnist", "cifar10"], images=16, seeds=3, adaptive_with=["gia"],
        moments=["init", "trained"], strengths=_FRONTIER_STRENGTHS,
        defense_options={**_FRONTIER_OPTIONS, "soteria": {"mask_per": "round", "rank_samples": 8}},
        attack_overrides={"dlg": {"iterations": 300, "restarts": 2}, "gia": {"iterations": 1200, "restarts": 1}},
        train=_CONVERGED["mnist"], train_per_dataset=_CONVERGED,
    ),
    "compare": Profile(  # the paper's comparison under the worst case, strengths calibrated on mnist-sample
        name="compare", datasets=["mnist", "fashion-mnist", "cifar10"], images=4, adaptive_with=["gia"],
        defense_options=_FRONTIER_OPTIONS, strengths=_FRONTIER_STRENGTHS,
        attack_overrides={"dlg": {"iterations": 300, "restarts": 2}, "gia": {"iterations": 1200, "restarts": 1}},
        train=TrainSettings(clients=10, rounds=30, local_steps=5, eval_every=5),
    ),
    "security": Profile(  # the default against every attack, on the three datasets
        name="security", datasets=["mnist", "fashion-mnist", "cifar10"], images=4, adaptive_with=["gia"],
        defenses=["none", "graddefense", "graddefense-paper"],
        search=SearchSettings(target="reference"),  # graddefense as configured: the reference is never searched
        attack_overrides={"dlg": {"iterations": 300, "restarts": 2}, "gia": {"iterations": 1200, "restarts": 1}},
        train=TrainSettings(clients=10, rounds=30, local_steps=5, eval_every=5),
    ),
}


def _validated(data: dict[str, Any], source: str) -> Profile:
    with config_errors(f"profile {source}"):
        profile = Profile.model_validate(data)
    profile.check_names()
    return profile


def load_profile(path: str | Path) -> Profile:
    """A profile from a JSON or TOML file with :class:`Profile`'s fields."""
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except OSError as exc:
        raise ConfigError(f"profile: cannot read {path} ({exc.strerror})") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"profile: {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({exc})") \
            from None
    if not isinstance(data, dict):
        raise ConfigError(f"profile: {path} must hold an object with the profile's fields")
    data.setdefault("name", path.stem)
    return _validated(data, str(path))


def get_profile(name: str) -> Profile:
    """A built-in profile by name, or a profile file (``.json`` / ``.toml``)."""
    if name in PROFILES:
        profile = PROFILES[name]
        profile.check_names()
        return profile
    if name.endswith((".json", ".toml")):
        return load_profile(name)
    raise ConfigError(f"profile: unknown name {name!r}; choose one of {sorted(PROFILES)} or a .json/.toml file")
