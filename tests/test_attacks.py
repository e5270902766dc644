"""Attacks: configs fail clearly, labels are recovered, muting removes influence, batched runs
equal one-by-one runs, L-BFGS follows torch's, and DLG recovers undefended LeNet images."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError

from gradguard import ConfigError, build_model, load_dataset, model_for, score_reconstruction
from gradguard.attacks import ATTACKS, Attack, AttackConfig, idlg_labels, matching_weights
from gradguard.attacks.lbfgs import CompactHistory, batched_lbfgs
from gradguard.grads import batch_gradient, param_names


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist-sample")


@pytest.fixture(scope="module")
def lenet(data):
    torch.manual_seed(0)  # noqa: the model's own init; attacks draw from explicit generators
    return model_for(data, "lenet", dlg_init=True)


def first_of_each_class(data, classes):
    return torch.tensor([int((data.y_train == c).nonzero()[0]) for c in classes])


def gradients(model, x, y):
    return [batch_gradient(model, x[i:i + 1], y[i:i + 1]) for i in range(len(x))]


# --- configs ------------------------------------------------------------------------------

@pytest.mark.parametrize("options, field", [
    ({"distance": "l3"}, "distance"),
    ({"iterations": 0}, "iterations"),
    ({"lr": -1.0}, "lr"),
    ({"optimizer": "adam", "milestones": [0.7, 0.3]}, "milestones"),
    ({"layer_weights": [1.0, -2.0]}, "layer_weights"),
    ({"signed": True}, "signed"),  # L-BFGS cannot run on signed gradients
    ({"mute_mask": torch.zeros(3)}, "mute_mask"),
    ({"colour": "red"}, "colour"),
])
def test_invalid_options_name_the_field(options, field):
    with pytest.raises(ValidationError, match=field):
        AttackConfig(**options)


def test_presets_are_registered_and_overrides_are_validated():
    assert {"dlg", "gia"} <= set(ATTACKS)
    assert Attack.from_config("gia", iterations=10).config.iterations == 10
    with pytest.raises(ConfigError, match="unknown name 'nope'"):
        Attack.from_config("nope")
    with pytest.raises(ConfigError, match="attack 'dlg': AttackConfig: restarts=0"):
        Attack.from_config("dlg", restarts=0)
    with pytest.raises(ConfigError, match="attack: AttackConfig: iterations=0"):
        Attack(iterations=0)


def test_bad_mute_and_missing_labels_fail_clearly(data, lenet):
    x, y = data.x_train[:2], data.y_train[:2]
    observed = batch_gradient(lenet, x, y)
    with pytest.raises(ConfigError, match="mute name 'conv9'"):
        Attack.from_config("dlg", mute=["conv9"]).reconstruct(lenet, observed, (1, 28, 28), 2)
    with pytest.raises(ConfigError, match="mute_mask has 5 elements"):
        attack = Attack.from_config("dlg", mute_mask=torch.zeros(5, dtype=torch.bool))
        attack.reconstruct(lenet, observed, (1, 28, 28), 2)
    with pytest.raises(ConfigError, match="needs the labels"):
        Attack.from_config("gia").reconstruct(lenet, observed, (1, 28, 28), 2)


def test_matching_weights_resolve_names_indices_and_element_masks(lenet):
    names = param_names(lenet)
    shapes = [p.shape for p in lenet.parameters()]
    by_name = matching_weights(names, shapes, AttackConfig(mute=["fc.weight", 0]))
    assert by_name[names.index("fc.weight")] is None and by_name[0] is None and by_name[1] == 1.0
    mask = torch.zeros(sum(s.numel() for s in shapes), dtype=torch.bool)
    mask[:3] = True  # three elements of the first tensor
    by_mask = matching_weights(names, shapes, AttackConfig(mute_mask=mask))
    assert by_mask[0].flatten()[:4].tolist() == [0.0, 0.0, 0.0, 1.0] and by_mask[1] == 1.0


# --- labels -------------------------------------------------------------------------------

def test_idlg_recovers_every_label_at_batch_size_one(data, lenet):
    index = torch.arange(0, 4000, 97)  # 42 images of every class
    x, y = data.x_train[index], data.y_train[index]
    fc = param_names(lenet).index("fc.weight")
    recovered = torch.cat([idlg_labels(g[fc], 1) for g in gradients(lenet, x, y)])
    assert torch.equal(recovered, y)


def test_idlg_recovers_distinct_labels_of_a_batch(data, lenet):
    index = first_of_each_class(data, [7, 2, 9, 4])
    g = batch_gradient(lenet, data.x_train[index], data.y_train[index])
    assert idlg_labels(g[param_names(lenet).index("fc.weight")], 4).tolist() == [2, 4, 7, 9]


# --- L-BFGS -------------------------------------------------------------------------------

def two_loop(g, pairs, gamma):
    """The textbook two-loop recursion, the reference for the compact form."""
    q, alphas = g.clone(), []
    for s, y in reversed(pairs):
        alphas.append((s @ q) / (y @ s))
        q -= alphas[-1] * y
    r = gamma * q
    for (s, y), alpha in zip(pairs, reversed(alphas)):
        r += s * (alpha - (y @ r) / (y @ s))
    return r


def test_compact_history_equals_two_loop_recursion_with_wraparound():
    gen = torch.Generator().manual_seed(0)
    dim, size, pairs = 6, 3, []
    history = CompactHistory(1, dim, size, torch.float64, torch.device("cpu"))
    for _ in range(5):  # more pairs than slots: the oldest are dropped
        s = torch.randn(dim, generator=gen, dtype=torch.float64)
        y = s + 0.1 * torch.randn(dim, generator=gen, dtype=torch.float64)  # y.s > 0
        history.push(s[None], y[None], torch.tensor([True]))
        pairs.append((s, y))
    g = torch.randn(dim, generator=gen, dtype=torch.float64)
    gamma = (pairs[-1][0] @ pairs[-1][1]) / (pairs[-1][1] @ pairs[-1][1])
    torch.testing.assert_close(history.inverse_hessian_times(g[None])[0], two_loop(g, pairs[-size:], gamma))


def test_batched_lbfgs_follows_torch_lbfgs():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    hessian, b = a @ a.T + 0.5 * torch.eye(8, dtype=torch.float64), torch.randn(8, generator=gen, dtype=torch.float64)

    def loss(z):
        return 0.5 * z @ hessian @ z - b @ z + 0.1 * (z ** 4).sum()

    start = torch.randn(8, generator=gen, dtype=torch.float64)
    z = start.clone().requires_grad_()
    optimizer = torch.optim.LBFGS([z], lr=0.5, max_iter=4, history_size=3)

    def closure():
        optimizer.zero_grad()
        value = loss(z)
        value.backward()
        return value

    for _ in range(3):
        optimizer.step(closure)

    def evaluate(batch, rows):
        batch = batch.detach().requires_grad_()
        values = torch.stack([loss(row) for row in batch])
        return values.detach(), torch.autograd.grad(values.sum(), batch)[0]

    ours = batched_lbfgs(evaluate, start[None].repeat(2, 1), lr=0.5, iterations=3, max_iter=4, history=3)
    torch.testing.assert_close(ours[0], z.detach())
    torch.testing.assert_close(ours[1], z.detach())


def test_batched_lbfgs_stopped_targets_do_not_disturb_running_ones():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    hessian = a @ a.T + torch.eye(6, dtype=torch.float64)
    linear = torch.stack([torch.zeros(6, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)])

    def evaluate(batch, rows):  # target 0 starts at its stationary point and stops at once
        batch = batch.detach().requires_grad_()
        b = linear if rows is None else linear[rows]
        values = 0.5 * ((batch @ hessian) * batch).sum(1) - (b * batch).sum(1) + 0.1 * (batch ** 4).sum(1)
        return values.detach(), torch.autograd.grad(values.sum(), batch)[0]

    start = torch.zeros(2, 6, dtype=torch.float64)
    together = batched_lbfgs(evaluate, start, lr=0.5, iterations=2, max_iter=5, history=4)
    alone = batched_lbfgs(lambda z, rows: evaluate(z, torch.tensor([1]) if rows is None else rows + 1),
                          start[1:], lr=0.5, iterations=2, max_iter=5, history=4)
    assert torch.equal(together[0], start[0])
    torch.testing.assert_close(together[1:], alone)
    assert not torch.equal(alone, start[1:])


# --- muting and batching ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["dlg", "gia"])
def test_a_muted_layer_has_no_influence(data, lenet, name):
    index = first_of_each_class(data, [3])
    observed = gradients(lenet, data.x_train[index], data.y_train[index])[0]
    fc = param_names(lenet).index("fc.weight")
    garbage = [g.clone() for g in observed]
    garbage[fc] = torch.randn(garbage[fc].shape, generator=torch.Generator().manual_seed(5))
    # Labels are given so that the garbage cannot reach the attack through iDLG either.
    options = dict(iterations=1, mute=["fc.weight"], labels="given") | ({"restarts": 1} if name == "gia" else {})
    attack = Attack.from_config(name, **options)

    def run(gradient, mute=True):
        a = attack if mute else Attack.from_config(name, **{**options, "mute": []})
        return a.reconstruct(lenet, gradient, (1, 28, 28), 1, data.y_train[index],
                             generator=torch.Generator().manual_seed(9)).images

    assert torch.equal(run(observed), run(garbage))
    assert not torch.allclose(run(observed, mute=False), run(garbage, mute=False))


def test_element_mask_equals_muting_by_name(data, lenet):
    index = first_of_each_class(data, [6])
    observed = gradients(lenet, data.x_train[index], data.y_train[index])[0]
    mask = torch.cat([torch.full((p.numel(),), n == "fc.weight") for n, p in lenet.named_parameters()])
    runs = [Attack.from_config("dlg", iterations=2, **opts).reconstruct(
        lenet, observed, (1, 28, 28), 1, generator=torch.Generator().manual_seed(3)).images
        for opts in ({"mute": ["fc.weight"]}, {"mute_mask": mask})]
    torch.testing.assert_close(runs[0], runs[1])


@pytest.mark.parametrize("name, options, dtype, atol", [
    # L-BFGS at lr 1 without line search roughly doubles tiny differences at every update
    # (vmap and plain autograd round differently), so it is compared over 6 updates in float64.
    ("dlg", {"iterations": 2, "lbfgs_max_iter": 3}, torch.float64, 1e-6),
    ("gia", {"iterations": 30, "restarts": 2}, torch.float32, 2e-3),
])
def test_batched_equals_one_by_one(data, lenet, name, options, dtype, atol):
    index = first_of_each_class(data, [0, 5, 8])
    model = copy.deepcopy(lenet).to(dtype)
    observed = gradients(model, data.x_train[index].to(dtype), data.y_train[index])
    attack = Attack.from_config(name, **options)
    together = attack.reconstruct_many(model, observed, (1, 28, 28), 1, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(2)
    alone = [attack.reconstruct(model, o, (1, 28, 28), 1, generator=gen) for o in observed]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a.images, b.images, atol=atol, rtol=0)
        assert torch.equal(a.labels, b.labels)
        assert a.matching_loss == pytest.approx(b.matching_loss, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("name, options, dtype, atol", [
    ("dlg", {"iterations": 2, "lbfgs_max_iter": 3}, torch.float64, 1e-6),
    ("gia", {"iterations": 30, "restarts": 2}, torch.float32, 2e-3),
    ("gia", {"iterations": 30, "distance": "l1"}, torch.float32, 2e-3),
])
def test_batched_with_a_mask_and_scale_per_target_equals_one_by_one(data, lenet, name, options, dtype, atol):
    """What an adaptive attacker prepares differs per target: its mute mask (here one target
    mutes a whole tensor, one a random half of the elements, one nothing) and its likelihood's
    scale. Matched together, each target gets exactly its own objective."""
    index = first_of_each_class(data, [1, 3, 6])
    model = copy.deepcopy(lenet).to(dtype)
    observed = gradients(model, data.x_train[index].to(dtype), data.y_train[index])
    sizes = [g.numel() for g in observed[0]]
    whole = torch.zeros(sum(sizes), dtype=torch.bool)
    whole[:sizes[0]] = True  # the first conv's weight, muted only for target 0
    half = torch.rand(sum(sizes), generator=torch.Generator().manual_seed(0)) < 0.5
    masks, scales = [whole, half, None], [0.5, 3.0, 1.0]
    attack = Attack.from_config(name, **options)
    together = attack.reconstruct_many(model, observed, (1, 28, 28), 1, generator=torch.Generator().manual_seed(2),
                                       mute_masks=masks, distance_scales=scales)
    gen = torch.Generator().manual_seed(2)
    scale = attack.config.distance_scale
    alone = [Attack(attack.config.model_copy(update={"mute_mask": m, "distance_scale": s * scale}))
             .reconstruct(model, o, (1, 28, 28), 1, generator=gen) for o, m, s in zip(observed, masks, scales)]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a.images, b.images, atol=atol, rtol=0)
        assert torch.equal(a.labels, b.labels)
        assert a.matching_loss == pytest.approx(b.matching_loss, rel=1e-3, abs=1e-6)
    unmasked = attack.reconstruct_many(model, observed, (1, 28, 28), 1, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(unmasked[0].images, together[0].images, atol=atol)  # the mask did act


@pytest.mark.parametrize("distance", ["l2", "l1", "cosine"])
def test_a_distance_over_some_rows_is_the_full_distance_at_those_rows(distance):
    """L-BFGS evaluates only the targets still running (``rows``): weights with a target axis
    must be taken at those rows, shared ones as they are."""
    from gradguard.attacks.matching import DISTANCES, per_target_weights

    gen = torch.Generator().manual_seed(5)
    shapes = [torch.Size([3, 4]), torch.Size([5])]
    observed = [torch.randn(4, *shape, generator=gen) for shape in shapes]
    trial = [torch.randn(4, *shape, generator=gen) for shape in shapes]
    per_target = [[1.0, (torch.rand(5, generator=gen) < 0.5).float()], [1.0, None], [1.0, 2.0], [1.0, 2.0]]
    weights = per_target_weights(per_target, shapes)
    assert weights[0] == 1.0 and isinstance(weights[1], torch.Tensor) and weights[1].shape == (4, 5)
    whole_or_nothing = per_target_weights([[None, 1.0], [1.0, 1.0]], shapes)  # a tensor muted in one target only
    assert torch.equal(whole_or_nothing[0], torch.stack([torch.zeros(3, 4), torch.ones(3, 4)]))
    assert whole_or_nothing[1] == 1.0
    measure = DISTANCES[distance](observed, weights)
    rows = torch.tensor([3, 0])
    torch.testing.assert_close(measure([t[rows] for t in trial], rows), measure(trial)[rows])


def test_adaptive_targets_with_different_engine_changes_keep_their_order_and_draws(data, lenet):
    """Targets whose prepared configuration differs (here the distance) are inverted in runs of
    consecutive equal ones, so the starts are still drawn target after target."""
    from gradguard.attacks import Prepared
    from gradguard.experiments.cells import _invert_prepared

    index = first_of_each_class(data, [2, 5, 7])
    x, y = data.x_train[index], data.y_train[index]
    observed = gradients(lenet, x, y)
    changes = [{"distance": "l1", "distance_scale": 2.0}, {}, {"distance": "l1"}]
    prepared = [Prepared(g, overrides=c) for g, c in zip(observed, changes)]
    attack = Attack.from_config("gia", iterations=10)
    together = _invert_prepared(attack, lenet, prepared, [y[i:i + 1] for i in range(3)], (1, 28, 28), 1,
                                torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    alone = [Attack(attack.config.model_copy(update=c)).reconstruct(lenet, g, (1, 28, 28), 1, labels=y[i:i + 1],
                                                                    generator=gen)
             for i, (g, c) in enumerate(zip(observed, changes))]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a.images, b.images, atol=2e-3, rtol=0)


def test_per_target_masks_and_scales_are_checked(data, lenet):
    observed = gradients(lenet, data.x_train[:2], data.y_train[:2])
    attack = Attack.from_config("gia", iterations=1)
    with pytest.raises(ConfigError, match="1 mute masks for 2 targets"):
        attack.reconstruct_many(lenet, observed, (1, 28, 28), 1, mute_masks=[None])
    with pytest.raises(ConfigError, match="distance_scales needs one number > 0"):
        attack.reconstruct_many(lenet, observed, (1, 28, 28), 1, distance_scales=[1.0, 0.0])
    everything = torch.ones(sum(g.numel() for g in observed[0]), dtype=torch.bool)
    with pytest.raises(ConfigError, match="nothing is left to match"):
        attack.reconstruct_many(lenet, observed, (1, 28, 28), 1, mute_masks=[None, everything])


def test_gia_keeps_images_in_the_box_and_uses_idlg_labels(data, lenet):
    index = first_of_each_class(data, [4])
    observed = gradients(lenet, data.x_train[index], data.y_train[index])[0]
    result = Attack.from_config("gia", iterations=5, restarts=1).reconstruct(
        lenet, observed, (1, 28, 28), 1, generator=torch.Generator().manual_seed(0))
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert result.labels.tolist() == [4]


# --- fidelity -----------------------------------------------------------------------------

@pytest.mark.slow
def test_dlg_recovers_undefended_lenet_images(data):
    """DLG, batch size 1: at least 3 of 4 fixed images at PSNR >= 30 dB (the paper's near
    pixel-perfect recovery). DLG's LeNet as DLG ran it: uniform(-0.5, 0.5) weights on
    unnormalised pixels. L-BFGS at lr 1 diverges from some starts, so three restarts each,
    kept by matching loss, all in one batched run; successful runs converge within 20 steps."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("lenet", data.image_shape, data.num_classes, dlg_init=True)
    index = first_of_each_class(data, [0, 1, 2, 3])
    x, y = data.x_train[index], data.y_train[index]
    attack = Attack.from_config("dlg", iterations=30, restarts=3)
    results = attack.reconstruct_many(model, gradients(model, x, y), (1, 28, 28), 1,
                                      generator=torch.Generator().manual_seed(1))
    scores = score_reconstruction(torch.cat([r.images for r in results]), x, matched=False)
    assert int((scores.psnr >= 30).sum()) >= 3, scores.psnr.tolist()
    assert [int(r.labels) for r in results] == y.tolist()  # DLG's learned labels, argmax


def test_batchnorm_models_attack_batched_and_leave_the_model_untouched(data):
    torch.manual_seed(0)  # noqa: the model's own init
    model = model_for(data, "convnet", width=2)
    index = first_of_each_class(data, [1, 7])
    observed = gradients(model, data.x_train[index], data.y_train[index])
    before = {n: b.clone() for n, b in model.named_buffers()}
    attack = Attack.from_config("gia", iterations=2, restarts=1)
    together = attack.reconstruct_many(model, observed, (1, 28, 28), 1, generator=torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    alone = [attack.reconstruct(model, o, (1, 28, 28), 1, generator=gen) for o in observed]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a.images, b.images, atol=1e-4, rtol=0)
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())
