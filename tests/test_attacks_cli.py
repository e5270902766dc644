"""`gradguard attack`: writes the grid, CSV and JSON; bad options fail with one line, exit 2."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from gradguard.cli import run
from gradguard.cli.options import parse_key_values


def _as_png_pixels(image) -> np.ndarray:
    """A (1, H, W) image in [0, 1] as torchvision's save_image writes it: uint8, rounded."""
    return (image[0] * 255 + 0.5).clamp(0, 255).byte().numpy()


def test_attack_command_writes_grid_and_scores(tmp_path, capsys, mnist_sample, monkeypatch):
    from gradguard.experiments import figures

    drawn = []
    monkeypatch.setattr(figures.plt, "close", drawn.append)  # keep the grid's figure to read what it shows
    out = tmp_path / "run"
    code = run(["attack", "--dataset", "mnist-sample", "--model", "lenet", "--attack", "gia", "--images", "4",
                "--batch-size", "2", "--iterations", "3", "--restarts", "1", "--defense", "none", "--out", str(out)])
    assert code == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 4 and {"psnr", "ssim", "label_accuracy", "dataset_index"} <= set(rows[0])
    indices = [int(row["dataset_index"]) for row in rows]
    assert len(set(indices)) == 4 and all(0 <= i < len(mnist_sample.x_train) for i in indices)
    assert all(math.isfinite(float(row["psnr"])) and -1 <= float(row["ssim"]) <= 1 for row in rows)
    assert [int(row["label"]) for row in rows] == [int(mnist_sample.y_train[i]) for i in indices]

    # grid.png: the 4 attacked images above their 4 reconstructions, scaled up (tests/test_readable.py).
    grid = np.asarray(Image.open(out / "grid.png").convert("L"))
    assert grid.shape[0] >= 2 * figures.MIN_IMAGE_PX and grid.shape[1] >= 4 * figures.MIN_IMAGE_PX
    (fig,) = drawn
    shown = [np.asarray(ax.get_images()[0].get_array()) for ax in fig.axes]
    truths = {bytes(_as_png_pixels(mnist_sample.x_train[i])) for i in indices}
    assert {bytes(_as_png_pixels(torch.from_numpy(a)[None])) for a in shown[:4]} == truths  # top row: the targets

    record = json.loads((out / "scores.json").read_text())
    assert record["summary"]["images"] == 4 and record["attack"]["iterations"] == 3
    assert record["summary"]["psnr_mean"] == pytest.approx(sum(float(row["psnr"]) for row in rows) / 4)
    assert [image["dataset_index"] for image in record["images"]] == indices
    assert record["summary"]["label_accuracy"] == 1.0  # labels are given at batch size 2
    assert "psnr" in capsys.readouterr().out


def test_attack_command_rejects_bad_options_with_one_line(tmp_path, capsys):
    assert run(["attack", "--images", "3", "--batch-size", "2", "--out", str(tmp_path)]) == 2
    assert "multiple of --batch-size" in capsys.readouterr().err
    assert run(["attack", "--defense", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown name 'nope'" in capsys.readouterr().err
    assert run(["attack", "--iterations", "0", "--out", str(tmp_path)]) == 2
    assert "iterations=0" in capsys.readouterr().err


def test_parse_key_values_types_values():
    assert parse_key_values(["sigma=0.5", "k=3", "clip=true", "mode=ones", "max-norm=1e-2"], "x") == {
        "sigma": 0.5, "k": 3, "clip": True, "mode": "ones", "max_norm": 0.01}
