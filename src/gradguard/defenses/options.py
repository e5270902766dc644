"""What each defense accepts, for `gradguard defenses`."""

from __future__ import annotations

from .base import DEFENSES


def describe_defenses() -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    """(name, summary, [(option, default, description)]) for every registered defense."""
    rows = []
    for name, cls in sorted(DEFENSES.items()):
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        fields = [(field, repr(info.default), info.description or "")
                  for field, info in cls.Config.model_fields.items()]
        rows.append((name, summary, fields))
    return rows
