"""Audits: point gradguard at your own model and data, get a leakage verdict per defense and the
configuration to use (``gradguard.audit(model, dataset)``, ``gradguard audit``; docs/audit.md)."""

from .config import BUDGETS, DEFAULT_DEFENSES, AuditConfig, Budget
from .plan import AuditPlan, prepare_audit
from .result import AuditResult, BatchResult, DefenseResult, Recommendation, parse_recommendation
from .run import audit, run_audit

__all__ = ["BUDGETS", "DEFAULT_DEFENSES", "AuditConfig", "AuditPlan", "AuditResult", "BatchResult", "Budget",
           "DefenseResult", "Recommendation", "audit", "parse_recommendation", "prepare_audit", "run_audit"]
