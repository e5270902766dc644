"""The server side: a strategy wrapper that compensates the aggregate for the clients' noise.

It delegates everything to the wrapped strategy (FedAvg by default) and changes two things:
``configure_train`` adds the defense's public settings to the train config (so the clients'
:class:`~gradguard.flower.DefenseMod` applies the same defense), and ``aggregate_train``
compensates before the wrapped strategy aggregates. Compensation works on the replies that
actually arrived (failed ones are left out of both the count and the weights): with the
weights w_i of the wrapped strategy (``num-examples`` for FedAvg), it forms the aggregate
pseudo-gradient G = sum_i w_i (global - local_i) / scale, compensates it to C, and shifts every
reply by ``-scale * (C - G)``. The weighted mean of the shifted replies is then exactly
``global - scale * C``, so FedAvg returns the compensated model, and strategies that work on
the mean update (FedAdam, FedYogi, ...) see the compensated update.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from logging import INFO

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from ..defenses import Compensator, Defense
from ..errors import ConfigError
from .arrays import floating_names, only_array_record, replace, tensors
from .settings import DefenseSettings


class DefendedStrategy(Strategy):
    """Wrap ``strategy`` so the clients apply ``defense`` and the server compensates for it.

    ``DefendedStrategy(FedAvg(), "graddefense", scale=lr * steps, sigma=0.1, ...)``: the
    keyword options are the defense's own. ``keys`` names the arrays the clients defend (their
    model's parameter names when the mod has a ``model_fn``); by default every floating-point array.
    """

    def __init__(self, strategy: Strategy | None = None, defense: str = "none", *, scale: float = 1.0,
                 keys: Sequence[str] | None = None, **options):
        self.strategy = strategy if strategy is not None else FedAvg()
        self.settings = DefenseSettings(defense=defense, options=options, scale=scale)
        self.defense: Defense = self.settings.build()
        self.compensator: Compensator | None = self.defense.compensator()
        self.keys = list(keys) if keys is not None else None
        self.compensated_weights: dict[int, torch.Tensor] = {}  # round -> weights of the replies used
        self._global: dict[int, ArrayRecord] = {}

    def __getattr__(self, name: str):
        # Attributes of the wrapped strategy (e.g. weighted_by_key) read through the wrapper.
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        # One line per round saying which defense is active, as Flower's DP wrappers log theirs.
        compensation = type(self.compensator).__name__ if self.compensator is not None else "none (plain average)"
        log(INFO, "DefendedStrategy: round %s: clients defend their updates with %s; server compensation: %s",
            server_round, self.settings.describe(self.defense), compensation)
        self._global = {server_round: arrays}
        config = ConfigRecord({**config, **self.settings.to_config()})
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrived = [r for r in replies if not r.has_error()]
        if self.compensator is not None and arrived and server_round in self._global:
            self.compensated_weights[server_round] = self._compensate(self.compensator, arrived,
                                                                      self._global[server_round])
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()

    def _compensate(self, compensator: Compensator, replies: list[Message],
                    global_record: ArrayRecord) -> torch.Tensor:
        """Shift each arrived reply so that their weighted mean is the compensated model; returns
        the weights used."""
        names = self.keys if self.keys is not None else floating_names(global_record)
        weights = self._weights(replies)
        scale = self.settings.scale
        global_ = tensors(global_record, names)
        records = [only_array_record(r.content, "DefendedStrategy") for r in replies]
        locals_ = [tensors(record, names) for _, record in records]
        aggregate = [torch.einsum("c,c...->...", weights.to(g.dtype), g - torch.stack([lo[i] for lo in locals_]))
                     / scale for i, g in enumerate(global_)]
        compensated = compensator.compensate(aggregate, weights)
        shift = [-scale * (c - a) for c, a in zip(compensated, aggregate)]
        for reply, (key, record), local in zip(replies, records, locals_):
            reply.content[key] = replace(record, {n: w + s for n, w, s in zip(names, local, shift)})
        return weights

    def _weights(self, replies: list[Message]) -> torch.Tensor:
        """Normalised weights of the arrived replies, by the wrapped strategy's weighting key."""
        key = getattr(self.strategy, "weighted_by_key", None)
        if key is None:
            return torch.full((len(replies),), 1.0 / len(replies))
        raw: list[float] = []
        for reply in replies:
            metrics = next(iter(reply.content.metric_records.values()), None)
            value = metrics.get(key) if metrics is not None else None
            if not isinstance(value, (int, float)):
                raise ConfigError(f"DefendedStrategy: a reply has no numeric metric {key!r} to weight it by")
            raw.append(float(value))
        total = sum(raw)
        if not total > 0:
            raise ConfigError(f"DefendedStrategy: the weights {key!r} of the arrived replies sum to {total}; need > 0")
        return torch.tensor(raw, dtype=torch.float64).div(total).float()
