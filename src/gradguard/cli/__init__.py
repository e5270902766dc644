"""The command line: a thin layer over the library. Each topic module registers its commands."""

from __future__ import annotations

import sys

from . import attack, audit, defenses, experiments, info, train  # noqa: F401  (each import registers its commands)
from .app import COMMANDS, command, run


def main() -> None:
    sys.exit(run())


__all__ = ["COMMANDS", "command", "main", "run"]
