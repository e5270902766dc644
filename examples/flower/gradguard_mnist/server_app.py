"""The ServerApp: FedAvg wrapped in gradguard's DefendedStrategy, evaluated on the held-out set."""

from __future__ import annotations

import json

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Result

from gradguard.flower import DefendedStrategy, DefenseSettings
from gradguard.grads import param_names

from . import task

app = ServerApp()


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """The global model's loss and accuracy on the held-out test set."""
    model = task.build_model()
    model.load_state_dict(arrays.to_torch_state_dict())
    loss, accuracy = task.evaluate(model)
    return MetricRecord({"loss": loss, "accuracy": accuracy})


def make_strategy(config: dict) -> DefendedStrategy:
    """FedAvg wrapped with the defense named by the ``gradguard.*`` keys of ``config``."""
    settings = DefenseSettings.from_configs(config, {})
    fedavg = FedAvg(fraction_evaluate=0.0, min_train_nodes=int(config["min-nodes"]),
                    min_available_nodes=int(config["min-nodes"]))
    # The clients defend (global - local) / (lr * steps): their mean gradient over the round.
    return DefendedStrategy(fedavg, settings.defense, scale=float(config["lr"]) * int(config["local-steps"]),
                            keys=param_names(task.build_model()), **settings.options)


def federate(grid: Grid, config: dict, strategy: DefendedStrategy | None = None) -> Result:
    """Train for ``num-server-rounds`` rounds with ``strategy`` (by default :func:`make_strategy`)."""
    strategy = strategy if strategy is not None else make_strategy(config)
    model = task.build_model()
    train_config = ConfigRecord({k: config[k] for k in ("lr", "local-steps", "batch-size")})
    return strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                          num_rounds=int(config["num-server-rounds"]), train_config=train_config,
                          evaluate_fn=central_evaluate)


def summary(config: dict, accuracy: dict[int, float]) -> str:
    """The run in a few readable lines: what was trained with which defense, then the held-out
    accuracy before training and after each round (percentages, not raw floats)."""
    scale = float(config["lr"]) * int(config["local-steps"])  # as make_strategy sets it
    settings = DefenseSettings.from_configs(config, {}).model_copy(update={"scale": scale})
    rounds = sorted(accuracy)
    steps = " -> ".join(f"{100 * accuracy[r]:.1f}%" + (" (start)" if r == 0 else "") for r in rounds)
    return (f"gradguard-mnist: {len(rounds) - 1} rounds of FedAvg on {task.DATASET}, at least {config['min-nodes']} "
            f"clients, defense {settings.describe()}\n"
            f"held-out accuracy by round: {steps}\n"
            f"final held-out accuracy: {100 * accuracy[rounds[-1]]:.1f}% after round {rounds[-1]}")


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = task.run_config(context)
    result = federate(grid, config)
    accuracy = {r: m["accuracy"] for r, m in result.evaluate_metrics_serverapp.items()}
    print(summary(config, accuracy))
    if config["result-file"]:
        with open(str(config["result-file"]), "w") as f:
            json.dump({"accuracy": accuracy, "defense": config["gradguard.defense"]}, f)
