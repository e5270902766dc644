"""`gradguard reproduce`, `sweep`, `report` and `demo`: the reproduction harness's commands."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .app import command
from .options import add_data_root

console = Console(stderr=True)


def _add_run_options(p, default_out: str) -> None:
    p.add_argument("--out", type=Path, default=Path(default_out), help="run folder (results store, report)")
    add_data_root(p)
    p.add_argument("--jobs", type=int, default=1, help="worker processes for independent cells")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)


def _describe(kind: str, config: dict) -> str:
    if kind == "attack":
        options = ",".join(f"{k}={v:.3g}" for k, v in config["defense_options"].items())
        muted = " (muted)" if config["attack_overrides"].get("mute") else ""
        adaptive = f"{config['adaptive']['name']} + " if config.get("adaptive") else ""
        return f"{config['dataset']}: {adaptive}{config['attack']}{muted} vs {config['defense']} {options}".strip()
    return f"{config['dataset']}: train with {config['defense']}"


def _runner(args, store, progress: Progress, total: int):
    from ..experiments.runner import CellRunner

    task = progress.add_task("starting", total=total)

    def done(kind, config, cached):
        progress.update(task, advance=1, total=max(total, progress.tasks[task].completed + 1))
        if not console.is_terminal and not cached:  # a log file gets one line per computed cell instead of a bar
            state = progress.tasks[task]
            console.print(f"{state.completed:.0f}/{state.total:.0f} {_describe(kind, config)}", soft_wrap=True)

    def start(kind, config):
        progress.update(task, description=_describe(kind, config))

    return CellRunner(store, data_root=args.data_root, jobs=max(1, args.jobs), on_start=start, on_done=done)


def _finish(progress: Progress) -> None:
    """End the bar at 100%: the estimate counts every search cell, and a search already stored is not revisited."""
    for task in progress.tasks:
        progress.update(task.id, total=task.completed, description="all cells done")


def _open_store(out: Path):
    from ..experiments.store import ResultStore

    return ResultStore(out)


def _reproduce(args, profile) -> Path:
    from ..experiments.profiles import estimate_cells, estimate_seconds
    from ..experiments.report import build_report
    from ..experiments.reproduce import check_datasets, reproduce

    check_datasets(profile, args.data_root)
    store = _open_store(args.out)
    console.print(f"[bold]{profile.name}[/]: {', '.join(profile.datasets)} -> {args.out} "
                  f"(expected about {estimate_seconds(profile) / 60 / max(1, args.jobs):.0f} min on 2 CPU cores; "
                  f"{store.count()} cells already stored)")
    start = time.perf_counter()
    with _progress() as progress, _runner(args, store, progress, estimate_cells(profile)) as runner:
        reproduce(runner, profile)
        _finish(progress)
    page = build_report(args.out)
    console.print(f"done in {time.perf_counter() - start:.0f} s ({len(runner.computed)} cells computed); report: {page}")
    return page


def _configure_reproduce(p) -> None:
    p.add_argument("--profile", default="quick", help="quick (mnist-sample, minutes) or paper (full datasets)")
    _add_run_options(p, "runs/reproduce")


@command("reproduce", "The paper's privacy and accuracy tables for a profile, resumable, with a report.",
         _configure_reproduce)
def reproduce_command(args) -> None:
    from ..experiments.profiles import get_profile

    _reproduce(args, get_profile(args.profile))


def _configure_demo(p) -> None:
    _add_run_options(p, "runs/demo")


@command("demo", "The main job: the quick profile on the embedded MNIST sample, summary and HTML report.",
         _configure_demo)
def demo(args) -> None:
    from ..experiments.profiles import get_profile

    page = _reproduce(args, get_profile("quick"))
    print((page.parent / "tables.md").read_text())
    print(f"HTML report: {page}")


def _configure_sweep(p) -> None:
    p.add_argument("--dataset", default="mnist-sample", help="dataset name or npz:PATH")
    p.add_argument("--defense", action="append", required=True, help="defense to sweep (repeat for several)")
    p.add_argument("--param", action="append", required=True,
                   help="NAME=LOW:HIGH:logN | LOW:HIGH:linN | V1,V2 (one per --defense, in order)")
    p.add_argument("--attack", default="dlg", help="attack that measures privacy at each point")
    p.add_argument("--profile", default="quick", help="profile whose attack and training budgets are used")
    _add_run_options(p, "runs/sweep")


@command("sweep", "Privacy-utility curves: sweep a defense's strength, attack and train at each value.",
         _configure_sweep)
def sweep_command(args) -> None:
    from ..errors import ConfigError
    from ..experiments.profiles import get_profile
    from ..experiments.report import build_report
    from ..experiments.sweep import parse_values, sweep

    if len(args.defense) != len(args.param):
        raise ConfigError(f"sweep: {len(args.defense)} --defense but {len(args.param)} --param; give one --param each")
    total = 2 * sum(len(parse_values(spec)[1]) for spec in args.param)
    profile = get_profile(args.profile).model_copy(update={"datasets": [args.dataset]})
    store = _open_store(args.out)
    with _progress() as progress, _runner(args, store, progress, total) as runner:
        sweep(runner, profile, args.dataset, args.attack, list(zip(args.defense, args.param)))
        _finish(progress)
    console.print(f"report: {build_report(args.out)}")


def _configure_report(p) -> None:
    p.add_argument("folder", type=Path, help="a run folder written by reproduce, demo or sweep")


@command("report", "Rebuild tables, figures and the HTML page from a run folder's results store.", _configure_report)
def report_command(args) -> None:
    from ..experiments.report import build_report

    print(build_report(args.folder))
