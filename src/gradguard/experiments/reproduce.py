"""The reproduction: a profile's privacy, adaptive-attack and accuracy tables, cell by cell.

First the plan (:func:`~gradguard.experiments.plan.build_plan`): per dataset, every plain
attack against every defense, every adaptive attack against the defenses it applies to, one
training run per defense that trains, and an equal-privacy search for each defense with a
strength knob that the profile does not fix. Then one runner executes it, reusing whatever the
store holds. The resolved plan (which stored cell fills which table entry) is saved in the
store for the report, and while the run goes, the plan resolved so far: the report of an
interrupted run shows the finished cells and says it is partial.
"""

from __future__ import annotations

from typing import Any

from ..errors import DatasetNotFoundError
from .plan import build_plan
from .profiles import Profile
from .runner import CellRunner


def check_datasets(profile: Profile, data_root) -> None:
    """Fail before any work when a dataset is missing, listing every missing one."""
    from ..data import DATASETS, resolve_root

    root = resolve_root(data_root)
    missing = [name for name in set(profile.datasets) | set(profile.trained_datasets())
               if name in DATASETS and DATASETS[name].find(root) is None]
    if missing:
        hints = "; ".join(f"{n}: {DATASETS[n].how_to_get}" for n in sorted(missing))
        raise DatasetNotFoundError(f"missing datasets under {root}: {sorted(missing)} ({hints}; "
                                   f"or pass --data-root, e.g. the folder that holds mnist.npz)")


def reproduce(runner: CellRunner, profile: Profile) -> dict[str, Any]:
    """Run (or resume) every cell of ``profile``; the resolved plan is saved in the store."""
    check_datasets(profile, runner.data_root)
    plan = build_plan(profile)
    runner.store.set_meta("profile", profile.model_dump(mode="json"))
    # the plan so far replaces any earlier one at once, so an interrupted run reports what it finished
    resolved = runner.run(plan, on_progress=lambda partial: runner.store.set_meta("plan", partial))
    runner.store.set_meta("plan", resolved)
    return resolved
