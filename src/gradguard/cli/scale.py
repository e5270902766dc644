"""Options for where a command computes: ``--device`` (every computing command) and, for the
commands that run cells (``reproduce``, ``sweep``, ``demo``), ``--executor``, ``--ray-address``,
the per-cell resource requests and ``--reuse-other-device`` (docs/scale.md)."""

from __future__ import annotations

import argparse
from typing import Any


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help="where to compute: auto (the first GPU if there is one, else the CPU), cpu, cuda or "
                        "cuda:N; results on the CPU are the same bit for bit as before this option existed")


def add_executor_options(p: argparse.ArgumentParser) -> None:
    add_device_option(p)
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: this process, or --jobs worker processes; ray: each cell a Ray task (the driver "
                        "alone writes the results store)")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="Ray cluster for --executor ray: auto (the one `ray start` began here), ray://HOST:10001, "
                        "or none given: a local instance on this machine's cores, shut down at the end")
    p.add_argument("--cpus-per-cell", type=_positive, default=1.0, help="CPUs each Ray task asks for (default 1)")
    p.add_argument("--gpus-per-cell", type=_positive, default=1.0,
                   help="GPUs each Ray task asks for on a GPU run (a fraction packs cells on one GPU; default 1)")
    p.add_argument("--reuse-other-device", action="store_true",
                   help="reuse cells the store holds from another kind of device (GPU cells in a CPU run or the "
                        "reverse); without it such a store is refused")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def runner_options(args: argparse.Namespace) -> dict:
    """The :class:`~gradguard.experiments.runner.CellRunner` keywords for these options; a local
    run's ``--device`` is checked here, before any folder or store is touched."""
    # a command without some of the options (they are all added together) gets their defaults
    defaults = {"device": "auto", "executor": "local", "ray_address": None, "cpus_per_cell": 1.0,
                "gpus_per_cell": 1.0, "reuse_other_device": False}
    options: dict[str, Any] = {name: getattr(args, name, value) for name, value in defaults.items()}
    if options["executor"] == "local":
        from ..device import resolve_device

        resolve_device(str(options["device"]))
    return options
