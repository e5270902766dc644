"""Defense options from the command line: ``--defense NAME --defense-opt key=value ...``."""

from __future__ import annotations

from typing import Iterable

from ..errors import ConfigError
from .base import DEFENSES, Defense

_NONE = {"none", "null"}


def parse_options(pairs: Iterable[str]) -> dict[str, str | None]:
    """``["sigma=0.1", "clip=none"]`` -> ``{"sigma": "0.1", "clip": None}``; the defense's pydantic
    config converts the strings to its field types and validates them."""
    options: dict[str, str | None] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"defense option {pair!r}: expected key=value, e.g. sigma=0.1")
        options[key.strip().replace("-", "_")] = None if value.strip().lower() in _NONE else value.strip()
    return options


def defense_from_cli(name: str, pairs: Iterable[str] = ()) -> Defense:
    """Build a defense from a name and ``key=value`` strings."""
    return Defense.from_config(name, **parse_options(pairs))


def describe_defenses() -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    """(name, summary, [(option, default, description)]) for every registered defense."""
    rows = []
    for name, cls in sorted(DEFENSES.items()):
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        fields = [(field, repr(info.default), info.description or "") for field, info in cls.Config.model_fields.items()]
        rows.append((name, summary, fields))
    return rows
