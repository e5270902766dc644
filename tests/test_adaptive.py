"""Adaptive attacks (docs/security.md): the oracle works, detection tracks how visible the noise is,
combining rounds beats one round against fresh noise, and memoised noise defeats combining."""

import pytest
import torch

from gradguard import Attack, batch_gradient, score_reconstruction
from gradguard.attacks.adaptive import ADAPTIVE, adaptive_attack, combine_observations
from gradguard.defenses import DEFENSES, Defense, DefenseContext
from gradguard.errors import ConfigError
from gradguard.experiments.cells import observe, seeded_model
from gradguard.grads import flatten

DLG = dict(iterations=40, restarts=2)


@pytest.fixture(scope="module")
def setup(mnist_sample):
    model = seeded_model(mnist_sample, "lenet", 0, normalised=False, dlg_init=True)
    x, y = mnist_sample.x_train[:1], mnist_sample.y_train[:1]
    public = (mnist_sample.x_test[:40], mnist_sample.y_test[:40])
    return model, x, y, public


def _observe(defense, model, x, y, rounds=1, seed=0):
    return observe(defense, model, x, y, rounds, lambda r: torch.Generator().manual_seed(seed * 100 + r))


def _psnr(model, x, y, gradient, mute_mask=None):
    attack = Attack.from_config("dlg", **DLG, mute_mask=mute_mask)
    result = attack.reconstruct(model, gradient, x.shape[1:], 1, generator=torch.Generator().manual_seed(5))
    return float(score_reconstruction(result.images, x).psnr.mean())


def test_oracle_mute_recovers_far_more_than_the_plain_attack(setup):
    model, x, y, public = setup
    defense = Defense.from_config("graddefense-paper", chosen=2, sensitivity="uniform")
    observation = _observe(defense, model, x, y)
    prepared = adaptive_attack("oracle-mute").prepare(model, observation, defense, public)
    assert prepared.mute_mask.float().mean() == pytest.approx(0.2, abs=0.05)
    plain = _psnr(model, x, y, observation.gradients[0])
    oracle = _psnr(model, x, y, prepared.gradient, prepared.mute_mask)
    assert oracle > plain + 10, (plain, oracle)


def _detection(setup, sigma, draws):
    model, x, y, public = setup
    defense = Defense.from_config("graddefense-paper", sigma=sigma, sensitivity="uniform")
    scores = [adaptive_attack("detect-mute").prepare(model, _observe(defense, model, x, y, seed=s), defense,
                                                     public).detection for s in range(draws)]
    return sum(s["precision"] for s in scores) / draws


def test_detect_mute_finds_loud_noise_and_falls_to_chance_when_slices_look_alike(setup):
    assert _detection(setup, sigma=3.0, draws=3) > 0.95
    # Noise far below the gradient's own scale: noisy and clean slices look alike, and the
    # top-k slices by energy are the chosen ones only by chance (k/S = 0.5).
    assert abs(_detection(setup, sigma=1e-9, draws=12) - 0.5) < 0.2


def test_detect_mute_is_a_function_of_its_inputs_even_with_a_random_slice_estimate(setup):
    """The public risk estimate (Hutchinson probes) is the attacker's own computation: seeded."""
    model, x, y, public = setup
    defense = Defense.from_config("graddefense-paper")  # hutchinson: random probes
    observation = _observe(defense, model, x, y)
    first, second = (adaptive_attack("detect-mute").prepare(model, observation, defense, public) for _ in range(2))
    assert torch.equal(first.mute_mask, second.mute_mask)


def test_multi_round_beats_one_round_against_fresh_noise(setup):
    model, x, y, public = setup
    defense = Defense.from_config("dp-gaussian", sigma=0.03)
    observation = _observe(defense, model, x, y, rounds=8)
    combined = adaptive_attack("multi-round", rounds=8).prepare(model, observation, defense, public)
    assert _psnr(model, x, y, combined.gradient) > _psnr(model, x, y, observation.gradients[0]) + 3


def test_combining_keeps_values_that_repeat_and_averages_the_rest():
    clean = torch.tensor([1.0, 2.0, 3.0])
    stacked = torch.stack([clean + torch.tensor([0.0, 0.5, 0.3]), clean + torch.tensor([0.7, 0.0, -0.3]),
                           clean + torch.tensor([0.0, 0.0, 0.9])])
    assert torch.allclose(combine_observations(stacked), torch.tensor([1.0, 2.0, 3.3]))


def test_memoised_noise_gives_multi_round_nothing_to_combine(setup):
    model, x, y, public = setup
    defense = Defense.from_config("graddefense", sensitivity="uniform")
    observation = _observe(defense, model, x, y, rounds=3)
    first = flatten(observation.gradients[0])
    assert all(torch.equal(flatten(g), first) for g in observation.gradients[1:])
    clean = flatten(batch_gradient(model, x, y))
    assert not torch.allclose(first, clean), "the default still adds noise"
    other = flatten(defense.defend(batch_gradient(model, x, 1 - y if y.item() else y + 1), DefenseContext()))
    assert not torch.equal(other, first)


def test_adaptive_attacks_refuse_what_they_cannot_attack(setup):
    model, x, y, public = setup
    gc = Defense.from_config("gc")
    observation = _observe(gc, model, x, y)
    for name in ("oracle-mute", "detect-mute", "compensate-invert"):
        with pytest.raises(ConfigError):
            adaptive_attack(name).prepare(model, observation, gc, public)
    with pytest.raises(ConfigError, match="unknown name"):
        adaptive_attack("telepathy")
    with pytest.raises(ConfigError, match="rounds"):
        adaptive_attack("multi-round", rounds=1)


def test_mute_perturbed_leaves_out_what_soteria_prunes_and_recovers_the_image(setup):
    model, x, y, public = setup
    defense = Defense.from_config("soteria", percentile=80)
    attack = adaptive_attack("mute-perturbed")
    assert attack.applies_to(defense) and not attack.applies_to(Defense.from_config("dp-gaussian"))
    observation = _observe(defense, model, x, y)
    prepared = attack.prepare(model, observation, defense, public)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    sizes = [p.numel() for p in model.parameters() if p.requires_grad]
    start = sum(sizes[:names.index("fc.weight")])
    expected = torch.zeros(sum(sizes), dtype=torch.bool)
    expected[start:start + sizes[names.index("fc.weight")]] = True
    assert torch.equal(prepared.mute_mask, expected), "exactly the last linear layer's weight is muted"
    plain = _psnr(model, x, y, observation.gradients[0])
    muted = _psnr(model, x, y, prepared.gradient, prepared.mute_mask)
    assert muted > plain + 10, (plain, muted)


def test_each_adaptive_attack_applies_by_the_public_description_alone():
    applies = {name: {d for d in DEFENSES if cls.applies_to(Defense.from_config(d))} for name, cls in ADAPTIVE.items()}
    assert applies["oracle-mute"] == applies["detect-mute"] == {"graddefense-paper"}, "only k < S leaves clean slices"
    assert {"graddefense", "dp-gaussian", "dp-laplace", "dpsgd"} <= applies["multi-round"]
    assert not applies["compensate-invert"] & {"none", "gc", "soteria"}, "no noise, nothing to denoise"
    assert applies["mute-perturbed"] == {"soteria"}
