"""Nothing lost, nothing cryptic: damaged stores, busy or unwritable output folders, runs that
resume with exact counts, and runs that validate before they write anything.

Damaged files are written by the tests, concurrent runs are real processes started together.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gradguard.cli import run
from gradguard.experiments import cells
from gradguard.experiments.plan import build_plan
from gradguard.experiments.profiles import PROFILES
from gradguard.experiments.reproduce import reproduce
from gradguard.experiments.runner import CellRunner
from gradguard.experiments.store import DamagedStoreError, ResultStore, recover
from gradguard.outlock import LOCK_NAME, FolderBusyError, FolderLock

GRADGUARD = [sys.executable, "-m", "gradguard"]
SEARCHED = PROFILES["tiny"].model_copy(update={
    "name": "searched", "attacks": ["dlg"], "adaptive": [], "defenses": ["none", "graddefense", "gc"],
    "search": PROFILES["tiny"].search.model_copy(update={"steps": 3})})


def _one_error_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.startswith("gradguard: error: ") and "Traceback" not in stderr, stderr
    return stderr


# -- progress counts of resumed runs --

def _fake_result(cell) -> dict:
    """A result of the shape the tables read, in no time, with a PSNR that falls by 5 dB per decade
    of the defense's strength: graddefense's search (sigma in [1e-3, 3], target the floor + 1 dB =
    12 dB) meets its target at its fourth probe (sigma 0.41) and probes once more (0.15) before it
    ends there, so a run interrupted between the two has the searched task's cell stored as a probe."""
    if isinstance(cell, cells.TrainCell):
        return {"accuracy": 0.5, "art_s": 0.01, "curve": [[1, 0.5]], "summary": {}}
    strength = sum(v for v in cell.defense_options.values() if isinstance(v, float))
    psnr = 25.0 - 5.0 * math.log10(strength / 1e-3) if strength > 0 else 30.0
    return {"psnr": [psnr], "ssim": [0.5], "psnr_each": [psnr], "ssim_each": [0.5], "psnr_mean": psnr,
            "ssim_mean": 0.5, "floor_psnr": 10.0, "floor_ssim": 0.1, "class_floor_psnr": 11.0,
            "class_floor_ssim": 0.2, "label_accuracy": 1.0}


def _interrupt_and_resume(folder: Path, interruption: int, monkeypatch) -> tuple[int, list[bool]]:
    """Run :data:`SEARCHED` until ``interruption`` cells are computed, then resume it; returns the
    units the resumed run found stored and, per unit it reported done, whether it said cached."""
    computed: list[str] = []

    def compute(cell, root):
        if len(computed) >= interruption:
            raise KeyboardInterrupt("simulated interruption")
        computed.append(cell.key())
        return _fake_result(cell)

    monkeypatch.setattr(cells, "compute", compute)
    with pytest.raises(KeyboardInterrupt), CellRunner(ResultStore(folder)) as runner:
        reproduce(runner, SEARCHED)
    monkeypatch.setattr(cells, "compute", lambda cell, root: _fake_result(cell))
    events: list[bool] = []
    with CellRunner(ResultStore(folder), on_done=lambda label, cached: events.append(cached)) as runner:
        start = runner.stored_count(build_plan(SEARCHED))
        reproduce(runner, SEARCHED)
    return start, events


def test_a_resumed_run_counts_every_unit_exactly_once_wherever_it_was_interrupted(tmp_path, monkeypatch):
    """Interrupted after each possible number of computed cells (mid-search included, where a
    task's cell is already stored as a probe but its search is not), the resumed run's progress
    starts at the stored units and advances once per other unit: it ends exactly at the plan's size."""
    size = build_plan(SEARCHED).size
    monkeypatch.setattr(cells, "compute", lambda cell, root: _fake_result(cell))
    with CellRunner(ResultStore(tmp_path / "whole")) as runner:
        reproduce(runner, SEARCHED)
    cells_computed = len(runner.computed) - len(build_plan(SEARCHED).searches)
    assert cells_computed > size, "the searches probe several strengths"
    for interruption in range(1, cells_computed):
        start, events = _interrupt_and_resume(tmp_path / f"run{interruption}", interruption, monkeypatch)
        assert len(events) == size, "one report per unit"
        assert sum(events) == start, f"interrupted after {interruption} cells: {sum(events)} units reported " \
                                     f"as counted at the start, {start} were"


# -- damaged results stores --

def _padded_fake_result(cell) -> dict:
    return {**_fake_result(cell), "padding": "x" * 3000}  # about one page per cell: damage hits some, not all


def _stored_run(folder: Path, monkeypatch) -> set[str]:
    monkeypatch.setattr(cells, "compute", lambda cell, root: _padded_fake_result(cell))
    with CellRunner(ResultStore(folder)) as runner:
        reproduce(runner, SEARCHED)
        runner.store.close()
    with sqlite3.connect(folder / ResultStore.FILENAME) as db:  # every row in the main file, as after a run
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return {c.key for c in ResultStore(folder).cells()}


def _damage(path: Path, start: int, length: int) -> None:
    data = bytearray(path.read_bytes())
    data[start:start + length] = bytes((7 * i + 3) % 256 for i in range(length))  # fixed, not random
    path.write_bytes(bytes(data))


def test_a_store_damaged_in_the_middle_says_what_can_be_read_and_recover_keeps_it(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "run"
    keys = _stored_run(folder, monkeypatch)
    store = folder / ResultStore.FILENAME
    size = store.stat().st_size
    _damage(store, size // 2 - 4096, 8192)  # two pages in the middle

    assert run(["report", str(folder)]) == 2
    error = _one_error_line(capsys.readouterr().err)
    assert str(store) in error and "is damaged" in error and f"gradguard recover {folder}" in error
    readable = int(error.split(" of its cells can still be read")[0].rsplit(" ", 1)[1])
    assert 0 < readable < len(keys)

    done = subprocess.run([*GRADGUARD, "recover", str(folder)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert f"recovered {readable} cells" in done.stdout
    assert (folder / "results.damaged-1.sqlite").stat().st_size == size, "the damaged file is kept as it was"
    kept = {c.key for c in ResultStore(folder).cells()}
    assert len(kept) == readable and kept < keys

    computed: list[str] = []
    monkeypatch.setattr(cells, "compute", lambda cell, root: computed.append(cell.key()) or _fake_result(cell))
    with CellRunner(ResultStore(folder)) as runner:
        reproduce(runner, SEARCHED)
        assert runner.stored_count(build_plan(SEARCHED)) == build_plan(SEARCHED).size
    assert set(computed) <= keys - kept, "a rerun computes only what was lost (and still needed)"
    assert len(computed) == len(set(computed))


def test_a_store_with_a_damaged_header_is_one_line_saying_what_to_do(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    _stored_run(folder, monkeypatch)
    _damage(folder / ResultStore.FILENAME, 0, 100)
    with pytest.raises(DamagedStoreError, match="no cell can be read from it.*gradguard recover"):
        ResultStore(folder)
    assert recover(folder).kept == 0
    assert ResultStore(folder).count() == 0, "recover starts a fresh store"


def test_an_intact_store_has_nothing_to_recover(tmp_path, capsys):
    ResultStore(tmp_path).put("attack", {"x": 1}, {"psnr": 1.0}, 0.0)
    assert run(["recover", str(tmp_path)]) == 0
    assert "intact" in capsys.readouterr().out
    assert ResultStore(tmp_path).count() == 1


def test_a_row_whose_json_is_damaged_is_named_not_a_traceback(tmp_path):
    store = ResultStore(tmp_path)
    key = store.put("attack", {"x": 1}, {"psnr": 1.0}, 0.0)
    store.close()
    with sqlite3.connect(tmp_path / ResultStore.FILENAME) as db:  # damage SQLite cannot see: the text itself
        db.execute("UPDATE cells SET result = '{\"psnr\": 1.' WHERE key = ?", (key,))
    with pytest.raises(DamagedStoreError, match="does not decode"):
        ResultStore(tmp_path).get(key)


# -- output folders: checked before the work, one writer at a time --

@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if an attack or a training run starts computing."""
    import gradguard.experiments.cells as attack_cells
    import gradguard.fl.simulator as simulator

    def computed(*args, **kwargs):
        raise AssertionError("computed before the output folder was checked")

    monkeypatch.setattr(attack_cells, "run_attack", computed)
    monkeypatch.setattr(simulator, "train", computed)


@pytest.mark.parametrize("command", [["attack", "--images", "1"], ["train", "--rounds", "1"]])
def test_out_is_checked_before_any_work(tmp_path, capsys, no_work, command):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out, message in ((blocker, "is a file, not a folder"), (blocker / "sub", "cannot create the folder")):
        assert run([*command, "--out", str(out)]) == 2
        assert message in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("command, results", [(["attack", "--images", "1"], "grid.png, scores.csv, scores.json"),
                                              (["train", "--rounds", "1"], "history.json, history.csv, accuracy.png")])
def test_attack_and_train_refuse_earlier_results_alike(tmp_path, capsys, no_work, command, results):
    for name in results.split(", "):
        (tmp_path / name).write_text("an earlier run's result")
    assert run([*command, "--out", str(tmp_path)]) == 2
    assert f"already holds {results}" in _one_error_line(capsys.readouterr().err)
    assert all((tmp_path / name).read_text() == "an earlier run's result" for name in results.split(", "))


def test_a_failed_run_leaves_no_folder_behind(tmp_path, capsys):
    out = tmp_path / "new"
    assert run(["attack", "--images", "1", "--iterations", "1", "--defense", "dp-gaussian", "--defense-opt",
                "sigma=1e30", "--out", str(out)]) == 2  # fails inside the attack, after the folder was claimed
    assert "overflows float32" in _one_error_line(capsys.readouterr().err)
    assert not out.exists()


HOLDER = textwrap.dedent("""
    import os, signal, sys
    from gradguard.outlock import FolderLock
    FolderLock(sys.argv[1], "test holder").acquire()
    print("held", flush=True)
    if sys.argv[2] == "die":
        os.kill(os.getpid(), signal.SIGKILL)  # a run killed with -9 leaves its lock file behind
    sys.stdin.read()  # hold the lock until the test closes our stdin
""")


def test_a_folder_held_by_another_process_is_refused_by_every_writing_command(tmp_path, capsys):
    """Another process holds the folder (as a run does from its first write to its exit): each
    command that writes there refuses in one line naming it, and writes nothing. One command runs
    as its own process; the others in this one (the same code path, without the start-up cost)."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), "hold"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    expected = "another gradguard run is writing there (pid {pid}, `test holder`"
    try:
        assert holder.stdout.readline() == "held\n"
        done = subprocess.run([*GRADGUARD, "train", "--rounds", "1", "--out", str(out)], capture_output=True,
                              text=True)
        assert done.returncode == 2
        assert expected.format(pid=holder.pid) in _one_error_line(done.stderr)
        for argv in (["attack", "--images", "1", "--iterations", "1", "--out", str(out)],
                     ["sweep", "--profile", "tiny", "--defense", "gc", "--param", "percentile=10,50",
                      "--out", str(out)],
                     ["reproduce", "--profile", "tiny", "--out", str(out)],
                     ["recover", str(out)]):
            assert run(argv) == 2, argv
            assert expected.format(pid=holder.pid) in _one_error_line(capsys.readouterr().err)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME], "the refused runs wrote nothing"


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", HOLDER, str(out), "die"], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL and (out / LOCK_NAME).exists()
    with FolderLock(out, "next run"):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(FolderBusyError, match=f"pid {os.getpid()}, `next run`"):
            FolderLock(out, "third run").acquire()
    assert not (out / LOCK_NAME).exists(), "removed at a clean exit"


def test_two_trainings_started_together_keep_one_complete_result(tmp_path, tiny_mnist):
    """Both used to exit 0, each saying it wrote its history; one history was lost."""
    out = tmp_path / "same"
    runs = [subprocess.Popen([*GRADGUARD, "train", "--dataset", tiny_mnist, "--clients", "2", "--rounds", "2",
                              "--seed", str(seed), "--out", str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    winner = next(i for i, (code, _, _) in enumerate(results) if code == 0)
    loser_error = _one_error_line(results[1 - winner][2])
    assert "another gradguard run is writing there" in loser_error or "already holds" in loser_error
    history = json.loads((out / "history.json").read_text())
    assert history["config"]["seed"] == winner + 1, "the files are the winner's, whole"
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "history.csv", "history.json"]


# -- validate first: no output, no file before a bad option is found --

def test_a_sweep_with_a_bad_option_prints_nothing_and_leaves_no_store(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert run(["sweep", "--profile", "tiny", "--defense", "dp-gaussian", "--param", "bogus=1,2",
                "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "bogus" in _one_error_line(captured.err) and captured.out == ""
    assert not out.exists()


def test_jobs_zero_is_refused_by_the_library_too(tmp_path):
    from gradguard.errors import ConfigError

    with pytest.raises(ConfigError, match="jobs=0"):
        CellRunner(ResultStore(tmp_path), jobs=0)


# -- values that validate but mean nothing --

@pytest.mark.parametrize("options, message", [({"sigma": float("inf")}, "finite"), ({"sigma": 1e39}, "float32")])
def test_a_defense_refuses_noise_no_float32_gradient_can_hold(options, message):
    from gradguard.defenses import Defense
    from gradguard.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        Defense.from_config("dp-gaussian", **options)


def test_an_attack_refuses_a_gradient_it_cannot_match_instead_of_scoring_its_start(mnist_sample):

    from gradguard.attacks import Attack
    from gradguard.errors import ConfigError
    from gradguard.experiments.cells import seeded_model
    from gradguard.grads import batch_gradient

    model = seeded_model(mnist_sample, "lenet", 0, dlg_init=True)
    gradient = batch_gradient(model, mnist_sample.x_train[:1], mnist_sample.y_train[:1])
    attack = Attack.from_config("dlg", iterations=2)
    with pytest.raises(ConfigError, match="NaN or inf"):
        attack.reconstruct(model, [g * float("inf") for g in gradient], (1, 28, 28), 1)
    with pytest.raises(ConfigError, match="overflows float32"):
        attack.reconstruct(model, [g * 1e30 for g in gradient], (1, 28, 28), 1)


def test_a_fraction_that_samples_no_client_is_refused():
    from gradguard.fl import SimulationConfig

    with pytest.raises(ValueError, match=r"fraction=0.04: samples round\(0.04 x 10 clients\) = 0"):
        SimulationConfig(clients=10, fraction=0.04)
    assert SimulationConfig(clients=10, fraction=0.1).clients_per_round == 1
