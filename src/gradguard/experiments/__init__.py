"""The reproduction harness: profiles, typed cells, plans, the results store, the runner, tables,
figures, report."""

from .cells import AttackCell, Cell, SearchCell, TrainCell, TrainSettings
from .plan import Plan, build_plan
from .profiles import PROFILES, Profile, get_profile, load_profile
from .report import build_report
from .reproduce import reproduce
from .runner import CellRunner
from .store import ResultStore
from .sweep import sweep

__all__ = ["PROFILES", "AttackCell", "Cell", "CellRunner", "Plan", "Profile", "ResultStore", "SearchCell", "TrainCell",
           "TrainSettings", "build_plan", "build_report", "get_profile", "load_profile", "reproduce", "sweep"]
