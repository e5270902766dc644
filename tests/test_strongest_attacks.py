"""The attacks that know the defense: the learned inverter (lti) works and is cached, the
noise-aware attack is never worse than Inverting Gradients without noise and reads the public
noise model, the two floors, and every registered attack is reachable from the command line."""

import json

import pytest
import torch

from gradguard.attacks import ADAPTIVE, ATTACKS, Attack, adaptive_attack
from gradguard.attacks.learned import cache_root
from gradguard.cli import run
from gradguard.defenses import Defense
from gradguard.experiments.cells import aux_indices, floors, observe, seeded_model, target_indices
from gradguard.grads import flatten
from gradguard.metrics import score_reconstruction
from gradguard.rng import make_generator

LTI = {"aux_images": 2000, "epochs": 30, "projection": 512, "hidden": 256}


@pytest.fixture(scope="module")
def setting(mnist_sample):
    model = seeded_model(mnist_sample, "lenet", 0, True, dlg_init=True)
    index = target_indices(len(mnist_sample.x_train), 8, make_generator(0, "targets"), 4000)
    aux = aux_indices(len(mnist_sample.x_train), index, LTI["aux_images"], make_generator(0, "aux"))
    assert not set(aux.tolist()) & set(index), "the attacker's data never holds a target"
    return model, index, (mnist_sample.x_train[aux], mnist_sample.y_train[aux])


def _observations(model, data, index, defense):
    return [observe(defense, model, data.x_train[i:i + 1], data.y_train[i:i + 1], 1,
                    lambda r, i=i: make_generator(0, "defense", i, r)) for i in index]


def test_lti_recovers_undefended_images_well_above_both_floors_and_reuses_its_cache(setting, mnist_sample):
    model, index, public = setting
    defense = Defense.from_config("none")
    attack = adaptive_attack("lti", **LTI)
    observations = _observations(model, mnist_sample, index, defense)
    images = torch.cat([attack.prepare(model, o, defense, public).images for o in observations])
    assert attack.last_fit is not None
    truth = mnist_sample.x_train[index]
    scores = score_reconstruction(images, truth)
    guess = floors(mnist_sample, index, truth)
    mean = lambda key: sum(guess[key]) / len(guess[key])  # noqa: E731
    assert float(scores.psnr.mean()) > mean("floor_psnr_each") + 2.0
    assert float(scores.ssim.mean()) > max(mean("floor_ssim_each"), mean("class_floor_ssim_each")) + 0.05
    labels = torch.cat([attack.prepare(model, o, defense, public).labels for o in observations])
    assert torch.equal(labels, mnist_sample.y_train[index]), "batch size 1: the label leaks"

    cached = list(cache_root().glob("*.pt"))
    assert cached, "the trained inverter is kept on disk"
    again = adaptive_attack("lti", **LTI)  # a new attacker: nothing in memory
    repeat = again.prepare(model, observations[0], defense, public).images
    assert again.last_fit is not None and not again.last_fit.trained, "loaded from the cache, not trained"
    torch.testing.assert_close(repeat, images[:1])
    other = Defense.from_config("dp-gaussian", sigma=0.01)
    again.inverter(model, other, public)
    assert again.last_fit.trained, "another defense configuration trains its own inverter"


def test_noise_aware_is_inverting_gradients_on_undefended_gradients(setting, mnist_sample):
    model, index, public = setting
    defense = Defense.from_config("none")
    observation = _observations(model, mnist_sample, index[:1], defense)[0]
    prepared = adaptive_attack("noise-aware").prepare(model, observation, defense, public)
    assert prepared.overrides == {} and prepared.mute_mask is None, "no noise, no zeros: nothing to change"
    gia = Attack.from_config("gia", iterations=150, restarts=1)
    truth = mnist_sample.x_train[index[:1]]
    plain = gia.reconstruct(model, observation.gradients[0], truth.shape[1:], 1, generator=make_generator(1))
    aware = Attack(gia.config.model_copy(update={"mute_mask": prepared.mute_mask, **prepared.overrides})).reconstruct(
        model, prepared.gradient, truth.shape[1:], 1, generator=make_generator(1))
    assert float(score_reconstruction(aware.images, truth).psnr.mean()) >= \
        float(score_reconstruction(plain.images, truth).psnr.mean())


@pytest.mark.parametrize("name, options, distance", [("dp-gaussian", {"sigma": 0.05}, "l2"),
                                                      ("dp-laplace", {"scale": 0.05}, "l1"),
                                                      ("graddefense", {"sigma": 0.5, "clip": 0.1}, "l2")])
def test_noise_aware_matches_with_the_likelihood_of_the_public_noise(setting, mnist_sample, name, options, distance):
    model, index, public = setting
    defense = Defense.from_config(name, **options)
    observation = _observations(model, mnist_sample, index[:1], defense)[0]
    prepared = adaptive_attack("noise-aware").prepare(model, observation, defense, public)
    std = defense.noise_model().std
    size = flatten(observation.gradients[0]).numel()
    expected = 1 / (2 * std ** 2 * size) if distance == "l2" else 2 ** 0.5 / (std * size)
    assert prepared.overrides["distance"] == distance
    assert prepared.overrides["distance_scale"] == pytest.approx(expected)


def test_noise_aware_leaves_out_exactly_the_entries_pruning_zeroed(setting, mnist_sample):
    model, index, public = setting
    defense = Defense.from_config("gc", percentile=90)
    observation = _observations(model, mnist_sample, index[:1], defense)[0]
    prepared = adaptive_attack("noise-aware").prepare(model, observation, defense, public)
    assert torch.equal(prepared.mute_mask, flatten(observation.gradients[0]) == 0)
    assert 0.85 < float(prepared.mute_mask.float().mean()) < 0.95


def test_the_better_floor_knows_the_label(mnist_sample):
    index = [0, 1, 2, 3]
    truth = mnist_sample.x_train[index]
    guess = floors(mnist_sample, index, truth)
    assert sum(guess["class_floor_ssim_each"]) > sum(guess["floor_ssim_each"]), "the label's mean image is closer"


@pytest.mark.parametrize("name", list(ATTACKS) + list(ADAPTIVE))
def test_every_registered_attack_is_reachable_from_the_command_line(tmp_path, capsys, name):
    defense = {"oracle-mute": "graddefense-paper", "detect-mute": "graddefense-paper", "mute-perturbed": "soteria"}
    argv = ["attack", "--attack", name, "--images", "1", "--iterations", "2", "--restarts", "1",
            "--defense", defense.get(name, "dp-gaussian"), "--out", str(tmp_path / "run")]
    if name == "lti":
        argv += ["--attack-opt", "epochs=1", "--attack-opt", "aux_images=64", "--attack-opt", "projection=16",
                 "--attack-opt", "hidden=16"]
    if name == "multi-round":
        argv += ["--attack-opt", "rounds=2"]
    assert run(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "floor" in out and name in out
    record = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert record["summary"]["floor_psnr"] >= record["summary"]["mean_image_floor"][0]
    assert record["cell"]["adaptive"] == (name if name in ADAPTIVE else None)
