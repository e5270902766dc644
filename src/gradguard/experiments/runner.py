"""Runs cells: reuses stored ones, computes the rest (inline or in worker processes), stores each.

A cell is a pure function of its configuration (every random draw is seeded from it), so a
stored result stands for a recomputation and an interrupted run resumes exactly.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

from .store import ResultStore, cell_key


def _compute(kind: str, config: dict[str, Any], data_root: str | None, threads: int) -> tuple[dict[str, Any], float]:
    """Compute one cell (in this process or a worker); returns the result and its wall time."""
    import torch

    from .cells import COMPUTE

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    result = COMPUTE[kind](config, Path(data_root) if data_root else None)
    return result, time.perf_counter() - start


def _exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """Worker initialiser: end this worker once the run that started it is gone (killed, even
    with -9), instead of finishing a long cell nobody will store while a rerun competes for the
    same cores."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


@dataclass
class CellRunner:
    """Computes cells through the store. ``jobs > 1`` runs them in that many worker processes;
    callers submit from threads (one per independent chain of cells)."""

    store: ResultStore
    data_root: Path | None = None
    jobs: int = 1
    on_start: Callable[[str, dict], None] = lambda kind, config: None
    on_done: Callable[[str, dict, bool], None] = lambda kind, config, cached: None
    computed: list[str] = field(default_factory=list)
    _pool: Executor | None = None

    def __enter__(self) -> "CellRunner":
        if self.jobs > 1:
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn"),
                                             initializer=_exit_with_parent, initargs=(os.getpid(),))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def compute(self, kind: str, config: dict[str, Any]) -> dict[str, Any]:
        """The cell's result: from the store when finished before, else computed and stored."""
        cached = self.store.get(cell_key(kind, config))
        if cached is not None:
            self.on_done(kind, config, True)
            return cached.result
        self.on_start(kind, config)
        root = str(self.data_root) if self.data_root else None
        if self._pool is None:
            result, seconds = _compute(kind, config, root, 0)
        else:
            threads = max(1, (os.cpu_count() or 1) // self.jobs)
            result, seconds = self._pool.submit(_compute, kind, config, root, threads).result()
        self.store.put(kind, config, result, seconds)
        self.computed.append(cell_key(kind, config))
        self.on_done(kind, config, False)
        return result

    def derive(self, kind: str, config: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """A result computed from other cells in this process (e.g. a search), stored the same way."""
        cached = self.store.get(cell_key(kind, config))
        if cached is not None:
            return cached.result
        start = time.perf_counter()
        result = fn()
        self.store.put(kind, config, result, time.perf_counter() - start)
        return result
