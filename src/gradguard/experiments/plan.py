"""A plan: every cell a profile computes, listed before anything runs.

:func:`build_plan` turns a profile into tasks (attack and training cells) and searches (the
equal-privacy strength of each defense with a strength knob). A task whose defense is searched
names the search it waits for; its options are filled in when the search ends. The plan can be
printed with a time estimate (``gradguard reproduce --dry-run``) and is executed by one runner
(:meth:`gradguard.experiments.runner.CellRunner.run`), which resumes from the store.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

from ..attacks import ADAPTIVE, Attack, adaptive_attack
from ..defenses import DEFENSES, Defense
from .cells import AttackCell, Cell, SearchCell, TrainCell, pretrain_config
from .profiles import CostModel, Profile

Role = Literal["attack", "train"]


@dataclass(frozen=True)
class Task:
    """One attack or training cell of the plan and the table entry it fills.

    ``labels`` says where its result goes (dataset, attack, adaptive, defense); with
    ``strength_from``, the cell's defense options come from that search's result."""

    id: str
    role: Role
    cell: AttackCell | TrainCell
    labels: dict[str, Any]
    strength_from: str | None = None

    def resolve(self, strengths: dict[str, dict[str, Any]]) -> AttackCell | TrainCell | None:
        """The concrete cell, or None while its search has not ended."""
        if self.strength_from is None:
            return self.cell
        found = strengths.get(self.strength_from)
        if found is None:
            return None
        return self.cell.model_copy(update={"defense_options": found["options"]})


@dataclass(frozen=True)
class Search:
    """An equal-privacy search (``cell``) for ``defense`` on ``dataset``."""

    id: str
    dataset: str
    defense: str
    cell: SearchCell


@dataclass
class Plan:
    """Tasks, searches and the strengths fixed by the profile, in the order they were listed."""

    tasks: list[Task] = field(default_factory=list)
    searches: list[Search] = field(default_factory=list)
    fixed: dict[str, dict[str, Any]] = field(default_factory=dict)  # search id -> strength info (no search)
    costs: CostModel = field(default_factory=lambda: CostModel())

    @property
    def size(self) -> int:
        """Units of progress: one per task and one per search."""
        return len(self.tasks) + len(self.searches)

    def estimate_s(self, cell: Cell) -> float:
        """Seconds one core spends on ``cell`` (a search: its longest run of probes)."""
        costs = self.costs
        if isinstance(cell, AttackCell):
            own = costs.adaptive_cell_s.get(cell.adaptive, 0.0) if cell.adaptive else 0.0
            if cell.adaptive in costs.defends_aux:  # one batch-32 step's defense cost per 32 images it defends
                aux = min(cell.aux_images, int(cell.adaptive_options.get("aux_images", cell.aux_images)))
                own += aux * costs.defense_s(cell.defense, cell.dataset) / 32
            if cell.attack is None:
                return own
            config = Attack.from_config(cell.attack, **cell.attack_overrides).config
            return own + cell.images * config.iterations * config.restarts * costs.iteration_s(cell.attack)
        if isinstance(cell, TrainCell):
            train = cell.train
            clients_rounds = train.rounds * max(1, round(train.clients * train.fraction))
            steps = train.local_steps or 10
            defended = Defense.from_config(cell.defense, **cell.defense_options).costly_steps(steps, train.batch_size)
            defense_s = costs.defense_s(cell.defense, cell.dataset)
            return clients_rounds * (steps * costs.client_step_s + defended * defense_s)
        if isinstance(cell, SearchCell):
            return (cell.steps + 2) * sum(self.estimate_s(probe) for probe in cell.probes)
        raise TypeError(type(cell).__name__)

    def estimate_total_s(self) -> float:
        return sum(self.estimate_s(t.cell) for t in self.tasks) + sum(self.estimate_s(s.cell) for s in self.searches)

    def estimate_remaining_s(self, done: set[str]) -> float:
        """Core-seconds of the units (tasks and searches) whose ids are not in ``done``."""
        return (sum(self.estimate_s(t.cell) for t in self.tasks if t.id not in done)
                + sum(self.estimate_s(s.cell) for s in self.searches if s.id not in done))

    def stored_ids(self, stored: set[str]) -> set[str]:
        """Ids of the units whose cell key is among ``stored``, without resolving searches (a task
        whose strength comes from a search is not known to be done)."""
        return ({t.id for t in self.tasks if t.strength_from is None and t.cell.key() in stored}
                | {s.id for s in self.searches if s.cell.key() in stored})

    def validate(self) -> None:
        """Build every defense, attack and training configuration the plan will run, and read
        every npz dataset it names, without computing anything: a bad option fails here, in one
        line, before a run prints progress or creates its results store. A searched defense is
        checked at both ends of its strength range."""
        from ..data import load_npz
        from ..errors import config_errors
        from ..fl import SimulationConfig

        cells: list[Cell] = []
        for search in self.searches:
            cells += [*(search.cell.reference or []), *search.cell.at(search.cell.strength.low),
                      *search.cell.at(search.cell.strength.high)]
        by_search = {s.id: s.cell for s in self.searches}
        for task in self.tasks:
            search_cell = by_search.get(task.strength_from or "")
            options = search_cell.options_at(search_cell.strength.low) if search_cell else {}
            cells.append(task.cell.model_copy(update={"defense_options": {**task.cell.defense_options, **options}}))
        checked: set[str] = set()
        read: set[str] = set()
        for cell in cells:
            if cell.key() in checked:
                continue
            checked.add(cell.key())
            assert isinstance(cell, (AttackCell, TrainCell))
            if cell.dataset.startswith("npz:") and cell.dataset not in read:
                read.add(cell.dataset)
                load_npz(cell.dataset[4:])
            Defense.from_config(cell.defense, **cell.defense_options)
            if isinstance(cell, TrainCell):
                with config_errors(f"train cell ({cell.defense})"):
                    SimulationConfig(dataset=cell.dataset, model=cell.model, defense=cell.defense,
                                     defense_options=cell.defense_options, seed=cell.seed, **cell.train.model_dump())
                continue
            if cell.pretrain is not None:
                with config_errors(f"attack cell ({cell.describe()})"):
                    pretrain_config(cell)
            if cell.attack is not None:
                Attack.from_config(cell.attack, **cell.attack_overrides)
            if cell.adaptive is not None:
                adaptive_attack(cell.adaptive, **cell.adaptive_options)


def attack_cell_for(profile: Profile, dataset: str, attack: str | None, defense: str, options: dict[str, Any],
                    adaptive: str | None = None, seed: int | None = None, moment: str = "init") -> AttackCell:
    """The profile's attack cell; at the ``trained`` moment the model is the one the profile's
    training schedule gives without defense (with its normalisation layer, for every attack)."""
    adaptive_options: dict[str, Any] = {}
    if adaptive is not None:
        if "rounds" in inspect.signature(ADAPTIVE[adaptive]).parameters:
            adaptive_options = {"rounds": profile.adaptive_rounds}  # attackers that combine several observations
        adaptive_options.update(profile.adaptive_options.get(adaptive, {}))
    trained = moment == "trained"
    return AttackCell(dataset=dataset, model=profile.model, model_options=profile.attack_model_options,
                      normalised=trained or attack not in profile.unnormalised_attacks, attack=attack,
                      attack_overrides=profile.attack_overrides.get(attack, {}) if attack else {}, adaptive=adaptive,
                      adaptive_options=adaptive_options, defense=defense, defense_options=options,
                      images=profile.images, batch_size=profile.batch_size,
                      seed=profile.seed if seed is None else seed,
                      target_pool=profile.target_pool, aux_images=profile.aux_images,
                      pretrain=profile.schedule(dataset) if trained else None)


def train_cell_for(profile: Profile, dataset: str, defense: str, options: dict[str, Any],
                   seed: int | None = None) -> TrainCell:
    return TrainCell(dataset=dataset, model=profile.model, defense=defense, defense_options=options,
                     train=profile.schedule(dataset), seed=profile.seed if seed is None else seed)


def applicable_adaptive(profile: Profile, defense: str) -> list[str]:
    """The profile's adaptive attacks that apply to ``defense`` (judged on its default
    configuration) and can attack the profile's batch size."""
    instance = Defense.from_config(defense)
    fits = [name for name in profile.adaptive_names()
            if ADAPTIVE[name].max_batch_size is None or profile.batch_size <= (ADAPTIVE[name].max_batch_size or 0)]
    return [name for name in fits if ADAPTIVE[name].applies_to(instance)]


def worst_case_attacks(profile: Profile, defense: str) -> list[tuple[str | None, str | None]]:
    """(attack, adaptive) pairs whose worst case is a defense's privacy: every plain attack of
    the profile and every non-oracle adaptive attack that applies (with each base attack, or
    alone when it reconstructs by itself)."""
    pairs: list[tuple[str | None, str | None]] = [(attack, None) for attack in profile.attack_names()]
    for adaptive in applicable_adaptive(profile, defense):
        if ADAPTIVE[adaptive].oracle:
            continue  # an upper bound that assumes a leak, never part of a defense's privacy
        bases: list[str | None] = [None] if ADAPTIVE[adaptive].reconstructs else \
            list(profile.adaptive_base_attacks())
        pairs += [(base, adaptive) for base in bases]
    return pairs


def build_plan(profile: Profile) -> Plan:
    """Every task and search of ``profile``, in table order (dataset, attack, defense)."""
    profile.check_names()
    plan = Plan(costs=profile.costs)
    defenses = profile.defense_names()
    search = profile.search
    reference = search.reference if search.target == "reference" else None
    for dataset in profile.datasets:
        # how each defense's options are set: as configured, fixed by the profile, or searched
        options: dict[str, dict[str, Any]] = {}
        searched: dict[str, str] = {}
        for defense in defenses:
            knob = DEFENSES[defense].strength
            base = dict(profile.defense_options.get(defense, {}))
            if knob is None or defense == reference:
                options[defense] = base
            elif defense in profile.strengths:
                options[defense] = {**base, **knob.options(profile.strengths[defense])}
                plan.fixed[f"{dataset}/{defense}"] = {"options": options[defense],
                                                      "strength": profile.strengths[defense], "method": "profile"}
            else:
                options[defense] = base  # the fixed part; the search adds the strength
                search_id = f"{dataset}/{defense}"
                searched[defense] = search_id
                if reference is not None:
                    reference_options = dict(profile.defense_options.get(reference, {}))
                    target = [attack_cell_for(profile, dataset, search.attack, reference, reference_options)]
                    probes = [attack_cell_for(profile, dataset, search.attack, defense, base)]
                else:
                    target = None
                    probes = [attack_cell_for(profile, dataset, attack, defense, base, adaptive)
                              for attack, adaptive in worst_case_attacks(profile, defense)]
                plan.searches.append(Search(search_id, dataset, defense, SearchCell(
                    reference=target, probes=probes, strength=knob, steps=search.steps,
                    tolerance_db=search.tolerance_db)))

        def add(role: Role, cell: AttackCell | TrainCell, labels: dict[str, Any],
                searched: dict[str, str] = searched) -> None:
            task_id = "/".join(str(v) for v in labels.values() if v is not None) + f"/{role}"
            plan.tasks.append(Task(task_id, role, cell, labels, searched.get(labels["defense"])))

        # every seed repeats the cells with its own targets, partition, initialisation and noise;
        # a searched strength is searched once, on the first seed, and used by all
        for seed in profile.seed_list():
            seed_label = seed if profile.seeds > 1 else None  # one seed: task ids as before seeds existed
            for moment in profile.moments:
                moment_label = "trained" if moment == "trained" else None  # init: task ids as before moments
                for attack in profile.attack_names():
                    for defense in defenses:
                        cell = attack_cell_for(profile, dataset, attack, defense, options[defense], seed=seed,
                                               moment=moment)
                        add("attack", cell, {"dataset": dataset, "attack": attack, "adaptive": None,
                                             "defense": defense, "moment": moment_label, "seed": seed_label})
                for defense in defenses:
                    for adaptive in applicable_adaptive(profile, defense):
                        # an attack that reconstructs by itself needs no base attack: one cell
                        bases: list[str | None] = [None] if ADAPTIVE[adaptive].reconstructs else \
                            list(profile.adaptive_base_attacks())
                        for base_attack in bases:
                            cell = attack_cell_for(profile, dataset, base_attack, defense, options[defense],
                                                   adaptive, seed=seed, moment=moment)
                            add("attack", cell, {"dataset": dataset, "attack": base_attack, "adaptive": adaptive,
                                                 "defense": defense, "moment": moment_label, "seed": seed_label})
            if dataset in profile.trained_datasets():
                for defense in defenses:
                    if DEFENSES[defense].trains:
                        add("train", train_cell_for(profile, dataset, defense, options[defense], seed=seed),
                            {"dataset": dataset, "defense": defense, "seed": seed_label})
    return plan


def describe_plan(plan: Plan, stored: set[str]) -> list[str]:
    """One line per search and task: state (stored / to do / after its search), what, estimate."""
    lines = []
    for search in plan.searches:
        state = "stored" if search.cell.key() in stored else "to do"
        lines.append(f"[{state:>6}] {search.cell.describe()}  (<= {search.cell.steps + 2} probes, "
                     f"~{plan.estimate_s(search.cell):.0f} s)")
    for task in plan.tasks:
        if task.strength_from is not None:
            state = "search"
        else:
            state = "stored" if task.cell.key() in stored else "to do"
        what = task.cell.describe() + (" (options from its search)" if task.strength_from else "")
        lines.append(f"[{state:>6}] {what}  (~{plan.estimate_s(task.cell):.0f} s)")
    return lines
