"""What a simulated training run measured: accuracy (ACC) and round time (ART), per round."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class RoundRecord:
    """One round: its number (1-based), wall time per phase in seconds, and the test accuracy
    and loss of the global model after it (None on rounds that were not evaluated).

    ``client_s`` is local gradient computation and local SGD steps, ``defense_s`` the client
    defense, ``server_s`` aggregation plus compensation plus the global step. Evaluation is not
    part of a round's time.
    """

    round: int
    client_s: float
    defense_s: float
    server_s: float
    accuracy: float | None = None
    loss: float | None = None

    @property
    def seconds(self) -> float:
        return self.client_s + self.defense_s + self.server_s


@dataclass
class History:
    """The record of one :func:`~gradguard.fl.simulate` run.

    ``config`` is the run's configuration as a dict; ``trainer`` says whether the clients ran
    vectorised or looped; ``final_state`` holds the global model's state dict after the last
    round (not written to JSON or CSV).
    """

    config: dict[str, Any]
    trainer: str
    rounds: list[RoundRecord] = field(default_factory=list)
    final_state: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def art(self) -> float:
        """Average round time (ART): mean wall time of a round, in seconds."""
        return sum(r.seconds for r in self.rounds) / max(1, len(self.rounds))

    def overhead(self, reference: History) -> float:
        """This run's ART relative to ``reference`` (e.g. the same workload with ``none``), minus 1."""
        return self.art / reference.art - 1

    @property
    def evaluated(self) -> list[RoundRecord]:
        return [r for r in self.rounds if r.accuracy is not None]

    @property
    def accuracies(self) -> list[float]:
        """The test accuracy curve, one value per evaluated round."""
        return [r.accuracy for r in self.evaluated if r.accuracy is not None]

    @property
    def final_accuracy(self) -> float | None:
        """The test accuracy after the last round (ACC)."""
        return self.rounds[-1].accuracy if self.rounds else None

    def summary(self) -> dict[str, Any]:
        """ACC, ART and the mean time per phase."""
        n = max(1, len(self.rounds))
        return {"accuracy": self.final_accuracy, "art_s": self.art, "rounds": len(self.rounds),
                "client_s": sum(r.client_s for r in self.rounds) / n,
                "defense_s": sum(r.defense_s for r in self.rounds) / n,
                "server_s": sum(r.server_s for r in self.rounds) / n, "trainer": self.trainer}

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "trainer": self.trainer, "summary": self.summary(),
                "rounds": [asdict(r) | {"seconds": r.seconds} for r in self.rounds]}

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")

    def to_csv(self, path: str | Path) -> None:
        """One row per round: the :class:`RoundRecord` fields plus the total ``seconds``."""
        columns = [f.name for f in fields(RoundRecord)] + ["seconds"]
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for record in self.rounds:
                writer.writerow(asdict(record) | {"seconds": record.seconds})

    @classmethod
    def from_json(cls, path: str | Path) -> History:
        data = json.loads(Path(path).read_text())
        return cls(data["config"], data["trainer"],
                   [RoundRecord(**{k: v for k, v in r.items() if k != "seconds"}) for r in data["rounds"]])
