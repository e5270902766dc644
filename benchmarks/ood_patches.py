"""Images from none of gradguard's datasets: grey 28 x 28 patches of the photographs and scans
that matplotlib ships (a portrait, an MRI slice, terrain models, a logo), as an interchange
``.npz`` for ``--dataset npz:PATH``. Labels are drawn at random (the patches have no classes):
the attacked model is the MNIST-shaped LeNet, the question is whether a defense calibrated on
the project's datasets also hides images it has never seen.

    python benchmarks/ood_patches.py runs/ood.npz [--train 3000 --test 300 --seed 0]
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from matplotlib import cbook
from PIL import Image


def sources() -> list[np.ndarray]:
    """Grey images in [0, 255] from matplotlib's sample data."""
    images = []
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        with cbook.get_sample_data(name, asfileobj=True) as handle:
            images.append(np.asarray(Image.open(handle).convert("L"), dtype=np.float64))
    with cbook.get_sample_data("s1045.ima.gz", asfileobj=True) as handle:
        raw = gzip.decompress(handle.read()) if not isinstance(handle, gzip.GzipFile) else handle.read()
        scan = np.frombuffer(raw, np.uint16).astype(np.float64).reshape(256, 256)
    images.append(255 * (scan - scan.min()) / (scan.max() - scan.min()))
    for name, key in (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo")):
        with np.load(cbook.get_sample_data(name, asfileobj=False)) as data:
            terrain = np.asarray(data[key], dtype=np.float64)
        images.append(255 * (terrain - terrain.min()) / (terrain.max() - terrain.min()))
    return images


def patches(images: list[np.ndarray], count: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """``count`` random square crops (side 32 to 160 pixels, or the image's short side), resized to ``size``."""
    out = np.empty((count, size, size), dtype=np.uint8)
    for i in range(count):
        image = images[rng.integers(len(images))]
        side = int(rng.integers(32, min(160, *image.shape) + 1))
        top, left = rng.integers(image.shape[0] - side + 1), rng.integers(image.shape[1] - side + 1)
        crop = Image.fromarray(image[top:top + side, left:left + side].astype(np.uint8))
        out[i] = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    images = sources()
    x = patches(images, args.train + args.test, rng)
    y = rng.integers(0, 10, size=len(x))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, x_train=x[:args.train], y_train=y[:args.train], x_test=x[args.train:], y_test=y[args.train:])
    print(f"{args.out}: {args.train} training and {args.test} test patches of {len(images)} images")


if __name__ == "__main__":
    main()
