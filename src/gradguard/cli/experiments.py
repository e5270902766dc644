"""`gradguard reproduce`, `sweep`, `report` and `demo`: the reproduction harness's commands."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .app import command
from .options import add_data_root, positive_int
from .scale import add_executor_options, runner_options

console = Console(stderr=True)


def _add_run_options(p, default_out: str) -> None:
    p.add_argument("--out", type=Path, default=Path(default_out),
                   help="run folder (results store, report); a rerun resumes from its store, and a second run "
                        "on the same folder is refused while the first one writes there")
    add_data_root(p)
    p.add_argument("--jobs", type=positive_int, default=1, help="worker processes for independent cells (>= 1)")
    add_executor_options(p)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[flight]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, transient=False)


def _runner(args, store, progress: Progress, plan):
    """A runner whose progress counts the plan's units (tasks and searches), each exactly once:
    it starts at the units already stored, and every other unit advances it once."""
    from ..experiments.runner import CellRunner

    runner = CellRunner(store, data_root=args.data_root, jobs=args.jobs, **runner_options(args))
    task = progress.add_task("starting", total=plan.size, completed=runner.stored_count(plan), flight="")
    flight = {"running": 0, "queued": 0}

    def done(label: str, cached: bool) -> None:
        if cached:  # counted at the start (the runner reports exactly those as cached)
            return
        progress.update(task, advance=1)
        if not console.is_terminal:  # a log file gets one line per computed unit instead of a bar
            state = progress.tasks[task]
            console.print(f"{state.completed:.0f}/{state.total:.0f} {label} (cells running {flight['running']}, "
                          f"queued {flight['queued']})", soft_wrap=True)

    def queue(running: int, queued: int) -> None:
        flight.update(running=running, queued=queued)
        progress.update(task, flight=f"{running} running, {queued} queued")

    def start(cell) -> None:
        progress.update(task, description=cell.describe())

    runner.on_start, runner.on_done, runner.on_queue = start, done, queue
    return runner


def _finish(progress: Progress) -> None:
    for task in progress.tasks:
        progress.update(task.id, description="all cells done", flight="")


def _open_store(out: Path, args=None):
    """The run folder's store; with ``args``, refused at once (one line, before any progress bar)
    when it holds cells of another device than a local run's and --reuse-other-device is not given
    (a Ray run checks once the cluster says which device its tasks get)."""
    from ..experiments.runner import CellRunner
    from ..experiments.store import ResultStore

    store = ResultStore(out)
    if args is not None:
        try:
            CellRunner(store, **runner_options(args)).check_devices(local=True)
        except BaseException:
            store.close()
            raise
    return store


def _claim(out: Path, command: str):
    """Hold the run folder while this run writes its store and report (a second run refuses)."""
    from .options import claim_out

    return claim_out(out, command)


def _dry_run(args, plan) -> None:
    """Print the plan, what the store already holds and the estimate; compute nothing."""
    from ..experiments.plan import describe_plan
    from ..experiments.store import ResultStore

    path = args.out / ResultStore.FILENAME
    stored = ResultStore(args.out).keys() if path.is_file() else set()
    for line in describe_plan(plan, stored):
        print(line)
    print(f"{plan.size} units ({len(plan.tasks)} cells, {len(plan.searches)} searches); about "
          f"{plan.estimate_remaining_s(plan.stored_ids(stored)) / 60 / args.jobs:.0f} min left with --jobs "
          f"{args.jobs} on 2 CPU cores (a fresh run: {plan.estimate_total_s() / 60 / args.jobs:.0f} min)")


def _reproduce(args, profile) -> Path | None:
    from ..experiments.plan import build_plan
    from ..experiments.report import build_report
    from ..experiments.reproduce import check_datasets, reproduce
    from ..experiments.runner import CellsFailed

    plan = build_plan(profile)
    if getattr(args, "dry_run", False):
        _dry_run(args, plan)
        return None
    check_datasets(profile, args.data_root)
    plan.validate()  # every option of every cell, before any output or file
    runner_options(args)  # a GPU this machine lacks: one line before the folder is touched
    with _claim(args.out, args.command):
        store = _open_store(args.out, args)
        start = time.perf_counter()
        try:
            with _progress() as progress, _runner(args, store, progress, plan) as runner:
                done = runner.stored_units(plan)
                stored = len(done)
                console.print(f"[bold]{profile.name}[/]: {', '.join(profile.datasets)} -> {args.out} "
                              f"({plan.size} units: {plan_counts(plan)}; {stored} already done, from the "
                              f"{store.count()} cells stored; about "
                              f"{plan.estimate_remaining_s(done) / 60 / args.jobs:.0f} min "
                              f"left with --jobs {args.jobs} on 2 CPU cores, a fresh run "
                              f"{plan.estimate_total_s() / 60 / args.jobs:.0f} min)")
                reproduce(runner, profile)
                _finish(progress)
        except CellsFailed:
            with contextlib.suppress(Exception):  # the failure, not a report problem, is what to tell
                build_report(args.out)  # the partial report of what finished, as after an interruption
            raise
        page = build_report(args.out)
    console.print(f"done in {time.perf_counter() - start:.0f} s ({len(runner.computed)} cells computed on "
                  f"{runner.computes_on}); "
                  f"report: {page}")
    return page


def plan_counts(plan) -> str:
    """``40 attack cells, 5 training runs, 4 searches``: what a plan's units are."""
    roles = [t.role for t in plan.tasks]
    parts = [f"{roles.count('attack')} attack cells", f"{roles.count('train')} training runs"]
    if plan.searches:
        parts.append(f"{len(plan.searches)} searches")
    return ", ".join(parts)


def _configure_reproduce(p) -> None:
    from ..experiments.profiles import PROFILES

    p.add_argument("--profile", default="quick",
                   help=f"a built-in profile ({', '.join(PROFILES)}) or a profile file (.json or .toml)")
    p.add_argument("--dry-run", action="store_true", help="print every planned cell and the time estimate; "
                                                           "compute nothing")
    _add_run_options(p, "runs/reproduce")


@command("reproduce", "The paper's privacy and accuracy tables for a profile, resumable, with a report.",
         _configure_reproduce)
def reproduce_command(args) -> None:
    from ..experiments.profiles import get_profile

    _reproduce(args, get_profile(args.profile))


def _configure_demo(p) -> None:
    _add_run_options(p, "runs/demo")
    # the main job uses the machine: one single-threaded worker per core, at most two (the
    # development machine's count; a LeNet cell gains nothing from more threads)
    p.set_defaults(jobs=max(1, min(2, os.cpu_count() or 1)))


@command("demo", "The main job: the quick profile on the embedded MNIST sample, summary and HTML report.",
         _configure_demo)
def demo(args) -> None:
    from ..experiments.profiles import get_profile

    page = _reproduce(args, get_profile("quick"))
    assert page is not None
    print((page.parent / "tables.md").read_text())
    print(f"HTML report: {page}")


def _configure_sweep(p) -> None:
    p.add_argument("--dataset", default="mnist-sample", help="dataset name or npz:PATH")
    p.add_argument("--defense", action="append", required=True, help="defense to sweep (repeat for several)")
    p.add_argument("--param", action="append", default=[],
                   help="NAME=LOW:HIGH:logN | LOW:HIGH:linN | V1,V2, then ;KEY=VALUE for options held fixed (one "
                        "per --defense, in order); without any, each defense's registered strength range at 5 "
                        "log-spaced values")
    p.add_argument("--attack", action="append", default=None,
                   help="plain attack that measures privacy at each point (repeatable); default: the worst case over "
                        "the profile's attacks and every adaptive attack that applies")
    p.add_argument("--profile", default="quick", help="profile whose attack and training budgets are used")
    _add_run_options(p, "runs/sweep")


@command("sweep", "Privacy-utility curves: sweep a defense's strength, attack and train at each value.",
         _configure_sweep)
def sweep_command(args) -> None:
    from ..errors import ConfigError
    from ..experiments.profiles import get_profile
    from ..experiments.report import build_report
    from ..experiments.reproduce import check_datasets
    from ..experiments.sweep import default_spec, sweep, sweep_plan

    params = args.param or [default_spec(defense) for defense in args.defense]
    if len(args.defense) != len(params):
        raise ConfigError(f"sweep: {len(args.defense)} --defense but {len(params)} --param; give one --param each")
    profile = get_profile(args.profile).model_copy(update={"datasets": [args.dataset]})
    profile.check_names()
    curves = list(zip(args.defense, params))
    plan, _ = sweep_plan(profile, args.dataset, args.attack, curves)
    check_datasets(profile, args.data_root)
    plan.validate()  # a bad option fails here: no progress line, no empty store
    runner_options(args)
    with _claim(args.out, "sweep"):
        store = _open_store(args.out, args)
        with _progress() as progress, _runner(args, store, progress, plan) as runner:
            sweep(runner, profile, args.dataset, args.attack, curves)
            _finish(progress)
        page = build_report(args.out)
    console.print(f"report: {page}")


def _configure_report(p) -> None:
    p.add_argument("folder", type=Path, help="a run folder written by reproduce, demo or sweep")


@command("report", "Rebuild tables, figures and the HTML page from a run folder's results store.", _configure_report)
def report_command(args) -> None:
    from ..experiments.report import build_report

    print(build_report(args.folder))


def _configure_recover(p) -> None:
    p.add_argument("folder", type=Path, help="a run folder whose results.sqlite is damaged")


@command("recover", "Start over from a damaged results store without losing its readable cells.", _configure_recover)
def recover_command(args) -> None:
    """Move the damaged store aside (kept) and write its intact cells to a new one; a rerun of the
    command that made the folder then computes only what was lost."""
    from ..experiments.store import recover

    if not args.folder.is_dir():
        from ..errors import ConfigError

        raise ConfigError(f"recover: {args.folder} is not a folder")
    with _claim(args.folder, "recover"):
        done = recover(args.folder)
    if done is None:
        print(f"{args.folder}: the results store is intact; nothing to recover")
        return
    print(f"recovered {done.kept} cells into {args.folder / 'results.sqlite'} ({done.lost} could not be read); the "
          f"damaged file is kept as {done.aside}; rerun your command to compute the rest")
