"""Exceptions with messages meant for users: the CLI prints them as one line, exit code 2.

Library entry points that validate user input with pydantic re-raise its ``ValidationError``
as a :class:`ConfigError` whose message is :func:`describe_validation_error`'s one line
(:func:`config_errors` does it for a block).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class GradguardError(Exception):
    """Base class for every error gradguard raises on purpose."""


class ConfigError(GradguardError, ValueError):
    """A configuration value is invalid; the message names the field, the value and the rule."""


class DatasetNotFoundError(GradguardError, FileNotFoundError):
    """A dataset's files are not where gradguard looked; the message says where and how to get them."""


class DatasetFormatError(GradguardError, ValueError):
    """A dataset file exists but does not follow the documented format."""


def describe_validation_error(exc: ValidationError) -> str:
    """A pydantic error as one line: each field with its value and the rule it broke.

    A :class:`GradguardError` raised inside a validator (pydantic keeps it in ``ctx["error"]``)
    already names the field, the value and the rule: its own text is used as it is.
    """
    parts = []
    for err in exc.errors():
        original = (err.get("ctx") or {}).get("error")
        if isinstance(original, GradguardError):
            parts.append(str(original))
            continue
        field = ".".join(str(p) for p in err["loc"]) or exc.title
        parts.append(f"{field}={err.get('input')!r}: {err['msg']}")
    if parts and all(isinstance((e.get("ctx") or {}).get("error"), GradguardError) for e in exc.errors()):
        return "; ".join(parts)
    return f"{exc.title}: " + "; ".join(parts)


@contextmanager
def config_errors(who: str | None = None) -> Iterator[None]:
    """Re-raise a pydantic ``ValidationError`` from the block as a one-line :class:`ConfigError`,
    prefixed with ``who`` (the component: ``"attack 'dlg'"``, ``"DefenseSettings"``)."""
    from pydantic import ValidationError

    try:
        yield
    except ValidationError as exc:
        message = describe_validation_error(exc)
        raise ConfigError(f"{who}: {message}" if who else message) from None
