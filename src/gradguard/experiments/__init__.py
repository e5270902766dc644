"""The reproduction harness: profiles, cells, the results store, the runner, tables, figures, report."""

from .profiles import PROFILES, Profile, get_profile
from .report import build_report
from .reproduce import reproduce
from .runner import CellRunner
from .store import ResultStore
from .sweep import sweep

__all__ = ["PROFILES", "CellRunner", "Profile", "ResultStore", "build_report", "get_profile", "reproduce", "sweep"]
