"""The typed, validated options of the gradient-matching engine.

Every field fails early with a message naming the field, the value and the allowed range
(pydantic); combinations the engine cannot honour (signed L-BFGS, a boxed L-BFGS, a step
schedule for L-BFGS) are rejected the same way.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Distance = Literal["l2", "cosine", "l1"]
Optimizer = Literal["lbfgs", "adam"]
Init = Literal["randn", "uniform", "constant"]
# learned: soft labels optimised with the images (DLG); idlg: recovered analytically from the
# last layer's gradient; given: passed by the caller; idlg-or-given: idlg at batch size 1,
# given otherwise (Inverting Gradients).
Labels = Literal["learned", "idlg", "given", "idlg-or-given"]


class AttackConfig(BaseModel):
    """Options of one gradient-matching attack (see docs/attacks.md for each default's source)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    distance: Distance = "l2"
    distance_scale: float = Field(default=1.0, gt=0.0, description="the distance is multiplied by this (e.g. a "
                                                                   "likelihood's 1 / (2 sigma^2))")
    layer_weights: list[float] | None = Field(
        default=None, description="one weight >= 0 per gradient tensor, in parameters() order")
    optimizer: Optimizer = "lbfgs"
    iterations: int = Field(default=300, ge=1, le=1_000_000)
    lbfgs_max_iter: int = Field(default=20, ge=1, le=10_000,
                                description="L-BFGS updates per iteration (torch.optim.LBFGS max_iter)")
    lbfgs_history: int = Field(default=100, ge=1, le=1_000)
    lbfgs_line_search: bool = Field(default=False, description="L-BFGS step control: halve each update's step until "
                                                               "the loss decreases enough (Armijo) instead of "
                                                               "taking it as it is (torch.optim.LBFGS's default)")
    lr: float = Field(default=1.0, gt=0.0, le=1e3)
    milestones: list[float] = Field(default_factory=list,
                                    description="fractions of the iterations where lr is multiplied by gamma")
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)
    tv_weight: float = Field(default=0.0, ge=0.0)
    signed: bool = False
    boxed: bool = False
    init: Init = "randn"
    init_value: float = Field(default=0.5, ge=0.0, le=1.0, description="pixel value of init='constant'")
    restarts: int = Field(default=1, ge=1, le=1_000)
    labels: Labels = "learned"
    mute: list[str | int] = Field(default_factory=list,
                                        description="gradient tensors left out of the matching, by name or index")
    mute_mask: torch.Tensor | None = Field(
        default=None, description="bool over the flattened gradient; True leaves that element out")

    @field_validator("layer_weights")
    @classmethod
    def _weights_non_negative(cls, value):
        if value is not None and (not value or min(value) < 0):
            raise ValueError(f"must be a non-empty list of numbers >= 0, got {value}")
        return value

    @field_validator("milestones")
    @classmethod
    def _milestones_fractions(cls, value):
        if any(not 0.0 < m < 1.0 for m in value) or value != sorted(value):
            raise ValueError(f"must be increasing fractions in (0, 1), got {value}")
        return value

    @field_validator("mute_mask")
    @classmethod
    def _mask_bool_vector(cls, value):
        if value is not None and (not isinstance(value, torch.Tensor) or value.dtype != torch.bool or value.dim() != 1):
            raise ValueError("must be a 1-D torch.bool tensor over the flattened gradient")
        return value

    @model_validator(mode="after")
    def _optimizer_combinations(self):
        if self.optimizer == "lbfgs":
            for name, bad in (("signed", self.signed), ("boxed", self.boxed), ("milestones", bool(self.milestones))):
                if bad:
                    raise ValueError(f"{name} needs optimizer='adam': L-BFGS builds its curvature pairs from "
                                     f"plain, unclipped gradient steps at a fixed lr")
        return self
