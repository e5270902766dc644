"""Wall time of one FedSGD workload in Flower's simulation engine and in a plain in-process loop.

Workload: LeNet (DLG init) on mnist-sample, 20 IID clients, 5 rounds; each client takes one
full-batch gradient step per round (FedSGD), the server averages by number of examples. No
defense (``none``), so the numbers measure the engines, not the defense. Flower runs the
example app of examples/flower (its ClientApp with the DefenseMod, its ServerApp's FedAvg
inside DefendedStrategy) with run_simulation on the Ray backend, two client workers.

The in-process side is a minimal FedSGD loop written here (one batch_gradient per client and
round); replace it with gradguard.fl.simulate once the simulator lands. Both sides start from the
same model and data, so their final accuracies must agree (printed as a check).

Usage: PYTHONPATH=src:examples/flower python benchmarks/flower_vs_simulator.py
Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "examples" / "flower")]

from gradguard_mnist import task  # noqa: E402

from gradguard.grads import batch_gradient  # noqa: E402

CLIENTS, ROUNDS, LR, CPUS = 20, 5, 0.1, 2


def in_process() -> float:
    """FedSGD in a plain loop; returns the final held-out accuracy."""
    model = task.build_model()
    parts = [task.partition(i, CLIENTS) for i in range(CLIENTS)]
    sizes = torch.tensor([len(y) for _, y in parts], dtype=torch.float32)
    weights = sizes / sizes.sum()
    for _ in range(ROUNDS):
        grads = [batch_gradient(model, x, y) for x, y in parts]
        with torch.no_grad():
            for i, p in enumerate(model.parameters()):
                p -= LR * sum(w * g[i] for w, g in zip(weights.tolist(), grads))
    return task.evaluate(model)[1]


def flower() -> float:
    """The same workload through Flower's simulation engine; returns the final accuracy."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation
    from gradguard_mnist import server_app
    from gradguard_mnist.client_app import app as client_app

    config = {**task.defaults(), "num-server-rounds": ROUNDS, "min-nodes": CLIENTS, "lr": LR,
              "local-steps": 1, "batch-size": 0, "gradguard.defense": "none"}
    results = {}
    app = ServerApp()

    @app.main()
    def main(grid, context):
        results["result"] = server_app.federate(grid, config)

    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "examples" / "flower"),
                                                os.environ.get("PYTHONPATH", "")])
    run_simulation(server_app=app, client_app=client_app, num_supernodes=CLIENTS,
                   backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": CPUS}})
    return results["result"].evaluate_metrics_serverapp[ROUNDS]["accuracy"]


def main() -> None:
    # One torch thread: on the shared 2-core box two threads per process oversubscribe the
    # cores and made the loop 4x slower in one run. Flower's two workers use one thread each
    # (the example's ClientApp sets it), so Flower gets 2 cores and the loop 1: a ratio in
    # Flower's favour.
    torch.set_num_threads(1)
    task.dataset()  # load once, outside both timings
    start = time.perf_counter()
    accuracy_loop = in_process()
    loop_s = time.perf_counter() - start
    start = time.perf_counter()
    accuracy_flower = flower()
    flower_s = time.perf_counter() - start
    print(json.dumps({"benchmark": "flower_vs_simulator", "clients": CLIENTS, "rounds": ROUNDS,
                      "flower_workers": CPUS, "in_process_threads": 1,
                      "in_process": "minimal FedSGD loop (gradguard.fl.simulate not merged yet)",
                      "in_process_s": round(loop_s, 2), "flower_s": round(flower_s, 2),
                      "flower_over_in_process": round(flower_s / loop_s, 1),
                      "accuracy_in_process": round(accuracy_loop, 4), "accuracy_flower": round(accuracy_flower, 4)}))


if __name__ == "__main__":
    main()
