"""`gradguard train`: simulated federated training with a defense; writes ACC/ART results and a plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from .app import command
from .options import (
    add_data_options,
    add_model_option,
    add_out_option,
    add_seed_option,
    claim_out,
    parse_key_values,
)
from .scale import add_device_option

RESULT_FILES = ("history.json", "history.csv", "accuracy.png")


def configure(p: argparse.ArgumentParser) -> None:
    from ..fl.config import VMAP_MAX_BATCH, SimulationConfig  # defaults live in the config, stated once

    add_data_options(p)
    add_model_option(p)
    p.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, repeatable (e.g. width=16 for convnet); lenet defaults to dlg_init=true")
    p.add_argument("--defense", default="none",
                   help="defense name (see `gradguard defenses`), e.g. none or graddefense")
    p.add_argument("--defense-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="defense option, repeatable (e.g. sigma=0.1)")
    p.add_argument("--algorithm", choices=["fedsgd", "fedavg"], default="fedavg")
    p.add_argument("--clients", type=int, default=10, help="number of clients")
    p.add_argument("--fraction", type=float, default=1.0, help="share of clients sampled per round, in (0, 1]")
    p.add_argument("--batch-size", type=int, default=32, help="local batch size")
    p.add_argument("--lr", type=float, default=0.1, help="client learning rate (FedAvg) or server step (FedSGD)")
    p.add_argument("--rounds", type=int, default=SimulationConfig.model_fields["rounds"].default,
                   help="federated rounds (default %(default)s)")
    p.add_argument("--local-epochs", type=int, default=1, help="FedAvg local epochs per round")
    p.add_argument("--local-steps", type=int, default=None, help="FedAvg local steps per round (overrides epochs)")
    p.add_argument("--partition", choices=["iid", "dirichlet"], default="iid")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration for --partition dirichlet")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every this many rounds")
    add_seed_option(p)
    add_device_option(p)
    p.add_argument("--reproducible-noise", action="store_true",
                   help="derive the defense's noise from the seed instead of OS entropy")
    p.add_argument("--vectorize", choices=["auto", "on", "off"], default="auto",
                   help="vmap the clients of a round (on), loop over them (off), or vmap for batch sizes "
                        f"<= {VMAP_MAX_BATCH} (auto)")
    add_out_option(p, "runs/train")


def config_from_args(args: argparse.Namespace):
    """The run's :class:`SimulationConfig`; a bad value is a one-line ConfigError naming the field."""
    from ..errors import config_errors
    from ..fl import SimulationConfig

    with config_errors("train"):
        return _simulation_config(SimulationConfig, args)


def _simulation_config(SimulationConfig, args: argparse.Namespace):
    return SimulationConfig(
        dataset=args.dataset, data_root=args.data_root, download=args.download, model=args.model,
        model_options=parse_key_values(args.model_opt, "--model-opt") or None, defense=args.defense,
        defense_options=parse_key_values(args.defense_opt, "--defense-opt"), algorithm=args.algorithm,
        clients=args.clients, fraction=args.fraction, batch_size=args.batch_size, lr=args.lr, rounds=args.rounds,
        local_epochs=args.local_epochs, local_steps=args.local_steps, partition=args.partition, alpha=args.alpha,
        eval_every=args.eval_every, seed=args.seed, reproducible_noise=args.reproducible_noise,
        vectorize={"on": True, "off": False}.get(args.vectorize, "auto"))


def plot_accuracy(history, path: Path) -> None:
    """Test accuracy against the round, one point per evaluated round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    points = history.evaluated
    c = history.config
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r.round for r in points], [100 * r.accuracy for r in points], marker="o", markersize=3)
    ax.set(xlabel="round", ylabel="test accuracy (%)", ylim=(0, 100),
           title=f"{c['algorithm']} {c['dataset']} {c['model']} defense={c['defense']} "
                 f"(ACC {100 * history.final_accuracy:.1f}%, ART {history.art:.3f} s)")
    ax.title.set_fontsize(9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@command("train", "Federated training (FedSGD/FedAvg) with a defense: test accuracy (ACC) and round time (ART).",
         configure)
def train(args) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..device import resolve_device
    from ..fl.simulator import prepare
    from ..fl.simulator import train as run_rounds

    config = config_from_args(args)
    device = resolve_device(args.device)  # a GPU this machine lacks: one line before --out is touched
    setup = prepare(config, device)  # every configuration error surfaces before --out is touched
    # --out is held from here on (unwritable, busy or holding results: one line now, not after training)
    with claim_out(args.out, "train", RESULT_FILES, overwrite=args.overwrite):
        columns = (TextColumn("round"), MofNCompleteColumn(), BarColumn(), TextColumn("acc {task.fields[acc]}"),
                   TextColumn("eta"), TimeRemainingColumn())
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task("train", total=config.rounds, acc="-")

            def on_round(record):
                if record.accuracy is None:
                    progress.update(task, advance=1)
                else:
                    progress.update(task, advance=1, acc=f"{100 * record.accuracy:.1f}%")

            history = run_rounds(setup, on_round=on_round)
        history.to_json(args.out / "history.json")
        history.to_csv(args.out / "history.csv")
        plot_accuracy(history, args.out / "accuracy.png")
    s = history.summary()
    print(f"ACC {100 * s['accuracy']:.2f}%  ART {s['art_s']:.4f} s (client {s['client_s']:.4f}, "
          f"defense {s['defense_s']:.4f}, server {s['server_s']:.4f}; {s['trainer']} clients)")
    print(f"wrote {', '.join(str(args.out / n) for n in RESULT_FILES)}")
