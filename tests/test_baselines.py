"""Baselines: gc, dp-gaussian, dp-laplace, soteria, dpsgd."""

import math
import re

import pytest
import torch

from gradguard import batch_gradient, build_model, per_sample_gradients
from gradguard.defenses import Defense, DefenseContext
from gradguard.defenses.dpsgd import epsilon_after, noise_for_epsilon
from gradguard.errors import ConfigError
from gradguard.rng import seeded_global_rng


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def small_lenet():
    # initialised from a fixed seed: from whatever state earlier tests left the global RNG in,
    # the Soteria test below could meet weights that rank its two batches alike
    with seeded_global_rng(0, "small lenet"):
        model = build_model("lenet", (1, 16, 16), 10)
    x = torch.rand(3, 1, 16, 16, generator=seeded(0))
    y = torch.tensor([1, 4, 7])
    return model, x, y


def test_gc_keeps_exactly_the_top_magnitudes():
    grads = [torch.randn(40, 5, generator=seeded(1)), torch.randn(7, generator=seeded(2))]
    out = Defense.from_config("gc", percentile=75).defend(grads, DefenseContext())
    for g, o in zip(grads, out):
        keep = math.ceil(g.numel() * 0.25)
        top = g.abs().flatten().topk(keep).indices
        expected = torch.zeros(g.numel())
        expected[top] = g.flatten()[top]
        assert torch.equal(o.flatten(), expected)


@pytest.mark.parametrize("name, option, std", [("dp-gaussian", "sigma", 0.3),
                                               ("dp-laplace", "scale", 0.3 / math.sqrt(2))])
def test_element_noise_has_the_configured_spread(name, option, std):
    out = Defense.from_config(name, **{option: std}).defend([torch.zeros(50_000)], DefenseContext(generator=seeded(3)))
    assert abs(float(out[0].std()) / 0.3 - 1) < 0.03


@pytest.mark.parametrize("name, option", [("dp-gaussian", "sigma"), ("dp-laplace", "scale")])
def test_relative_element_noise_clips_the_gradient_and_scales_the_noise_by_c(name, option):
    grads = [torch.randn(300, 100, generator=seeded(4)) * 0.1, torch.randn(40_000, generator=seeded(5))]
    norm = float(torch.cat([g.flatten() for g in grads]).norm())
    quiet = Defense.from_config(name, **{option: 0.0}, clip=norm / 4).defend(grads, DefenseContext())
    assert float(torch.cat([q.flatten() for q in quiet]).norm()) == pytest.approx(norm / 4, rel=1e-5)
    for g, q in zip(grads, quiet):
        torch.testing.assert_close(q, g / 4)  # the direction is kept
    loud = Defense.from_config(name, **{option: 2.0}, clip=norm / 4)
    out = loud.defend(grads, DefenseContext(generator=seeded(6)))
    noise = torch.cat([(o - q).flatten() for o, q in zip(out, quiet)])
    expected = loud.noise_model().std
    assert expected == pytest.approx(2.0 * norm / 4 * (1 if name == "dp-gaussian" else math.sqrt(2)))
    assert float(noise.std()) == pytest.approx(expected, rel=0.03)
    unclipped = Defense.from_config(name, **{option: 0.0}, clip=10 * norm).defend(grads, DefenseContext())
    assert all(torch.equal(u, g) for u, g in zip(unclipped, grads)), "a gradient within C is left as it is"


@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
def test_soteria_zeroes_exactly_the_expected_columns(small_lenet, mode):
    model, x, y = small_lenet
    percentile, eps = 60.0, 0.1
    # Reference: one backward per feature, written independently of the vectorised defense.
    xr = x.clone().requires_grad_(True)
    features = model.features(xr)
    scores = torch.zeros(features.shape[1])
    for f in range(features.shape[1]):
        (dx,) = torch.autograd.grad(features[:, f].sum(), xr, retain_graph=True)
        scores[f] = (dx.flatten(1).norm(dim=1) / (features[:, f].detach().abs() + eps)).sum()
    expected = scores.argsort(stable=True)[: round(features.shape[1] * percentile / 100)]

    grads = batch_gradient(model, x, y)
    out = Defense.from_config("soteria", percentile=percentile, eps=eps, mode=mode).defend(
        grads, DefenseContext(model=model, x=x, y=y))
    fc = [i for i, p in enumerate(model.parameters()) if p is model.fc.weight][0]
    zeroed = (out[fc] == 0).all(0)
    assert set(zeroed.nonzero().flatten().tolist()) == set(expected.tolist())
    assert torch.equal(out[fc][:, ~zeroed], grads[fc][:, ~zeroed])
    assert all(torch.equal(o, g) for i, (o, g) in enumerate(zip(out, grads)) if i != fc)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_soteria_forward_and_reverse_modes_prune_the_same_features_on_the_papers_lenets(shape):
    with seeded_global_rng(1, "soteria modes"):
        model = build_model("lenet", shape, 10, mean=[0.5] * shape[0], std=[0.25] * shape[0])
    x = torch.rand(6, *shape, generator=seeded(7))
    scores = {mode: Defense.from_config("soteria", mode=mode).feature_scores(model, x)
              for mode in ("forward", "reverse")}
    torch.testing.assert_close(scores["forward"], scores["reverse"], rtol=1e-5, atol=0)
    pruned = {mode: set(Defense.from_config("soteria", mode=mode).pruned_features(model, x).tolist())
              for mode in ("auto", "forward", "reverse")}
    assert pruned["forward"] == pruned["reverse"] == pruned["auto"]
    assert len(pruned["auto"]) == round(0.8 * model.fc.in_features)


def test_soteria_auto_mode_goes_forward_only_for_inputs_at_most_four_times_the_features():
    defense = Defense.from_config("soteria")
    assert defense._forward(torch.zeros(2, 1, 28, 28), torch.zeros(2, 588))      # LeNet, MNIST
    assert defense._forward(torch.zeros(2, 3, 32, 32), torch.zeros(2, 768))      # LeNet, CIFAR-10
    assert not defense._forward(torch.zeros(2, 3, 64, 64), torch.zeros(2, 512))  # 24x as many inputs


def test_soteria_per_round_mask_reuses_the_first_steps_pruned_set_only_within_a_training_round(small_lenet):
    model, x, y = small_lenet
    other = torch.ones(2, 1, 16, 16)  # a batch that ranks the features differently from x
    grads = batch_gradient(model, x, y)
    fc = [i for i, p in enumerate(model.parameters()) if p is model.fc.weight][0]
    defense = Defense.from_config("soteria", percentile=60, mask_per="round")
    ranked = {name: set(defense.pruned_features(model, data).tolist()) for name, data in (("x", x), ("other", other))}
    assert ranked["x"] != ranked["other"], "the two batches must rank differently for the test to mean anything"

    def zeroed(data, **context):
        out = defense.defend(grads, DefenseContext(model=model, x=data, y=y, **context))
        return set((out[fc] == 0).all(0).nonzero().flatten().tolist())

    assert zeroed(x, round=3, client=1, step=0) == ranked["x"]
    assert zeroed(other, round=3, client=1, step=1) == ranked["x"], "later steps of the round reuse step 0's set"
    assert zeroed(other, round=3, client=2, step=1) == ranked["other"], "another client has its own"
    assert zeroed(other, round=4, client=1, step=1) == ranked["other"], "a new round ranks again"
    assert zeroed(x, round=4, client=1) == ranked["x"], "a gradient defended on its own always gets its own set"


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_soteria_defends_rows_of_different_batches_in_one_ranking_as_row_by_row(small_lenet, mode):
    """A learned inverter's training set: many gradients of different images through one model,
    defended in one defend_rows call with one batched ranking; each row is pruned exactly as
    defend prunes it alone (batches of 1 and of 2 samples, and a per-round row that must not
    be ranked with the others)."""
    model, x, y = small_lenet
    other = torch.ones(2, 1, 16, 16)
    batches = [(x[:1], y[:1]), (x[1:2], y[1:2]), (other, y[:2]), (x, y), (x[2:], y[2:])]
    grads = [batch_gradient(model, bx, by) for bx, by in batches]
    alone_contexts = [DefenseContext(model=model, x=bx, y=by) for bx, by in batches]  # step None: its own set
    per_round = alone_contexts[:-1] + [DefenseContext(model=model, x=x[2:], y=y[2:], round=0, client=0, step=0)]
    rows = torch.stack([torch.cat([g.flatten() for g in row]) for row in grads])
    for mask_per, contexts in (("batch", alone_contexts), ("round", alone_contexts), ("round", per_round)):
        defense = Defense.from_config("soteria", percentile=60, mode=mode, mask_per=mask_per)
        together = defense.defend_rows(rows, grads[0], contexts)
        alone = Defense.from_config("soteria", percentile=60, mode=mode, mask_per=mask_per)
        expected = torch.stack([torch.cat([g.flatten() for g in alone.defend(row, c)])
                                for row, c in zip(grads, contexts)])
        assert torch.equal(together, expected)
    fc = [i for i, p in enumerate(model.parameters()) if p is model.fc.weight][0]
    zeroed = [set((Defense.from_config("soteria", percentile=60, mode=mode).defend(g, c)[fc] == 0).all(0)
                  .nonzero().flatten().tolist()) for g, c in zip(grads, alone_contexts)]
    assert len({frozenset(z) for z in zeroed[:4]}) > 1, "the rows must rank differently for the test to mean anything"


def test_soteria_rank_samples_ranks_a_round_on_the_first_samples_only(small_lenet):
    model, x, y = small_lenet
    assert len(x) >= 2
    batch = torch.cat([x[:1], torch.ones_like(x[1:])])  # the first sample ranks differently from the whole batch
    grads = batch_gradient(model, batch, y)
    fc = [i for i, p in enumerate(model.parameters()) if p is model.fc.weight][0]
    full = Defense.from_config("soteria", percentile=60, mask_per="round")
    first = Defense.from_config("soteria", percentile=60, mask_per="round", rank_samples=1)
    ranked = {n: set(full.pruned_features(model, data).tolist()) for n, data in (("first", batch[:1]), ("all", batch))}
    assert ranked["first"] != ranked["all"], "the test needs the first sample to rank differently"

    def zeroed(defense, **context):
        out = defense.defend(grads, DefenseContext(model=model, x=batch, y=y, **context))
        return set((out[fc] == 0).all(0).nonzero().flatten().tolist())

    assert zeroed(full, round=0, client=0, step=0) == ranked["all"]
    assert zeroed(first, round=0, client=0, step=0) == ranked["first"]
    assert zeroed(first, round=0, client=0) == ranked["all"], "a gradient defended on its own ranks its whole batch"
    with pytest.raises(ConfigError, match="mask_per='round' only"):
        Defense.from_config("soteria", rank_samples=8)
    assert first.costly_steps(5, batch_size=4) == 1 / 4 and full.costly_steps(5) == 1


def test_dpsgd_clips_each_sample_and_reports_falling_epsilon(small_lenet):
    model, x, y = small_lenet
    per_sample = per_sample_gradients(model, x, y)
    grads = [p.mean(0) for p in per_sample]
    noiseless = Defense.from_config("dpsgd", noise_multiplier=0.0, clip=0.05).defend(
        grads, DefenseContext(per_sample=per_sample, generator=seeded(4)))
    samples = torch.cat([p.flatten(1) for p in per_sample], 1)
    clipped = samples * (0.05 / samples.norm(dim=1, keepdim=True)).clamp(max=1)
    torch.testing.assert_close(torch.cat([o.flatten() for o in noiseless]), clipped.mean(0))

    epsilons = []
    local = (torch.zeros(300, 1, 16, 16), torch.zeros(300, dtype=torch.long))
    for z in (0.8, 1.6):
        defense = Defense.from_config("dpsgd", noise_multiplier=z)
        for round_ in range(5):
            defense.defend(grads, DefenseContext(per_sample=per_sample, generator=seeded(round_), round=round_,
                                                 local_data=local))
        epsilons.append(defense.epsilon(0))
    assert all(math.isfinite(e) and e > 0 for e in epsilons)
    assert epsilons[1] < epsilons[0]


def test_dpsgd_accounting_helpers_agree():
    z = noise_for_epsilon(2.0, sample_rate=0.01, steps=1000, delta=1e-5)
    assert abs(epsilon_after(z, 0.01, 1000, 1e-5) - 2.0) < 0.05


def test_cli_options_build_a_validated_defense():
    from gradguard.cli.options import parse_key_values

    def from_cli(name, pairs):
        return Defense.from_config(name, **parse_key_values(pairs, "--defense-opt"))

    defense = from_cli("graddefense", ["sigma=0.2", "slices=8", "chosen=3", "clip=none", "refresh-every=5"])
    assert (defense.config.sigma, defense.config.slices, defense.config.chosen) == (0.2, 8, 3)
    assert defense.config.clip is None and defense.config.refresh_every == 5
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_key_values(["sigma"], "--defense-opt")
    with pytest.raises(ValueError, match="sigma"):
        from_cli("graddefense", ["sigma=-1"])
    with pytest.raises(ValueError, match="unknown name"):
        from_cli("nope", [])


def test_defenses_command_lists_every_defense(capsys):
    from gradguard.cli import run
    from gradguard.defenses import DEFENSES

    assert run(["defenses"]) == 0
    # One table row per defense (its name in the first column), then one row per option (the
    # option in the second column): a name found anywhere in the text, e.g. inside another
    # defense's name or a description, does not count.
    rows = [[cell.strip() for cell in re.split("[│┃]", line)[1:-1]] for line in capsys.readouterr().out.splitlines()]
    rows = [row for row in rows if len(row) == 4]
    listed: dict[str, set[str]] = {}
    for name, option, *_ in rows[1:]:  # rows[0] is the header
        if name:
            listed[name] = set()
            current = name
        if option:
            listed[current].add(option)
    assert listed == {name: set(cls.Config.model_fields) for name, cls in DEFENSES.items()}
