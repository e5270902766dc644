"""Image datasets as in-memory tensors in [0, 1], looked up by name.

Every dataset becomes an :class:`ImageDataset`: float32 images of shape (N, C, H, W) in
[0, 1] and int64 labels. Normalisation is not applied here; it is the first layer of the
model (docs/design.md section 1: pixel space everywhere), using :attr:`ImageDataset.mean` and ``std``.
"""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DatasetFormatError, DatasetNotFoundError

DEFAULT_ROOT = Path(os.environ.get("GRADGUARD_CACHE", Path.home() / ".cache" / "gradguard"))


def cache_folder(kind: str) -> Path:
    """Where gradguard keeps computed artefacts of one ``kind`` (trained inverters, trained
    models): ``$GRADGUARD_CACHE/KIND`` or ``~/.cache/gradguard/KIND``, read when called."""
    base = os.environ.get("GRADGUARD_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "gradguard") / kind
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class ImageDataset:
    """A train/test split of images in [0, 1] with integer labels."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = field(default="", compare=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
                f"shape={self.image_shape}, classes={self.num_classes}, source={self.source!r})")


def _channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def to_image_tensor(images: np.ndarray, *, what: str = "images") -> Tensor:
    """uint8 NHW (grey) or NHWC (colour) array -> float32 NCHW tensor in [0, 1]."""
    if images.dtype != np.uint8:
        raise DatasetFormatError(f"{what}: expected dtype uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    else:
        raise DatasetFormatError(
            f"{what}: expected shape (N, H, W) or (N, H, W, C) with C in {{1, 3}}, got {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)


def _labels(labels: np.ndarray, n: int, *, what: str) -> Tensor:
    if labels.ndim != 1 or len(labels) != n:
        raise DatasetFormatError(f"{what}: expected shape ({n},) to match the images, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetFormatError(f"{what}: expected integer labels, got dtype {labels.dtype}")
    if n and labels.min() < 0:
        raise DatasetFormatError(f"{what}: labels must be >= 0, found {labels.min()}")
    return torch.from_numpy(labels.astype(np.int64))


def from_arrays(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                y_test: np.ndarray, *, num_classes: int | None = None,
                stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                source: str = "") -> ImageDataset:
    """Validate uint8 arrays in the interchange format and build an :class:`ImageDataset`.

    Without ``num_classes`` the classes are the training labels' range, 0 to max(y_train): a
    test label beyond it is refused rather than silently widening the model's output for a
    class it never trains on. Empty splits are refused before any statistic is computed on them.
    """
    for split, array in (("x_train", x_train), ("x_test", x_test)):
        if len(array) == 0:
            raise DatasetFormatError(f"{name}: {split} holds no images; a dataset needs at least one training "
                                     f"and one test image")
    xtr = to_image_tensor(x_train, what=f"{name}: x_train")
    xte = to_image_tensor(x_test, what=f"{name}: x_test")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DatasetFormatError(f"{name}: x_train images are {tuple(xtr.shape[1:])} but x_test images are "
                                 f"{tuple(xte.shape[1:])}")
    ytr = _labels(y_train, len(xtr), what=f"{name}: y_train")
    yte = _labels(y_test, len(xte), what=f"{name}: y_test")
    if num_classes is None:
        classes = int(ytr.max()) + 1
        if int(yte.max()) >= classes:
            raise DatasetFormatError(f"{name}: y_test holds label {int(yte.max())}, but the training labels are "
                                     f"0..{classes - 1} ({classes} classes); every test label must occur in "
                                     f"y_train's range")
    else:
        classes = num_classes
        found = int(max(ytr.max(), yte.max()))
        if found >= classes:
            raise DatasetFormatError(f"{name}: labels must be < {classes}, found {found}")
    mean, std = stats or _channel_stats(xtr)
    return ImageDataset(name, xtr, ytr, xte, yte, classes, mean, std, source)


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str | Path, *, name: str | None = None, num_classes: int | None = None,
             stats=None) -> ImageDataset:
    """Load the interchange format: an .npz with uint8 ``x_train``/``x_test`` (NHW or NHWC) and
    integer ``y_train``/``y_test``.

    A file that cannot be read as such (a truncated or damaged archive, a single ``.npy`` array,
    pickled objects) is a :class:`DatasetFormatError` naming the file and how to write it again:
    numpy's own errors (``BadZipFile``, a CRC mismatch, ``EOFError``) say nothing of either.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f"npz file not found: {path}")
    rewrite = ("write it again with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...) "
               "or copy it again from its source")
    try:
        # our own handle, closed however np.load fails (numpy leaves its own open on a damaged zip)
        with open(path, "rb") as handle:
            if handle.read(6) == b"\x93NUMPY":
                raise DatasetFormatError(f"{path}: a single .npy array, not an .npz archive of {list(NPZ_KEYS)}; "
                                         f"{rewrite}")
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as archive:
                missing = [k for k in NPZ_KEYS if k not in archive.files]
                if missing:
                    raise DatasetFormatError(f"{path}: missing arrays {missing}; an interchange npz holds "
                                             f"{list(NPZ_KEYS)}")
                arrays = {k: archive[k] for k in NPZ_KEYS}
    except DatasetFormatError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        # Pickled arrays (ValueError) and damage to the archive or to an array's bytes.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DatasetFormatError(f"{path}: not a readable .npz file, truncated or damaged ({reason}); "
                                 f"{rewrite}") from None
    return from_arrays(name or f"npz:{path}", **arrays, num_classes=num_classes, stats=stats, source=str(path))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format MNIST and Fashion-MNIST ship in."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetFormatError(f"{path}: truncated or damaged gzip file ({exc}); install or download it "
                                     f"again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetFormatError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetFormatError(f"{path}: header says {dims}, found {data.size} values")
    return data.reshape(dims)
