"""The results store: SQLite in the run folder, one row per finished cell.

A cell is one unit of work (an attack on one image set, one training run), keyed by a hash
of everything that determines it. Rows are written in one transaction each, so a run killed
at any moment (kill -9 included) loses at most the cell in flight; a rerun skips every
stored cell. A changed configuration hashes to new keys instead of mixing results, and a
stored result is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GradguardError

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


def cell_key(kind: str, config: dict[str, Any]) -> str:
    """A stable hash of a cell's kind and configuration (canonical JSON, sorted keys)."""
    canonical = json.dumps({"kind": kind, "config": config}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Cell:
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

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def get(self, key: str) -> Cell | None:
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
            raise GradguardError(f"results store: cell {key} ({kind}) is already stored; refusing to overwrite") from None
        return key

    def cells(self, kind: str | None = None) -> list[Cell]:
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
    def _cell(row) -> Cell:
        key, kind, config, result, seconds = row
        return Cell(key, kind, json.loads(config), json.loads(result), seconds)
