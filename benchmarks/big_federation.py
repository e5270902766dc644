"""Round time of a big federation: gradguard's vectorised simulator and Flower's simulation engine
(the example app of examples/flower: its ClientApp behind the DefenseMod, its ServerApp's FedAvg
inside DefendedStrategy), at 100 and 1,000 clients.

Workload, the same on both sides: LeNet (DLG init) on mnist-sample (4,000 training images split
IID, so 40 or 4 per client), every client sampled every round, FedSGD (one full-batch gradient per
client and round), graddefense with its defaults (relative noise sigma 0.2, clip 1, 10 equal
slices, all chosen, no compensation); the server evaluates on the 1,000 test images after each
round.

- simulator: ``gradguard.fl.simulate``, clients vmapped (batch <= 8) or looped; the round time
  is the mean of its per-round wall times (ART: clients, defense and server).
- flower: ``flwr.simulation.run_simulation`` on the Ray backend with ``--flower-workers`` client
  workers of one CPU each; round r's time is the time between the server's evaluations of rounds
  r-1 and r (the first round includes starting the workers, so it is reported apart and the
  steady-state figure is the mean of the later rounds).

Usage: OMP_NUM_THREADS=1 PYTHONPATH=src:examples/flower python benchmarks/big_federation.py \
           [--clients 100 1000] [--rounds 3] [--flower-rounds 3] [--engines simulator flower]
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "examples" / "flower")]

DEFENSE = {"sigma": 0.2, "slices": 10, "chosen": 10, "sensitivity": "uniform", "compensation": "none"}


def simulator(clients: int, rounds: int) -> dict:
    from gradguard.fl import SimulationConfig, simulate

    config = SimulationConfig(dataset="mnist-sample", clients=clients, algorithm="fedsgd", batch_size=4000 // clients,
                              rounds=rounds, defense="graddefense", reproducible_noise=True, lr=0.1)
    start = time.perf_counter()
    history = simulate(config)
    return {"engine": "simulator", "clients": clients, "rounds": rounds, "trainer": history.trainer,
            "round_s": round(history.art, 3), "wall_s": round(time.perf_counter() - start, 2),
            "accuracy": round(history.final_accuracy, 4)}


def flower(clients: int, rounds: int, workers: int) -> dict:
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation
    from gradguard_mnist import server_app, task
    from gradguard_mnist.client_app import app as client_app

    config = {**task.defaults(), "num-server-rounds": rounds, "min-nodes": clients, "lr": 0.1, "local-steps": 1,
              "batch-size": 0, "gradguard.defense": "graddefense",
              **{f"gradguard.graddefense.{k}": v for k, v in DEFENSE.items()}}
    stamps: list[float] = []
    evaluate = server_app.central_evaluate

    def timed_evaluate(server_round, arrays):
        metrics = evaluate(server_round, arrays)
        stamps.append(time.perf_counter())
        return metrics

    results = {}
    app = ServerApp()

    @app.main()
    def main(grid, context):
        server_app.central_evaluate = timed_evaluate
        try:
            results["result"] = server_app.federate(grid, config)
        finally:
            server_app.central_evaluate = evaluate

    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "examples" / "flower"),
                                                os.environ.get("PYTHONPATH", "")])
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_worker_register_timeout_seconds", "600")
    start = time.perf_counter()
    run_simulation(server_app=app, client_app=client_app, num_supernodes=clients,
                   backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": workers}})
    wall = time.perf_counter() - start
    rounds_s = [b - a for a, b in zip(stamps, stamps[1:])]  # stamps[0]: the initial model's evaluation
    steady = rounds_s[1:] or rounds_s
    accuracy = results["result"].evaluate_metrics_serverapp[rounds]["accuracy"]
    return {"engine": "flower", "clients": clients, "rounds": rounds, "workers": workers,
            "first_round_s": round(rounds_s[0], 2), "round_s": round(sum(steady) / len(steady), 2),
            "wall_s": round(wall, 2), "accuracy": round(float(accuracy), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=3, help="simulator rounds")
    parser.add_argument("--flower-rounds", type=int, default=3, help="Flower rounds (at least 2 for a steady round)")
    parser.add_argument("--flower-workers", type=int, default=2)
    parser.add_argument("--engines", nargs="+", default=["simulator", "flower"], choices=["simulator", "flower"])
    args = parser.parse_args()
    torch.set_num_threads(1)  # the shared 2-core machine: one thread per process (docs/scale.md)
    runs = []
    for clients in args.clients:
        if "simulator" in args.engines:
            runs.append(simulator(clients, args.rounds))
        if "flower" in args.engines:
            runs.append(flower(clients, args.flower_rounds, args.flower_workers))
    print(json.dumps({"benchmark": "big_federation", "cpus": os.cpu_count(), "torch_threads": 1,
                      "load_1min": round(os.getloadavg()[0], 2), "runs": runs}))


if __name__ == "__main__":
    main()
