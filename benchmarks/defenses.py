"""Cost of the defenses inside federated training, measured side by side in one run.

Client side: the simulator's own clocks (``defense_s`` / ``client_s`` of each round, the
figures ``gradguard train`` reports) for ``none``, ``dp-gaussian`` and ``graddefense`` at their
defaults, LeNet, 10 clients, FedAvg with batch 32, on mnist-sample (one local epoch, 13 steps
per client) and on MNIST (``--mnist-steps`` local steps per client, 20 by default: a full
epoch is 188 steps and the ratio is per step), interleaved defense after defense, repeated.
Targets: graddefense <= 3% of the clients' training time, dp-gaussian <= 2%.

Beside them, the floor that no reorganisation removes, per client and local step: one draw of
P Gaussian numbers from torch's CPU generator (every noise defense draws them) and one keyed
BLAKE3 hash of the P float32 gradient seeding a generator (graddefense's memoised noise,
``gradguard.rng.keyed_generator``), each as a share of one
client's training step (a LeNet batch gradient and SGD step), timed in a loop right after a
backward pass, as in training.

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
import time
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


def floor(dataset_name: str, data_root: Path, clients: int = 10, repeats: int = 30) -> dict:
    """The per-client-step cost of a Gaussian draw and of a keyed hash of the gradient, in
    percent of one client step (batch gradient + SGD update), timed as the simulator meets
    them: ``clients`` steps, then their ``clients`` draws (or hashes); medians over ``repeats``."""
    from gradguard.grads import batch_gradient
    from gradguard.models import model_for
    from gradguard.rng import SECRET_BYTES, keyed_generator

    dataset = load_dataset(dataset_name, data_root)
    model = model_for(dataset, "lenet", dlg_init=True)
    x, y = dataset.x_train[:32], dataset.y_train[:32]
    generator, key = torch.Generator().manual_seed(0), bytes(SECRET_BYTES)

    def steps() -> tuple[float, list[torch.Tensor]]:
        start, flats = time.perf_counter(), []
        for _ in range(clients):
            grads = batch_gradient(model, x, y)
            with torch.no_grad():
                for p, g in zip(model.parameters(), grads):
                    p.sub_(1e-6 * g)
            flats.append(torch.cat([g.reshape(-1) for g in grads]))
        return time.perf_counter() - start, flats

    step, draw, digest = [], [], []
    for _ in range(repeats):
        seconds, flats = steps()
        step.append(seconds)
        start = time.perf_counter()
        for flat in flats:
            torch.normal(0.0, 1.0, (flat.numel(),), generator=generator)
        draw.append(time.perf_counter() - start)
        step.append(steps()[0])
        start = time.perf_counter()
        for flat in flats:
            keyed_generator(key, flat.numpy().data)
        digest.append(time.perf_counter() - start)
    base = statistics.median(step)
    return {"parameters": len(flats[0]), "gaussian_draw_pct": round(100 * statistics.median(draw) / base, 2),
            "keyed_hash_pct": round(100 * statistics.median(digest) / base, 2)}


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
        result["floor_per_client_step"] = floor("mnist-sample", args.data_root)
    if "server" in args.parts:
        result["server_phase_vs_round"] = server_side(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
