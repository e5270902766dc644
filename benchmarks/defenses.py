"""Cost of the defenses inside federated training, measured side by side in one run.

Client side: the simulator's own clocks (``defense_s`` / ``client_s`` of each round, the
figures ``gradguard train`` reports) for ``none``, ``dp-gaussian`` and ``graddefense`` at their
defaults, LeNet, 10 clients, FedAvg with batch 32, on mnist-sample (one local epoch, 13 steps
per client) and on MNIST (``--mnist-steps`` local steps per client, 20 by default: a full
epoch is 188 steps and the ratio is per step), interleaved defense after defense, repeated.
Targets: graddefense <= 3% of the clients' training time, dp-gaussian <= 2%.

Server side: the share of a round that the server phase (aggregation, compensation and the
global step) takes with graddefense's compensation ``shrink``, ``mp`` and ``mp-original`` (and
``none`` for reference), at 10 and 100 clients, FedAvg and FedSGD on mnist-sample. The server
phase bounds compensation's cost from above (median over rounds, the first left out: it pays
one-off costs such as LAPACK's first call). Target: <= 5% of a round.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/defenses.py --data-root ../shared/data

prints one JSON line (medians over ``--repeats``; ratios in percent). Without MNIST under the
data root the MNIST part is skipped. On a machine shared with other jobs keep one thread: each
defense step runs right after a backward pass, on cold caches, and contention inflates both
sides of every ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from gradguard.data import load_dataset
from gradguard.errors import DatasetNotFoundError
from gradguard.fl import SimulationConfig, simulate

CLIENT_DEFENSES = ("none", "dp-gaussian", "graddefense")
TARGETS = {"dp-gaussian": 2.0, "graddefense": 3.0}
COMPENSATIONS = ("none", "shrink", "mp", "mp-original")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=Path(os.environ.get("GRADGUARD_DATA", "../shared/data")))
    p.add_argument("--rounds", type=int, default=3, help="rounds per run (client side)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    p.add_argument("--mnist-steps", type=int, default=20, help="local steps per client and round on MNIST")
    p.add_argument("--server-rounds", type=int, default=6, help="rounds per run (server side; the first is left out)")
    p.add_argument("--parts", nargs="+", default=["client", "server"], choices=["client", "server"])
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def run(clients: int = 10, **options) -> dict:
    """The run's summary, plus the median share of a round the server phase took (the first
    round left out: it pays one-off costs such as LAPACK's first call)."""
    history = simulate(SimulationConfig(clients=clients, eval_every=10_000, **options))
    shares = [r.server_s / r.seconds for r in (history.rounds[1:] or history.rounds)]
    return history.summary() | {"server_share": statistics.median(shares)}


def client_side(args, datasets: dict[str, dict]) -> dict:
    ratios: dict[str, dict[str, list[float]]] = {d: {name: [] for name in CLIENT_DEFENSES} for d in datasets}
    for _ in range(args.repeats):
        for dataset, options in datasets.items():
            for name in CLIENT_DEFENSES:  # interleaved: every defense sees the same machine load
                summary = run(dataset=dataset, data_root=args.data_root, defense=name, rounds=args.rounds, **options)
                ratios[dataset][name].append(100 * summary["defense_s"] / summary["client_s"])
    out: dict = {}
    for dataset, per_defense in ratios.items():
        out[dataset] = {f"{name}_pct": round(statistics.median(values), 2) for name, values in per_defense.items()}
        out[dataset]["met"] = {name: out[dataset][f"{name}_pct"] <= target for name, target in TARGETS.items()}
    return out


def server_side(args) -> dict:
    out: dict = {}
    for clients in (10, 100):
        for algorithm in ("fedavg", "fedsgd"):
            shares: dict[str, list[float]] = {c: [] for c in COMPENSATIONS}
            for _ in range(args.repeats):
                for compensation in COMPENSATIONS:
                    summary = run(dataset="mnist-sample", defense="graddefense", algorithm=algorithm,
                                  defense_options={"compensation": compensation}, rounds=args.server_rounds,
                                  clients=clients)
                    shares[compensation].append(100 * summary["server_share"])
            out[f"{clients}_clients_{algorithm}"] = {f"{c}_pct": round(statistics.median(v), 2)
                                                     for c, v in shares.items()}
    worst = max(v for entry in out.values() for k, v in entry.items() if k != "none_pct")
    out["worst_pct"] = worst
    out["met"] = worst <= 5.0
    return out


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    datasets: dict[str, dict] = {"mnist-sample": {}}
    try:
        load_dataset("mnist", args.data_root)
        datasets["mnist"] = {"local_steps": args.mnist_steps}
    except DatasetNotFoundError:
        pass
    result: dict = {"threads": torch.get_num_threads(), "repeats": args.repeats, "targets_pct": TARGETS}
    if "client" in args.parts:
        result["client_defense_vs_training"] = client_side(args, datasets)
    if "server" in args.parts:
        result["server_phase_vs_round"] = server_side(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
