"""Federated training in one process: ``simulate(SimulationConfig(...)) -> History`` (FedSGD,
FedAvg, any model and defense, vectorised clients), measuring accuracy (ACC) and round time (ART)."""

from .config import SimulationConfig
from .history import History, RoundRecord
from .simulator import simulate

__all__ = ["History", "RoundRecord", "SimulationConfig", "simulate"]
