"""The one interface every defense implements, and the registry that finds them by name.

A client-side :class:`Defense` maps a client's gradient to a defended gradient. Defenses that
need more than the gradient (the model, the local batch, per-sample gradients) read it from
the :class:`DefenseContext`. A defense whose noise the server can partly undo also returns a
server-side :class:`Compensator` that maps the weighted aggregate of defended updates to an
estimate of the clean aggregate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from ..errors import ConfigError

Gradient = list[Tensor]


@dataclass
class DefenseContext:
    """What a client knows when it defends one gradient.

    ``generator`` drives every random draw of the defense (DESIGN.md: randomness is explicit);
    ``round`` and ``client`` let stateful defenses refresh per-round state such as risks;
    ``local_data`` is the client's whole local dataset (images, labels), e.g. for a root set.
    """

    model: nn.Module | None = None
    x: Tensor | None = None
    y: Tensor | None = None
    generator: torch.Generator | None = None
    round: int = 0
    client: int = 0
    per_sample: Gradient | None = None
    local_data: tuple[Tensor, Tensor] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class DefenseConfig(BaseModel):
    """Base of every defense's typed config: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Compensator(ABC):
    """Server side: estimate the clean weighted aggregate from the defended one."""

    @abstractmethod
    def compensate(self, aggregate: Gradient, weights: Tensor, *, scale: float = 1.0) -> Gradient:
        """``aggregate`` = sum_i w_i * defended_i with ``weights`` w (summing to 1); ``scale``
        multiplies the per-element noise std (e.g. the learning rate times local steps for a
        FedAvg update)."""


class Defense(ABC):
    """Client side: one gradient in, one defended gradient out. Never modifies its input."""

    name: ClassVar[str]
    Config: ClassVar[type[DefenseConfig]] = DefenseConfig
    needs_batch: ClassVar[bool] = False  # reads context.model/x/y

    def __init__(self, config: DefenseConfig | None = None, **options):
        self.config = config if config is not None else self.Config(**options)

    @abstractmethod
    def defend(self, grads: Sequence[Tensor], context: DefenseContext) -> Gradient:
        """Return the defended gradient; ``grads`` is left untouched."""

    def compensator(self) -> Compensator | None:
        """The server-side compensator for this defense, or None when the plain average is best."""
        return None

    @classmethod
    def from_config(cls, name: str, **options) -> "Defense":
        """Build the defense registered as ``name`` with validated ``options``."""
        if name not in DEFENSES:
            raise ConfigError(f"defense: unknown name {name!r}; choose one of {sorted(DEFENSES)}")
        return DEFENSES[name](**options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items())
        return f"{type(self).__name__}({opts})"


DEFENSES: dict[str, type[Defense]] = {}


def register(cls: type[Defense]) -> type[Defense]:
    """Class decorator: make a defense available by its ``name``."""
    DEFENSES[cls.name] = cls
    return cls


def check_finite(grads: Sequence[Tensor], who: str) -> None:
    """Defenses refuse NaN or inf gradients instead of spreading them."""
    for i, g in enumerate(grads):
        if not torch.isfinite(g).all():
            raise ConfigError(f"{who}: gradient tensor {i} contains NaN or inf values")


@register
class NoDefense(Defense):
    """``none``: the gradient as it is, the reference every defense is measured against."""

    name = "none"

    def defend(self, grads, context):
        return [g.clone() for g in grads]
