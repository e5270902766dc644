"""graddefense: where the noise lands, how slices are chosen, risk, clipping, state and bad input."""

import pytest
import torch
from scipy.stats import chisquare

from gradguard import batch_gradient, load_dataset, model_for, per_sample_gradients
from gradguard.defenses import Defense, DefenseContext, GradDefense
from gradguard.defenses.compensation import aggregate_noise_variance
from gradguard.defenses.sensitivity import tensor_risks
from gradguard.errors import ConfigError
from gradguard.grads import flatten


def zeros_gradient(*sizes):
    return [torch.zeros(n) for n in sizes]


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def uniform_defense(**options):
    """Equal-size slices, fresh noise, absolute sigma unless the test sets clip."""
    return GradDefense(**{"sensitivity": "uniform", "memoize": False, "clip": None, **options})


@pytest.fixture(scope="module")
def lenet_batch():
    data = load_dataset("mnist-sample")
    order = torch.randperm(len(data.y_train), generator=seeded(0))[:64]  # the sample is sorted by label
    model = model_for(data, "lenet")
    return model, data.x_train[order], data.y_train[order]


def test_noise_only_in_chosen_slices_with_configured_variance():
    defense = uniform_defense(sigma=0.5, slices=10, chosen=3)
    grads = zeros_gradient(12_000, 8_000)
    out = flatten(defense.defend(grads, DefenseContext(generator=seeded(1))))
    bounds = defense._clients[0].bounds
    noisy = [bool((out[a:b] != 0).all()) for a, b in zip(bounds[:-1], bounds[1:])]
    clean = [bool((out[a:b] == 0).all()) for a, b in zip(bounds[:-1], bounds[1:])]
    assert sum(noisy) == 3 and sum(clean) == 7  # every slice is wholly noisy or wholly clean
    values = out[out != 0]
    assert values.numel() == 6000
    assert abs(float(values.std()) / 0.5 - 1) < 0.05
    assert abs(float(values.mean())) < 0.05


def test_selection_is_uniform_over_slices():
    defense = uniform_defense(sigma=1.0, slices=6, chosen=2)
    generator, counts = seeded(2), torch.zeros(6)
    for _ in range(1200):
        out = flatten(defense.defend(zeros_gradient(60), DefenseContext(generator=generator)))
        counts += (out.view(6, 10) != 0).all(1).float()
    assert counts.sum() == 2400
    assert chisquare(counts.numpy()).pvalue > 1e-3


def test_clients_and_rounds_get_independent_selections():
    defense = uniform_defense(sigma=1.0, slices=10, chosen=5)
    generators = {0: seeded(3), 1: seeded(4)}
    masks = {0: [], 1: []}
    for round_ in range(400):
        for client, generator in generators.items():
            context = DefenseContext(generator=generator, client=client, round=round_)
            masks[client].append((flatten(defense.defend(zeros_gradient(100), context)).view(10, 10) != 0).all(1))
    a, b = torch.stack(masks[0]).float(), torch.stack(masks[1]).float()
    across_clients = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
    across_rounds = torch.corrcoef(torch.stack([a[1:].flatten(), a[:-1].flatten()]))[0, 1]
    assert abs(float(across_clients)) < 0.1 and abs(float(across_rounds)) < 0.1
    # Without a generator the noise comes from OS entropy: two calls differ.
    first = defense.defend(zeros_gradient(100), DefenseContext())
    second = defense.defend(zeros_gradient(100), DefenseContext())
    assert not torch.equal(first[0], second[0])


def test_aggregate_noise_variance_matches_simulation_for_unequal_weights():
    weights = torch.tensor([0.5, 0.3, 0.15, 0.05])
    defense = uniform_defense(sigma=2.0, slices=8, chosen=3)
    generator = seeded(5)
    aggregate = sum(w * flatten(defense.defend(zeros_gradient(40_000), DefenseContext(generator=generator, client=i)))
                    for i, w in enumerate(weights))
    expected = aggregate_noise_variance(2.0, 3 / 8, weights)
    assert abs(float(aggregate.var()) / expected - 1) < 0.05


def test_hutchinson_sees_last_layer_risk_that_ones_misses(lenet_batch):
    model, x, y = lenet_batch
    hutchinson = tensor_risks(model, x[:20], y[:20], probe="hutchinson", probes=2, generator=seeded(6))
    ones = tensor_risks(model, x[:20], y[:20], probe="ones")
    fc = [i for i, p in enumerate(model.parameters()) if p is model.fc.weight][0]
    assert hutchinson[fc] > 0.1 * hutchinson.max()
    assert ones[fc] < 1e-4 * ones.max()


def test_risk_refresh_every_r_rounds_per_client(lenet_batch, monkeypatch):
    model, x, y = lenet_batch
    calls = []
    import gradguard.defenses.graddefense as module

    def counting_risks(*args, **kwargs):
        calls.append(1)
        return tensor_risks(*args, **kwargs)

    monkeypatch.setattr(module, "tensor_risks", counting_risks)
    defense = GradDefense(sensitivity="hutchinson", refresh_every=2, probes=1, root_per_class=1, chosen=5)
    grads = batch_gradient(model, x[:8], y[:8])
    for round_ in range(5):
        for client in (0, 1):
            defense.defend(grads, DefenseContext(model=model, x=x[:8], y=y[:8], generator=seeded(round_),
                                                 round=round_, client=client, local_data=(x, y)))
    assert len(calls) == 6  # rounds 0, 2, 4 for each of two clients
    assert defense._clients[0].refreshed == 4 and defense._clients[1].refreshed == 4


def test_layer_slicing_cuts_at_layers(lenet_batch):
    model, x, y = lenet_batch
    defense = GradDefense(slicing="layers", sigma=1.0, slices=10, chosen=5)
    grads = batch_gradient(model, x[:4], y[:4])
    defense.defend(grads, DefenseContext(model=model, generator=seeded(7)))
    sizes = [p.numel() for p in model.parameters()]
    layer_ends = [sum(sizes[: i + 2]) for i in range(0, len(sizes), 2)]  # weight + bias per layer
    assert defense._clients[0].bounds.tolist() == [0] + layer_ends
    assert defense.noisy_fraction == 2 / 4


def test_clipping_bounds_each_sample_in_chosen_slices(lenet_batch):
    model, x, y = lenet_batch
    per_sample = per_sample_gradients(model, x[:6], y[:6])
    grads = [p.mean(0) for p in per_sample]
    defense = GradDefense(sensitivity="uniform", sigma=0.0, clip=0.01, clip_per_sample=True, slices=4, chosen=2)
    out = flatten(defense.defend(grads, DefenseContext(per_sample=per_sample, generator=seeded(8))))
    clean, samples = flatten(grads), torch.cat([p.flatten(1) for p in per_sample], 1)
    bounds = defense._clients[0].bounds
    changed = 0
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        if torch.equal(out[a:b], clean[a:b]):
            continue
        changed += 1
        part = samples[:, a:b]
        clipped = part * (0.01 / part.norm(dim=1, keepdim=True)).clamp(max=1)
        torch.testing.assert_close(out[a:b], clipped.mean(0))
    assert changed == 2


def test_global_rng_untouched_and_input_unchanged(lenet_batch):
    model, x, y = lenet_batch
    grads = batch_gradient(model, x[:4], y[:4])
    copies = [g.clone() for g in grads]
    state = torch.get_rng_state()
    for name in ("graddefense", "gc", "dp-gaussian", "dp-laplace", "soteria", "dpsgd", "none"):
        for generator in (None, seeded(9)):
            Defense.from_config(name).defend(grads, DefenseContext(model=model, x=x[:4], y=y[:4], generator=generator,
                                                                  local_data=(x, y)))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(g, c) for g, c in zip(grads, copies))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradients_are_refused_untouched(bad):
    grads = zeros_gradient(50, 10)
    grads[1][3] = bad
    copies = [g.clone() for g in grads]
    for name in ("graddefense", "gc", "dp-gaussian", "dp-laplace", "soteria", "dpsgd"):
        with pytest.raises(ConfigError, match="NaN or inf"):
            Defense.from_config(name).defend(grads, DefenseContext())
    assert all(torch.equal(g, c) for g, c in zip(grads, copies) if torch.isfinite(c).all())
    assert torch.isnan(grads[1][3]) or torch.isinf(grads[1][3])


def test_bad_configurations_are_clear_errors():
    with pytest.raises(ValueError, match="chosen"):
        GradDefense(slices=4, chosen=5)
    with pytest.raises(ValueError, match="sigma"):
        GradDefense(sigma=-1.0)
    grads = zeros_gradient(5)
    with pytest.raises(ConfigError, match="slices=10 is more than"):
        uniform_defense().defend(grads, DefenseContext())
    assert torch.equal(grads[0], torch.zeros(5))
    with pytest.raises(ConfigError, match="needs context.model"):
        GradDefense(sensitivity="hutchinson", chosen=5).defend(zeros_gradient(50), DefenseContext())


def test_relative_clipping_bounds_each_chosen_slice_and_scales_the_noise(lenet_batch):
    model, x, y = lenet_batch
    grads = batch_gradient(model, x[:4], y[:4])
    clean = flatten(grads)
    clip = 0.2 * float(clean.norm()) / 2  # below the norm of at least one of 4 equal slices
    quiet = GradDefense(sensitivity="uniform", sigma=0.0, clip=clip, slices=4, chosen=4)
    out = flatten(quiet.defend(grads, DefenseContext(generator=seeded(1))))
    bounds = quiet._clients[0].bounds.tolist()
    clipped = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        norm = float(clean[a:b].norm())
        assert float(out[a:b].norm()) <= clip * (1 + 1e-5)
        if norm > clip:  # scaled down to exactly C, direction kept
            clipped += 1
            torch.testing.assert_close(out[a:b], clean[a:b] * (clip / norm))
        else:
            torch.testing.assert_close(out[a:b], clean[a:b])
    assert clipped >= 1
    noisy = GradDefense(sensitivity="uniform", sigma=3.0, clip=clip, slices=4, chosen=4, memoize=False)
    noise = flatten(noisy.defend(grads, DefenseContext(generator=seeded(2)))) - out
    assert float(noise.std()) == pytest.approx(3.0 * clip, rel=0.03), "noise std is sigma * C"
    assert noisy.noise_model().std == pytest.approx(3.0 * clip)


def test_risk_allocation_conserves_total_noise_power_and_follows_risk(lenet_batch):
    model, x, y = lenet_batch
    defense = GradDefense(sigma=0.5, clip=None, sensitivity="hutchinson", allocation="risk", risk_exponent=1.0)
    density = torch.tensor([1.0, 4.0, 0.25, 2.0])
    lengths = torch.tensor([100, 10, 1000, 50])
    stds = defense.slice_stds(density, lengths)
    power = float((lengths * stds.double().square()).sum())
    assert power == pytest.approx(0.5 ** 2 * float(lengths.sum()), rel=1e-6), "the same noise budget as uniform"
    assert torch.equal(stds.argsort(), density.argsort()), "more noise where a slice leaks more"
    torch.testing.assert_close(stds / stds[0], density / density[0])  # exponent 1: proportional
    flat_stds = GradDefense(sigma=0.5, clip=None, sensitivity="hutchinson", allocation="risk",
                            risk_exponent=0.0).slice_stds(density, lengths)
    torch.testing.assert_close(flat_stds, torch.full((4,), 0.5))  # exponent 0 is uniform
    # end to end: the noise on the defended gradient has the allocated per-slice std
    grads = batch_gradient(model, x[:8], y[:8])
    real = GradDefense(sigma=0.5, clip=None, sensitivity="hutchinson", allocation="risk", risk_exponent=1.0,
                       memoize=False, slices=4, chosen=4)
    context = DefenseContext(model=model, x=x[:8], y=y[:8], local_data=(x, y), generator=seeded(3))
    noise = flatten(real.defend(grads, context)) - flatten(grads)
    state = real._clients[0]
    bounds = state.bounds.tolist()
    expected = real.slice_stds(state.density, torch.tensor([b - a for a, b in zip(bounds[:-1], bounds[1:])]))
    for (a, b), std in zip(zip(bounds[:-1], bounds[1:]), expected.tolist()):
        assert float(noise[a:b].std()) == pytest.approx(std, rel=0.2)
    total = sum((b - a) * float(noise[a:b].var()) for a, b in zip(bounds[:-1], bounds[1:]))
    assert total / bounds[-1] == pytest.approx(0.25, rel=0.05)


def test_allocation_by_risk_needs_a_risk_measure():
    with pytest.raises(ConfigError, match="needs a risk measure"):
        GradDefense(allocation="risk", sensitivity="uniform")
    with pytest.raises(ConfigError, match="clip_per_sample needs clip"):
        GradDefense(clip=None, clip_per_sample=True)


def _noise(defense, grads, context):
    """What the defense added to ``grads`` (its clipping is a no-op on these small gradients)."""
    return flatten(defense.defend(grads, context)) - flatten(grads)


def _correlation(a, b):
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_memoised_noise_repeats_for_the_same_gradient_and_is_independent_for_any_other(lenet_batch):
    model, x, y = lenet_batch
    grads = [g * 1e-3 for g in batch_gradient(model, x[:8], y[:8])]  # slices far below clip=1: no clipping
    defense = GradDefense()  # the default: memoised, relative noise on every slice
    first = _noise(defense, grads, DefenseContext(generator=seeded(1), client=0, round=0))
    # the same clean gradient, sent again in another round with another generator: the same noise
    again = _noise(defense, grads, DefenseContext(generator=seeded(2), client=0, round=7, step=3))
    assert torch.equal(first, again)
    assert float(first.std()) == pytest.approx(defense.config.noise_std, rel=0.05)
    # one bit of one element changed: noise independent of the first
    nudged = [g.clone() for g in grads]
    nudged[3].view(-1)[5] = torch.nextafter(nudged[3].view(-1)[5], torch.tensor(1.0))
    other = _noise(defense, nudged, DefenseContext(generator=seeded(1), client=0, round=0))
    assert not torch.equal(other, first)
    assert abs(_correlation(first, other)) < 0.05  # about 0.009 std over 13,426 elements
    # another client (its own secret), and another defense object (another process), same gradient
    for noise in (_noise(defense, grads, DefenseContext(generator=seeded(3), client=1)),
                  _noise(GradDefense(), grads, DefenseContext(client=0))):
        assert abs(_correlation(first, noise)) < 0.05
    # the secret is drawn once per client and appears in nothing the defense publishes
    assert set(defense._secrets) == {0, 1}
    for secret in defense._secrets.values():
        assert len(secret) == 32
        assert secret.hex() not in repr(defense) and secret.hex() not in str(defense.noise_model())


@pytest.mark.parametrize("memoize", [True, False])
@pytest.mark.parametrize("size", [40_000, 40_003])  # a multiple of S, and one that needs padding
def test_noise_mean_and_variance_per_slice(memoize, size):
    sigma = 0.5
    defense = GradDefense(sensitivity="uniform", sigma=sigma, clip=None, slices=10, chosen=4, memoize=memoize)
    grads = zeros_gradient(size - 3_000, 3_000)
    out, secret = defense.defend_with_secret(grads, DefenseContext(generator=seeded(11)))
    out = flatten(out)
    bounds = defense._clients[0].bounds.tolist()
    assert bounds[0] == 0 and bounds[-1] == size and len(bounds) == 11
    noisy = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        part = out[a:b]
        if not bool(secret[a:b].any()):
            assert torch.equal(part, torch.zeros_like(part))  # clean slices untouched
            continue
        noisy += 1
        assert bool(secret[a:b].all())
        n = b - a
        assert abs(float(part.mean())) < 5 * sigma / n ** 0.5
        assert float(part.var()) == pytest.approx(sigma ** 2, rel=6 * (2 / n) ** 0.5)
    assert noisy == 4


def test_default_noise_per_slice_after_clipping(lenet_batch):
    """The default (every slice clipped to norm 1, noise std 0.2): each slice's noise has mean 0
    and variance 0.04, and each slice of the result minus its noise has norm at most 1."""
    model, x, y = lenet_batch
    grads = [g * 50 for g in batch_gradient(model, x[:8], y[:8])]  # large enough that slices get clipped
    defense = GradDefense()
    out = flatten(defense.defend(grads, DefenseContext(generator=seeded(12))))
    clean = flatten(grads)
    bounds = defense._clients[0].bounds.tolist()
    clipped = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        norm = float(clean[a:b].norm())
        kept = clean[a:b] * min(1.0, 1.0 / norm)
        clipped += norm > 1
        noise = out[a:b] - kept
        n = b - a
        assert abs(float(noise.mean())) < 5 * 0.2 / n ** 0.5
        assert float(noise.var()) == pytest.approx(0.04, rel=6 * (2 / n) ** 0.5)
    assert clipped >= 1
