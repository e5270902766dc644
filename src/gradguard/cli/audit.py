"""`gradguard audit`: does your model leak your data through its gradients, and which defense
setting stops it at what accuracy cost? A thin layer over :func:`gradguard.audit` (docs/audit.md)."""

from __future__ import annotations

import time

from .app import command
from .options import ensure_out_dir, positive_int


def configure(p) -> None:
    from ..auditing import DEFAULT_DEFENSES

    p.add_argument("--model", required=True,
                   help="your model: PATH.py:NAME or package.module:NAME, NAME an nn.Module class or a function "
                        "returning one (called with whichever of num_classes, in_channels, image_size it accepts); "
                        "or lenet, convnet, resnet18")
    p.add_argument("--weights", default=None, help="a state dict (torch.save(model.state_dict(), FILE.pt)) to audit "
                                                   "a trained model; default: the model as constructed")
    p.add_argument("--dataset", required=True,
                   help="folder:PATH (ImageFolder layout: PATH/<class>/<image>), npz:PATH or a dataset name "
                        "(see `gradguard datasets`)")
    p.add_argument("--mode", choices=["train", "eval"], default="train",
                   help="the mode the client's gradient is taken in: train (BatchNorm with batch statistics, "
                        "dropout on: a client's local step) or eval")
    p.add_argument("--normalize", choices=["model", "data"], default="model",
                   help="model: the model normalises its input itself; data: put a layer with the data's "
                        "per-channel mean and std in front of it")
    p.add_argument("--images", type=positive_int, default=4, help="training images attacked at batch size 1")
    p.add_argument("--batch-size", type=positive_int, default=4,
                   help="your clients' batch size: attacked besides batch size 1, and used for the training run")
    p.add_argument("--defenses", default=",".join(DEFAULT_DEFENSES),
                   help="comma-separated defenses to audit (see `gradguard defenses`)")
    p.add_argument("--budget", choices=["tiny", "quick", "full"], default="quick",
                   help="quick: a few minutes on a small model; full: stronger attacks, finer search, longer "
                        "training; tiny: every step in seconds, for trying the command (its verdicts mean nothing)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation, targets and noise")
    from .experiments import _add_run_options

    _add_run_options(p, "runs/audit")  # --out (audit.json, audit.html, figures/, the store), --data-root, --jobs, ...


@command("audit", "Audit your own model on your own data: worst-case leakage per defense, the weakest setting that "
                  "stops it, its accuracy cost, and the configuration to paste.", configure)
def audit_command(args) -> None:
    from ..auditing import AuditConfig, prepare_audit, run_audit
    from ..errors import config_errors
    from .experiments import _finish, _open_store, _progress, _runner, console
    from .scale import runner_options

    defenses = [name.strip() for name in args.defenses.split(",") if name.strip()]
    with config_errors("audit"):
        config = AuditConfig(model=args.model, dataset=args.dataset, weights=args.weights, mode=args.mode,
                             normalize=args.normalize, images=args.images, batch_size=args.batch_size,
                             defenses=defenses, budget=args.budget, seed=args.seed)
    start = time.perf_counter()
    prepared = prepare_audit(config, args.data_root)  # every input checked before any work
    runner_options(args)  # --device cuda without a GPU: one line before the folder is made
    out = ensure_out_dir(args.out)
    store = _open_store(out, args)  # cells of another device: refused unless --reuse-other-device
    info = prepared.model_info
    with _progress() as progress, _runner(args, store, progress, prepared.plan) as runner:
        stored = runner.stored_count(prepared.plan)
        console.print(f"[bold]audit[/]: {prepared.model_label} ({info['parameters']:,} parameters"
                      f"{', BatchNorm' if info['batchnorm'] else ''}{', dropout' if info['dropout'] else ''}; "
                      f"gradients in {info['mode']} mode) on {config.dataset} "
                      f"{'x'.join(map(str, prepared.data.image_shape))}, {prepared.data.num_classes} classes -> {out} "
                      f"({prepared.plan.size} units, {stored} already stored; a fresh run takes about "
                      f"{prepared.estimate_s() / 60 / args.jobs:.1f} min)", soft_wrap=True)
        for note in prepared.notes:
            console.print(f"note: {note}", soft_wrap=True)
        def more(units: int) -> None:  # a strength doubled: more cells than planned
            progress.update(progress.task_ids[0], total=(progress.tasks[0].total or 0) + units)

        result = run_audit(prepared, runner, out, on_more=more)
        _finish(progress)
    print(result.summary)
    print(f"gradients taken in {result.gradient_mode} mode")
    for defense in result.defenses:
        print(f"- {defense.verdict}")
    if result.recommendation is not None:
        rec = result.recommendation
        print("recommended configuration:")
        print(f"  library: {rec.library}")
        print(f"  Flower client: {rec.flower_client}")
        print(f"  Flower server: {rec.flower_server}")
    print(f"audit.json: {result.json_path}")
    print(f"HTML page: {result.html_path}")
    print(f"wall time: {time.perf_counter() - start:.0f} s")
