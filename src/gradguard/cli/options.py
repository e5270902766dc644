"""Options shared by several commands, declared once."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (worker counts, image counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_data_options(p: argparse.ArgumentParser, default: str = "mnist-sample") -> None:
    p.add_argument("--dataset", default=default, help="dataset name (see `gradguard datasets`), npz:PATH or "
                                                      "folder:PATH (an ImageFolder: PATH/<class>/<image>)")
    add_data_root(p)
    p.add_argument("--download", action="store_true", help="let torchvision download missing files (needs internet)")


def add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder searched for dataset files (default: $GRADGUARD_DATA, else ~/.cache/gradguard)")


def add_model_option(p: argparse.ArgumentParser, default: str = "lenet") -> None:
    p.add_argument("--model", default=default, help="model name: lenet, convnet or resnet18; or your own, PATH.py:NAME "
                                                    "or package.module:NAME (docs/audit.md)")


def add_seed_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed for data selection, partitions and initialisation")


def add_out_option(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", type=Path, default=Path(default),
                   help="output folder; refused while another run writes there, or when it already holds this "
                        "command's results (unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace this command's results already in --out")


def ensure_out_dir(path: Path) -> Path:
    """Create the ``--out`` folder before any work, so an unwritable path fails at once, in one line."""
    from ..errors import ConfigError

    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {path}: cannot create the folder ({exc.strerror or exc})") from None
    return path


@contextmanager
def claim_out(path: Path, command: str, results: Sequence[str] = (), *, overwrite: bool = False,
              option: str = "--out") -> Iterator[Path]:
    """Hold ``path`` for this run: create it, take its lock (:class:`~gradguard.outlock.FolderLock`),
    and refuse results of an earlier run there unless ``overwrite``.

    Called after the arguments are validated and before any work, so that a folder that is a
    file, cannot be written, is in use by another run or would lose earlier results fails at
    once, in one line. The check of earlier results happens under the lock: two runs started
    together cannot both find the folder empty. A folder this call created is removed again
    when the run fails before writing anything into it.
    """
    from ..errors import ConfigError
    from ..outlock import FolderLock

    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: is a file, not a folder; choose a folder")
    created = not path.exists()
    with FolderLock(path, f"gradguard {command}", option=option):
        try:
            existing = [name for name in results if (path / name).exists()]
            if existing and not overwrite:
                raise ConfigError(f"{option} {path}: already holds {', '.join(existing)} from an earlier run; pass "
                                  f"--overwrite to replace them, or choose another folder")
            yield path
        finally:
            if created:
                _remove_if_empty(path)


def _remove_if_empty(path: Path) -> None:
    """Remove ``path`` if only the lock file (about to go) or nothing is left in it."""
    from ..outlock import LOCK_NAME

    try:
        if all(child.name == LOCK_NAME for child in path.iterdir()):
            (path / LOCK_NAME).unlink(missing_ok=True)
            path.rmdir()
    except OSError:
        pass  # not empty after all, or gone: nothing to tidy


def parse_value(text: str):
    """A command-line option value: JSON where it parses (numbers, true, false, null, lists),
    ``none`` as None, else the string itself; typed configs validate it further."""
    if text.lower() == "none":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_key_values(pairs: list[str] | None, what: str) -> dict:
    """``["sigma=0.1", "refresh-every=5"]`` -> ``{"sigma": 0.1, "refresh_every": 5}``; ``what``
    names the option in errors (``--defense-opt``, ``--model-opt``)."""
    from ..errors import ConfigError

    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what}: expected KEY=VALUE (e.g. sigma=0.1), got {pair!r}")
        parsed = parse_value(value.strip())
        if _non_finite(parsed):
            raise ConfigError(f"{what}: {pair!r}: the value must be a finite number")
        options[key.strip().replace("-", "_")] = parsed
    return options


def _non_finite(value) -> bool:
    """NaN or infinity, as a number or as the text pydantic would read as one ("inf", "nan")."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, float) and not math.isfinite(value)
