"""Local training of the clients of one round: a per-client loop, and the same computation
vectorised over clients with torch.func (``functional_call`` + ``grad`` + ``vmap``).

Both trainers take the same :class:`ClientJob` list and return the same updates: for FedSGD
the client's defended gradient of its one batch, for FedAvg the difference between its final
and the global parameters after SGD steps on defended gradients. The defense is applied to
every local gradient before it is used or sent, one client at a time, with that client's
generator, so the two trainers are interchangeable (``tests/test_fl_vectorized.py``).
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..defenses import Defense, DefenseContext
from ..grads import Gradient, batch_gradient, has_batchnorm, is_batchnorm, named_params, trainable_parameters

Params = dict[str, Tensor]


@dataclass
class ClientJob:
    """One sampled client's work in one round: its local batches (dataset indices, one tensor
    per local step), its defense generator, and the indices of all its data."""

    client: int
    round: int
    batches: list[Tensor]
    generator: torch.Generator
    data_indices: Tensor

    @property
    def num_samples(self) -> int:
        """The client's sample count, its aggregation weight."""
        return len(self.data_indices)

    @property
    def signature(self) -> tuple[int, ...]:
        """Batch sizes per step: clients with equal signatures can run in lockstep."""
        return tuple(len(b) for b in self.batches)


@dataclass
class Stopwatch:
    """Wall time accumulated per phase (client compute, defense, server)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


def local_batches(indices: Tensor, batch_size: int, steps: int, generator: torch.Generator) -> list[Tensor]:
    """``steps`` batches drawn without replacement from successive shuffles of ``indices``;
    every batch has min(batch_size, len(indices)) samples."""
    size = min(batch_size, len(indices))
    epochs = -(-steps * size // len(indices))
    order = torch.cat([indices[torch.randperm(len(indices), generator=generator)] for _ in range(epochs)])
    return list(order[: steps * size].split(size))


def epoch_batches(indices: Tensor, batch_size: int, epochs: int, generator: torch.Generator) -> list[Tensor]:
    """``epochs`` shuffled passes over ``indices`` in batches of ``batch_size`` (the last one of
    each pass may be smaller, so every sample is seen once per epoch)."""
    return [batch for _ in range(epochs)
            for batch in indices[torch.randperm(len(indices), generator=generator)].split(batch_size)]


class LocalTrainer:
    """Runs the clients of a round one after the other on a working copy of the model."""

    name = "looped"

    def __init__(self, model: nn.Module, defense: Defense, algorithm: str, lr: float, x: Tensor, y: Tensor):
        self.model, self.defense, self.algorithm, self.lr = model, defense, algorithm, lr
        self.x, self.y = x, y
        self._local_data: dict[int, tuple[Tensor, Tensor]] = {}

    def run(self, global_state: dict[str, Tensor], jobs: list[ClientJob],
            clock: Stopwatch) -> list[tuple[Gradient, dict[str, Tensor]]]:
        """Each job's update and its final BatchNorm statistics (empty for models without BN)."""
        return [self._run_client(global_state, job, clock) for job in jobs]

    def _run_client(self, global_state, job, clock):
        model = self.model
        model.load_state_dict(global_state)
        model.train()
        params = trainable_parameters(model)
        for step, batch in enumerate(job.batches):
            with clock.phase("client"):
                x, y = self.x[batch], self.y[batch]
                grads = batch_gradient(model, x, y)
            with clock.phase("defense"):
                grads = self.defense.defend(grads, self.context(job, model, x, y, step))
            if self.algorithm == "fedsgd":
                update = grads
            else:
                with clock.phase("client"), torch.no_grad():
                    for p, g in zip(params, grads):
                        p.sub_(self.lr * g)
        if self.algorithm == "fedavg":
            update = [p - global_state[n] for n, p in named_params(model).items()]
        return update, bn_statistics(model)

    def context(self, job: ClientJob, model: nn.Module | None, x: Tensor, y: Tensor, step: int) -> DefenseContext:
        """What the defense sees; the client's local data is gathered (once) only for defenses
        that read more than the gradient."""
        local = None
        if self.defense.reads_context():
            if job.client not in self._local_data:
                self._local_data[job.client] = (self.x[job.data_indices], self.y[job.data_indices])
            local = self._local_data[job.client]
        return DefenseContext(model=model, x=x, y=y, generator=job.generator, round=job.round,
                              client=job.client, local_data=local, step=step)


class VectorizedTrainer(LocalTrainer):
    """Runs the clients of a round in lockstep: their parameters are stacked along a leading
    client axis and one vmapped ``grad`` computes every client's batch gradient at once.

    Clients whose batch sizes differ (unequal partitions) are grouped by their sequence of
    batch sizes, one vmapped computation per group. The defense still runs per client on the
    unstacked gradient (cheap next to the gradient itself); for defenses that read the model
    (``needs_batch``) a scratch copy of the model is loaded with that client's parameters.
    Models with BatchNorm, whose running statistics vmap cannot update, use the loop instead.
    """

    name = "vectorized"

    def __init__(self, model, defense, algorithm, lr, x, y):
        super().__init__(model, defense, algorithm, lr, x, y)
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}
        self._scratch = None

        def loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
            return F.cross_entropy(functional_call(model, (params, self.buffers), (x,)), y)

        self._grads = vmap(grad(loss))
        self._grads_shared_params = vmap(grad(loss), in_dims=(None, 0, 0))

    def run(self, global_state, jobs, clock):
        self.model.train()
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[job.signature].append(i)
        results: list = [None] * len(jobs)
        for members in groups.values():
            for i, update in zip(members, self._run_group(global_state, [jobs[i] for i in members], clock)):
                results[i] = (update, {})
        return results

    def _run_group(self, global_state, jobs: list[ClientJob], clock: Stopwatch) -> list[Gradient]:
        names = list(named_params(self.model))
        start = {n: global_state[n] for n in names}
        params = {n: p.expand(len(jobs), *p.shape) for n, p in start.items()}
        for step in range(len(jobs[0].batches)):
            with clock.phase("client"):
                idx = torch.stack([job.batches[step] for job in jobs])
                x, y = self.x[idx], self.y[idx]
                # every client starts from the global model: no need to batch the parameters
                grads = self._grads_shared_params(start, x, y) if step == 0 else self._grads(params, x, y)
            with clock.phase("defense"):
                grads = self._defend(params, grads, jobs, x, y, step)
            if self.algorithm == "fedavg":
                with clock.phase("client"):
                    params = {n: params[n] - self.lr * grads[n] for n in names}
        if self.algorithm == "fedsgd":
            return [[grads[n][i] for n in names] for i in range(len(jobs))]
        return [[params[n][i] - start[n] for n in names] for i in range(len(jobs))]

    def _defend(self, params: Params, grads: Params, jobs: list[ClientJob], x: Tensor, y: Tensor,
                step: int) -> Params:
        names = list(grads)
        defended = []
        for i, job in enumerate(jobs):
            model = self._client_model({n: p[i] for n, p in params.items()}) if self.defense.reads_context() else None
            context = self.context(job, model, x[i], y[i], step)
            defended.append(self.defense.defend([grads[n][i] for n in names], context))
        return {n: torch.stack([d[k] for d in defended]) for k, n in enumerate(names)}

    def _client_model(self, params: Params) -> nn.Module:
        """A scratch copy of the model holding one client's current parameters."""
        if self._scratch is None:
            self._scratch = copy.deepcopy(self.model)
        with torch.no_grad():
            for name, p in self._scratch.named_parameters():
                p.copy_(params[name])
        return self._scratch


def bn_statistics(model: nn.Module) -> dict[str, Tensor]:
    """The running statistics of every BatchNorm layer, which the server averages with the update weights."""
    return {f"{prefix}.{n}" if prefix else n: b.detach().clone()
            for prefix, m in model.named_modules() if is_batchnorm(m)
            for n, b in m.named_buffers(recurse=False) if b.is_floating_point()}


def make_trainer(model: nn.Module, defense: Defense, algorithm: str, lr: float, x: Tensor, y: Tensor,
                 vectorize: bool) -> LocalTrainer:
    """The vectorised trainer where it applies, else the per-client loop."""
    cls = VectorizedTrainer if vectorize and not has_batchnorm(model) else LocalTrainer
    return cls(model, defense, algorithm, lr, x, y)
