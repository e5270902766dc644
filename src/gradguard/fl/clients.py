"""Local training of the clients of one round: a per-client loop, and the same computation
vectorised over clients with torch.func (``functional_call`` + ``grad`` + ``vmap``).

Both trainers take the same :class:`ClientJob` list and return the same updates: for FedSGD
the client's defended gradient of its one batch, for FedAvg the difference between its final
and the global parameters after SGD steps on defended gradients. The defense is applied to
every local gradient before it is used or sent, with that client's generator; the looped
trainer defends the clients of a local step in one :meth:`Defense.defend_rows` call, whose rows
equal one-client calls, and so does the vectorised one for defenses that read only the
gradient, so the two trainers are interchangeable (``tests/test_fl_vectorized.py``).
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
from ..grads import (
    Gradient,
    batch_gradient,
    flatten,
    flatten_batched,
    has_batchnorm,
    is_batchnorm,
    named_params,
    trainable_parameters,
    unflatten,
)

Params = dict[str, Tensor]

#: Clients trained side by side by the looped trainer, each on its own copy of the model ...
LOCKSTEP_CLIENTS = 16
#: ... and the most parameters such a group holds in all (float32: 128 MiB)
LOCKSTEP_FLOATS = 2**25


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
    """Runs the clients of a round side by side, each on its own copy of the model: at every
    local step each client computes its batch gradient, then one :meth:`Defense.defend_rows`
    call defends them all, then each takes its SGD step.

    Per client this is the same computation, in the same order, as training the clients one
    after the other (each has its own model and its own generator; a model that draws from the
    global RNG, such as dropout, now draws its masks step by step across the clients), but the
    defense is called once per step for up to :data:`LOCKSTEP_CLIENTS` clients instead of once
    per client and step: right after the backward passes each of its tensor operations costs
    tens of microseconds, which made the calls most of a cheap defense's cost. The copies of the
    model are kept between rounds; a group holds at most :data:`LOCKSTEP_FLOATS` parameters
    in all (at least one client), so a large model trains one client at a time.
    """

    name = "looped"

    def __init__(self, model: nn.Module, defense: Defense, algorithm: str, lr: float, x: Tensor, y: Tensor):
        self.model, self.defense, self.algorithm, self.lr = model, defense, algorithm, lr
        self.x, self.y = x, y
        self._local_data: dict[int, tuple[Tensor, Tensor]] = {}
        self._copies: list[nn.Module] = [model]
        self._flat: Tensor | None = None  # row i: copy i's trainable parameters (their storage)
        self._flat_rows = 0  # how many copies _flat was built for
        size = sum(p.numel() for p in trainable_parameters(model))
        self.group = max(1, min(LOCKSTEP_CLIENTS, LOCKSTEP_FLOATS // max(size, 1)))

    def run(self, global_state: dict[str, Tensor], jobs: list[ClientJob],
            clock: Stopwatch) -> list[tuple[Gradient, dict[str, Tensor]]]:
        """Each job's update and its final BatchNorm statistics (empty for models without BN)."""
        results: list[tuple[Gradient, dict[str, Tensor]]] = []
        for start in range(0, len(jobs), self.group):
            results += self._run_group(global_state, jobs[start:start + self.group], clock)
        return results

    def _models(self, count: int) -> list[nn.Module]:
        if len(self._copies) < count or self._flat_rows != len(self._copies):
            while len(self._copies) < count:
                self._copies.append(copy.deepcopy(self.model))
            self._flat, self._flat_rows = flat_parameters(self._copies), len(self._copies)
        return self._copies[:count]

    def _run_group(self, global_state, jobs: list[ClientJob], clock: Stopwatch):
        models = self._models(len(jobs))
        flat = self._flat
        for model in models:
            model.load_state_dict(global_state)
            model.train()
        params = [trainable_parameters(model) for model in models]
        updates: list[Gradient | None] = [None] * len(jobs)
        for step in range(max(len(job.batches) for job in jobs)):
            active = [i for i, job in enumerate(jobs) if step < len(job.batches)]
            with clock.phase("client"):
                batches = [(self.x[jobs[i].batches[step]], self.y[jobs[i].batches[step]]) for i in active]
                grads = [batch_gradient(models[i], x, y) for i, (x, y) in zip(active, batches)]
            with clock.phase("defense"):
                contexts = [self.context(jobs[i], models[i], x, y, step) for i, (x, y) in zip(active, batches)]
                rows = flatten([g for client in grads for g in client]).view(len(active), -1)
                defended = self.defense.defend_rows(rows, grads[0], contexts)
            if self.algorithm == "fedsgd":
                with clock.phase("client"):
                    for i, row in zip(active, defended):
                        updates[i] = unflatten(row, grads[0])
                continue
            with clock.phase("client"), torch.no_grad():
                if flat is None:  # parameters of mixed dtypes or devices: tensor by tensor
                    for i, row in zip(active, defended):
                        for p, g in zip(params[i], unflatten(row, grads[0])):
                            p.sub_(self.lr * g)
                elif len(active) == len(jobs):  # every client's SGD step in one operation
                    flat[: len(jobs)].sub_(self.lr * defended)
                else:
                    for i, row in zip(active, defended):
                        flat[i].sub_(self.lr * row)
        results = []
        for i, model in enumerate(models):
            if self.algorithm == "fedavg":
                updates[i] = [p - global_state[n] for n, p in named_params(model).items()]
            update = updates[i]
            assert update is not None
            results.append((update, bn_statistics(model)))
        return results

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
    batch sizes, one vmapped computation per group. A defense that reads only the gradient
    defends the group's step in one :meth:`Defense.defend_rows` call; for one that reads the
    model (:meth:`Defense.reads_context`) a scratch copy of the model is loaded with each
    client's parameters in turn.
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
        if not self.defense.reads_context():  # the gradients alone: every client in one call
            like = [grads[n][0] for n in names]
            rows = flatten_batched([grads[n] for n in names])
            together = self.defense.defend_rows(rows, like, [self.context(job, None, x[i], y[i], step)
                                                             for i, job in enumerate(jobs)])
            return {n: column.reshape(len(jobs), *g.shape)
                    for n, g, column in zip(names, like, together.split([g.numel() for g in like], dim=1))}
        defended = []
        for i, job in enumerate(jobs):
            model = self._client_model({n: p[i] for n, p in params.items()})
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


def flat_parameters(models: list[nn.Module]) -> Tensor | None:
    """Move the trainable parameters of ``models`` (copies of one model) into one (len(models), P)
    matrix whose row i holds model i's, in :func:`flatten` order, each parameter becoming a view
    of its row; returns the matrix, or None (nothing moved) when the parameters differ in dtype
    or device. The SGD steps of a lockstep group are then one operation on the matrix, with the
    defended rows as they come, instead of one per client and tensor after splitting each row
    (right after the backward passes each of those costs microseconds on a cold cache)."""
    params = [trainable_parameters(model) for model in models]
    if not params[0] or len({(p.dtype, p.device) for p in params[0]}) != 1:
        return None
    flat = torch.empty(len(models), sum(p.numel() for p in params[0]), dtype=params[0][0].dtype,
                       device=params[0][0].device)
    with torch.no_grad():
        for row, model_params in zip(flat, params):
            for p, view in zip(model_params, unflatten(row, model_params)):
                view.copy_(p)
                p.data = view  # the parameter now lives in the matrix (it stays a leaf)
    return flat


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
