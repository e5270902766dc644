"""The one interface every defense implements, and the registry that finds them by name.

A client-side :class:`Defense` maps a client's gradient to a defended gradient. Defenses that
need more than the gradient (the model, the local batch, per-sample gradients) read it from
the :class:`DefenseContext`. A defense whose noise the server can partly undo also returns a
server-side :class:`Compensator` that maps the weighted aggregate of defended updates to an
estimate of the clean aggregate.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import Tensor, nn

from ..errors import ConfigError, config_errors
from ..grads import Gradient, flatten, unflatten

__all__ = ["DEFENSES", "Compensator", "Defense", "DefenseConfig", "DefenseContext", "Gradient", "NoDefense",
           "NoiseModel", "Strength", "check_finite", "check_rows",
           "check_rows_finite", "register"]


@dataclass
class DefenseContext:
    """What a client knows when it defends one gradient.

    ``generator`` drives every random draw of the defense (docs/design.md section 1: randomness
    is explicit); ``round`` and ``client`` let stateful defenses refresh per-round state such as
    risks; ``local_data`` is the client's whole local dataset (images, labels), e.g. for a root set.
    ``step`` is the index of the local SGD step within the round during federated training, and
    None for a gradient defended on its own (an attacked gradient, a Flower client's update): a
    defense may reuse per-round state across a round's steps only where ``step`` says so.
    """

    model: nn.Module | None = None
    x: Tensor | None = None
    y: Tensor | None = None
    generator: torch.Generator | None = None
    round: int = 0
    client: int = 0
    per_sample: Gradient | None = None
    local_data: tuple[Tensor, Tensor] | None = None
    step: int | None = None


#: The largest finite float32: gradients are float32, so a larger option (a noise std, a
#: clipping norm) turns every element it touches into inf and the result means nothing.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class DefenseConfig(BaseModel):
    """Base of every defense's typed config: unknown keys are errors, values are validated.

    Numbers must be finite and representable in float32, the gradients' precision: an infinite
    or overflowing noise level would make every defended element inf, and an attack on such a
    gradient stops at once and still reports a score as if it had run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _fits_float32(self) -> DefenseConfig:
        for name, value in self:
            if isinstance(value, float) and abs(value) > FLOAT32_MAX:
                raise ConfigError(f"{name}={value:g}: beyond float32's range (|x| <= {FLOAT32_MAX:.3g}), the "
                                  f"gradients' precision; every element it touches would become inf")
        return self


class Strength(BaseModel):
    """A defense's strength knob: the option that sets it, and the range that the equal-privacy
    search and sweeps cover. Strength grows from ``low`` to ``high`` and attack PSNR is expected
    to fall along it; the option's value is ``strength * scale`` (e.g. a fraction shown as a
    percentile)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    option: str
    low: float
    high: float
    scale: float = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> Strength:
        if not 0 < self.low < self.high:
            raise ValueError(f"strength range must satisfy 0 < low < high, got low={self.low}, high={self.high}")
        return self

    def options(self, strength: float) -> dict[str, float]:
        return {self.option: strength * self.scale}


@dataclass(frozen=True)
class NoiseModel:
    """The noise a defense adds, as its public configuration tells it (what an adaptive attacker
    knows): the distribution, the per-element standard deviation in gradient units, the expected
    fraction of elements that get noise (below 1, the clean ones are secret), and whether the
    same gradient sent twice gets fresh noise (``fresh=False``: memoised noise)."""

    distribution: Literal["gaussian", "laplace"]
    std: float
    fraction: float = 1.0
    fresh: bool = True


class Compensator(ABC):
    """Server side: estimate the clean weighted aggregate from the defended one."""

    @abstractmethod
    def compensate(self, aggregate: Gradient, weights: Tensor, *, scale: float = 1.0) -> Gradient:
        """``aggregate`` = sum_i w_i * defended_i with ``weights`` w (summing to 1); ``scale``
        multiplies the per-element noise std (e.g. the learning rate times local steps for a
        FedAvg update)."""


class Defense(ABC):
    """Client side: one gradient in, one defended gradient out. Never modifies its input.

    The class attributes below are the defense's registration: the reproduction harness, the
    sweeps and the adaptive attacks find everything they need there, so a new defense is one
    module plus ``@register`` (docs/extending.md).
    """

    name: ClassVar[str]
    Config: ClassVar[type[DefenseConfig]] = DefenseConfig
    needs_batch: ClassVar[bool] = False  # reads context.model/x/y
    #: the option the equal-privacy search and sweeps vary; None: compared only as configured
    strength: ClassVar[Strength | None] = None
    #: whether reproduction profiles train with it (the utility table)
    trains: ClassVar[bool] = True
    #: whether it cuts the gradient into slices that :meth:`public_slices` recomputes
    sliced: ClassVar[bool] = False
    #: whether it sets gradient entries to exactly zero (pruning): a zero then says nothing
    sparsifies: ClassVar[bool] = False

    def __init__(self, config: DefenseConfig | None = None, **options):
        if config is None:
            with config_errors(f"defense {self.name!r}"):
                config = self.Config(**options)
        self.config = config

    @abstractmethod
    def defend(self, grads: Sequence[Tensor], context: DefenseContext) -> Gradient:
        """Return the defended gradient; ``grads`` is left untouched."""

    def defend_rows(self, rows: Tensor, like: Sequence[Tensor], contexts: Sequence[DefenseContext]) -> Tensor:
        """Several clients' gradients in one call: row i of ``rows`` (n, P) is client i's flat
        gradient (tensors shaped like ``like``, in order), defended with ``contexts[i]``.

        Returns a new (n, P) tensor whose row i equals
        ``flatten(defend(unflatten(rows[i], like), contexts[i]))``, drawing from each context's
        generator exactly what :meth:`defend` draws, so a simulator may defend the clients of a
        round side by side, one call per local step instead of one per client and step (right
        after the backward passes every tensor operation costs tens of microseconds, and these
        calls were most of a cheap defense's cost). This default defends row by row; a defense
        overrides it where operations over the whole matrix give the same rows for less.
        ``rows`` is left untouched."""
        check_rows(rows, contexts)
        return torch.stack([flatten(self.defend(unflatten(row, like), context))
                            for row, context in zip(rows, contexts)])

    def defend_with_secret(self, grads: Sequence[Tensor], context: DefenseContext) -> tuple[Gradient, Tensor | None]:
        """The defended gradient and the client's secret: a bool mask over the flat gradient of
        the elements that got noise (None when the defense keeps no such secret). For evaluation
        only (the oracle attack, detection scores): a client never sends it."""
        return self.defend(grads, context), None

    def reads_context(self) -> bool:
        """Whether this configured defense reads the context's model, batch or local data (the
        class's ``needs_batch`` says whether any configuration may). A trainer gathers them
        only when it does: loading a client's parameters into a model costs a copy per step."""
        return self.needs_batch

    def compensator(self) -> Compensator | None:
        """The server-side compensator for this defense, or None when the plain average is best."""
        return None

    def costly_steps(self, local_steps: int, batch_size: int = 32) -> float:
        """Of a client's ``local_steps`` in one training round (batches of ``batch_size``), how
        many pay this defense's own cost, or its equivalent in full steps (a run's duration
        estimate multiplies it by the cost model's per-step seconds)."""
        return local_steps

    def noise_model(self, batch_size: int = 1) -> NoiseModel | None:
        """The public noise of this configuration for a batch of ``batch_size``, or None when
        the defense adds no random noise."""
        return None

    def perturbed_parameters(self) -> tuple[str, ...] | None:
        """Names of the parameters whose gradients the defense changes in a fixed, public
        pattern (an attacker may leave them out), or None."""
        return None

    def public_slices(self, grads: Sequence[Tensor], model: nn.Module, data: tuple[Tensor, Tensor],
                      generator: torch.Generator | None = None) -> Tensor:
        """The slice bounds this defense's public code gives for ``model`` and the attacker's own
        ``data`` (only when :attr:`sliced`); ``generator`` drives any random probes of the
        estimate (the attacker's own, so seeded: OS entropy otherwise)."""
        raise ConfigError(f"defense {self.name!r} does not slice the gradient")

    @classmethod
    def from_config(cls, name: str, **options) -> Defense:
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


def check_rows(rows: Tensor, contexts: Sequence[DefenseContext]) -> None:
    """A :meth:`Defense.defend_rows` matrix has one row per context."""
    if rows.dim() != 2 or len(rows) != len(contexts):
        raise ValueError(f"defend_rows: {len(contexts)} contexts for rows of shape {tuple(rows.shape)}")


def check_rows_finite(rows: Tensor, like: Sequence[Tensor], who: str) -> None:
    """:func:`check_finite` for each row of a :meth:`Defense.defend_rows` matrix."""
    for row in rows:
        check_finite(unflatten(row, like), who)


@register
class NoDefense(Defense):
    """``none``: the gradient as it is, the reference every defense is measured against."""

    name = "none"

    def defend(self, grads, context):
        flat = flatten(grads)  # one copy of every tensor
        if not math.isfinite(float(flat.sum())):  # one reduction; the exact per-tensor check only when in doubt
            check_finite(grads, self.name)
        return unflatten(flat, grads)

    def defend_rows(self, rows, like, contexts):
        check_rows(rows, contexts)
        out = rows.clone()
        if not math.isfinite(float(out.sum())):
            check_rows_finite(out, like, self.name)
        return out
