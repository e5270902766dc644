"""The vectorised clients compute what the per-client loop computes, defense and all."""

import pytest
import torch

from gradguard.data import load_dataset
from gradguard.defenses import DEFENSES, Compensator, Defense, register
from gradguard.fl import SimulationConfig, simulate
from gradguard.fl.simulator import build_global_model, client_jobs, partition_clients
from gradguard.grads import batch_gradient


class RecordingCompensator(Compensator):
    def __init__(self):
        self.calls = []

    def compensate(self, aggregate, weights, *, scale=1.0):
        self.calls.append((weights.clone(), scale))
        return [a.clone() for a in aggregate]


class NoisyProbe(Defense):
    """Adds generator noise, and checks that the context's model and batch produce the gradient
    it was given (so each trainer hands the defense the client's current parameters)."""

    name = "test-noisy-probe"
    needs_batch = True
    compensators: list[RecordingCompensator] = []
    steps: list[tuple[int, int, int | None]] = []

    def defend(self, grads, context):
        self.steps.append((context.round, context.client, context.step))
        expected = batch_gradient(context.model, context.x, context.y)
        for g, e in zip(grads, expected):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)
        assert context.local_data is not None and len(context.local_data[0]) >= len(context.x)
        return [g + 1e-2 * torch.randn(g.shape, generator=context.generator) for g in grads]

    def compensator(self):
        self.compensators.append(RecordingCompensator())
        return self.compensators[-1]


@pytest.fixture
def probe():
    register(NoisyProbe)
    NoisyProbe.compensators.clear()
    NoisyProbe.steps.clear()
    yield NoisyProbe
    del DEFENSES[NoisyProbe.name]


def run(dataset: str, vectorize: bool, **overrides):
    # 4 clients share 210 samples unequally (53 or 52): with batch 20 the last local batch
    # differs, so the vectorised trainer must group clients by batch sizes.
    options = dict(dataset=dataset, clients=4, rounds=2, batch_size=20, lr=0.1, local_epochs=1,
                   defense="test-noisy-probe", reproducible_noise=True, vectorize=vectorize, eval_every=2)
    return simulate(SimulationConfig(**(options | overrides)))


@pytest.mark.parametrize("algorithm", ["fedsgd", "fedavg"])
def test_vectorized_and_looped_rounds_give_the_same_parameters(probe, tiny_mnist, algorithm):
    vectorized, looped = run(tiny_mnist, True, algorithm=algorithm), run(tiny_mnist, False, algorithm=algorithm)
    assert (vectorized.trainer, looped.trainer) == ("vectorized", "looped")
    for name, value in looped.final_state.items():
        torch.testing.assert_close(vectorized.final_state[name], value, atol=1e-5, rtol=0)
    # the run actually moved the model away from its initialisation
    initial = build_global_model(SimulationConfig(dataset=tiny_mnist), load_dataset(tiny_mnist)).fc.weight
    assert not torch.allclose(initial, looped.final_state["fc.weight"], atol=1e-3)


def test_server_weights_by_sample_count_and_scales_fedavg_noise(probe, tiny_mnist):
    run(tiny_mnist, True, algorithm="fedavg", rounds=1, local_steps=4)
    (weights, scale), = probe.compensators[-1].calls
    expected = torch.tensor([53.0] * 2 + [52.0] * 2)
    torch.testing.assert_close(weights, expected / expected.sum())
    assert scale == pytest.approx(0.1 * 4 ** 0.5)  # lr * sqrt(local steps): fresh noise every step
    run(tiny_mnist, True, algorithm="fedsgd", rounds=1)
    assert probe.compensators[-1].calls[0][1] == 1.0


@pytest.mark.skipif("graddefense" not in DEFENSES, reason="graddefense is not registered in this build")
def test_graddefense_gives_the_same_parameters_vectorized_and_looped(tiny_mnist):
    options = dict(algorithm="fedavg", defense="graddefense", defense_options={})
    vectorized, looped = run(tiny_mnist, True, **options), run(tiny_mnist, False, **options)
    for name, value in looped.final_state.items():
        torch.testing.assert_close(vectorized.final_state[name], value, atol=1e-5, rtol=0)


@pytest.mark.parametrize("vectorize", [True, False])
def test_each_trainer_tells_the_defense_the_local_step_of_every_gradient(probe, tiny_mnist, vectorize):
    run(tiny_mnist, vectorize, algorithm="fedavg", local_steps=3)
    per_client: dict[tuple[int, int], list] = {}
    for round_, client, step in NoisyProbe.steps:
        per_client.setdefault((round_, client), []).append(step)
    assert len(per_client) == 2 * 4, "every client in both rounds"
    assert all(steps == [0, 1, 2] for steps in per_client.values()), per_client


@pytest.mark.parametrize(("model", "clients", "options"), [
    # 20 clients: two lockstep groups (16 + 4); Dirichlet shards give them unequal step counts
    ("lenet", 20, {"partition": "dirichlet", "alpha": 5.0, "batch_size": 4}),
    # BatchNorm: every client's running statistics come from its own model copy
    ("convnet", 3, {"model_options": {"width": 2}, "batch_size": 8}),
])
@pytest.mark.parametrize("algorithm", ["fedsgd", "fedavg"])
def test_clients_in_lockstep_train_exactly_as_one_at_a_time(tiny_mnist, monkeypatch, model, clients, options,
                                                            algorithm):
    import gradguard.fl.clients as trainers

    config = SimulationConfig(dataset=tiny_mnist, model=model, clients=clients, rounds=2, lr=0.1, local_epochs=1,
                              defense="graddefense", reproducible_noise=True, vectorize=False, eval_every=2,
                              algorithm=algorithm, **options)
    parts = partition_clients(config, load_dataset(tiny_mnist).y_train)
    steps = {len(job.batches) for job in client_jobs(config, parts, list(range(clients)), 0)}
    if algorithm == "fedavg" and model == "lenet":
        assert len(steps) > 1, "the clients must take different numbers of steps for the test to mean anything"
    together = simulate(config).final_state
    monkeypatch.setattr(trainers, "LOCKSTEP_CLIENTS", 1)
    alone = simulate(config).final_state
    assert together.keys() == alone.keys()
    assert all(torch.equal(together[k], alone[k]) for k in together)


def test_flat_parameters_moves_each_copy_into_its_row_and_refuses_mixed_dtypes():
    from torch import nn

    from gradguard.fl.clients import flat_parameters
    from gradguard.grads import flatten, trainable_parameters

    models = [nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)) for _ in range(3)]
    models[0][0].bias.requires_grad_(False)  # a frozen tensor stays out of the matrix
    for model in models[1:]:
        model[0].bias.requires_grad_(False)
    x = torch.randn(5, 3)
    before = [model(x).detach() for model in models]
    values = [flatten([p.detach() for p in trainable_parameters(m)]) for m in models]
    flat = flat_parameters(models)
    assert flat is not None and flat.shape == (3, 3 * 4 + 4 * 2 + 2)
    for model, row, value, out in zip(models, flat, values, before):
        assert torch.equal(row, value)  # the parameters' values, in flatten order
        assert torch.equal(model(x), out)
        assert all(p.is_leaf for p in trainable_parameters(model))
    # a step on the matrix is a step of every model, and a step of a parameter shows in its row
    with torch.no_grad():
        flat[1].sub_(1.0)
        models[2][2].bias.add_(5.0)
    assert torch.equal(models[1][2].weight, (values[1][12:20] - 1.0).view(2, 4))
    assert torch.equal(flat[2][-2:], values[2][-2:] + 5.0)
    assert torch.equal(models[0][2].weight.detach().view(-1), values[0][12:20])
    # gradients still reach the parameters
    models[0](x).sum().backward()
    assert models[0][0].weight.grad is not None and models[0][0].bias.grad is None
    mixed = nn.Linear(2, 2)
    mixed.bias.data = mixed.bias.data.double()
    where = [p.data_ptr() for p in mixed.parameters()]
    assert flat_parameters([mixed]) is None and [p.data_ptr() for p in mixed.parameters()] == where
