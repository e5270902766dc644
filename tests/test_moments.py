"""Two moments of training: every attack runs on the model at its initialisation and on the
model after the profile's training schedule; the trained model is computed once and cached,
and the tables keep the two moments apart while a defense's worst case covers both."""

import pytest
import torch

from gradguard.experiments import cells
from gradguard.experiments.plan import build_plan
from gradguard.experiments.profiles import PROFILES, Profile
from gradguard.experiments.reproduce import reproduce
from gradguard.experiments.runner import CellRunner
from gradguard.experiments.store import ResultStore
from gradguard.experiments.tables import privacy_table, worst_cases
from gradguard.fl import SimulationConfig, simulate

BOTH = PROFILES["tiny"].model_copy(update={"name": "two-moments", "attacks": ["gia"], "adaptive": [],
                                           "defenses": ["none"], "moments": ["init", "trained"]})


def test_each_attack_runs_at_both_moments_on_a_model_trained_by_the_profiles_schedule():
    plan = build_plan(BOTH)
    attacked = [t for t in plan.tasks if t.role == "attack"]
    assert [t.cell.moment() for t in attacked] == ["init", "trained"]
    init, trained = (t.cell for t in attacked)
    assert init.pretrain is None and trained.pretrain == BOTH.train
    assert trained.normalised, "the trained model keeps its normalisation layer"
    assert init.key() != trained.key()
    assert [t.id for t in attacked] == ["mnist-sample/gia/none/attack", "mnist-sample/gia/none/trained/attack"], \
        "init tasks keep the ids they had before moments existed"


def test_a_profile_refuses_a_repeated_or_unknown_moment():
    with pytest.raises(ValueError, match="moments"):
        Profile.model_validate({**BOTH.model_dump(), "moments": ["init", "init"]})
    with pytest.raises(ValueError):
        Profile.model_validate({**BOTH.model_dump(), "moments": ["late"]})


def test_the_trained_state_is_the_schedules_result_and_is_computed_once(mnist_sample, monkeypatch):
    cell = next(t.cell for t in build_plan(BOTH).tasks if t.role == "attack" and t.cell.pretrain is not None)
    state = cells.trained_state(cell, None)
    expected = simulate(SimulationConfig(dataset=cell.dataset, model=cell.model, model_options=cell.model_options,
                                         defense="none", seed=cell.seed, **cell.pretrain.model_dump()))
    assert state.keys() == expected.final_state.keys()
    assert all(torch.equal(state[k], expected.final_state[k]) for k in state)
    initial = cells.seeded_model(mnist_sample, cell.model, cell.seed, True, **cell.model_options).state_dict()
    assert any(not torch.equal(state[k], initial[k]) for k in state), "the trained model moved"

    def refuse(*args, **kwargs):
        raise AssertionError("trained again instead of read from the cache")

    monkeypatch.setattr("gradguard.fl.simulate", refuse)
    again = cells.trained_state(cell, None)
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_a_damaged_cached_model_is_trained_again(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADGUARD_CACHE", str(tmp_path))
    cell = next(t.cell for t in build_plan(BOTH).tasks if t.role == "attack" and t.cell.pretrain is not None)
    state = cells.trained_state(cell, None)
    (path,) = (tmp_path / "trained").glob("*.pt")
    path.write_bytes(b"not a checkpoint")
    again = cells.trained_state(cell, None)
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_an_unnormalised_trained_model_is_refused():
    cell = next(t.cell for t in build_plan(BOTH).tasks if t.role == "attack" and t.cell.pretrain is not None)
    with pytest.raises(ValueError, match="normalised"):
        cells.AttackCell.model_validate({**cell.model_dump(), "normalised": False})


def test_the_tables_show_both_moments_and_the_worst_case_covers_them(tmp_path):
    with CellRunner(ResultStore(tmp_path)) as runner:
        plan = reproduce(runner, BOTH)
    store = ResultStore(tmp_path)
    rows = privacy_table(store, plan).rows
    assert [row[1] for row in rows] == ["gia", "gia @ trained"]
    worst = worst_cases(store, plan)[("mnist-sample", "none")]
    stored = {e["moment"]: store.get(e["key"]).result for e in plan["tasks"] if e["role"] == "attack"}
    init, trained = stored[None], stored["trained"]
    best = [max(a, b) for a, b in zip(init["psnr_each"], trained["psnr_each"])]  # per target, either moment
    assert worst.psnr == pytest.approx(sum(best) / len(best))
    assert worst.psnr_attack == ("gia @ trained" if trained["psnr_mean"] > init["psnr_mean"] else "gia")



def test_a_dataset_can_have_its_own_schedule_for_training_and_for_the_trained_moment():
    longer = BOTH.train.model_copy(update={"rounds": BOTH.train.rounds + 3})
    profile = BOTH.model_copy(update={"train_per_dataset": {"mnist-sample": longer}})
    plan = build_plan(profile)
    assert {t.cell.train for t in plan.tasks if t.role == "train"} == {longer}
    assert [t.cell.pretrain for t in plan.tasks if t.role == "attack"] == [None, longer]
    with pytest.raises(ValueError, match="train_per_dataset"):
        Profile.model_validate({**BOTH.model_dump(), "train_per_dataset": {"cifar10": longer.model_dump()}})
