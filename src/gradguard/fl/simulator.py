"""``simulate(config) -> History``: federated training in one process, FedSGD or FedAvg.

A round: sample a fraction of the clients; each runs its local work (one defended batch
gradient for FedSGD, SGD steps on defended gradients for FedAvg); the server averages the
updates with sample-count weights, lets the defense's compensator estimate the clean average,
and updates the global model. Every random draw comes from a generator derived from the seed,
so a run is reproducible bit for bit on CPU, and the global RNG is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import ImageDataset, load_dataset, partition_dirichlet, partition_iid
from ..defenses import Compensator, Defense
from ..grads import Gradient, eval_mode, param_names
from ..models import model_for
from ..rng import make_generator, seeded_global_rng
from .clients import ClientJob, LocalTrainer, Stopwatch, epoch_batches, local_batches, make_trainer
from .config import SimulationConfig
from .history import History, RoundRecord

EVAL_BATCH = 1000


def partition_clients(config: SimulationConfig, labels: Tensor) -> list[Tensor]:
    """Each client's training-set indices, determined by the seed and the partition settings."""
    gen = make_generator(config.seed, "partition")
    if config.partition == "dirichlet":
        return partition_dirichlet(labels, config.clients, config.alpha, gen)
    return partition_iid(len(labels), config.clients, gen)


def build_global_model(config: SimulationConfig, dataset: ImageDataset) -> nn.Module:
    """The initial global model, initialised from the seed without changing the global RNG."""
    with seeded_global_rng(config.seed, "init"):
        return model_for(dataset, config.model, **(config.model_options or {}))


def noise_generator(config: SimulationConfig, client: int, round: int,
                    device: torch.device | None = None) -> torch.Generator:
    """The defense's generator for one (client, round), on ``device``: from OS entropy unless
    ``reproducible_noise`` asks for one derived from the seed."""
    return make_generator(config.seed if config.reproducible_noise else None, "noise", client, round, device=device)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy of ``model``, in eval mode."""
    correct, loss = 0, 0.0
    with eval_mode(model):
        for xb, yb in zip(x.split(EVAL_BATCH), y.split(EVAL_BATCH)):
            out = model(xb)
            correct += int((out.argmax(1) == yb).sum())
            loss += float(F.cross_entropy(out, yb, reduction="sum"))
    return correct / len(y), loss / len(y)


@dataclass
class Setup:
    """Everything a run needs, built (and validated) before the first round."""

    config: SimulationConfig
    dataset: ImageDataset
    model: nn.Module
    defense: Defense
    compensator: Compensator | None
    parts: list[Tensor]
    trainer: LocalTrainer
    device: torch.device = torch.device("cpu")


def prepare(config: SimulationConfig, device: torch.device | str | None = None) -> Setup:
    """Load the data, build the model, the defense and the partition: every configuration error
    surfaces here, before any training. ``device`` (default the CPU) holds the model, the
    training and test images and the defense's generators; the partition, the client sampling
    and the local batches are drawn on the CPU, so every device trains on the same batches."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    dataset = load_dataset(config.dataset, config.data_root, download=config.download)
    model = build_global_model(config, dataset).to(device)
    defense = Defense.from_config(config.defense, **config.defense_options)
    parts = partition_clients(config, dataset.y_train)
    trainer = make_trainer(model, defense, config.algorithm, config.lr, dataset.x_train.to(device),
                           dataset.y_train.to(device), config.vectorized)
    return Setup(config, dataset, model, defense, defense.compensator(), parts, trainer, device)


def client_jobs(config: SimulationConfig, parts: list[Tensor], clients: list[int], round: int,
                device: torch.device | None = None) -> list[ClientJob]:
    """The local batches and generators of this round's clients (per (client, round) generators,
    so the schedule does not depend on which trainer runs it or in what order)."""
    jobs = []
    for c in clients:
        gen = make_generator(config.seed, "batches", c, round)
        if config.algorithm == "fedsgd":
            batches = local_batches(parts[c], config.batch_size, 1, gen)
        elif config.local_steps is not None:
            batches = local_batches(parts[c], config.batch_size, config.local_steps, gen)
        else:
            batches = epoch_batches(parts[c], config.batch_size, config.local_epochs, gen)
        jobs.append(ClientJob(c, round, batches, noise_generator(config, c, round, device), parts[c]))
    return jobs


def weighted_average(tensors: list[Tensor], weights: Tensor) -> Tensor:
    return torch.tensordot(weights, torch.stack(tensors), dims=1)


def noise_scale(config: SimulationConfig, jobs: list[ClientJob], weights: Tensor) -> float:
    """The factor by which the aggregate's per-element noise std differs from a FedSGD average.

    A FedAvg update is -lr times the sum of T defended gradients whose noise is drawn anew at
    every step, so its noise variance is lr^2 T times one gradient's; with unequal T_i the
    weighted average has variance lr^2 sum_i w_i^2 T_i sigma'^2, i.e. scale
    lr sqrt(sum w_i^2 T_i / sum w_i^2) relative to the sigma'^2 sum w_i^2 the compensator assumes.
    """
    if config.algorithm == "fedsgd":
        return 1.0
    steps = torch.tensor([float(len(j.batches)) for j in jobs], dtype=weights.dtype, device=weights.device)
    w2 = weights.square()
    return config.lr * math.sqrt(float((w2 * steps).sum() / w2.sum()))


def server_step(setup: Setup, state: dict[str, Tensor], jobs: list[ClientJob],
                results: list[tuple[Gradient, dict[str, Tensor]]]) -> dict[str, Tensor]:
    """Average the updates with sample-count weights, compensate, and update the global state."""
    config = setup.config
    weights = torch.tensor([float(j.num_samples) for j in jobs], device=setup.device)
    weights = weights / weights.sum()
    names = param_names(setup.model)
    aggregate = [weighted_average([u[k] for u, _ in results], weights) for k in range(len(names))]
    if setup.compensator is not None:
        aggregate = setup.compensator.compensate(aggregate, weights, scale=noise_scale(config, jobs, weights))
    step = -config.lr if config.algorithm == "fedsgd" else 1.0
    new_state = dict(state)
    for name, a in zip(names, aggregate):
        new_state[name] = state[name] + step * a
    for name in results[0][1]:
        new_state[name] = weighted_average([b[name] for _, b in results], weights)
    return new_state


def simulate(config: SimulationConfig, *, on_round: Callable[[RoundRecord], None] | None = None,
             device: torch.device | str | None = None) -> History:
    """Train ``config.model`` on ``config.dataset`` with ``config.defense`` by federated learning
    and record the test accuracy and the wall time of every round.

    ``on_round`` is called after each round with its record (e.g. for a progress bar);
    ``device`` is where the model trains (default the CPU, see :func:`prepare`).
    """
    return train(prepare(config, device), on_round=on_round)


def train(setup: Setup, *, on_round: Callable[[RoundRecord], None] | None = None) -> History:
    """Run the rounds of a prepared simulation (:func:`simulate` = ``train(prepare(config))``)."""
    config, model, data = setup.config, setup.model, setup.dataset
    state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    history = History(config.model_dump(mode="json"), setup.trainer.name)
    sampler = make_generator(config.seed, "sampling")
    for r in range(config.rounds):
        clock = Stopwatch()
        chosen = torch.randperm(config.clients, generator=sampler)[: config.clients_per_round].sort().values
        jobs = client_jobs(config, setup.parts, chosen.tolist(), r, setup.device)
        results = setup.trainer.run(state, jobs, clock)
        with clock.phase("server"):
            state = server_step(setup, state, jobs, results)
        accuracy = loss = None
        if (r + 1) % config.eval_every == 0 or r + 1 == config.rounds:
            model.load_state_dict(state)
            accuracy, loss = evaluate(model, data.x_test.to(setup.device), data.y_test.to(setup.device))
        record = RoundRecord(r + 1, clock.seconds["client"], clock.seconds["defense"], clock.seconds["server"],
                             accuracy, loss)
        history.rounds.append(record)
        if on_round is not None:
            on_round(record)
    model.load_state_dict(state)
    history.final_state = state
    return history
