"""A defense's accuracy cost against ``none`` as more clients join each round: each client's
noise is independent, so the aggregate's noise averages down with the number of clients.

    python benchmarks/clients_accuracy.py --dataset mnist --data-root ../shared/data \\
        --defense graddefense --per-round 10 30 100 [--defense-opt sigma=0.2 ...]

FedAvg with 100 clients (IID), the given numbers sampled per round, 5 local steps at batch
size 32, lr 0.1, LeNet, one torch thread; prints one JSON line with ACC per setting and the
cost in points.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gradguard.fl import SimulationConfig, simulate


def value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--defense", default="graddefense")
    parser.add_argument("--defense-opt", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = {k: value(v) for k, _, v in (o.partition("=") for o in args.defense_opt)}
    rows = []
    for per_round in args.per_round:
        accuracy = {}
        for defense, defense_options in (("none", {}), (args.defense, options)):
            start = time.perf_counter()
            history = simulate(SimulationConfig(
                dataset=args.dataset, data_root=args.data_root, defense=defense, defense_options=defense_options,
                clients=args.clients, fraction=per_round / args.clients, rounds=args.rounds, local_steps=5,
                batch_size=32, lr=0.1, eval_every=args.rounds, seed=args.seed, reproducible_noise=True))
            accuracy[defense] = (history.final_accuracy, time.perf_counter() - start)
        rows.append({"per_round": per_round, "none": accuracy["none"][0], args.defense: accuracy[args.defense][0],
                     "cost_points": 100 * (accuracy["none"][0] - accuracy[args.defense][0]),
                     "seconds": accuracy["none"][1] + accuracy[args.defense][1]})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"benchmark": "clients_accuracy", "dataset": args.dataset, "defense": args.defense,
                      "options": options, "rounds": args.rounds, "clients": args.clients, "rows": rows}))


if __name__ == "__main__":
    main()
