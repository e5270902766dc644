"""`gradguard attack`: reconstruct dataset images from their (optionally defended) gradients.

Any registered attack: a preset of the matching engine (``dlg``, ``gia``) or an attack that
knows the defense (adaptive, noise-aware, learned), which inverts with ``--base-attack`` unless
it reconstructs by itself. The same computation as a reproduction's attack cell
(:func:`gradguard.experiments.cells.run_attack`), so the command prints the two no-gradient
floors for the same targets. Writes ``grid.png`` (truth row above reconstruction row),
``scores.csv`` (one row per image) and ``scores.json`` (the rows, a summary, the floors and the
exact configuration) to ``--out``.
"""

from __future__ import annotations

import csv
import json
import time
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

RESULT_FILES = ("grid.png", "scores.csv", "scores.json")


def configure(p) -> None:
    from ..attacks import ADAPTIVE, ATTACKS

    add_data_options(p)
    add_model_option(p)
    p.add_argument("--model-opt", action="append", metavar="KEY=VALUE",
                   help="model option, repeatable (lenet defaults to dlg_init=true, DLG's initialisation)")
    p.add_argument("--unnormalised", action="store_true",
                   help="build the model without the dataset's normalisation layer (DLG's own setting)")
    p.add_argument("--attack", default="dlg", choices=list(ATTACKS) + list(ADAPTIVE),
                   help="an attack preset, or an attack that knows the defense (adaptive, noise-aware, learned)")
    p.add_argument("--base-attack", default="gia", choices=list(ATTACKS),
                   help="the preset that inverts an adaptive attack's prepared gradient")
    p.add_argument("--attack-opt", action="append", metavar="KEY=VALUE",
                   help="option of an adaptive attack, repeatable (e.g. epochs=20 for lti)")
    p.add_argument("--images", type=int, default=8, help="images to attack (a multiple of --batch-size)")
    p.add_argument("--batch-size", type=int, default=1, help="images per observed gradient")
    p.add_argument("--aux-images", type=int, default=3000,
                   help="training images (never targets) an adaptive attacker owns")
    p.add_argument("--defense", default="none", help="defense applied to each gradient before the attack")
    p.add_argument("--defense-opt", action="append", metavar="KEY=VALUE", help="defense option, repeatable")
    p.add_argument("--iterations", type=int, default=None, help="override the preset's iterations")
    p.add_argument("--restarts", type=int, default=None, help="override the preset's restarts")
    add_seed_option(p)
    add_device_option(p)
    add_out_option(p, "runs/attack")


@command("attack", "Reconstruct images from their gradients with any registered attack, score them against "
                   "the no-gradient floors.", configure)
def attack(args) -> None:
    from ..attacks import ADAPTIVE, Attack, adaptive_attack
    from ..data import load_dataset
    from ..defenses import Defense
    from ..device import resolve_device
    from ..errors import ConfigError
    from ..experiments.cells import AttackCell, run_attack, seeded_model

    device = resolve_device(args.device)  # a GPU this machine lacks: one line before anything loads
    if args.images < 1 or args.batch_size < 1 or args.images % args.batch_size:
        raise ConfigError(f"attack: --images ({args.images}) must be a positive multiple of --batch-size "
                          f"({args.batch_size})")
    if args.aux_images < 1:
        raise ConfigError(f"attack: --aux-images must be at least 1, got {args.aux_images}")
    adaptive = args.attack if args.attack in ADAPTIVE else None
    base = None if adaptive and ADAPTIVE[adaptive].reconstructs else (args.base_attack if adaptive else args.attack)
    overrides = {k: v for k, v in (("iterations", args.iterations), ("restarts", args.restarts)) if v is not None}
    attacker = Attack.from_config(base, **overrides) if base else None  # validates before any work
    adaptive_options = parse_key_values(args.attack_opt, "--attack-opt")
    if adaptive:
        adaptive_attack(adaptive, **adaptive_options)
        limit = ADAPTIVE[adaptive].max_batch_size
        if limit is not None and args.batch_size > limit:
            raise ConfigError(f"attack: {adaptive} attacks batches of at most {limit}, got --batch-size "
                              f"{args.batch_size}")
    elif adaptive_options:
        raise ConfigError(f"attack: --attack-opt is for adaptive attacks ({', '.join(ADAPTIVE)}), not {args.attack}")
    defense_options = parse_key_values(args.defense_opt, "--defense-opt")
    Defense.from_config(args.defense, **defense_options)
    data = load_dataset(args.dataset, args.data_root, download=args.download)
    if args.images > len(data.x_train):
        raise ConfigError(f"attack: --images {args.images} exceeds the {len(data.x_train)} training images")
    model_options = ({"dlg_init": True} if args.model == "lenet" else {}) | parse_key_values(args.model_opt,
                                                                                             "--model-opt")
    # an unknown model or model option fails now, before --out is claimed and the progress bar shows
    seeded_model(data, args.model, args.seed, not args.unnormalised, **model_options)
    cell = AttackCell(dataset=args.dataset, model=args.model, model_options=model_options,
                      normalised=not args.unnormalised, attack=base, attack_overrides=overrides, adaptive=adaptive,
                      adaptive_options=adaptive_options, defense=args.defense, defense_options=defense_options,
                      images=args.images, batch_size=args.batch_size, seed=args.seed, target_pool=len(data.x_train),
                      aux_images=args.aux_images)
    # --out is held from here on (unwritable, busy or holding results: one line now, not after the attack)
    with claim_out(Path(args.out), "attack", RESULT_FILES, overwrite=args.overwrite):
        start = time.perf_counter()
        if attacker is not None and adaptive is None:
            outcome = _with_progress(attacker, lambda progress: run_attack(cell, args.data_root, data, progress,
                                                                           device=device))
        else:
            outcome = run_attack(cell, args.data_root, data, device=device)
        rows = _rows(outcome, data)
        summary = _summary(outcome.record, time.perf_counter() - start) | {"device": str(device)}
        _write(Path(args.out), rows, summary, outcome, vars(args), cell)
    floor_psnr, floor_ssim = summary["floor_psnr"], summary["floor_ssim"]
    print(f"{cell.label()} vs {args.defense}: psnr {summary['psnr_mean']:.2f} dB, ssim {summary['ssim_mean']:.3f}, "
          f"label accuracy {summary['label_accuracy']:.3f}, {summary['seconds']:.1f} s -> {args.out}")
    print(f"floor (the better of the mean image, {summary['mean_image_floor'][0]:.2f} dB / "
          f"{summary['mean_image_floor'][1]:.3f}, and the own label's mean image, "
          f"{summary['label_floor'][0]:.2f} dB / {summary['label_floor'][1]:.3f}): psnr {floor_psnr:.2f} dB, "
          f"ssim {floor_ssim:.3f}; the attack is {summary['psnr_mean'] - floor_psnr:+.2f} dB and "
          f"{summary['ssim_mean'] - floor_ssim:+.3f} SSIM above it")


def _with_progress(attacker, run):
    """Run ``run(progress)`` under a rich progress bar showing the best current matching loss."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(attacker.config.optimizer, total=attacker.config.iterations, loss="-")
        return run(lambda done, losses: bar.update(task, completed=done, loss=f"{float(losses.min()):.3e}"))


def _rows(outcome, data) -> list[dict]:
    """One row per target: its dataset index and label, the PSNR and SSIM of its reconstruction."""
    record = outcome.record
    return [{"target": k, "dataset_index": int(i), "label": int(data.y_train[i]), "psnr": record["psnr_each"][k],
             "ssim": record["ssim_each"][k], "label_accuracy": record["label_accuracy"]}
            for k, i in enumerate(outcome.index)]


def _summary(record: dict, seconds: float) -> dict:
    mean_floor = (record["floor_psnr"], record["floor_ssim"])
    label_floor = (record["class_floor_psnr"], record["class_floor_ssim"])
    return {"images": len(record["psnr_each"]), "psnr_mean": record["psnr_mean"], "ssim_mean": record["ssim_mean"],
            "label_accuracy": record["label_accuracy"], "seconds": seconds,
            "floor_psnr": max(mean_floor[0], label_floor[0]), "floor_ssim": max(mean_floor[1], label_floor[1]),
            "mean_image_floor": mean_floor, "label_floor": label_floor}


def _write(out: Path, rows, summary, outcome, args: dict, cell) -> None:
    from ..experiments.figures import attack_grid

    options = ", ".join(f"{k}={v}" for k, v in cell.defense_options.items())
    title = (f"{cell.label()} vs {cell.defense}{f' ({options})' if options else ''} on {cell.dataset}: mean PSNR "
             f"{summary['psnr_mean']:.1f} dB, SSIM {summary['ssim_mean']:.2f} (floor {summary['floor_psnr']:.1f} dB, "
             f"{summary['floor_ssim']:.2f})")
    record = outcome.record
    attack_grid(outcome.truth, outcome.images, record["psnr_each"], record["ssim_each"], title, out / "grid.png")
    with open(out / "scores.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    record = {"summary": summary, "images": rows, "cell": cell.config(),
              "attack": (cell.attack_overrides | {"preset": cell.attack}) if cell.attack else None,
              "args": {k: str(v) for k, v in args.items() if k != "handler"}}
    (out / "scores.json").write_text(json.dumps(record, indent=2))
