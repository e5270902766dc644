"""Compensation brings the aggregate closer to the clean one, on synthetic and on real updates."""

import pytest
import torch

from gradguard import batch_gradient, load_dataset, model_for
from gradguard.defenses import DefenseContext, GradDefense
from gradguard.defenses.compensation import MarchenkoPastur, SpectralShrinkage
from gradguard.grads import flatten


def relative_error(estimate, clean):
    return float((flatten(estimate) - flatten(clean)).norm() / flatten(clean).norm())


def noisy_aggregate(clean, defense, weights, seed):
    """sum_i w_i (clean + client i's noise): the clients share one clean update for simplicity."""
    generator = torch.Generator().manual_seed(seed)
    defended = [defense.defend(clean, DefenseContext(generator=generator, client=i)) for i in range(len(weights))]
    return [sum(w * d[t] for w, d in zip(weights, defended)) for t in range(len(clean))]


@pytest.mark.parametrize("compensation", ["shrink", "mp"])
def test_compensation_reduces_error_on_low_rank_plus_noise(compensation):
    generator = torch.Generator().manual_seed(0)
    low_rank = torch.randn(128, 3, generator=generator) @ torch.randn(3, 512, generator=generator)
    clean = [low_rank * 0.05, torch.randn(128, generator=generator) * 0.05]
    defense = GradDefense(sensitivity="uniform", sigma=0.5, compensation=compensation)
    weights = torch.full((10,), 0.1)
    aggregate = noisy_aggregate(clean, defense, weights, seed=1)
    compensated = defense.compensator().compensate(aggregate, weights)
    assert relative_error(compensated, clean) < 0.7 * relative_error(aggregate, clean)


def test_original_variance_is_n_squared_times_too_large_for_an_average():
    weights = torch.full((10,), 0.1)
    correct = MarchenkoPastur(0.2, 0.5).noise_variance(weights, 1.0)
    original = MarchenkoPastur(0.2, 0.5, variance="original").noise_variance(weights, 1.0)
    assert original / correct == pytest.approx(100)


def test_shrinkage_reduces_error_on_real_lenet_updates():
    data = load_dataset("mnist-sample")
    order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(0))[:320]
    model = model_for(data, "lenet")
    defense = GradDefense(sensitivity="uniform")  # default sigma, k, S; uniform risk keeps the test fast
    generator = torch.Generator().manual_seed(2)
    weights = torch.full((10,), 0.1)
    clean_clients = [batch_gradient(model, data.x_train[idx], data.y_train[idx]) for idx in order.view(10, 32)]
    defended = [defense.defend(g, DefenseContext(generator=generator, client=i)) for i, g in enumerate(clean_clients)]
    clean = [sum(w * g[t] for w, g in zip(weights, clean_clients)) for t in range(len(clean_clients[0]))]
    aggregate = [sum(w * d[t] for w, d in zip(weights, defended)) for t in range(len(clean))]
    compensated = SpectralShrinkage(defense.config.sigma, defense.noisy_fraction).compensate(aggregate, weights)
    assert relative_error(compensated, clean) < 0.9 * relative_error(aggregate, clean)


def test_default_is_the_plain_average_and_options_build_their_compensators():
    assert GradDefense().compensator() is None  # measured best for final accuracy (docs/defenses.md)
    assert isinstance(GradDefense(compensation="shrink").compensator(), SpectralShrinkage)
    original = GradDefense(compensation="mp-original").compensator()
    assert isinstance(original, MarchenkoPastur) and original.variance == "original"
