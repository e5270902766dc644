"""Runs a plan: reuses stored cells, computes the rest (inline or in worker processes), stores each.

A cell is a pure function of its configuration (every random draw is seeded from it), so a
stored result stands for a recomputation and an interrupted run resumes exactly. One driver
(the calling thread) schedules every cell of a :class:`~gradguard.experiments.plan.Plan`:
searches advance probe by probe, a task waiting for a search starts when it ends, and the
driver alone writes the store.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import os
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Generator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Self

from ..device import device_kind, resolve_device
from ..errors import ConfigError, GradguardError
from .cells import AttackCell, Cell
from .executors import RayExecutor, check_executor
from .plan import Plan, Task
from .search import SearchResult, bisection
from .store import ResultStore
from .tables import WorstCase, entry_labels, worst_case


def _compute(cell: Cell, data_root: str | None, threads: int,
             device: str = "cpu") -> tuple[dict[str, Any], float, str]:
    """Compute one cell (in this process, a worker or a Ray task) on ``device``; returns the
    result, its wall time and the device it ran on (``cuda`` resolves to the task's GPU)."""
    import torch

    from .cells import compute

    if threads:
        torch.set_num_threads(threads)
    root = Path(data_root) if data_root else None
    start = time.perf_counter()
    if device == "cpu":
        result = compute(cell, root)  # the CPU call as it was before devices existed
    else:
        resolved = resolve_device(device)
        result, device = compute(cell, root, resolved), str(resolved)
    return result, time.perf_counter() - start, device


def _exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """Worker initialiser: end this worker once the run that started it is gone (killed, even
    with -9), instead of finishing a long cell nobody will store while a rerun competes for the
    same cores."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


# Scheduling priority (lower first): probes gate whole columns, training cells are the longest.
_PROBE, _TRAIN, _ATTACK = 0, 1, 2

#: the file, beside the store, that keeps the full traceback of every cell that failed
FAILURES_LOG = "failed-cells.log"


class CellsFailed(GradguardError):
    """Some cells raised: the run computed and stored every other cell it could, and a rerun
    of the same command computes only what is missing. ``failures`` maps each failed cell's key
    to its description and error; the tracebacks are in :data:`FAILURES_LOG` beside the store."""

    exit_code = 1  # the run itself failed, not the user's input (exit 2)

    def __init__(self, failures: dict[str, tuple[str, str]], log: Path, unfinished: int, size: int):
        self.failures, self.log = failures, log
        shown = "; ".join(f"{what}: {error}" for what, error in list(failures.values())[:3])
        more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
        super().__init__(f"{len(failures)} cell(s) failed, so {unfinished} of the plan's {size} units are "
                         f"unfinished; every other cell is stored and a rerun computes only what is missing: "
                         f"{shown}{more}; tracebacks in {log}")


@dataclass
class CellRunner:
    """Computes cells through the store. ``jobs > 1`` runs them in that many worker processes;
    ``executor="ray"`` runs them as tasks on a Ray cluster (:mod:`.executors`).

    ``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (None: the CPU); each stored cell
    records the device it ran on, and a store holding cells of another kind of device (GPU
    cells for a CPU run, or the reverse) is refused unless ``reuse_other_device``.
    ``on_queue(running, queued)`` follows the cells in flight and waiting.

    ``on_start(cell)`` is called when a cell starts computing; ``on_done(label, cached)`` once
    per task and per search of a plan when it is finished. ``cached`` is True exactly for the
    units :meth:`stored_count` counted before the run, so a progress bar that starts at that
    count and advances on every other unit ends at the plan's size, never above or below it (a
    task whose search was not stored but whose cell was, as a probe of an earlier run, is not
    counted at the start and so advances once when it resolves)."""

    store: ResultStore
    data_root: Path | None = None
    jobs: int = 1
    on_start: Callable[[Cell], None] = lambda cell: None
    on_done: Callable[[str, bool], None] = lambda label, cached: None
    computed: list[str] = field(default_factory=list)
    device: str | None = None
    executor: str = "local"
    ray_address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 1.0
    reuse_other_device: bool = False
    on_queue: Callable[[int, int], None] = lambda running, queued: None
    _pool: Executor | None = None
    _device: str = "cpu"
    _slots: int = 1

    def __post_init__(self) -> None:
        if self.jobs < 1:  # a pool of zero workers would silently become one
            raise ConfigError(f"runner: jobs={self.jobs}: at least one worker is needed")
        check_executor(self.executor)

    def __enter__(self) -> Self:
        if self.executor == "ray":
            ray = RayExecutor(self.ray_address, self.device, self.cpus_per_cell, self.gpus_per_cell)
            self._pool, self._device, self._slots = ray, ray.device, ray.slots
            try:
                self.check_devices()  # before any output of the run
            except BaseException:
                ray.shutdown(cancel_futures=True)
                raise
            return self
        self._device = "cpu" if self.device is None else str(resolve_device(self.device))
        self._slots = self.jobs
        self.check_devices()
        if self.jobs > 1:
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn"),
                                             initializer=_exit_with_parent, initargs=(os.getpid(),))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    @property
    def computes_on(self) -> str:
        """The device this run's cells compute on (``cpu``, ``cuda:0``; ``cuda`` for Ray GPU tasks)."""
        return self._device

    def stored_strengths(self, plan: Plan) -> dict[str, dict[str, Any]]:
        """The strength of every search already finished in the store, and the fixed ones."""
        strengths = dict(plan.fixed)
        for search in plan.searches:
            found = self.store.get(search.cell.key())
            if found is not None:
                strengths[search.id] = found.result
        return strengths

    def stored_units(self, plan: Plan) -> set[str]:
        """Ids of the units (searches and tasks) of ``plan`` already finished in the store: a
        search whose result is stored, a task whose cell resolves (its search stored) and is stored."""
        strengths = self.stored_strengths(plan)
        done = {s.id for s in plan.searches if s.id in strengths}
        for task in plan.tasks:
            cell = task.resolve(strengths)
            if cell is not None and cell.key() in self.store:
                done.add(task.id)
        return done

    def stored_count(self, plan: Plan) -> int:
        """How many units of ``plan`` are already finished in the store (as :meth:`run` counts them)."""
        return len(self.stored_units(plan))

    def run(self, plan: Plan, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Compute every cell of ``plan`` that the store lacks; returns the resolved plan (each
        task's labels and the key of its cell, each search's strength) for the tables.
        ``on_progress(partial)``, if given, gets the plan resolved so far (the same form, with
        ``partial: {"done": tasks resolved, "of": tasks}``) once the stored cells are counted and
        after every computed cell, so that an interrupted run can still be reported."""
        self.check_devices()
        return _Run(self, plan, on_progress).execute()

    def check_devices(self, local: bool = False) -> None:
        """Refuse a store holding cells computed on another kind of device than this run's,
        unless ``reuse_other_device``: GPU and CPU results of one cell differ in their last
        digits, and the store keeps one result per cell. ``local=True`` checks before the runner
        is entered, for a local run (a Ray run's device is known once the cluster answers)."""
        if local and self.executor != "local":
            return
        device = (str(resolve_device(self.device)) if self.device is not None else "cpu") if local else self._device
        other = {name: n for name, n in self.store.devices().items() if device_kind(name) != device_kind(device)}
        if other and not self.reuse_other_device:
            found = ", ".join(f"{n} on {name}" for name, n in other.items())
            raise ConfigError(f"results store {self.store.path}: holds cells computed on another device ({found}) and "
                              f"this run computes on {device}; pass --reuse-other-device to reuse them, or "
                              f"choose another --out")

    def _store(self, cell: Cell, result: dict[str, Any], seconds: float, device: str | None = None) -> None:
        key = self.store.put(cell.kind, cell.config(), result, seconds, device or self._device)
        self.computed.append(key)


class _Run:
    """The driver's state while a plan runs: a priority queue of cells to start, the cells in
    flight, and who waits for each cell's result."""

    def __init__(self, runner: CellRunner, plan: Plan,
                 on_progress: Callable[[dict[str, Any]], None] | None = None):
        self.runner, self.plan, self.on_progress = runner, plan, on_progress
        self.strengths: dict[str, dict[str, Any]] = dict(plan.fixed)
        self.queue: list[tuple[int, int, str]] = []
        self.order = itertools.count()
        self.cells: dict[str, Cell] = {}
        self.waiting: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        self.running: dict[Future, str] = {}
        self.resolved: list[dict[str, Any]] = []
        self.failed: dict[str, tuple[str, str]] = {}  # key of each failed cell -> (description, error)
        self.dependents: dict[str, list[Task]] = {}
        self.counted = runner.stored_units(plan)  # reported as cached: counted before the run
        self.position = {t.id: i for i, t in enumerate(plan.tasks)}  # task id -> its place in the plan
        # for progress: how many seeds (tasks) each table entry has
        self.seeds = Counter(entry_labels({**t.labels, "role": t.role}) for t in plan.tasks)

    # -- requests --

    def request(self, cell: Cell, priority: int, then: Callable[[dict[str, Any]], None]) -> None:
        """Call ``then(result)`` once ``cell`` is finished (at once when it is stored)."""
        key = cell.key()
        if key in self.failed:  # it raised in this run: whoever asks again waits for good, as the first did
            return
        if key in self.waiting:  # already queued or running: wait for the same computation
            self.waiting[key].append(then)
            return
        stored = self.runner.store.get(key)
        if stored is not None:
            then(stored.result)
            return
        self.waiting[key] = [then]
        self.cells[key] = cell
        heapq.heappush(self.queue, (priority, next(self.order), key))

    def start_task(self, task: Task) -> None:
        cell = task.resolve(self.strengths)
        assert cell is not None
        labels = {**task.labels, "role": task.role, "id": task.id, "key": cell.key()}
        priority = _TRAIN if task.role == "train" else _ATTACK

        def done(result: dict[str, Any], labels: dict[str, Any] = labels) -> None:
            self.resolved.append(labels)
            self.runner.on_done(cell.describe(), task.id in self.counted)

        self.request(cell, priority, done)

    def start_search(self, search) -> None:
        spec = search.cell
        stored = self.runner.store.get(spec.key())
        if stored is not None:
            self.finish_search(search, stored.result)
            return

        def with_target(target: float) -> None:
            steps: Generator[float, float, SearchResult] = bisection(
                target, spec.strength.low, spec.strength.high, steps=spec.steps, tolerance_db=spec.tolerance_db)
            advance(steps, None, target)

        def advance(steps, psnr: float | None, target: float) -> None:
            try:
                strength = next(steps) if psnr is None else steps.send(psnr)
            except StopIteration as end:
                found: SearchResult = end.value
                result = {"options": spec.options_at(found.strength), "strength": found.strength,
                          "method": "search", "met": found.met, "psnr": found.psnr, "target_psnr": target,
                          "target": "reference" if spec.reference else "floor", "tried": found.tried}
                self.runner._store(spec, result, 0.0)
                self.finish_search(search, result)
                return
            self.request_all(spec.at(strength), lambda worst: advance(steps, worst.psnr, target))

        if spec.reference is not None:
            self.request_all(spec.reference, lambda worst: with_target(worst.psnr))
        else:  # the first probe's floors are the same for every probe: the floor is the target
            def from_floor(worst: WorstCase) -> None:
                with_target(worst.floor_psnr)

            self.request_all(spec.at(spec.strength.low), from_floor)

    def request_all(self, cells: list[AttackCell], then: Callable[[WorstCase], None]) -> None:
        """Call ``then(worst case)`` once every cell of ``cells`` (the same targets) is finished."""
        results: dict[int, dict[str, Any]] = {}

        def collect(i: int, result: dict[str, Any]) -> None:
            results[i] = result
            if len(results) == len(cells):
                worst = worst_case([({"adaptive": c.adaptive, "attack": c.attack}, results[k])
                                    for k, c in enumerate(cells)])
                assert worst is not None
                then(worst)

        for i, cell in enumerate(cells):
            self.request(cell, _PROBE, functools.partial(collect, i))

    def finish_search(self, search, result: dict[str, Any]) -> None:
        self.strengths[search.id] = result
        self.runner.on_done(search.cell.describe(), search.id in self.counted)
        for task in self.dependents.pop(search.id, []):
            self.start_task(task)

    # -- the loop --

    def execute(self) -> dict[str, Any]:
        for task in self.plan.tasks:  # a task waiting for a search starts when the search ends
            if task.strength_from is not None:
                self.dependents.setdefault(task.strength_from, []).append(task)
        for search in self.plan.searches:
            self.start_search(search)
        for task in self.plan.tasks:
            if task.strength_from is None:
                self.start_task(task)
        self.progress()
        runner = self.runner
        slots = max(1, runner._slots)
        root = str(runner.data_root) if runner.data_root else None
        threads = max(1, round(runner.cpus_per_cell)) if runner.executor == "ray" else \
            max(1, (os.cpu_count() or 1) // slots)
        while self.queue or self.running:
            while self.queue and len(self.running) < slots:
                _, _, key = heapq.heappop(self.queue)
                cell = self.cells[key]
                runner.on_start(cell)
                if runner._pool is None:
                    runner.on_queue(1, len(self.queue))
                    try:
                        computed = _compute(cell, root, 0, runner._device)
                    except Exception as exc:  # noqa: BLE001  (recorded; the run goes on)
                        self._fail(key, exc)
                    else:
                        self._finish(key, *computed)
                else:
                    self.running[runner._pool.submit(_compute, cell, root, threads, runner._device)] = key
            runner.on_queue(len(self.running), len(self.queue))
            if self.running:
                finished, _ = wait(list(self.running), return_when=FIRST_COMPLETED)
                for future in finished:
                    key = self.running.pop(future)
                    try:
                        computed = future.result()
                    except BrokenProcessPool:  # a worker died (killed, out of memory): nothing more can run
                        raise
                    except Exception as exc:  # noqa: BLE001  (recorded; the run goes on)
                        self._fail(key, exc)
                    else:
                        self._finish(key, *computed)
        if self.failed:
            done = len(self.resolved) + sum(s.id in self.strengths for s in self.plan.searches)
            raise CellsFailed(self.failed, self.runner.store.path.parent / FAILURES_LOG,
                              self.plan.size - done, self.plan.size)
        missing = [s.id for s in self.plan.searches if s.id not in self.strengths]
        assert not missing and len(self.resolved) == len(self.plan.tasks), (missing, len(self.resolved))
        self.resolved.sort(key=lambda e: self.position[e["id"]])
        return {"tasks": self.resolved, "strengths": self.strengths}

    def progress(self) -> None:
        """Hand the plan resolved so far to ``on_progress``, in plan order: the entries whose every
        seed is finished (the tables merge an entry's seeds and pair them across defenses, so an
        entry with some seeds missing would be compared with others that have them all)."""
        if self.on_progress is None:
            return
        finished = Counter(entry_labels(e) for e in self.resolved)
        whole = [e for e in self.resolved if finished[entry_labels(e)] == self.seeds[entry_labels(e)]]
        self.on_progress({"tasks": sorted(whole, key=lambda e: self.position[e["id"]]),
                          "strengths": dict(self.strengths),
                          "partial": {"done": len(self.resolved), "of": len(self.plan.tasks), "shown": len(whole)}})

    def _fail(self, key: str, exc: Exception) -> None:
        """Record that a cell raised: nobody waiting for it runs, everything else goes on, and its
        traceback (a worker's included) is appended to :data:`FAILURES_LOG` beside the store."""
        cell = self.cells.pop(key)
        self.waiting.pop(key)
        error = " ".join(f"{type(exc).__name__}: {exc}".split())
        self.failed[key] = (cell.describe(), error)
        log = self.runner.store.path.parent / FAILURES_LOG
        with log.open("a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {cell.describe()} (cell {key})\n")
            handle.write("".join(traceback.format_exception(exc)) + "\n")

    def _finish(self, key: str, result: dict[str, Any], seconds: float, device: str | None = None) -> None:
        self.runner._store(self.cells.pop(key), result, seconds, device)
        for then in self.waiting.pop(key):
            then(result)
        self.progress()
