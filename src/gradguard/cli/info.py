"""`gradguard datasets` and `gradguard info`: what is installed and where data was found."""

from __future__ import annotations

import platform

from rich.console import Console
from rich.table import Table

from .app import command
from .options import add_data_root


@command("datasets", "List every dataset, whether its files were found, and where gradguard looked.", add_data_root)
def datasets(args) -> None:
    from ..data import DATASETS, root_and_origin

    root, origin = root_and_origin(args.data_root)
    table = Table(title=f"datasets (root: {root}, from {origin})")
    for column in ("name", "found", "classes", "where"):
        table.add_column(column)
    for spec in DATASETS.values():
        source = spec.find(root)
        where = str(source.location(root)) if source else "looked in: " + ", ".join(map(str, spec.locations(root)))
        table.add_row(spec.name, "yes" if source else "no", str(spec.info.num_classes), where)
    table.add_row("npz:PATH", "-", "-", "any interchange-format .npz (x_train, y_train, x_test, y_test)")
    table.add_row("folder:PATH", "-", "-", "your images in torchvision's ImageFolder layout: PATH/<class>/<image>")
    Console(width=200).print(table)


@command("info", "Versions, threads and device.")
def info(args) -> None:
    import torch

    from .. import __version__

    rows = {
        "gradguard": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    for package in ("torchvision", "torchmetrics", "numpy", "opacus", "flwr"):
        try:
            rows[package] = getattr(__import__(package), "__version__", "?")
        except ImportError:
            rows[package] = "not installed"
    for key, value in rows.items():
        print(f"{key:13s} {value}")
