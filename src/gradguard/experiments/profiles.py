"""Reproduction profiles: which datasets, attacks, defenses and budgets a run covers.

``quick`` runs on the embedded ``mnist-sample`` within minutes on 2 CPU cores (the README's
main job); ``paper`` runs the paper's datasets with more images and rounds; ``tiny`` exists for
the test suite.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import ConfigError


class Knob(BaseModel):
    """How a baseline's strength maps to its option, and the range the equal-privacy search covers.

    Strength grows from ``low`` to ``high``; attack PSNR is expected to fall along it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    option: str
    low: float
    high: float
    scale: float = 1.0  # option value = strength * scale (e.g. a fraction shown as a percentile)

    def options(self, strength: float) -> dict[str, float]:
        return {self.option: strength * self.scale}


# Baselines compared at equal privacy, with the range their strength is searched over.
KNOBS: dict[str, Knob] = {
    "gc": Knob(option="percentile", low=0.1, high=0.999, scale=100.0),
    "dp-gaussian": Knob(option="sigma", low=1e-4, high=1.0),
    "dp-laplace": Knob(option="scale", low=1e-4, high=1.0),
    "soteria": Knob(option="percentile", low=0.01, high=0.99, scale=100.0),
}

# Columns of the privacy table; "soteria-muted" is soteria attacked with its layer muted.
PRIVACY_COLUMNS = ("none", "graddefense", "graddefense-paper", "gc", "dp-gaussian", "dp-laplace", "soteria",
                   "soteria-muted")
TRAINED_DEFENSES = ("none", "graddefense", "graddefense-paper", "gc", "dp-gaussian", "dp-laplace", "soteria")

# Which defenses each adaptive attack makes sense against (DESIGN.md section 3, issue 8):
# muting needs slices left clean; denoising and combining rounds need random noise of public scale.
NOISY = frozenset({"graddefense", "graddefense-paper", "dp-gaussian", "dp-laplace"})
ADAPTIVE_TARGETS: dict[str, frozenset[str]] = {
    "oracle-mute": frozenset({"graddefense-paper"}),
    "detect-mute": frozenset({"graddefense-paper"}),
    "compensate-invert": NOISY,
    "multi-round": NOISY,
}


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: str = "fedavg"
    clients: int = 10
    fraction: float = 1.0
    rounds: int = 20
    batch_size: int = 32
    lr: float = 0.1
    local_steps: int | None = 5
    eval_every: int = 2


class Profile(BaseModel):
    """Everything a reproduction run does; its hash keys the results store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    datasets: list[str]
    model: str = "lenet"
    attack_model_options: dict[str, Any] = Field(default_factory=lambda: {"dlg_init": True},
                                                 description="the attacked model as DLG attacks it: at initialisation")
    unnormalised_attacks: list[str] = Field(default_factory=lambda: ["dlg"],
                                            description="attacks run on the model without its normalisation layer")
    adaptive: list[str] = Field(default_factory=list, description="adaptive attacks of the security table")
    adaptive_rounds: int = Field(4, ge=2, description="observations the multi-round attacker combines")
    attacks: list[str] = Field(default_factory=lambda: ["dlg", "gia"])
    defenses: list[str] = Field(default_factory=lambda: list(PRIVACY_COLUMNS))
    images: int = 4
    batch_size: int = 1
    attack_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    strengths: dict[str, float] = Field(default_factory=dict, description="fixed baseline strengths; others searched")
    search_attack: str = "dlg"
    search_steps: int = 4
    train: TrainSettings = Field(default_factory=TrainSettings)
    train_datasets: list[str] | None = None  # default: the same datasets
    seed: int = 0

    @model_validator(mode="after")
    def _whole_batches(self) -> "Profile":
        if self.images % self.batch_size:
            raise ValueError(f"images={self.images} must be a multiple of batch_size={self.batch_size}")
        return self

    @model_validator(mode="after")
    def _distinct_names(self) -> "Profile":
        # a repeated dataset would compute the same cells twice at once (one chain each); a repeated
        # attack or defense would repeat a row or column of the tables
        for field in ("datasets", "attacks", "defenses"):
            names = getattr(self, field)
            if len(set(names)) != len(names):
                raise ValueError(f"{field}={names} names an entry twice")
        return self


PROFILES: dict[str, Profile] = {
    "tiny": Profile(  # for the test suite: every code path, almost no optimisation
        name="tiny", datasets=["mnist-sample"], images=1, search_steps=1, adaptive=list(ADAPTIVE_TARGETS),
        adaptive_rounds=2, strengths={"dp-gaussian": 0.1, "dp-laplace": 0.1, "soteria": 0.5},
        attack_overrides={"dlg": {"iterations": 2, "lbfgs_max_iter": 2}, "gia": {"iterations": 2, "restarts": 1}},
        train=TrainSettings(clients=2, rounds=2, local_steps=1, batch_size=8, eval_every=1),
    ),
    "quick": Profile(
        name="quick", datasets=["mnist-sample"], images=2, search_steps=2, adaptive=list(ADAPTIVE_TARGETS),
        attack_overrides={"dlg": {"iterations": 100, "restarts": 2}, "gia": {"iterations": 300, "restarts": 1}},
        train=TrainSettings(clients=5, rounds=12, local_steps=5, eval_every=4),
    ),
    "paper": Profile(
        name="paper", datasets=["mnist", "fashion-mnist", "cifar10"], images=4, search_steps=3,
        adaptive=list(ADAPTIVE_TARGETS),
        attack_overrides={"dlg": {"iterations": 300, "restarts": 2}, "gia": {"iterations": 1200, "restarts": 1}},
        train=TrainSettings(clients=10, rounds=30, local_steps=5, eval_every=5),
    ),
    "security": Profile(  # issue 8's bar: the default against every attack, on the three datasets
        name="security", datasets=["mnist", "fashion-mnist", "cifar10"], images=2,
        defenses=["none", "graddefense", "graddefense-paper"], adaptive=list(ADAPTIVE_TARGETS),
        attack_overrides={"dlg": {"iterations": 300, "restarts": 2}, "gia": {"iterations": 1200, "restarts": 1}},
        train=TrainSettings(clients=10, rounds=30, local_steps=5, eval_every=5),
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ConfigError(f"profile: unknown name {name!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[name]


def _searched(profile: Profile) -> list[str]:
    columns = {"soteria" if c == "soteria-muted" else c for c in profile.defenses}
    return [b for b in KNOBS if b in columns and b not in profile.strengths]


def estimate_cells(profile: Profile) -> int:
    """How many cells a fresh run computes (searches counted at their full length)."""
    adaptive = sum(len(ADAPTIVE_TARGETS[a] & set(profile.defenses)) for a in profile.adaptive)
    per_dataset = (len(profile.attacks) * len(profile.defenses) + len(_searched(profile)) * (profile.search_steps + 2)
                   + adaptive)
    trained = len([d for d in TRAINED_DEFENSES if d in profile.defenses])
    return per_dataset * len(profile.datasets) + trained * len(profile.train_datasets or profile.datasets)


# Seconds per attack iteration per image and restart, and per client step, on one core of the
# 2-core development machine (LeNet; measured from the ``paper`` run's cells). Soteria's
# per-step cost is its per-feature input-gradient norms: 0.9-1.0 s on the grey datasets, 1.4 s
# on CIFAR-10.
ATTACK_ITERATION_S = {"dlg": 0.01, "gia": 0.001}
CLIENT_STEP_S = 0.0025
DEFENSE_STEP_S = {"soteria": 1.1}


def estimate_seconds(profile: Profile) -> float:
    """A rough duration for a fresh run on one core, from the per-iteration costs above."""
    from ..attacks import Attack

    columns = len(profile.defenses)
    adaptive = sum(len(ADAPTIVE_TARGETS[a] & set(profile.defenses)) for a in profile.adaptive)
    attack_s = 0.0
    for attack in profile.attacks:
        config = Attack.from_config(attack, **profile.attack_overrides.get(attack, {})).config
        runs = columns + (len(_searched(profile)) * (profile.search_steps + 2) + adaptive
                          if attack == profile.search_attack else 0)
        attack_s += runs * profile.images * config.iterations * config.restarts * ATTACK_ITERATION_S.get(attack, 0.01)
    train = profile.train
    steps = train.rounds * max(1, round(train.clients * train.fraction)) * (train.local_steps or 10)
    train_s = sum(steps * (CLIENT_STEP_S + DEFENSE_STEP_S.get(d, 0.0)) for d in TRAINED_DEFENSES
                  if d in profile.defenses)
    return attack_s * len(profile.datasets) + train_s * len(profile.train_datasets or profile.datasets)
