"""The Flower example defends with the library's default graddefense, says on one line per
round which defense is active, and ends with a short readable summary."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is not installed; install the extra: pip install 'gradguard[flower]'")

from flwr.app import ArrayRecord, ConfigRecord  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from gradguard.defenses import Defense  # noqa: E402
from gradguard.flower import DefendedStrategy, DefenseSettings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "flower"))
from gradguard_mnist import server_app, task  # noqa: E402

pytestmark = pytest.mark.usefixtures("flower_task_identity")  # messages built outside a running app


class _Grid:
    def get_node_ids(self):
        return [1, 2]


def test_the_example_defends_with_the_library_default_graddefense():
    """Not the paper's configuration, which docs/security.md shows leaking."""
    settings = DefenseSettings.from_configs(task.defaults(), {})
    assert settings.defense == "graddefense"
    assert settings.build().config == Defense.from_config("graddefense").config
    assert settings.build().config != Defense.from_config("graddefense-paper").config


def test_the_strategy_logs_the_active_defense_once_per_round(caplog):
    strategy = DefendedStrategy(FedAvg(min_available_nodes=1), "graddefense", scale=0.5, sigma=0.1)
    arrays = ArrayRecord({"w": torch.zeros(3)})
    with caplog.at_level("INFO", logger="flwr"):
        for server_round in (1, 2):
            list(strategy.configure_train(server_round, arrays, ConfigRecord(), _Grid()))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("DefendedStrategy:")]
    assert [line.split(":")[1].strip() for line in lines] == ["round 1", "round 2"]
    for line in lines:
        assert "graddefense(sigma=0.1)" in line and "noise of std 0.1" in line and "scale 0.5" in line
        assert "server compensation: none" in line and "\n" not in line


def test_the_example_ends_with_a_short_readable_summary():
    text = server_app.summary(task.defaults(), {0: 0.1034, 1: 0.4512, 2: 0.6127, 3: 0.7})
    lines = text.splitlines()
    assert len(lines) == 3
    assert "3 rounds of FedAvg on mnist-sample" in lines[0] and "graddefense(" in lines[0]
    assert lines[1] == "held-out accuracy by round: 10.3% (start) -> 45.1% -> 61.3% -> 70.0%"
    assert lines[2] == "final held-out accuracy: 70.0% after round 3"
    assert not re.search(r"\b0\.\d{3,}", text), "no raw floats"
