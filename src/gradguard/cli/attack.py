"""`gradguard attack`: reconstruct dataset images from their (optionally defended) gradients.

Writes ``grid.png`` (truth row above reconstruction row), ``scores.csv`` (one row per image)
and ``scores.json`` (the rows, a summary and the exact configuration) to ``--out``.
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
    ensure_out_dir,
    parse_key_values,
)


def configure(p) -> None:
    from ..attacks import ATTACKS

    add_data_options(p)
    add_model_option(p)
    p.add_argument("--model-opt", action="append", metavar="KEY=VALUE",
                   help="model option, repeatable (lenet defaults to dlg_init=true, DLG's initialisation)")
    p.add_argument("--unnormalised", action="store_true",
                   help="build the model without the dataset's normalisation layer (DLG's own setting)")
    p.add_argument("--attack", default="dlg", choices=sorted(ATTACKS), help="attack preset")
    p.add_argument("--images", type=int, default=8, help="images to attack (a multiple of --batch-size)")
    p.add_argument("--batch-size", type=int, default=1, help="images per observed gradient")
    p.add_argument("--defense", default="none", help="defense applied to each gradient before the attack")
    p.add_argument("--defense-opt", action="append", metavar="KEY=VALUE", help="defense option, repeatable")
    p.add_argument("--iterations", type=int, default=None, help="override the preset's iterations")
    p.add_argument("--restarts", type=int, default=None, help="override the preset's restarts")
    add_seed_option(p)
    add_out_option(p, "runs/attack")


@command("attack", "Reconstruct images from their gradients (DLG, iDLG, Inverting Gradients) and score them.",
         configure)
def attack(args) -> None:
    import torch

    from ..attacks import Attack
    from ..data import load_dataset
    from ..defenses import Defense
    from ..errors import ConfigError
    from ..rng import make_generator

    if args.images < 1 or args.batch_size < 1 or args.images % args.batch_size:
        raise ConfigError(f"attack: --images ({args.images}) must be a positive multiple of --batch-size "
                          f"({args.batch_size})")
    overrides = {k: v for k, v in (("iterations", args.iterations), ("restarts", args.restarts)) if v is not None}
    attacker = Attack.from_config(args.attack, **overrides)
    defense = Defense.from_config(args.defense, **parse_key_values(args.defense_opt, "--defense-opt"))
    data = load_dataset(args.dataset, args.data_root, download=args.download)
    if args.images > len(data.x_train):
        raise ConfigError(f"attack: --images {args.images} exceeds the {len(data.x_train)} training images")
    model = _build_model(data, args)
    ensure_out_dir(Path(args.out))
    generator = make_generator(args.seed, "attack")
    index = torch.randperm(len(data.x_train), generator=generator)[:args.images].view(-1, args.batch_size)
    observed = _observe(model, data, index, defense, generator)
    labels = [data.y_train[i] for i in index] if _labels_given(attacker, args.batch_size) else None
    start = time.perf_counter()
    results = _with_progress(attacker, lambda progress: attacker.reconstruct_many(
        model, observed, data.image_shape, args.batch_size, labels, generator=generator, progress=progress))
    rows, truth, shown = _score(results, data, index)
    summary = _summary(rows, time.perf_counter() - start)
    _write(Path(args.out), rows, summary, truth, shown, vars(args), attacker, defense)
    print(f"psnr {summary['psnr_mean']:.2f} dB, ssim {summary['ssim_mean']:.3f}, "
          f"label accuracy {summary['label_accuracy']:.3f}, {summary['seconds']:.1f} s -> {args.out}")


def _build_model(data, args):
    """The model, initialised from --seed without touching the caller's global RNG state."""
    from ..models import build_model, model_for
    from ..rng import seeded_global_rng

    options = ({"dlg_init": True} if args.model == "lenet" else {}) | parse_key_values(args.model_opt, "--model-opt")
    with seeded_global_rng(args.seed, "init"):
        if args.unnormalised:
            return build_model(args.model, data.image_shape, data.num_classes, **options)
        return model_for(data, args.model, **options)


def _observe(model, data, index, defense, generator):
    """What the attacker sees: each target batch's defended gradient (the harness's ``observe``)."""
    from ..experiments.cells import observe

    return [[g.detach() for g in observe(defense, model, data.x_train[rows], data.y_train[rows], 1,
                                         lambda r: generator).gradients[0]] for rows in index]


def _labels_given(attacker, batch_size: int) -> bool:
    mode = attacker.config.labels
    return mode == "given" or (mode == "idlg-or-given" and batch_size > 1)


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


def _score(results, data, index):
    """Per-image rows (each reconstruction matched to its closest truth), truth and shown images."""
    import torch

    from ..metrics import label_accuracy, score_reconstruction

    rows, truths, shown = [], [], []
    for target, (result, rows_index) in enumerate(zip(results, index)):
        truth = data.x_train[rows_index]
        scores = score_reconstruction(result.images, truth)
        accuracy = label_accuracy(result.labels, data.y_train[rows_index])
        aligned = torch.empty_like(result.images)
        aligned[scores.truth_index] = result.images
        truths.append(truth)
        shown.append(aligned.clamp(0, 1))
        for k in range(len(result.images)):
            j = int(scores.truth_index[k])
            rows.append({"target": target, "dataset_index": int(rows_index[j]),
                         "label": int(data.y_train[rows_index[j]]),
                         "psnr": float(scores.psnr[k]), "ssim": float(scores.ssim[k]),
                         "label_accuracy": accuracy, "matching_loss": result.matching_loss})
    return rows, torch.cat(truths), torch.cat(shown)


def _summary(rows, seconds: float) -> dict:
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    return {"images": len(rows), "psnr_mean": mean("psnr"), "ssim_mean": mean("ssim"),
            "label_accuracy": mean("label_accuracy"), "seconds": seconds}


def _write(out: Path, rows, summary, truth, shown, args: dict, attacker, defense) -> None:
    import torch
    from torchvision.utils import save_image

    out.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([truth, shown]), out / "grid.png", nrow=len(truth), padding=2, pad_value=1.0)
    with open(out / "scores.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = attacker.config.model_dump(exclude={"mute_mask"})
    record = {"summary": summary, "images": rows, "attack": config, "defense": repr(defense),
              "args": {k: str(v) for k, v in args.items() if k != "handler"}}
    (out / "scores.json").write_text(json.dumps(record, indent=2))
