"""Where the cells of a run compute: in this process or local worker processes (``local``), or as
tasks on a Ray cluster (``ray``).

The driver (:class:`~gradguard.experiments.runner.CellRunner`) is the same for both: it keeps the
priority queue, advances the searches and alone writes the results store as results arrive.
An executor only runs ``_compute(cell, ...)`` somewhere and hands back a
``concurrent.futures.Future``; Ray's object references convert to one (``ObjectRef.future()``),
so the driver waits on local and remote cells alike.

:class:`RayExecutor` connects to the cluster at ``address`` (``auto``: the one ``ray start``
began on this machine; ``ray://host:10001``: a remote one), or starts a private local instance
when no address is given and none is running in this process, and shuts down only an instance
it started. Each cell is a Ray task asking for ``cpus_per_cell`` CPUs and, on a GPU run,
``gpus_per_cell`` GPUs (a fraction packs several cells on one GPU); at most as many cells are
in flight as the cluster can run at once, so the rest stay in the driver's priority queue
(probes first, training next, attacks last) and the progress shows them as queued.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Executor, Future
from typing import Any

from ..errors import ConfigError

EXECUTORS = ("local", "ray")


def check_executor(name: str) -> str:
    if name not in EXECUTORS:
        raise ConfigError(f"--executor {name!r}: unknown executor; choose one of {', '.join(EXECUTORS)}")
    return name


def _call(fn, *args):
    """Run ``fn(*args)`` (the body of every Ray task)."""
    return fn(*args)


class RayExecutor(Executor):
    """Cells as Ray tasks; see the module docstring. ``device`` is the user's ``--device``
    (``auto``: GPU tasks when the cluster has GPUs, else CPU tasks)."""

    def __init__(self, address: str | None = None, device: str | None = "auto", cpus_per_cell: float = 1.0,
                 gpus_per_cell: float = 1.0):
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray: Ray is not installed; install it with `pip install 'ray>=2.10'` "
                              "(or gradguard's flower extra, which brings flwr[simulation]), or use --executor "
                              "local") from None
        if cpus_per_cell <= 0 or gpus_per_cell <= 0:
            raise ConfigError(f"--executor ray: CPUs per cell ({cpus_per_cell:g}) and GPUs per cell "
                              f"({gpus_per_cell:g}) must be positive")
        self._ray = ray
        self.started = False
        if not ray.is_initialized():
            try:
                cpus = None if address else os.cpu_count() or 1  # no address: a local instance on every core
                ray.init(address=address or None, num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"--ray-address {address}: cannot connect to a Ray cluster ({exc}); start one "
                                  f"with `ray start --head` and pass --ray-address auto, or leave --ray-address "
                                  f"out to start a local instance") from None
            self.started = True
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        self.device = _ray_device(device or "auto", gpus)
        self.cpus, self.gpus = cpus_per_cell, (gpus_per_cell if self.device == "cuda" else 0.0)
        by_cpu = float(resources.get("CPU", 1)) / cpus_per_cell
        self.slots = max(1, int(min(by_cpu, gpus / self.gpus) if self.gpus else by_cpu))
        self._task = ray.remote(_call).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)
        self._refs: list[Any] = []

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if kwargs:
            raise TypeError("RayExecutor.submit takes positional arguments only")
        ref = self._task.remote(fn, *args)
        self._refs.append(ref)
        return ref.future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        ray = self._ray
        if cancel_futures and ray.is_initialized():
            for ref in self._refs:  # a killed or failed driver leaves no cell computing on the cluster
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished, or the cluster is gone: nothing to cancel
                    pass
        self._refs.clear()
        if self.started and ray.is_initialized():
            ray.shutdown()
            self.started = False


def _ray_device(choice: str, gpus: float) -> str:
    """``cpu`` or ``cuda`` for the tasks of a Ray run (Ray assigns each task its GPU)."""
    text = choice.strip().lower()
    if text == "auto":
        return "cuda" if gpus > 0 else "cpu"
    if text == "cpu":
        return "cpu"
    if text == "cuda":
        if gpus <= 0:
            raise ConfigError("--device cuda: the Ray cluster has no GPU; use --device cpu or --device auto")
        return "cuda"
    if text.startswith("cuda:"):
        raise ConfigError(f"--device {choice}: with --executor ray, Ray assigns each cell its GPU; choose one of "
                          f"auto, cpu, cuda")
    raise ConfigError(f"--device {choice!r}: unknown device; choose one of auto, cpu, cuda")
