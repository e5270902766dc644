"""`gradguard train`: results files, one-line errors, no silent overwrite."""

import json

from gradguard.cli import run
from gradguard.cli.options import parse_key_values


def test_train_writes_json_csv_and_plot(tiny_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", tiny_mnist, "--clients", "3", "--rounds", "2", "--defense", "none",
            "--reproducible-noise", "--out", str(out)]
    assert run(args) == 0
    history = json.loads((out / "history.json").read_text())
    assert history["config"]["clients"] == 3 and len(history["rounds"]) == 2
    assert history["summary"]["accuracy"] is not None and history["summary"]["art_s"] > 0
    assert len((out / "history.csv").read_text().splitlines()) == 3
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "ACC" in capsys.readouterr().out
    assert run(args) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert run(args + ["--overwrite"]) == 0


def test_bad_train_options_are_one_line_errors_and_write_nothing(tiny_mnist, tmp_path, capsys):
    for bad in (["--clients", "0"], ["--fraction", "1.5"], ["--defense", "nope"], ["--defense-opt", "novalue"],
                ["--defense-opt", "unknown=1"]):
        assert run(["train", "--dataset", tiny_mnist, "--out", str(tmp_path / "x"), *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("gradguard: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_defense_options_parse_json_values_and_keep_strings():
    assert parse_key_values(["sigma=0.1", "k=4", "clip=true", "mode=ones", "s=[1, 2]", "c=none"], "--defense-opt") == {
        "sigma": 0.1, "k": 4, "clip": True, "mode": "ones", "s": [1, 2], "c": None}
