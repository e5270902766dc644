"""A scripted walk over bad inputs to every command: each ends in exit code 2, exactly one line
on stderr starting ``gradguard: error:``, no traceback, and nothing on stdout.

Every case fails while the input is validated, before any computation, so the walk is fast. It
runs in this process (``gradguard.cli.run``, the entry point's own code path) except where
only a separate process shows the behaviour: the installed entry point itself, and an output
folder held by another running process. Damaged and malformed files are real files written
here.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradguard.cli import COMMANDS, run
from gradguard.experiments.store import ResultStore


def _npz(path: Path, **overrides) -> Path:
    arrays = dict(x_train=np.zeros((20, 28, 28), np.uint8), y_train=np.arange(20) % 10,
                  x_test=np.zeros((5, 28, 28), np.uint8), y_test=np.arange(5))
    np.savez(path, **(arrays | overrides))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Bad files of every kind a user can hand over, written once for the walk."""
    root = tmp_path_factory.mktemp("bad")
    good = _npz(root / "good.npz").read_bytes()
    (root / "truncated.npz").write_bytes(good[: len(good) // 2])
    (root / "damaged.npz").write_bytes(good[:200] + b"\xff" * 64 + good[264:])
    np.save(root / "array.npy", np.zeros((3, 28, 28), np.uint8))
    _npz(root / "empty.npz", x_train=np.zeros((0, 28, 28), np.uint8), y_train=np.zeros(0, np.int64))
    _npz(root / "labels.npz", y_test=np.array([0, 1, 2, 3, 42]))
    _npz(root / "float.npz", x_train=np.zeros((20, 28, 28), np.float32))
    (root / "file").write_text("not a folder")
    (root / "earlier_attack").mkdir()
    (root / "earlier_attack" / "grid.png").write_bytes(b"an earlier run's picture")
    (root / "earlier_train").mkdir()
    (root / "earlier_train" / "history.json").write_text("{}")
    (root / "profile_json.json").write_text('{"name": "cut", "datasets": [')
    (root / "profile_toml.toml").write_text('name = "x"\nbogus_field = 1\n')
    store = ResultStore(root / "damaged_run")  # a store with cells, its header then overwritten
    for i in range(3):
        store.put("attack", {"i": i}, {"psnr": 1.0}, 0.0)
    store.close()
    with sqlite3.connect(root / "damaged_run" / ResultStore.FILENAME) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path = root / "damaged_run" / ResultStore.FILENAME
    path.write_bytes(b"\x00" * 100 + path.read_bytes()[100:])
    ResultStore(root / "no_plan").close()  # a store, but no finished run in it
    (root / "empty_folder").mkdir()
    return {p.name.split(".")[0]: str(p) for p in root.iterdir()}


# (command line, text the error line must contain); {name} is a file of the fixture above.
CASES: list[tuple[str, str]] = [
    # attack
    ("attack --defense nope", "unknown name 'nope'"),
    ("attack --defense-opt sigma", "KEY=VALUE"),
    ("attack --defense dp-gaussian --defense-opt sigma=inf", "finite"),
    ("attack --defense dp-gaussian --defense-opt sigma=1e39", "beyond float32's range"),
    ("attack --defense graddefense --defense-opt sigma=-1", "sigma=-1"),
    ("attack --images 0", "--images (0)"),
    ("attack --images 3 --batch-size 2", "multiple of --batch-size"),
    ("attack --attack nope", "invalid choice"),
    ("attack --iterations 0", "iterations=0"),
    ("attack --model nope", "nope"),
    ("attack --aux-images 0", "--aux-images"),
    ("attack --attack-opt epochs=3", "--attack-opt is for adaptive attacks"),
    ("attack --seed abc", "invalid int value"),
    ("attack --images 30", "exceeds the 20 training images"),  # with --dataset npz:{good}, added below
    ("attack --dataset npz:{truncated}", "truncated or damaged"),
    ("attack --dataset npz:{damaged}", "truncated or damaged"),
    ("attack --dataset npz:{array}", "single .npy array"),
    ("attack --dataset npz:{empty}", "x_train holds no images"),
    ("attack --dataset npz:{labels}", "y_test holds label 42"),
    ("attack --dataset npz:{float}", "expected dtype uint8"),
    ("attack --dataset npz:/nonexistent.npz", "/nonexistent.npz"),
    ("attack --dataset nope", "unknown name 'nope'"),
    ("attack --out {file}", "is a file, not a folder"),
    ("attack --out {file}/sub", "cannot create the folder"),
    ("attack --out {earlier_attack}", "already holds grid.png"),
    # train
    ("train --clients 0", "clients=0"),
    ("train --clients 10 --fraction 0.01", "0 clients per round"),
    ("train --lr inf", "lr=inf"),
    ("train --rounds 0", "rounds=0"),
    ("train --algorithm nope", "invalid choice"),
    ("train --partition dirichlet --alpha 0", "alpha=0"),
    ("train --defense graddefense --defense-opt chosen=20", "chosen"),
    ("train --dataset npz:{truncated}", "truncated or damaged"),
    ("train --out {file}", "is a file, not a folder"),
    ("train --out {earlier_train}", "already holds history.json"),
    # reproduce, demo
    ("reproduce --profile huge", "unknown name 'huge'"),
    ("reproduce --profile {profile_json}", "is not valid JSON"),
    ("reproduce --profile {profile_toml}", "bogus_field"),
    ("reproduce --jobs 0", "must be at least 1"),
    ("reproduce --profile tiny --out {file}/run", "cannot create the folder"),
    ("demo --jobs 0", "must be at least 1"),
    ("demo --jobs two", "expected a whole number"),
    ("demo --out {damaged_run}", "is damaged"),
    # sweep
    ("sweep", "--defense"),
    ("sweep --defense nope", "unknown defense 'nope'"),
    ("sweep --profile tiny --defense dp-gaussian --param bogus=1,2", "bogus"),
    ("sweep --profile tiny --defense dp-gaussian --param sigma=-1,0.1", "sigma=-1"),
    ("sweep --profile tiny --defense dp-gaussian --param sigma=1:0:log3", "cannot read"),
    ("sweep --defense graddefense-paper", "has no strength knob"),
    ("sweep --profile tiny --defense gc --dataset npz:{damaged}", "truncated or damaged"),
    # report, recover
    ("report /nonexistent/run", "no results store"),
    ("report {damaged_run}", "gradguard recover"),
    ("report {no_plan}", "holds no finished reproduction or sweep"),
    ("recover /nonexistent/run", "is not a folder"),
    ("recover {empty_folder}", "no results store"),
    # audit
    ("audit --dataset mnist-sample", "--model"),
    ("audit --model lenet --dataset npz:{truncated}", "truncated or damaged"),
    # listings, the top level
    ("datasets --data-root", "expected one argument"),
    ("datasets --bogus", "unrecognized arguments"),
    ("defenses --bogus", "unrecognized arguments"),
    ("info --bogus", "unrecognized arguments"),
    ("nonsense", "invalid choice"),
]


def _argv(line: str, files: dict[str, str], tmp_path: Path) -> list[str]:
    argv = line.format(**files).split()
    if argv[0] in ("attack", "train") and "--dataset" not in argv:
        argv += ["--dataset", f"npz:{files['good']}"]  # small and valid: only the bad option is wrong
    if argv[0] in ("attack", "train", "reproduce", "demo", "sweep", "audit") and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    return argv


def test_the_walk_covers_every_command_with_enough_distinct_inputs():
    assert len(CASES) >= 40 and len({line for line, _ in CASES}) == len(CASES)
    walked = {line.split()[0] for line, _ in CASES}
    assert set(COMMANDS) <= walked, f"commands without a bad input: {set(COMMANDS) - walked}"


@pytest.mark.parametrize("line, message", CASES, ids=[line for line, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(line, message, files, tmp_path, capsys):
    assert run(_argv(line, files, tmp_path)) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("gradguard: error: "), captured.err
    assert "Traceback" not in captured.err and message in captured.err, captured.err
    assert captured.out == "", "validation comes before any output"
    assert not (tmp_path / "out").exists(), "a refused run leaves no folder behind"


@pytest.mark.parametrize("line", ["attack --dataset npz:{truncated}", "report {damaged_run}"])
def test_the_installed_entry_point_prints_one_line_too(line, files, tmp_path):
    done = subprocess.run([sys.executable, "-m", "gradguard", *_argv(line, files, tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("gradguard: error: ")
