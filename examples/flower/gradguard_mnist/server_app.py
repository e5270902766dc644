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


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = task.run_config(context)
    result = federate(grid, config)
    accuracy = {r: m["accuracy"] for r, m in result.evaluate_metrics_serverapp.items()}
    print(f"gradguard-mnist: held-out accuracy by round {accuracy}")
    if config["result-file"]:
        with open(str(config["result-file"]), "w") as f:
            json.dump({"accuracy": accuracy, "defense": config["gradguard.defense"]}, f)
