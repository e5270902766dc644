"""The reproduction harness end to end on a tiny profile: plans from the registries, typed cells,
the resume guarantee, and its errors."""

import json
import re
from pathlib import Path

import pytest
import torch
from pydantic import Field, ValidationError

from gradguard.cli import run
from gradguard.defenses import DEFENSES, Defense, DefenseConfig
from gradguard.defenses.base import Strength
from gradguard.errors import ConfigError, GradguardError
from gradguard.experiments import cells
from gradguard.experiments.cells import AttackCell, TrainCell, TrainSettings
from gradguard.experiments.plan import build_plan
from gradguard.experiments.profiles import PROFILES, Profile, load_profile
from gradguard.experiments.report import build_report, utility_points
from gradguard.experiments.reproduce import reproduce
from gradguard.experiments.runner import CellRunner
from gradguard.experiments.store import ResultStore
from gradguard.experiments.tables import (
    accuracy_table,
    entries,
    privacy_table,
    security_table,
    strength_table,
)

SMALL = PROFILES["tiny"].model_copy(update={"name": "small", "attacks": ["dlg"], "adaptive": [],
                                           "defenses": ["none", "graddefense", "gc"]})


def test_tiny_profile_covers_every_registration_and_produces_every_table_and_figure(tmp_path):
    with CellRunner(ResultStore(tmp_path)) as runner:
        plan = reproduce(runner, PROFILES["tiny"])
    plain = entries(plan, "attack", adaptive=False)
    assert {e["defense"] for e in plain} == set(DEFENSES), "every registered defense is a column"
    assert {e["defense"] for e in entries(plan, "train")} == {n for n, c in DEFENSES.items() if c.trains}
    adaptive = {(e["adaptive"], e["defense"]) for e in entries(plan, "attack", adaptive=True)}
    assert ("oracle-mute", "graddefense-paper") in adaptive and ("mute-perturbed", "soteria") in adaptive
    assert ("oracle-mute", "graddefense") not in adaptive, "k = S leaves no clean slice to an oracle"
    page = build_report(tmp_path)
    report = page.parent
    for name in ("tables.md", "table1.csv", "table5.csv", "reconstructions_dlg.png", "reconstructions_gia.png",
                 "accuracy_curves.png", "privacy_utility.png"):
        assert (report / name).is_file(), name
    text = page.read_text()
    for figure in report.glob("*.png"):
        assert f"({figure.name})" in text, f"{figure.name} is not in the HTML page"
    assert text.count("data:image/png;base64,") == len(list(report.glob("*.png")))
    tables = (report / "tables.md").read_text()
    assert "pending" not in tables and "Security" in tables and "Adaptive attacks" in tables
    for term in ("- floor: ", "- verdict column", "- muted attack", "- ART vs none: "):
        assert tables.count(term) == 1, f"{term!r} is explained once, where it is first used"
    assert text.count('<p class="note">') == len(list(report.glob("*.png"))), "each figure says how to read it"
    store = ResultStore(tmp_path)
    soteria = [store.get(e["key"]).result["psnr_mean"] for e in entries(plan, "attack")
               if e["defense"] == "soteria"]
    point = next(p for p in utility_points(store, plan) if p["defense"] == "soteria")
    assert len(soteria) == 7, "dlg, gia; mute-perturbed and noise-aware with each; lti"
    assert point["psnr"] == pytest.approx(max(soteria)), "one target: the worst case is the strongest attack"


class _ScaledConfig(DefenseConfig):
    factor: float = Field(0.5, gt=0, description="multiply every gradient element by this")


class _Scaled(Defense):
    """A defense the harness has never heard of: it shrinks the gradient."""

    name = "test-scaled"
    Config = _ScaledConfig
    strength = Strength(option="factor", low=1e-3, high=1.0)

    def defend(self, grads, context):
        return [g * self.config.factor for g in grads]


def test_a_defense_registered_elsewhere_appears_in_the_tables_and_the_search(tmp_path, monkeypatch):
    monkeypatch.setitem(DEFENSES, _Scaled.name, _Scaled)  # what @register does, undone after the test
    profile = SMALL.model_copy(update={"defenses": None, "attacks": ["dlg"], "adaptive": [],
                                       "strengths": {"gc": 0.5, "dp-gaussian": 0.1, "dp-laplace": 0.1,
                                                     "soteria": 0.5, "dpsgd": 1.0, "graddefense": 0.1}})
    plan = build_plan(profile)
    assert [s.defense for s in plan.searches] == ["test-scaled"], "its strength knob makes it searched"
    with CellRunner(ResultStore(tmp_path)) as runner:
        resolved = reproduce(runner, profile)
    store = ResultStore(tmp_path)
    assert "test-scaled" in privacy_table(store, resolved).header
    assert any(row[1] == "test-scaled" for row in accuracy_table(store, resolved).rows)
    assert any(row[1] == "test-scaled" for row in security_table(store, resolved).rows)
    searched = [row for row in strength_table(resolved).rows if row[1] == "test-scaled"]
    assert searched and searched[0][3].startswith("search"), searched


def _tables_without_time(folder):
    store = ResultStore(folder)
    plan = store.meta("plan")
    accuracy = [row[:3] for row in accuracy_table(store, plan).rows]  # ART is a measurement, not a result
    return privacy_table(store, plan).rows, accuracy


def test_interrupted_run_resumes_computing_each_cell_once(tmp_path, monkeypatch):
    computed = []
    real = cells.compute

    def counting(fail_after=None):
        def compute(cell, root):
            if fail_after is not None and len(computed) >= fail_after:
                raise KeyboardInterrupt("simulated interruption")
            computed.append(cell.key())
            return real(cell, root)
        return compute

    monkeypatch.setattr(cells, "compute", counting(fail_after=4))
    with pytest.raises(KeyboardInterrupt), CellRunner(ResultStore(tmp_path / "a")) as runner:
        reproduce(runner, SMALL)
    interrupted = ResultStore(tmp_path / "a")
    assert len(interrupted.cells("attack")) + len(interrupted.cells("train")) == 4
    partial = interrupted.meta("plan")
    assert partial["partial"] == {"done": 4, "of": len(build_plan(SMALL).tasks), "shown": 4}, "the plan so far"
    finished = {c.key for kind in ("attack", "train") for c in interrupted.cells(kind)}
    assert {t["key"] for t in partial["tasks"]} == finished
    build_report(tmp_path / "a")
    assert "partial run: 4 of" in (tmp_path / "a" / "report" / "tables.md").read_text()
    plan = build_plan(SMALL)
    monkeypatch.setattr(cells, "compute", counting())
    fresh = []
    with CellRunner(ResultStore(tmp_path / "a"), on_done=lambda label, cached: fresh.append(label) if not cached
                    else None) as runner:
        already = runner.stored_count(plan)
        assert 0 < already < plan.size
        reproduce(runner, SMALL)
        assert runner.stored_count(plan) == plan.size, "every unit of the plan is stored after the run"
    assert already + len(fresh) == plan.size, "progress starts at the stored units and ends exactly at the total"
    assert len(computed) == len(set(computed)), "a cell was computed twice"
    with CellRunner(ResultStore(tmp_path / "b")) as runner:
        reproduce(runner, SMALL)
    assert _tables_without_time(tmp_path / "a") == _tables_without_time(tmp_path / "b")
    assert "partial" not in ResultStore(tmp_path / "a").meta("plan"), "a finished run's plan is whole"


def _first_task_cell(plan):
    task = next(t for t in plan.tasks if t.role == "attack" and t.strength_from is None)
    return task.resolve(plan.fixed)


def _first_probe(plan):
    search = next(s for s in plan.searches if s.id.endswith("/graddefense"))
    return search.cell.at(search.cell.strength.low)[0]


@pytest.mark.parametrize(("pick", "unfinished"), [
    (_first_task_cell, 1),  # a plain task: itself
    (_first_probe, 3),  # a search's first probe: the search and the two cells at the strength it finds
])
def test_a_failing_cell_is_recorded_and_the_run_goes_on_then_a_rerun_computes_only_what_is_missing(
        tmp_path, monkeypatch, capsys, pick, unfinished):
    from gradguard.experiments.runner import FAILURES_LOG, CellsFailed

    real, computed = cells.compute, []
    plan = build_plan(SMALL)
    victim = pick(plan)

    def failing(cell, root):
        if cell.key() == victim.key():
            raise RuntimeError("simulated bug\nwith a second line")
        computed.append(cell.key())
        return real(cell, root)

    monkeypatch.setattr(cells, "compute", failing)
    with pytest.raises(CellsFailed) as raised, CellRunner(ResultStore(tmp_path)) as runner:
        reproduce(runner, SMALL)
        assert runner.stored_count(plan) == plan.size - unfinished
    message = str(raised.value)
    assert f"1 cell(s) failed, so {unfinished} of the plan's {plan.size} units" in message
    assert victim.describe() in message and "RuntimeError: simulated bug with a second line" in message
    assert "\n" not in message and list(raised.value.failures) == [victim.key()]
    log = (tmp_path / FAILURES_LOG).read_text()
    assert log.count(f"(cell {victim.key()})") == 1 and "RuntimeError: simulated bug" in log, "it ran once"
    store = ResultStore(tmp_path)
    assert victim.key() not in store and all(key in store for key in computed)
    with CellRunner(store) as runner:
        assert runner.stored_count(plan) == plan.size - unfinished, "every other unit is finished"
    # the rerun computes the failed cell first time right and nothing that is stored
    before, computed = set(computed), []
    monkeypatch.setattr(cells, "compute", lambda cell, root: computed.append(cell.key()) or real(cell, root))
    with CellRunner(ResultStore(tmp_path)) as runner:
        reproduce(runner, SMALL)
        assert runner.stored_count(plan) == plan.size
    assert victim.key() in computed and not before & set(computed)
    if unfinished == 1:
        assert computed == [victim.key()]
    # the command line: one line on stderr, exit code 1 (the run failed, not the input)
    monkeypatch.setattr(cells, "compute", failing)
    code = run(["reproduce", "--profile", str(_profile_file(tmp_path)), "--out", str(tmp_path / "cli")])
    lines = capsys.readouterr().err.strip().splitlines()  # the progress display, then the error
    assert code == 1 and lines[-1].startswith("gradguard: error: 1 cell(s) failed")
    assert not any("Traceback" in line for line in lines)
    assert (tmp_path / "cli" / "report" / "tables.md").is_file(), "the partial report is written"


def _profile_file(folder: Path) -> Path:
    path = folder / "small.json"
    path.write_text(json.dumps(SMALL.model_dump(mode="json")))
    return path


def test_worker_processes_give_the_tables_of_an_inline_run(tmp_path):
    with CellRunner(ResultStore(tmp_path / "inline")) as runner:
        reproduce(runner, SMALL)
    with CellRunner(ResultStore(tmp_path / "workers"), jobs=2) as runner:
        reproduce(runner, SMALL)
    assert len(runner.computed) == len(set(runner.computed)) == len(runner.store.cells())
    assert len(runner.store.cells("search")) == 2, "gc's and graddefense's searches to the floor"
    assert _tables_without_time(tmp_path / "inline") == _tables_without_time(tmp_path / "workers")


def test_a_cell_failing_in_a_worker_process_is_recorded_and_the_others_are_stored(tmp_path, monkeypatch):
    """A defense registered in this process only is unknown to the spawned workers: its cells
    raise there (a real failure in a worker, no patching), every other cell is stored."""
    from gradguard.experiments.runner import CellsFailed

    monkeypatch.setitem(DEFENSES, _Scaled.name, _Scaled)
    profile = SMALL.model_copy(update={"defenses": ["none", _Scaled.name], "strengths": {_Scaled.name: 0.5}})
    plan = build_plan(profile)
    with pytest.raises(CellsFailed) as raised, CellRunner(ResultStore(tmp_path), jobs=2) as runner:
        reproduce(runner, profile)
    failures = raised.value.failures
    assert len(failures) == 2, "its attack cell and its training cell failed in the workers"
    for what, error in failures.values():
        assert _Scaled.name in what and f"'{_Scaled.name}'; choose one of" in error
    stored = ResultStore(tmp_path)
    for task in plan.tasks:
        cell = task.resolve(plan.fixed)
        assert (cell.key() in stored) == (task.labels["defense"] != _Scaled.name), task.labels


def test_a_changed_config_makes_new_cells(tmp_path):
    with CellRunner(ResultStore(tmp_path)) as runner:
        reproduce(runner, SMALL)
        before = runner.store.count()
        reproduce(runner, SMALL.model_copy(update={"seed": 1}))
    assert runner.store.count() == 2 * before


def _cell(**changes):
    base = {"dataset": "mnist-sample", "model": "lenet", "attack": "dlg", "defense": "none", "images": 1,
            "batch_size": 1, "seed": 0, "target_pool": 4000, "aux_images": 64}
    return AttackCell(**{**base, **changes})


def test_cells_are_typed_frozen_and_keyed_canonically():
    cell = _cell(defense_options={"b": 1, "a": 2})
    assert cell.key() == _cell(defense_options={"a": 2, "b": 1}).key(), "key independent of option order"
    assert cell.key() != _cell(defense_options={"a": 2, "b": 3}).key()
    assert cell.key() != TrainCell(dataset="mnist-sample", model="lenet", defense="none", train=TrainSettings(),
                                   seed=0).key()
    with pytest.raises(ValidationError):
        cell.seed = 3  # frozen
    with pytest.raises(ValidationError, match="colour"):
        _cell(colour="red")
    assert AttackCell.model_validate(cell.config()) == cell, "the stored configuration rebuilds the cell"


def test_changing_cell_fields_without_a_version_bump_is_refused(monkeypatch, tmp_path):
    cells.check_schema()  # the shipped classes match the shipped fingerprint
    monkeypatch.setattr(cells, "SCHEMA_FINGERPRINT", "0" * 16)  # as if a field had been added
    with pytest.raises(GradguardError, match="bump STORE_VERSION"):
        ResultStore(tmp_path)


def test_a_store_of_another_version_is_refused_with_what_to_do(tmp_path):
    store = ResultStore(tmp_path)
    store.set_meta("store_version", cells.STORE_VERSION - 1)
    store.close()
    with pytest.raises(GradguardError, match="use a new --out folder"):
        ResultStore(tmp_path)


def test_dry_run_prints_the_plan_and_computes_nothing(tmp_path, capsys):
    assert run(["reproduce", "--profile", "tiny", "--dry-run", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    plan = build_plan(PROFILES["tiny"])
    assert len(out.strip().splitlines()) == plan.size + 1
    assert f"{plan.size} units" in out and "search gc" in out
    assert not (tmp_path / "run").exists()


def test_the_remaining_estimate_leaves_out_exactly_the_stored_cells():
    plan = build_plan(PROFILES["tiny"])
    plain = [t for t in plan.tasks if t.strength_from is None]
    done = plan.stored_ids({t.cell.key() for t in plain[:3]})
    assert done == {t.id for t in plain[:3]}
    assert plan.estimate_remaining_s(set()) == pytest.approx(plan.estimate_total_s())
    assert plan.estimate_remaining_s(done) == pytest.approx(
        plan.estimate_total_s() - sum(plan.estimate_s(t.cell) for t in plain[:3]))
    searched = [t for t in plan.tasks if t.strength_from is not None]
    assert searched, "tiny searches a strength: its tasks are not known to be done from their keys alone"
    assert plan.estimate_remaining_s(plan.stored_ids({t.cell.key() for t in plan.tasks})) == pytest.approx(
        sum(plan.estimate_s(t.cell) for t in searched) + sum(plan.estimate_s(s.cell) for s in plan.searches))


def test_a_learned_inverter_is_estimated_with_the_defense_of_its_training_images():
    plan = build_plan(PROFILES["paper"])
    lti = {t.cell.defense: t.cell for t in plan.tasks
           if getattr(t.cell, "adaptive", None) == "lti" and t.cell.dataset == "mnist" and t.cell.seed == 0
           and t.cell.pretrain is None}
    costs = plan.costs
    extra = plan.estimate_s(lti["soteria"]) - plan.estimate_s(lti["none"])
    assert extra == pytest.approx(lti["soteria"].aux_images * costs.defense_s("soteria", "mnist") / 32)
    assert costs.defense_s("soteria", "cifar10") > costs.defense_s("soteria", "mnist")
    assert plan.estimate_s(lti["graddefense"]) == pytest.approx(plan.estimate_s(lti["none"]))


def test_missing_dataset_is_one_clear_error(tmp_path, capsys):
    code = run(["reproduce", "--profile", "paper", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "mnist" in err and "fashion-mnist" in err
    assert not (tmp_path / "run" / ResultStore.FILENAME).exists(), "nothing is written before the check"


@pytest.mark.parametrize("fields, message", [
    ({"defenses": ["none", "dpsgdx"]}, "unknown defense ['dpsgdx']"),
    ({"attacks": ["dgl"]}, "unknown attack ['dgl']"),
    ({"adaptive": ["oracle"]}, "unknown adaptive attack ['oracle']"),
    ({"strengths": {"graddefense-paper": 0.1}}, "no strength knob"),
    ({"images": 3, "batch_size": 2}, "multiple of batch_size"),
    ({"datasets": ["mnist-sample"], "colour": "red"}, "colour"),
])
def test_a_bad_profile_file_is_one_line_with_the_valid_names(tmp_path, capsys, fields, message):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"datasets": ["mnist-sample"], **fields}))
    assert run(["reproduce", "--profile", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    if "unknown defense" in message:
        assert all(name in err for name in DEFENSES), "the valid names are listed"


def test_a_profile_file_in_toml_runs_like_the_same_profile(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('datasets = ["mnist-sample"]\nimages = 2\ndefenses = ["none"]\n')
    profile = load_profile(path)
    assert profile.name == "mine" and profile.images == 2 and profile.defense_names() == ["none"]
    with pytest.raises(ConfigError, match="not valid TOML"):
        (tmp_path / "bad.toml").write_text("datasets = [")
        load_profile(tmp_path / "bad.toml")


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "examples" / "profiles").glob("*.*")),
                         ids=lambda p: p.name)
def test_every_example_profile_loads_and_plans(path):
    profile = load_profile(path)
    assert profile.name == path.stem and build_plan(profile).size > 0


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "--profile", "huge"], "unknown name 'huge'"),
    (["reproduce", "--jobs", "0"], "must be at least 1"),
    (["report", "/nonexistent/run"], "no results store"),
    (["sweep", "--defense", "graddefense-paper"], "has no strength knob"),
])
def test_bad_input_exit_2(argv, message, capsys):
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run(["reproduce", "--profile", "quick", "--out", str(blocker / "run")]) == 2
    assert re.search("cannot create the folder", capsys.readouterr().err)


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


def test_sweep_without_param_covers_the_registered_strength_range(tmp_path):
    assert run(["sweep", "--profile", "tiny", "--out", str(tmp_path), "--defense", "gc"]) == 0
    points = ResultStore(tmp_path).meta("sweep")["points"]
    knob = DEFENSES["gc"].strength
    assert [p["option"] for p in points] == [knob.option] * 5
    assert points[0]["value"] == pytest.approx(knob.low * knob.scale)
    assert points[-1]["value"] == pytest.approx(knob.high * knob.scale)
    assert torch.tensor([p["value"] for p in points]).diff().gt(0).all()


def test_fixed_defense_options_hold_under_the_strength_knob():
    profile = SMALL.model_copy(update={"defenses": ["none", "dp-gaussian", "gc"], "strengths": {"gc": 0.9},
                                       "defense_options": {"dp-gaussian": {"clip": 1.0}}})
    plan = build_plan(profile)
    (search,) = plan.searches
    assert search.defense == "dp-gaussian"
    assert all(c.defense_options == {"clip": 1.0, "sigma": 0.5} for c in search.cell.at(0.5))
    assert search.cell.options_at(0.5) == {"clip": 1.0, "sigma": 0.5}, "what the searched cells will run with"
    assert plan.fixed["mnist-sample/gc"]["options"] == {"percentile": 90.0}
