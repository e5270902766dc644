"""`--executor ray`: cells as Ray tasks on a local Ray instance this module starts (2 CPUs, no
dashboard) and shuts down. The Ray run fills the same cells as the local executor, with the same
results for every deterministic cell (seeded noise, seeded attacks); a run
interrupted in the driver and rerun recomputes no stored cell; the driver alone writes the store.

Marked ``ray`` (deselect with ``-m "not ray"``); `make test` runs it. Ray starts in about 10 s
on 2 cores, so the module shares one instance and one local reference run.
"""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from gradguard.cli import run
from gradguard.errors import ConfigError
from gradguard.experiments.plan import build_plan
from gradguard.experiments.profiles import PROFILES
from gradguard.experiments.reproduce import reproduce
from gradguard.experiments.runner import CellRunner
from gradguard.experiments.store import ResultStore

ray = pytest.importorskip("ray", reason="Ray comes with gradguard's flower extra (flwr[simulation])")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMALL = PROFILES["tiny"].model_copy(update={"name": "small", "attacks": ["dlg"], "adaptive": [],
                                            "defenses": ["none", "dp-gaussian"], "searches": []})


@pytest.fixture(scope="module", autouse=True)
def only_gradguards_own_defenses():
    """Ray's workers import gradguard alone, so a defense another test module registered in this
    process (tests/flower_helpers.py's test-mask, registered when pytest collects it) does not
    exist there; the tiny profile runs every registered defense, so this module sets them aside."""
    from gradguard.defenses import DEFENSES

    foreign = {name: cls for name, cls in DEFENSES.items() if not cls.__module__.startswith("gradguard.")}
    for name in foreign:
        del DEFENSES[name]
    yield
    DEFENSES.update(foreign)


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module; the runner finds it running and leaves it up."""
    assert not ray.is_initialized(), "another Ray instance is running in this process"
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning of Ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()  # only the instance this module started


@pytest.fixture(scope="module")
def local_tiny(tmp_path_factory):
    """The tiny profile computed by the local executor, the reference."""
    out = tmp_path_factory.mktemp("local")
    assert run(["reproduce", "--profile", "tiny", "--device", "cpu", "--out", str(out)]) == 0
    return out


def _cells(folder) -> dict[str, tuple[str, str, str]]:
    db = sqlite3.connect(folder / ResultStore.FILENAME)
    try:
        return {key: (kind, result, device) for key, kind, result, device in
                db.execute("SELECT key, kind, result, device FROM cells")}
    finally:
        db.close()


def _without_time(result: str) -> str:
    """A stored result without its measured times (a training cell's ART is a measurement)."""
    data = json.loads(result)
    for timed in ("art_s", "summary"):
        data.pop(timed, None)
    return json.dumps(data, sort_keys=True)


def test_ray_reproduce_fills_the_same_cells_with_the_same_results(ray_instance, local_tiny, tmp_path, capsys):
    assert run(["reproduce", "--profile", "tiny", "--executor", "ray", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert "cells computed on cpu" in capsys.readouterr().err
    assert ray.is_initialized(), "the runner leaves a Ray instance it did not start running"
    local, remote = _cells(local_tiny), _cells(tmp_path)
    assert set(remote) == set(local), "the same cell keys"
    assert all(device == "cpu" for _, _, device in remote.values())
    differ = [key for key, (kind, result, _) in local.items() if _without_time(remote[key][1]) != _without_time(result)]
    assert not differ, f"{len(differ)} of {len(local)} cells differ between the local and the Ray executor"


def test_an_interrupted_ray_run_recomputes_nothing_stored(ray_instance, tmp_path):
    class Interrupt(Exception):
        pass

    def stop_after_three(label: str, cached: bool) -> None:
        if len(runner.computed) >= 3:
            raise Interrupt  # the driver dies with cells in flight on the cluster

    store = ResultStore(tmp_path)
    runner = CellRunner(store, executor="ray", device="cpu", on_done=stop_after_three)
    with pytest.raises(Interrupt), runner:
        reproduce(runner, SMALL)
    stored_before = {c.key for c in store.cells()}
    assert 3 <= len(stored_before) < build_plan(SMALL).size
    store.close()

    rerun = CellRunner(ResultStore(tmp_path), executor="ray", device="cpu")
    with rerun:
        reproduce(rerun, SMALL)
    assert rerun.computed, "the rest of the plan was computed"
    assert not set(rerun.computed) & stored_before, "a stored cell was computed again"
    assert rerun.stored_count(build_plan(SMALL)) == build_plan(SMALL).size


def test_ray_device_choices_are_checked(ray_instance, tmp_path):
    with pytest.raises(ConfigError, match="Ray cluster has no GPU"):
        with CellRunner(ResultStore(tmp_path / "a"), executor="ray", device="cuda"):
            pass
    with pytest.raises(ConfigError, match="Ray assigns each cell its GPU"):
        with CellRunner(ResultStore(tmp_path / "b"), executor="ray", device="cuda:1"):
            pass
    with CellRunner(ResultStore(tmp_path / "c"), executor="ray", device="auto") as runner:
        assert runner.computes_on == "cpu" and runner._slots == 2, "auto: CPU tasks, one per CPU of the cluster"
    assert ray.is_initialized()
