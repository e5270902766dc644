"""Your own images: ``folder:PATH`` in torchvision's ImageFolder layout.

``PATH/<class>/<image>``: one folder per class (labels in sorted folder-name order, as
torchvision's ``ImageFolder`` numbers them), image files below it (``.png``, ``.jpg``,
``.jpeg``, ``.bmp``, ``.gif``, ``.tif``, ``.tiff``, ``.webp``, ``.ppm``, ``.pgm``; other
files are skipped). When PATH holds ``train/`` and ``test/`` (or ``val/``) folders in that
layout, they are the two splits; otherwise the last fifth of each class (in sorted file
order, at least one image when the class has two or more) is the test split: deterministic,
no random draw.

Images are decoded with Pillow: grey when every image is single-channel, RGB otherwise. The
image shape comes from the data: every image must have the same size, or they are resized
(bilinear) to the most common one. The normalisation statistics are computed from the
training split, as for ``npz:`` files. Decoded folders are kept in memory per process, keyed
by their content's hash, so the cells of a run decode each folder once.

Reference a folder pinned to its content with ``folder:PATH;sha256=HASH`` (what
:func:`pin_folder` returns and the audit's cells carry): loading refuses a folder whose
content changed since, so a stored result is never mistaken for one on other images.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DatasetFormatError, DatasetNotFoundError
from .datasets import ImageDataset, from_arrays

if TYPE_CHECKING:
    from PIL.Image import Image as Picture

__all__ = ["IMAGE_EXTENSIONS", "load_folder", "pin_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
TEST_FRACTION = 0.2
_SPLITS = (("train", "test"), ("train", "val"))
_CACHE: dict[str, ImageDataset] = {}


def _parse(text: str) -> tuple[Path, str | None]:
    path, _, pinned = text.partition(";")
    digest = None
    if pinned:
        key, eq, value = pinned.partition("=")
        if key.strip() != "sha256" or not eq:
            raise DatasetFormatError(f"folder: unknown option {pinned!r} in {text!r}; the only option is sha256=HASH")
        digest = value.strip()
    return Path(path).expanduser(), digest


def _class_files(root: Path) -> dict[str, list[Path]]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {c.name: sorted(f for f in c.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
             for c in classes}
    return {name: found for name, found in files.items() if found}


def _layout(root: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]] | None]:
    """The class files of the training split and, with train/ and test/ folders, of the test split."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"folder: {root} is not a folder (expected PATH/<class>/<image>)")
    for train, test in _SPLITS:
        if (root / train).is_dir() and (root / test).is_dir():
            return _class_files(root / train), _class_files(root / test)
    return _class_files(root), None


def _digest(train: dict[str, list[Path]], test: dict[str, list[Path]] | None, root: Path) -> str:
    digest = hashlib.sha256()
    for split in (train, test or {}):
        for _, files in sorted(split.items()):
            for path in files:
                digest.update(str(path.relative_to(root)).encode())
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def pin_folder(text: str) -> str:
    """``folder:ABSOLUTE_PATH;sha256=HASH`` for the folder ``text`` names (with or without ``folder:``)."""
    text = text.removeprefix("folder:")
    root, _ = _parse(text)
    root = root.resolve()
    train, test = _layout(root)
    _check_classes(root, train, test)
    return f"folder:{root};sha256={_digest(train, test, root)}"


def _check_classes(root: Path, train: dict[str, list[Path]], test: dict[str, list[Path]] | None) -> None:
    if not train:
        raise DatasetFormatError(f"folder: no class folders with images under {root} (expected PATH/<class>/<image> "
                                 f"with {', '.join(IMAGE_EXTENSIONS)} files)")
    if len(train) < 2:
        raise DatasetFormatError(f"folder: {root} holds one class ({next(iter(train))}); a classifier needs at least 2")
    if test is not None and not set(test) <= set(train):
        raise DatasetFormatError(f"folder: the test split of {root} has classes {sorted(set(test) - set(train))} "
                                 f"that the training split lacks")


def _decode(paths: list[Path], root: Path) -> tuple[list[Picture], bool]:
    from PIL import Image, UnidentifiedImageError

    images: list[Picture] = []
    grey = True
    for path in paths:
        try:
            with Image.open(io.BytesIO(path.read_bytes())) as image:
                image.load()
                mode = image.mode
                grey = grey and mode in ("1", "L", "I", "I;16", "F", "LA")
                images.append(image.copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetFormatError(f"folder: cannot read {path.relative_to(root)} as an image ({exc})") from None
    return images, grey


def load_folder(text: str) -> ImageDataset:
    """Load ``PATH`` (or ``PATH;sha256=HASH``) in the ImageFolder layout as an :class:`ImageDataset`."""
    from PIL import Image

    root, pinned = _parse(text.removeprefix("folder:"))
    train, test = _layout(root)
    _check_classes(root, train, test)
    digest = _digest(train, test, root)
    if pinned is not None and pinned != digest:
        raise DatasetFormatError(f"folder: {root} changed since this run was planned (sha256 differs); start the run "
                                 f"again so its cells are keyed by the new images")
    if digest in _CACHE:
        return _CACHE[digest]
    classes = sorted(train)
    if test is None:
        train_files, test_files = [], []
        for label, name in enumerate(classes):
            files = train[name]
            held = int(np.ceil(TEST_FRACTION * len(files))) if len(files) >= 2 else 0
            train_files += [(f, label) for f in files[:len(files) - held]]
            test_files += [(f, label) for f in files[len(files) - held:]]
    else:
        train_files = [(f, classes.index(name)) for name in classes for f in train[name]]
        test_files = [(f, classes.index(name)) for name in sorted(test) for f in test[name]]
    if not test_files:
        raise DatasetFormatError(f"folder: {root} leaves no test image (give each class at least 2 images)")
    pictures, grey = _decode([f for f, _ in train_files + test_files], root)
    sizes = Counter(p.size for p in pictures)
    size = sizes.most_common(1)[0][0]
    mode = "L" if grey else "RGB"
    arrays = [np.asarray((p if p.size == size else p.resize(size, Image.Resampling.BILINEAR)).convert(mode),
                         dtype=np.uint8) for p in pictures]
    stacked = np.stack(arrays)
    labels = np.array([label for _, label in train_files + test_files], dtype=np.int64)
    count = len(train_files)
    dataset = from_arrays(f"folder:{root}", stacked[:count], labels[:count], stacked[count:], labels[count:],
                          num_classes=len(classes), source=str(root))
    _CACHE[digest] = dataset
    return dataset


def class_names(text: str) -> list[str]:
    """The class folder names of ``folder:PATH``, in label order."""
    root, _ = _parse(text.removeprefix("folder:"))
    train, _ = _layout(root)
    return sorted(train)
