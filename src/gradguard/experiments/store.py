"""The results store: SQLite in the run folder, one row per finished cell.

A cell is one unit of work (an attack on one image set, one training run), keyed by a hash
of everything that determines it. Rows are written in one transaction each, so a run killed
at any moment (kill -9 included) loses at most the cell in flight; a rerun skips every
stored cell. A changed configuration hashes to new keys instead of mixing results, and a
stored result is never overwritten.

The store records the cell format's version (``experiments.cells.STORE_VERSION``) when it is
created; a store written under another version is refused with a message saying what to do,
since its keys mean something else.

Each row also records the device that computed it (``cpu``, ``cuda:0``; column ``device``,
added in place to stores written before devices existed, whose cells were all computed on the
CPU). The device is metadata, not part of the key: a CPU cell keeps its key, and the runner
decides whether a cell computed on another device may stand for this run's (docs/scale.md).

A damaged file (a disk or copy error anywhere in it) is found when the store opens (SQLite's
``quick_check``) or when a row fails to decode, and is refused with :class:`DamagedStoreError`:
its message says how many cells can still be read, row by row, and that :func:`recover` keeps
them in a fresh store while the damaged file is moved aside, never deleted.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GradguardError
from .cells import STORE_VERSION, cell_key, check_schema

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    result TEXT NOT NULL,
    seconds REAL NOT NULL,
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class DamagedStoreError(GradguardError):
    """The results store's file is damaged; the message says which cells can still be read and how
    to start over without losing them (``gradguard recover FOLDER``)."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        readable, unreadable = scan(path)
        kinds: dict[str, int] = {}
        for row in readable:
            kinds[row[1]] = kinds.get(row[1], 0) + 1
        found = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        lost = f"{len(unreadable)} cannot (rows {_ranges(unreadable)})" if unreadable else "none is lost"
        can = (f"{len(readable)} of its cells can still be read ({found}), {lost}" if readable
               else "no cell can be read from it")
        super().__init__(
            f"results store: {path} is damaged ({reason}); {can}. To keep them and start over, run `gradguard "
            f"recover {path.parent}`: it moves the damaged file aside (kept, never deleted) and writes the "
            f"readable cells to a new store; then rerun your command to compute the rest")


@dataclass(frozen=True)
class StoredCell:
    key: str
    kind: str
    config: dict[str, Any]
    result: dict[str, Any]
    seconds: float
    device: str = "cpu"


class ResultStore:
    """Finished cells of one run folder (``results.sqlite``); safe to share between threads."""

    FILENAME = "results.sqlite"

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / self.FILENAME
        self._lock = threading.Lock()
        existed = self.path.is_file() and self.path.stat().st_size > 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            if existed:
                self._check_integrity()
            self._add_device_column()
        except sqlite3.DatabaseError as exc:
            if _is_damage(exc):
                self._close_quietly()
                raise DamagedStoreError(self.path, str(exc)) from None
            raise GradguardError(f"results store: cannot open {self.path} ({exc})") from None
        except OSError as exc:
            raise GradguardError(f"results store: cannot open {self.path} ({exc})") from None
        self._check_version()

    def _check_integrity(self) -> None:
        """SQLite's ``quick_check`` (every page and row of the file, without cross-checking the
        indexes: milliseconds for a run's store); damage raises :class:`DamagedStoreError`."""
        problems = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            self._close_quietly()
            raise DamagedStoreError(self.path, "; ".join(problems[:2]))

    def _add_device_column(self) -> None:
        """The ``device`` column, added to a store from before devices were recorded (its cells
        were computed on the CPU, the only device then)."""
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(cells)").fetchall()]
        if "device" not in columns:
            self._db.execute("ALTER TABLE cells ADD COLUMN device TEXT NOT NULL DEFAULT 'cpu'")

    def _close_quietly(self) -> None:
        try:
            self._db.close()
        except (AttributeError, sqlite3.Error):
            pass

    def _check_version(self) -> None:
        check_schema()
        version = self.meta("store_version")
        if version is None:
            if self.count():  # cells from before versions were recorded: the first format
                version = 1
            else:
                self.set_meta("store_version", STORE_VERSION)
                return
        if version != STORE_VERSION:
            self.close()
            raise GradguardError(
                f"results store: {self.path} holds cells of store version {version}, and this gradguard keys "
                f"cells as version {STORE_VERSION}; use a new --out folder (the old one stays readable by the "
                f"gradguard that wrote it)")

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                if _is_damage(exc):
                    raise DamagedStoreError(self.path, str(exc)) from None
                raise

    def get(self, key: str) -> StoredCell | None:
        rows = self._query("SELECT key, kind, config, result, seconds, device FROM cells WHERE key = ?", (key,))
        return self._cell(rows[0]) if rows else None

    def __contains__(self, key: str) -> bool:
        return bool(self._query("SELECT 1 FROM cells WHERE key = ?", (key,)))

    def put(self, kind: str, config: dict[str, Any], result: dict[str, Any], seconds: float,
            device: str = "cpu") -> str:
        """Store a finished cell computed on ``device``; storing the same key twice is an error,
        never an overwrite."""
        key = cell_key(kind, config)
        try:
            self._query("INSERT INTO cells (key, kind, config, result, seconds, finished_at, device) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (key, kind, json.dumps(config, sort_keys=True, default=str), json.dumps(result), seconds,
                         time.time(), device))
        except sqlite3.IntegrityError:
            raise GradguardError(f"results store: cell {key} ({kind}) is already stored; refusing to overwrite") \
                from None
        return key

    def cells(self, kind: str | None = None) -> list[StoredCell]:
        query = "SELECT key, kind, config, result, seconds, device FROM cells"
        rows = self._query(query + " WHERE kind = ? ORDER BY rowid", (kind,)) if kind else \
            self._query(query + " ORDER BY rowid")
        return [self._cell(row) for row in rows]

    def keys(self) -> set[str]:
        """Every stored cell's key (without decoding any result)."""
        return {row[0] for row in self._query("SELECT key FROM cells")}

    def count(self) -> int:
        return self._query("SELECT COUNT(*) FROM cells")[0][0]

    def devices(self) -> dict[str, int]:
        """How many stored cells each device computed (``{"cpu": 40, "cuda:0": 12}``)."""
        return dict(self._query("SELECT device, COUNT(*) FROM cells GROUP BY device ORDER BY device"))

    def set_meta(self, name: str, value: Any) -> None:
        self._query("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, json.dumps(value, default=str)))

    def meta(self, name: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM meta WHERE name = ?", (name,))
        if not rows:
            return default
        try:
            return json.loads(rows[0][0])
        except json.JSONDecodeError as exc:
            raise DamagedStoreError(self.path, f"meta {name!r} does not decode: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def _cell(self, row) -> StoredCell:
        key, kind, config, result, seconds, device = row
        try:
            return StoredCell(key, kind, json.loads(config), json.loads(result), seconds, device)
        except json.JSONDecodeError as exc:
            raise DamagedStoreError(self.path, f"cell {key} does not decode: {exc}") from None


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Damage to the file ("database disk image is malformed", "file is not a database"), as
    opposed to a constraint (IntegrityError) or an operational failure (locked, unwritable)."""
    return not isinstance(exc, (sqlite3.IntegrityError, sqlite3.OperationalError, sqlite3.ProgrammingError))


def _ranges(numbers: list[int], limit: int = 6) -> str:
    """``[3, 4, 5, 9]`` -> ``3-5, 9``; at most ``limit`` ranges, then how many more."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = [f"{a}-{b}" if b > a else str(a) for a, b in spans[:limit]]
    return ", ".join(text) + (f" and {len(spans) - limit} more ranges" if len(spans) > limit else "")


Row = tuple[str, str, str, str, float, float]


def scan(path: Path) -> tuple[list[Row], list[int]]:
    """Read a possibly damaged store row by row: the cells that still read back intact (their key
    is the hash of their kind and configuration, and both JSON fields decode) and the row ids of
    those that do not. A full table scan stops at the first damaged page; looking each row up by
    its id goes around it, so every row on an intact page is kept."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return [], []
    readable: list[Row] = []
    unreadable: list[int] = []
    try:
        last = _last_rowid(db, path)
        for rowid in range(1, last + 1):
            try:
                rows = db.execute("SELECT key, kind, config, result, seconds, finished_at FROM cells WHERE rowid = ?",
                                  (rowid,)).fetchall()
            except sqlite3.DatabaseError:
                unreadable.append(rowid)
                continue
            if rows and _intact(rows[0]):
                readable.append(rows[0])
            elif rows:
                unreadable.append(rowid)
    finally:
        db.close()
    return readable, unreadable


def _last_rowid(db: sqlite3.Connection, path: Path) -> int:
    """The largest row id to probe: rows are never deleted, so ids run 1..max(rowid); when even
    that lookup fails, an upper bound from the file size (a row takes well over 64 bytes)."""
    try:
        return int(db.execute("SELECT max(rowid) FROM cells").fetchone()[0] or 0)
    except sqlite3.DatabaseError:
        try:
            return path.stat().st_size // 64
        except OSError:
            return 0


def _intact(row: tuple) -> bool:
    key, kind, config, result = row[:4]
    try:
        return cell_key(kind, json.loads(config)) == key and isinstance(json.loads(result), dict)
    except (TypeError, ValueError):
        return False


def _meta_rows(path: Path) -> list[tuple[str, str]]:
    """The meta rows (store version, profile, plan, sweep) that still decode."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    kept = []
    try:
        for rowid in range(1, 1000):
            try:
                rows = db.execute("SELECT name, value FROM meta WHERE rowid = ?", (rowid,)).fetchall()
            except sqlite3.DatabaseError:
                continue
            if not rows:
                continue
            try:
                json.loads(rows[0][1])
            except (TypeError, ValueError):
                continue
            kept.append(rows[0])
    except sqlite3.Error:
        pass
    finally:
        db.close()
    return kept


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover` did: cells kept in the new store, rows lost, where the damaged file went."""

    kept: int
    lost: int
    aside: Path


def recover(folder: str | Path) -> Recovery | None:
    """Start over from a damaged store without losing what can still be read: move the damaged
    file (and its WAL and shared-memory files) aside to ``results.damaged-N.sqlite``, and write
    every intact cell and meta row to a new store at the usual place. Returns None when the store
    is intact (nothing to do). The caller holds the folder's lock."""
    path = Path(folder) / ResultStore.FILENAME
    if not path.is_file():
        raise GradguardError(f"recover: no results store in {folder} ({path} does not exist)")
    try:
        ResultStore(folder).close()
        return None
    except DamagedStoreError:
        pass
    readable, unreadable = scan(path)
    meta = _meta_rows(path)
    number = 1
    while (path.parent / f"results.damaged-{number}.sqlite").exists():
        number += 1
    aside = path.parent / f"results.damaged-{number}.sqlite"
    for suffix in ("", "-wal", "-shm"):
        companion = Path(f"{path}{suffix}")
        if companion.exists():
            companion.rename(Path(f"{aside}{suffix}"))
    fresh = sqlite3.connect(path, isolation_level=None)
    try:
        fresh.execute("PRAGMA journal_mode=WAL")
        fresh.executescript(SCHEMA)
        fresh.execute("BEGIN")
        fresh.executemany("INSERT OR IGNORE INTO cells (key, kind, config, result, seconds, finished_at) "
                          "VALUES (?, ?, ?, ?, ?, ?)", readable)
        fresh.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", meta)
        if not any(name == "store_version" for name, _ in meta) and readable:
            fresh.execute("INSERT INTO meta (name, value) VALUES ('store_version', ?)", (json.dumps(STORE_VERSION),))
        fresh.execute("COMMIT")
    finally:
        fresh.close()
    return Recovery(len(readable), len(unreadable), aside)
