"""Which noise scale should the server pass to a compensator for FedAvg updates? Prints one JSON line.

One FedAvg round on mnist-sample (10 clients, one local epoch of batch 32 = 13 steps, lr 0.1),
once without noise and once with graddefense (sigma 0.05, k/S = 1/2, no compensation) on the
same batches. The defended aggregate is then compensated with spectral shrinkage at several
scales, and each result's relative error to the clean aggregate is reported. The simulator's
choice, lr * sqrt(T), follows from independent noise at each of the T steps (docs/simulator.md).

    PYTHONPATH=src python benchmarks/compensation_scale.py
"""

from __future__ import annotations

import json
import math

import torch

from gradguard.defenses.compensation import SpectralShrinkage
from gradguard.fl import SimulationConfig
from gradguard.fl.clients import Stopwatch
from gradguard.fl.simulator import client_jobs, prepare, weighted_average
from gradguard.grads import flatten

BASE = dict(dataset="mnist-sample", algorithm="fedavg", clients=10, batch_size=32, lr=0.1, local_epochs=1,
            reproducible_noise=True)


def first_round_aggregate(defense: str, options: dict):
    config = SimulationConfig(**BASE, defense=defense, defense_options=options)
    setup = prepare(config)
    state = {n: t.detach().clone() for n, t in setup.model.state_dict().items()}
    jobs = client_jobs(config, setup.parts, list(range(config.clients)), 0)
    results = setup.trainer.run(state, jobs, Stopwatch())
    weights = torch.tensor([float(j.num_samples) for j in jobs])
    weights /= weights.sum()
    aggregate = [weighted_average([u[k] for u, _ in results], weights) for k in range(len(results[0][0]))]
    return aggregate, weights, len(jobs[0].batches)


def main() -> None:
    torch.set_num_threads(1)
    clean, weights, steps = first_round_aggregate("none", {})
    noisy, _, _ = first_round_aggregate("graddefense", {"sigma": 0.05, "slices": 10, "chosen": 5,
                                                        "compensation": "none"})
    reference = flatten(clean)

    def error(estimate) -> float:
        return float((flatten(estimate) - reference).norm() / reference.norm())

    lr = BASE["lr"]
    scales = {"1": 1.0, "lr": lr, "lr*sqrt(T)": lr * math.sqrt(steps), "lr*T": lr * steps}
    compensator = SpectralShrinkage(0.05, 0.5)
    out = {"steps": steps, "uncompensated": error(noisy)}
    out |= {f"scale={name}": error(compensator.compensate(noisy, weights, scale=s)) for name, s in scales.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
