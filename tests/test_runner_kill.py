"""Killing a reproduction run with SIGKILL ends its worker processes (they watch their parent).

The run is killed once its workers are observably at work, read from /proc: every worker runs
a second thread (the exit-with-parent watcher its initialiser starts before it takes any task;
the pool worker has none of its own, and torch's intra-op threads only come while computing)
and some worker has since burnt CPU time computing a cell (an idle worker waiting for a task
uses none). No fixed sleep: each wait polls a condition under a generous, bounded deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc"),
              pytest.mark.slow]  # 10-20 s: two workers import torch before the run is killed

TICKS = os.sysconf("SC_CLK_TCK")
START_DEADLINE_S = 300  # two workers importing torch on a loaded 2-core machine
EXIT_DEADLINE_S = 60  # the workers' watcher polls their parent every second
BUSY_CPU_S = 1.0  # CPU time a worker spends after its initialiser ran: it is computing a cell
POLL_S = 0.2


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1]), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / TICKS if fields else 0.0  # utime + stime


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _workers(parent: int) -> list[int]:
    """The run's pool workers: its live children started by multiprocessing's spawn (not its
    resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        pid = int(stat.parent.name)
        fields = _stat(pid)
        if fields is None or fields[1] != str(parent) or fields[0] in ("Z", "X"):
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
            found.append(pid)
    return sorted(found)


def _threads(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[17]) if fields else 0  # num_threads


def _poll(condition: Callable[[], bool], deadline_s: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Poll ``condition`` until it holds (True), the deadline passes or ``alive`` fails (False)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if not alive():
            return False
        time.sleep(POLL_S)
    return condition()


def test_killing_the_run_with_sigkill_ends_its_workers(tmp_path):
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        run_ = subprocess.Popen([sys.executable, "-m", "gradguard", "reproduce", "--profile", "quick", "--jobs", "2",
                                 "--out", str(tmp_path / "run")], stdout=out, stderr=subprocess.STDOUT)
    workers: list[int] = []
    baseline: dict[int, float] = {}  # CPU seconds of each worker when its watcher thread was first seen

    def at_work() -> bool:
        nonlocal workers
        workers = sorted(set(workers) | set(_workers(run_.pid)))
        for pid in workers:
            if pid not in baseline and _threads(pid) >= 2:
                baseline[pid] = _cpu_seconds(pid)
        return (len(workers) >= 2 and len(baseline) == len(workers)
                and any(_cpu_seconds(pid) - baseline[pid] >= BUSY_CPU_S for pid in workers))

    try:
        started = _poll(at_work, START_DEADLINE_S, alive=lambda: run_.poll() is None)
        assert started, (f"the run's workers never got to work (workers {workers}, CPU s since their watcher started "
                         f"{ {pid: _cpu_seconds(pid) - cpu for pid, cpu in baseline.items()} }, exit code "
                         f"{run_.poll()}):\n{log.read_text()[-3000:]}")
    finally:
        os.kill(run_.pid, signal.SIGKILL)
        run_.wait()
    ended = _poll(lambda: not any(_alive(pid) for pid in workers), EXIT_DEADLINE_S)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # ours to clean up: they are the run's workers, found by parent pid
        os.kill(pid, signal.SIGKILL)
    assert ended and not left, f"workers {left} outlived the killed run by {EXIT_DEADLINE_S} s"
