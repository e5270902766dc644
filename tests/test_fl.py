"""The federated simulator: it learns, it is deterministic, bad configs fail before training."""

import csv
import dataclasses

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from gradguard.errors import ConfigError
from gradguard.fl import History, SimulationConfig, simulate
from gradguard.fl.simulator import partition_clients

# A short FedAvg schedule on mnist-sample (4000 training images): 10 clients, 4 rounds of one
# local epoch in batches of 32 (about 12 local steps).
SHORT_FEDAVG = dict(dataset="mnist-sample", algorithm="fedavg", clients=10, rounds=4, batch_size=32,
                    lr=0.1, local_epochs=1, eval_every=4, reproducible_noise=True)


@pytest.fixture(scope="module")
def undefended() -> History:
    return simulate(SimulationConfig(**SHORT_FEDAVG))


def test_short_fedavg_without_defense_learns_well_above_chance(undefended):
    assert undefended.final_accuracy > 0.35  # chance is 0.10
    assert undefended.rounds[-1].loss < 2.0
    assert undefended.art > 0 and undefended.trainer == "looped"  # batch 32 > VMAP_MAX_BATCH


def test_graddefense_at_its_default_stays_within_a_few_points_of_none(undefended):
    defended = simulate(SimulationConfig(**SHORT_FEDAVG | {"defense": "graddefense"}))
    assert defended.final_accuracy > undefended.final_accuracy - 0.05


def test_fedsgd_learns():
    history = simulate(SimulationConfig(dataset="mnist-sample", algorithm="fedsgd", clients=20, rounds=30,
                                        lr=0.1, batch_size=32, eval_every=1))
    first, last = history.rounds[0], history.rounds[-1]
    assert last.loss < first.loss - 0.1 and last.accuracy > 0.15


def test_same_seed_same_curve_and_the_global_rng_is_untouched(tiny_mnist):
    config = SimulationConfig(dataset=tiny_mnist, clients=5, fraction=0.6, rounds=3, batch_size=16,
                              partition="dirichlet", alpha=0.5, reproducible_noise=True)
    before = torch.get_rng_state()
    first, second = simulate(config), simulate(config)
    assert torch.equal(torch.get_rng_state(), before)
    assert [(r.accuracy, r.loss) for r in first.rounds] == [(r.accuracy, r.loss) for r in second.rounds]
    for name, value in first.final_state.items():
        assert torch.equal(value, second.final_state[name])
    other = simulate(config.model_copy(update={"seed": 1}))
    assert not torch.equal(other.final_state["fc.weight"], first.final_state["fc.weight"])


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_different_seeds_give_different_partitions(partition):
    labels = torch.arange(1000) % 10
    parts = {seed: partition_clients(SimulationConfig(clients=8, seed=seed, partition=partition), labels)
             for seed in (0, 0, 1)}
    same = partition_clients(SimulationConfig(clients=8, seed=0, partition=partition), labels)
    assert all(torch.equal(a, b) for a, b in zip(parts[0], same))
    assert not all(torch.equal(a, b) for a, b in zip(parts[0], parts[1]))
    assert sorted(torch.cat(parts[1]).tolist()) == list(range(1000))


@pytest.mark.parametrize("field, value, words", [
    ("clients", 0, "greater than or equal to 1"),
    ("fraction", 1.5, "less than or equal to 1"),
    ("fraction", 0.0, "greater than 0"),
    ("defense", "no-such-defense", "unknown defense"),
    ("model", "no-such-model", "unknown model"),
    ("algorithm", "fedprox", "fedsgd"),
])
def test_bad_config_values_fail_at_construction(field, value, words):
    with pytest.raises(ValidationError, match=words) as info:
        SimulationConfig(**{field: value})
    assert field in str(info.value)


def test_fedsgd_refuses_several_local_steps():
    with pytest.raises(ValidationError, match="local_steps"):
        SimulationConfig(algorithm="fedsgd", local_steps=5)


def _never(record):
    raise AssertionError(f"training started (round {record.round}) despite a bad config")


def test_a_model_that_does_not_fit_the_images_fails_before_training(tmp_path):
    path = tmp_path / "small.npz"
    images = np.zeros((20, 8, 8), dtype=np.uint8)
    np.savez(path, x_train=images, y_train=np.arange(20) % 10, x_test=images[:5], y_test=np.arange(5))
    with pytest.raises(ConfigError, match="model"):
        simulate(SimulationConfig(dataset=f"npz:{path}"), on_round=_never)


@pytest.mark.parametrize("overrides, words", [
    ({"clients": 500}, "clients"),
    ({"defense_options": {"no_such_option": 1}}, "no_such_option"),
    ({"model_options": {"depth": 3}}, "model"),
])
def test_other_bad_configs_fail_before_training(tiny_mnist, overrides, words):
    with pytest.raises((ConfigError, ValidationError), match=words):
        simulate(SimulationConfig(dataset=tiny_mnist, **overrides), on_round=_never)


def test_history_round_trips_through_json_and_csv(tiny_mnist, tmp_path):
    history = simulate(SimulationConfig(dataset=tiny_mnist, clients=3, rounds=2, eval_every=2))
    history.to_json(tmp_path / "h.json")
    history.to_csv(tmp_path / "h.csv")
    loaded = History.from_json(tmp_path / "h.json")
    assert loaded.rounds == history.rounds and loaded.config["clients"] == 3
    assert [r.accuracy for r in history.rounds][0] is None  # round 1 is not evaluated
    lines = (tmp_path / "h.csv").read_text().splitlines()
    assert lines[0].startswith("round,client_s,defense_s,server_s,accuracy,loss") and len(lines) == 3
    written = list(csv.DictReader(lines))
    assert [float(row["seconds"]) for row in written] == pytest.approx([r.seconds for r in history.rounds])
    assert [float(row["client_s"]) for row in written] == pytest.approx([r.client_s for r in history.rounds])
    # every phase of a round is timed: local training and aggregation always take some time
    assert all(r.client_s > 0 and r.server_s > 0 and r.defense_s >= 0 for r in history.rounds)
    assert history.art == pytest.approx(sum(r.seconds for r in history.rounds) / 2)
    # overhead = ART / reference ART - 1: against the same rounds at half the time it is +100%
    halved = History(history.config, history.trainer, [
        dataclasses.replace(r, client_s=r.client_s / 2, defense_s=r.defense_s / 2, server_s=r.server_s / 2)
        for r in history.rounds])
    assert history.overhead(halved) == pytest.approx(1.0)
    assert halved.overhead(history) == pytest.approx(-0.5)


def test_batchnorm_models_train_looped_and_average_their_running_statistics(tiny_mnist):
    config = SimulationConfig(dataset=tiny_mnist, model="convnet", model_options={"width": 4}, clients=3,
                              rounds=1, batch_size=4, local_steps=2, vectorize=True)
    history = simulate(config)
    assert history.trainer == "looped"  # vmap cannot update BatchNorm running statistics
    running_mean = history.final_state["body.1.running_mean"]
    assert not torch.equal(running_mean, torch.zeros_like(running_mean))
    assert history.final_accuracy is not None
