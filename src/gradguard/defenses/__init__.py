"""Defenses: one interface (:class:`Defense`), a registry (:data:`DEFENSES`), one module each."""

from .base import DEFENSES, Compensator, Defense, DefenseConfig, DefenseContext, NoDefense, register

__all__ = ["DEFENSES", "Compensator", "Defense", "DefenseConfig", "DefenseContext", "NoDefense", "register"]
