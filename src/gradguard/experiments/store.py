"""The results store: SQLite in the run folder, one row per finished cell.

A cell is one unit of work (an attack on one image set, one training run), keyed by a hash
of everything that determines it. Rows are written in one transaction each, so a run killed
at any moment (kill -9 included) loses at most the cell in flight; a rerun skips every
stored cell. A changed configuration hashes to new keys instead of mixing results, and a
stored result is never overwritten.

The store records the cell format's version (``experiments.cells.STORE_VERSION``) when it is
created; a store written under another version is refused with a message saying what to do,
since its keys mean something else.
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


@dataclass(frozen=True)
class StoredCell:
    key: str
    kind: str
    config: dict[str, Any]
    result: dict[str, Any]
    seconds: float


class ResultStore:
    """Finished cells of one run folder (``results.sqlite``); safe to share between threads."""

    FILENAME = "results.sqlite"

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / self.FILENAME
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise GradguardError(f"results store: cannot open {self.path} ({exc})") from None
        self._check_version()

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
            return self._db.execute(sql, params).fetchall()

    def get(self, key: str) -> StoredCell | None:
        rows = self._query("SELECT key, kind, config, result, seconds FROM cells WHERE key = ?", (key,))
        return self._cell(rows[0]) if rows else None

    def __contains__(self, key: str) -> bool:
        return bool(self._query("SELECT 1 FROM cells WHERE key = ?", (key,)))

    def put(self, kind: str, config: dict[str, Any], result: dict[str, Any], seconds: float) -> str:
        """Store a finished cell; storing the same key twice is an error, never an overwrite."""
        key = cell_key(kind, config)
        try:
            self._query("INSERT INTO cells (key, kind, config, result, seconds, finished_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (key, kind, json.dumps(config, sort_keys=True, default=str), json.dumps(result), seconds,
                         time.time()))
        except sqlite3.IntegrityError:
            raise GradguardError(f"results store: cell {key} ({kind}) is already stored; refusing to overwrite") \
                from None
        return key

    def cells(self, kind: str | None = None) -> list[StoredCell]:
        query = "SELECT key, kind, config, result, seconds FROM cells"
        rows = self._query(query + " WHERE kind = ? ORDER BY rowid", (kind,)) if kind else \
            self._query(query + " ORDER BY rowid")
        return [self._cell(row) for row in rows]

    def count(self) -> int:
        return self._query("SELECT COUNT(*) FROM cells")[0][0]

    def set_meta(self, name: str, value: Any) -> None:
        self._query("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, json.dumps(value, default=str)))

    def meta(self, name: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM meta WHERE name = ?", (name,))
        return json.loads(rows[0][0]) if rows else default

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _cell(row) -> StoredCell:
        key, kind, config, result, seconds = row
        return StoredCell(key, kind, json.loads(config), json.loads(result), seconds)
