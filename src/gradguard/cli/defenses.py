"""`gradguard defenses`: every defense with its options, defaults and what they mean."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .app import command


@command("defenses", "List every defense and its options (pass them as --defense-opt key=value).")
def defenses(args) -> None:
    from ..defenses.options import describe_defenses

    table = Table(title="defenses")
    for column in ("name", "option", "default", "meaning"):
        table.add_column(column)
    for name, summary, fields in describe_defenses():
        table.add_row(name, "", "", summary)
        for field, default, description in fields:
            table.add_row("", field, default, description)
    Console(width=200).print(table)
