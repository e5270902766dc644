"""Several seeds per profile: intervals computed right, one search for all seeds, merged tables,
and a partly finished multi-seed run that resumes without recomputing anything stored."""

import math

import pytest

from gradguard.experiments import cells
from gradguard.experiments.plan import build_plan
from gradguard.experiments.profiles import PROFILES
from gradguard.experiments.report import build_report
from gradguard.experiments.reproduce import reproduce
from gradguard.experiments.runner import CellRunner
from gradguard.experiments.stats import mean_ci, merge_attack_results, paired_difference
from gradguard.experiments.store import ResultStore
from gradguard.experiments.tables import accuracy_table, entries, privacy_table, result

TWO_SEEDS = PROFILES["tiny"].model_copy(update={"name": "two-seeds", "attacks": ["dlg"], "adaptive": [],
                                                "defenses": ["none", "gc"], "images": 2, "seeds": 2})


def test_mean_ci_is_students_t_interval_on_a_known_sample():
    estimate = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # s = sqrt(2.5), t(0.975, 4) = 2.776445 (statistical tables): 2.776445 * sqrt(2.5 / 5) = 1.96324
    assert estimate.mean == 3.0 and estimate.n == 5
    assert estimate.half_width == pytest.approx(1.96324, abs=1e-5)
    assert mean_ci([2.0, 4.0], confidence=0.90).half_width == pytest.approx(6.313752, abs=1e-5)  # t(0.95, 1) * 1
    assert math.isnan(mean_ci([7.0]).half_width), "one value has no interval"


def test_a_paired_difference_is_significant_only_when_its_interval_excludes_zero():
    steady = paired_difference([0.80, 0.81, 0.82], [0.78, 0.79, 0.80])  # every seed: -2 points
    assert steady.mean == pytest.approx(0.02) and steady.half_width == pytest.approx(0.0, abs=1e-12)
    assert steady.excludes_zero()
    noisy = paired_difference([0.80, 0.70, 0.90], [0.79, 0.80, 0.78])
    assert not noisy.excludes_zero()
    with pytest.raises(ValueError):
        paired_difference([0.1], [0.1, 0.2])


def test_merging_seeds_concatenates_targets_in_seed_order():
    first = {"psnr_each": [10.0, 12.0], "ssim_each": [0.1, 0.3], "psnr_mean": 11.0, "ssim_mean": 0.2,
             "label_accuracy": 1.0, "floor_psnr_each": [9.0, 9.0], "floor_psnr": 9.0}
    second = {"psnr_each": [14.0, 16.0], "ssim_each": [0.5, 0.7], "psnr_mean": 15.0, "ssim_mean": 0.6,
              "label_accuracy": 0.5, "floor_psnr_each": [11.0, 11.0], "floor_psnr": 11.0}
    merged = merge_attack_results([first, second])
    assert merged["psnr_each"] == [10.0, 12.0, 14.0, 16.0] and merged["psnr_mean"] == 13.0
    assert merged["psnr_ci"] == pytest.approx(mean_ci([10.0, 12.0, 14.0, 16.0]).half_width)
    assert merged["floor_psnr"] == 10.0 and merged["label_accuracy"] == 0.75 and merged["seeds"] == 2


def test_each_seed_gets_its_own_cells_and_a_searched_strength_one_search():
    plan = build_plan(TWO_SEEDS)
    attacked = [t for t in plan.tasks if t.role == "attack"]
    assert sorted({t.cell.seed for t in attacked}) == [0, 1]
    assert len(attacked) == 2 * 2, "dlg on none and gc, once per seed"
    assert len({t.cell.key() for t in plan.tasks}) == len(plan.tasks)
    assert [s.defense for s in plan.searches] == ["gc"], "searched once, on the first seed"
    assert all(t.strength_from == plan.searches[0].id for t in plan.tasks if t.labels["defense"] == "gc")
    one_seed = build_plan(TWO_SEEDS.model_copy(update={"seeds": 1}))
    assert all("seed" not in t.id.split("/") and not t.id.split("/")[-2].isdigit() for t in one_seed.tasks)


def test_a_partly_finished_multi_seed_run_resumes_without_recomputing_and_merges_its_seeds(tmp_path, monkeypatch):
    computed = []
    real = cells.compute

    def compute(cell, root, fail_after=None):
        if fail_after is not None and len(computed) >= fail_after:
            raise KeyboardInterrupt("simulated interruption")
        computed.append(cell.key())
        return real(cell, root)

    monkeypatch.setattr(cells, "compute", lambda cell, root: compute(cell, root, fail_after=3))
    with pytest.raises(KeyboardInterrupt), CellRunner(ResultStore(tmp_path)) as runner:
        reproduce(runner, TWO_SEEDS)
    stored_before = {cell.key for cell in ResultStore(tmp_path).cells()}
    assert set(computed) <= stored_before, "the three computed cells were stored before the interruption"
    partial = ResultStore(tmp_path).meta("plan")
    shown = entries(partial, "attack") + entries(partial, "train")
    assert partial["partial"]["done"] == 3 and 0 < partial["partial"]["shown"] < 3, partial["partial"]
    assert shown and all(e["seeds"] == [0, 1] for e in shown), "an entry is reported only once both seeds are in"
    build_report(tmp_path)  # pairs and merges seeds: an entry with one seed of two would not compare

    monkeypatch.setattr(cells, "compute", lambda cell, root: compute(cell, root))
    with CellRunner(ResultStore(tmp_path)) as runner:
        plan = reproduce(runner, TWO_SEEDS)
    assert len(computed) == len(set(computed)), "a cell was computed twice"
    assert not stored_before & set(computed[3:]), "a stored cell was computed again"

    store = ResultStore(tmp_path)
    merged = entries(plan, "attack", adaptive=False)
    assert len(merged) == 2 and all(len(e["keys"]) == 2 for e in merged), "one entry per defense, both seeds"
    none = result(store, next(e for e in merged if e["defense"] == "none"))
    assert none is not None and len(none["psnr_each"]) == 2 * 2, "2 images x 2 seeds"
    assert not math.isnan(none["psnr_ci"])
    assert "±" in privacy_table(store, plan).rows[0][2]
    gc_row = next(row for row in accuracy_table(store, plan).rows if row[1] == "gc")
    assert gc_row[3].endswith(("pts", "pts *")) and "±" in gc_row[3], gc_row
