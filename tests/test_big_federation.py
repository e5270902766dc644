"""The two paths docs/scale.md offers for big federations run the same workload end to end:
benchmarks/big_federation.py's simulator side (vectorised, 1,000 clients, one round) and its Flower side (the
example app: ClientApp behind the DefenseMod, FedAvg inside DefendedStrategy, in Flower's
simulation engine), here with 20 nodes for 2 rounds so the test stays short. The round times the
benchmark prints are measurements and are not asserted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "big_federation.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("big_federation", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_simulator_path_trains_1000_clients_vectorised():
    run = _benchmark().simulator(1000, 1)  # 4 images a client: vmapped (batch <= 8)
    assert run["trainer"] == "vectorized" and run["rounds"] == 1 and 0 <= run["accuracy"] <= 1
    assert run["round_s"] > 0


@pytest.mark.slow
def test_flower_path_with_the_defense_mod_and_strategy_runs_every_node():
    pytest.importorskip("flwr.simulation", reason="needs flwr[simulation]")
    run = _benchmark().flower(20, 2, 2)
    assert run["engine"] == "flower" and run["clients"] == 20 and run["rounds"] == 2
    assert run["first_round_s"] > 0 and run["round_s"] > 0, "both rounds reached the server's evaluation"
    assert 0 <= run["accuracy"] <= 1
