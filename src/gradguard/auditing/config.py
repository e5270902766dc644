"""What an audit runs: the validated settings (:class:`AuditConfig`) and the two budgets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import ConfigError

__all__ = ["BUDGETS", "DEFAULT_DEFENSES", "AuditConfig", "Budget"]

#: The defenses an audit compares unless told otherwise: no defense (the reference), the
#: hardened default, clipped-free Gaussian noise and gradient compression (pruning).
DEFAULT_DEFENSES = ("none", "graddefense", "dp-gaussian", "gc")


class Budget(BaseModel):
    """How much work an audit spends: the attacks' iterations, the learned inverter's size, the
    search's probes and the training run that measures the accuracy cost."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gia: dict[str, Any] = Field(description="overrides of the gia attack (iterations, restarts)")
    lti: dict[str, Any] = Field(description="the learned inverter's options (aux_images, projection, hidden, epochs)")
    search_steps: int = Field(ge=0, description="bisection probes after the two bounds of a strength range")
    adaptive_rounds: int = Field(ge=2, description="observations the multi-round attacker combines")
    clients: int = Field(ge=1)
    rounds: int = Field(ge=1)
    local_steps: int = Field(ge=1)
    lr: float = Field(gt=0)


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(gia={"iterations": 5, "restarts": 1},  # every code path in seconds: for tests, not verdicts
                   lti={"aux_images": 32, "projection": 16, "hidden": 16, "epochs": 1},
                   search_steps=0, adaptive_rounds=2, clients=2, rounds=1, local_steps=1, lr=0.1),
    "quick": Budget(gia={"iterations": 300, "restarts": 1},
                    lti={"aux_images": 500, "projection": 256, "hidden": 128, "epochs": 10},
                    search_steps=2, adaptive_rounds=2, clients=4, rounds=10, local_steps=10, lr=0.1),
    "full": Budget(gia={"iterations": 1200, "restarts": 2},
                   lti={"aux_images": 1500, "projection": 512, "hidden": 256, "epochs": 20},
                   search_steps=4, adaptive_rounds=4, clients=10, rounds=30, local_steps=10, lr=0.1),
}


class AuditConfig(BaseModel):
    """The settings of one audit. ``model`` and ``dataset`` are references (text), so that the
    cells of the audit stay plain data: a model is ``PATH.py:NAME``, ``package.module:NAME`` or
    a registered name; a dataset a registered name, ``npz:PATH`` or ``folder:PATH``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="PATH.py:NAME, package.module:NAME, or lenet / convnet / resnet18")
    dataset: str = Field(description="a dataset name, npz:PATH or folder:PATH (ImageFolder layout)")
    weights: str | None = Field(None, description="a state dict (torch.save(model.state_dict(), path)) to audit a "
                                                  "trained model")
    mode: Literal["train", "eval"] = Field("train", description="the mode the client's gradient is taken in: train "
                                                                "(BatchNorm uses the batch's statistics, dropout on) "
                                                                "or eval")
    normalize: Literal["model", "data"] = Field("model", description="model: the model normalises its input itself; "
                                                                     "data: a layer with the data's statistics is "
                                                                     "put in front of it")
    images: int = Field(4, ge=1, le=64, description="training images attacked at batch size 1")
    batch_size: int = Field(4, ge=1, le=64, description="the clients' batch size, attacked besides batch size 1 "
                                                        "(and used for the training run)")
    defenses: list[str] = Field(default_factory=lambda: list(DEFAULT_DEFENSES), min_length=1)
    defense_options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="options held fixed per "
                                                       "defense; the strength knob is searched on top")
    budget: Literal["tiny", "quick", "full"] = "quick"
    margin_db: float = Field(2.0, ge=0, description="a defense holds when its worst-case PSNR is at most the floor "
                                                    "+ this")
    margin_ssim: float = Field(0.05, ge=0, description="... and its worst-case SSIM at most the floor + this")
    seed: int = 0

    @field_validator("defenses")
    @classmethod
    def _known_defenses(cls, names: list[str]) -> list[str]:
        from ..defenses import DEFENSES

        unknown = [n for n in names if n not in DEFENSES]
        if unknown:
            raise ConfigError(f"audit: unknown defense {unknown}; choose from {sorted(DEFENSES)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"audit: defenses {names} name one twice")
        return names

    @model_validator(mode="after")
    def _options_for_audited(self) -> AuditConfig:
        stray = [n for n in self.defense_options if n not in self.defenses]
        if stray:
            raise ConfigError(f"audit: defense_options for {stray}, which are not audited ({self.defenses})")
        return self

    @property
    def batch_sizes(self) -> list[int]:
        return [1] if self.batch_size == 1 else [1, self.batch_size]

    def images_at(self, batch_size: int) -> int:
        """Targets attacked at ``batch_size``: ``images`` rounded up to whole batches."""
        return batch_size * -(-self.images // batch_size)
