"""`gradguard attack`: writes the grid, CSV and JSON; bad options fail with one line, exit 2."""

from __future__ import annotations

import csv
import json

from gradguard.cli import run
from gradguard.cli.options import parse_key_values


def test_attack_command_writes_grid_and_scores(tmp_path, capsys):
    out = tmp_path / "run"
    code = run(["attack", "--dataset", "mnist-sample", "--model", "lenet", "--attack", "gia", "--images", "4",
                "--batch-size", "2", "--iterations", "3", "--restarts", "1", "--defense", "none", "--out", str(out)])
    assert code == 0
    assert (out / "grid.png").stat().st_size > 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 4 and {"psnr", "ssim", "label_accuracy", "dataset_index"} <= set(rows[0])
    record = json.loads((out / "scores.json").read_text())
    assert record["summary"]["images"] == 4 and record["attack"]["iterations"] == 3
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
