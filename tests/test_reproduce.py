"""The reproduction harness end to end on a tiny profile, its resume guarantee, and its errors."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from gradguard.cli import run
from gradguard.experiments import cells
from gradguard.experiments.profiles import PROFILES, Profile
from gradguard.experiments.report import build_report, utility_points
from gradguard.experiments.reproduce import reproduce
from gradguard.experiments.runner import CellRunner
from gradguard.experiments.store import ResultStore, cell_key
from gradguard.experiments.tables import accuracy_table, privacy_table

SMALL = PROFILES["tiny"].model_copy(update={"name": "small", "attacks": ["dlg"], "adaptive": [],
                                           "defenses": ["none", "graddefense", "gc"]})


def test_tiny_profile_produces_every_table_and_figure(tmp_path):
    with CellRunner(ResultStore(tmp_path)) as runner:
        plan = reproduce(runner, PROFILES["tiny"])
    assert {p["column"] for p in plan["privacy"]} == {"none", "graddefense", "graddefense-paper", "gc", "dp-gaussian",
                                                       "dp-laplace", "soteria", "soteria-muted"}
    assert {p["attack"] for p in plan["security"]} == {"oracle-mute", "detect-mute", "compensate-invert", "multi-round"}
    page = build_report(tmp_path)
    report = page.parent
    for name in ("tables.md", "table1.csv", "table2.csv", "table3.csv", "table4.csv", "reconstructions_dlg.png",
                 "reconstructions_gia.png", "accuracy_curves.png", "privacy_utility.png"):
        assert (report / name).is_file(), name
    text = page.read_text()
    for figure in report.glob("*.png"):
        assert f"({figure.name})" in text, f"{figure.name} is not in the HTML page"
    assert text.count("data:image/png;base64,") == len(list(report.glob("*.png")))
    tables = (report / "tables.md").read_text()
    assert "pending" not in tables and "Security" in tables
    store = ResultStore(tmp_path)
    soteria = [store.get(cell_key("attack", p["config"])).result["psnr_mean"] for p in plan["privacy"]
               if p["column"] in ("soteria", "soteria-muted")]
    point = next(p for p in utility_points(store, plan) if p["defense"] == "soteria")
    assert len(soteria) == 4 and point["psnr"] == max(soteria), "the plot shows Soteria's strongest attack"


def _tables_without_time(folder):
    store = ResultStore(folder)
    plan = store.meta("plan")
    accuracy = [row[:3] for row in accuracy_table(store, plan).rows]  # ART is a measurement, not a result
    return privacy_table(store, plan).rows, accuracy


def test_interrupted_run_resumes_computing_each_cell_once(tmp_path, monkeypatch):
    computed = []
    real = dict(cells.COMPUTE)

    def counting(kind, fail_after=None):
        def compute(config, root):
            if fail_after is not None and len(computed) >= fail_after:
                raise KeyboardInterrupt("simulated interruption")
            computed.append((kind, repr(sorted(config.items()))))
            return real[kind](config, root)
        return compute

    monkeypatch.setattr(cells, "COMPUTE", {k: counting(k, fail_after=4) for k in real})
    with pytest.raises(KeyboardInterrupt), CellRunner(ResultStore(tmp_path / "a")) as runner:
        reproduce(runner, SMALL)
    interrupted = ResultStore(tmp_path / "a")
    assert len(interrupted.cells("attack")) + len(interrupted.cells("train")) == 4
    monkeypatch.setattr(cells, "COMPUTE", {k: counting(k) for k in real})
    with CellRunner(ResultStore(tmp_path / "a")) as runner:
        reproduce(runner, SMALL)
    assert len(computed) == len(set(computed)), "a cell was computed twice"
    with CellRunner(ResultStore(tmp_path / "b")) as runner:
        reproduce(runner, SMALL)
    assert _tables_without_time(tmp_path / "a") == _tables_without_time(tmp_path / "b")


def test_worker_processes_give_the_tables_of_an_inline_run(tmp_path):
    with CellRunner(ResultStore(tmp_path / "inline")) as runner:
        reproduce(runner, SMALL)
    with CellRunner(ResultStore(tmp_path / "workers"), jobs=2) as runner:
        reproduce(runner, SMALL)
    assert len(runner.computed) == len(set(runner.computed)) == len(runner.store.cells()) - 1  # gc's search
    assert _tables_without_time(tmp_path / "inline") == _tables_without_time(tmp_path / "workers")


def _live_children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` and that have not exited (zombies excluded)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_killing_the_run_with_sigkill_ends_its_workers(tmp_path):
    run_ = subprocess.Popen([sys.executable, "-m", "gradguard", "reproduce", "--profile", "quick", "--jobs", "2",
                             "--out", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(workers := _live_children(run_.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(workers) >= 2, "the run never started its workers"
        time.sleep(5)  # let the workers import torch and take a cell
    finally:
        os.kill(run_.pid, signal.SIGKILL)
        run_.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "workers outlived the killed run"


def test_a_changed_config_makes_new_cells(tmp_path):
    with CellRunner(ResultStore(tmp_path)) as runner:
        reproduce(runner, SMALL)
        before = runner.store.count()
        reproduce(runner, SMALL.model_copy(update={"seed": 1}))
    assert runner.store.count() == 2 * before


def test_missing_dataset_is_one_clear_error(tmp_path, capsys):
    code = run(["reproduce", "--profile", "paper", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "mnist" in err and "fashion-mnist" in err
    assert not (tmp_path / "run" / ResultStore.FILENAME).exists(), "nothing is written before the check"


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "--profile", "huge"], "unknown name 'huge'"),
    (["report", "/nonexistent/run"], "no results store"),
])
def test_bad_input_exit_2(argv, message, capsys):
    assert run(argv) == 2
    assert message in capsys.readouterr().err


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run(["reproduce", "--profile", "quick", "--out", str(blocker / "run")]) == 2
    assert re.search("cannot open", capsys.readouterr().err)


def test_a_profile_naming_a_dataset_twice_is_refused():
    with pytest.raises(ValidationError, match="names an entry twice"):
        Profile(name="twice", datasets=["mnist-sample", "mnist-sample"])


def test_sweep_gives_one_point_per_value_in_order_and_a_plot(tmp_path):
    argv = ["sweep", "--profile", "tiny", "--jobs", "2", "--out", str(tmp_path),
            "--defense", "dp-gaussian", "--param", "sigma=1e-3:1:log3", "--defense", "graddefense", "--param",
            "sigma=0.01,0.3"]
    assert run(argv) == 0
    points = ResultStore(tmp_path).meta("sweep")["points"]
    assert [p["defense"] for p in points] == ["dp-gaussian"] * 3 + ["graddefense"] * 2
    assert [p["value"] for p in points] == pytest.approx([1e-3, 10 ** -1.5, 1.0, 0.01, 0.3])
    assert all(0 <= p["accuracy"] <= 1 and p["psnr"] == p["psnr"] for p in points)
    assert "(sweep.png)" in (tmp_path / "report" / "index.html").read_text()
