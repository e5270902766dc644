"""The typed, validated configuration of one simulated federated training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..defenses import DEFENSES
from ..errors import ConfigError, describe_validation_error
from ..models.registry import MODELS
from ..models.user import UserModelSpec, is_user_spec

# Model options the simulator uses unless the config names its own. The sigmoid LeNet with
# PyTorch's default initialisation stays at chance (10% on mnist-sample after 800 SGD steps at
# any of lr 0.1, 0.5, 2.0); with the DLG initialisation it reaches 90% (docs/simulator.md).
TRAINING_MODEL_OPTIONS: dict[str, dict[str, Any]] = {"lenet": {"dlg_init": True}}

# On CPU, vmapping the clients pays off for small local batches, where the per-call overhead of
# a loop dominates, and not for large ones, where the loop runs close to the arithmetic floor.
# LeNet on MNIST, unloaded machine, one thread (benchmarks/simulator.py, docs/simulator.md):
# FedSGD with 100 clients 4.6x faster at batch 1, 1.7x at 8, 0.67x at 32; FedAvg 2.5x, 1.2x, 0.77x.
VMAP_MAX_BATCH = 8


class SimulationConfig(BaseModel):
    """Everything :func:`~gradguard.fl.simulate` needs; bad values fail here, before any data loads.

    FedSGD: each sampled client sends the gradient of one local batch and the server takes one
    step of size ``lr``. FedAvg: each sampled client runs ``local_steps`` SGD steps (or, when
    ``local_steps`` is None, ``local_epochs`` passes over its data) and sends its update.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    dataset: str = "mnist-sample"
    data_root: Path | None = None
    download: bool = Field(False, description="let torchvision download missing dataset files")
    model: str = "lenet"
    model_options: dict[str, Any] | None = Field(None, description="options for the model class; "
                                                "None means TRAINING_MODEL_OPTIONS for that model")
    defense: str = "none"
    defense_options: dict[str, Any] = Field(default_factory=dict)
    algorithm: Literal["fedsgd", "fedavg"] = "fedavg"
    clients: int = Field(10, ge=1, description="number of clients the training set is split among")
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="share of clients sampled each round")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.1, gt=0.0, description="client learning rate (FedAvg) or server step size (FedSGD)")
    rounds: int = Field(10, ge=1, description="federated rounds (also the default of `gradguard train`)")
    local_epochs: int = Field(1, ge=1, description="FedAvg passes over the local data per round")
    local_steps: int | None = Field(None, ge=1, description="FedAvg local SGD steps per round; overrides local_epochs")
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(0.5, gt=0.0, description="Dirichlet concentration (partition='dirichlet')")
    eval_every: int = Field(1, ge=1,
                            description="evaluate the global model every this many rounds (and after the last)")
    seed: int = 0
    reproducible_noise: bool = Field(False, description="derive the defense's noise from (seed, client, round) "
                                                        "instead of OS entropy")
    vectorize: bool | Literal["auto"] = Field("auto", description="train the clients of a round as one vmapped "
                                              "computation; auto: when batch_size <= VMAP_MAX_BATCH")

    @model_validator(mode="before")
    @classmethod
    def _default_model_options(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("model_options") is None:
            data = {**data, "model_options": dict(TRAINING_MODEL_OPTIONS.get(data.get("model", "lenet"), {}))}
        return data

    @field_validator("model", "defense")
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        registry = MODELS if info.field_name == "model" else DEFENSES
        if info.field_name == "model" and is_user_spec(name):
            UserModelSpec.parse(name)  # the text's form; the file and the name are checked when it is built
            return name
        if name not in registry:
            raise ConfigError(f"unknown {info.field_name} {name!r}; choose one of {sorted(registry)}")
        return name

    @field_validator("defense_options")
    @classmethod
    def _valid_defense_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        defense = info.data.get("defense")
        if defense is not None:  # None: the defense name itself was invalid, already reported
            try:
                DEFENSES[defense].Config(**options)
            except ValidationError as exc:
                raise ConfigError(f"defense_options: not valid for defense {defense!r}: "
                                  f"{describe_validation_error(exc)}") from None
        return options

    @model_validator(mode="after")
    def _steps_only_for_fedavg(self) -> SimulationConfig:
        if self.algorithm == "fedsgd" and self.local_steps not in (None, 1):
            raise ConfigError(f"local_steps={self.local_steps}: FedSGD takes exactly one local gradient; "
                              "use algorithm='fedavg' for several local steps")
        return self

    @model_validator(mode="after")
    def _samples_a_client(self) -> SimulationConfig:
        if round(self.fraction * self.clients) < 1:  # used to become 1 silently: a fraction that means nothing
            raise ConfigError(f"fraction={self.fraction:g}: samples round({self.fraction:g} x {self.clients} clients) "
                              f"= 0 clients per round; use fraction >= {1 / self.clients:.3g} with {self.clients} "
                              f"clients")
        return self

    @property
    def vectorized(self) -> bool:
        """Whether the clients run vmapped (resolving ``vectorize="auto"``)."""
        return self.batch_size <= VMAP_MAX_BATCH if self.vectorize == "auto" else self.vectorize

    @property
    def clients_per_round(self) -> int:
        """How many clients each round samples: round(fraction * clients), at least one by validation."""
        return round(self.fraction * self.clients)
