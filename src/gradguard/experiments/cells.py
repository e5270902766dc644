"""The cells a reproduction computes, as typed, frozen configurations, and how each is computed.

A cell is one unit of work: an attack on a set of images (:class:`AttackCell`), a training run
(:class:`TrainCell`), or an equal-privacy search over attack cells (:class:`SearchCell`). Each is
a pure function of its configuration: the model's initialisation, the choice of target images,
the defense's noise and the attack's randomness all derive from the config's seed (through
:mod:`gradguard.rng`), so a stored result equals a recomputation.

A cell's configuration is also its key in the results store: one canonical serialisation
(:meth:`Cell.key`). Adding, removing or retyping a field would change every key, so the
fields are fingerprinted: :data:`SCHEMA_FINGERPRINT` must match the classes, and a change
needs a :data:`STORE_VERSION` bump (the store then refuses an older run folder with a clear
message instead of silently recomputing or mixing results).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from ..attacks import Attack, Reconstruction
from ..attacks.adaptive import Observation, Prepared, adaptive_attack
from ..data import load_dataset
from ..data.datasets import cache_folder
from ..defenses import Defense, DefenseContext
from ..defenses.base import Strength
from ..errors import ConfigError, GradguardError
from ..grads import batch_gradient
from ..metrics import label_accuracy, score_reconstruction
from ..models import build_model, model_for
from ..rng import make_generator, seeded_global_rng

#: Version of the cell format (fields and key derivation). Bump it with :data:`SCHEMA_FINGERPRINT`.
STORE_VERSION = 3
#: sha256 prefix of the cell classes' JSON schemas at :data:`STORE_VERSION` (see :func:`schema_fingerprint`).
SCHEMA_FINGERPRINT = "aa7e0db7f5b0db6c"


class TrainSettings(BaseModel):
    """The federated schedule of a training cell (every defense of a profile trains with the same)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: str = "fedavg"
    clients: int = Field(10, ge=1)
    fraction: float = Field(1.0, gt=0, le=1)
    rounds: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.1, gt=0)
    local_steps: int | None = Field(5, ge=1)
    eval_every: int = Field(2, ge=1)


class Cell(BaseModel):
    """Base of every cell: frozen, unknown fields refused, one canonical key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ClassVar[str]

    def config(self) -> dict[str, Any]:
        """The configuration as plain JSON data (what the store keeps beside the result)."""
        return self.model_dump(mode="json")

    def key(self) -> str:
        return cell_key(self.kind, self.config())

    def describe(self) -> str:
        return f"{self.kind} cell"


def cell_key(kind: str, config: dict[str, Any]) -> str:
    """A stable hash of a cell's kind, the store version and its configuration (canonical JSON)."""
    canonical = json.dumps({"kind": kind, "version": STORE_VERSION, "config": config}, sort_keys=True,
                           separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _short(reference: str) -> str:
    """A dataset reference without its pin (``folder:PATH;sha256=...`` -> ``folder:PATH``), for messages."""
    return reference.split(";")[0]


def _options(options: dict[str, Any]) -> str:
    return ",".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in options.items())


class AttackCell(Cell):
    """Attack ``images`` training images, ``batch_size`` at a time, through a defense; with
    ``adaptive``, that adaptive attacker prepares each observation before the matching (or, for
    one that reconstructs by itself, ``attack`` is None). The attacker's own data is up to
    ``aux_images`` training images that are not targets."""

    kind: ClassVar[str] = "attack"

    dataset: str
    model: str
    model_options: dict[str, Any] = Field(default_factory=dict)
    normalised: bool = True
    attack: str | None
    attack_overrides: dict[str, Any] = Field(default_factory=dict)
    adaptive: str | None = None
    adaptive_options: dict[str, Any] = Field(default_factory=dict)
    defense: str
    defense_options: dict[str, Any] = Field(default_factory=dict)
    images: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    seed: int
    target_pool: int = Field(ge=1)
    aux_images: int = Field(ge=1)
    pretrain: TrainSettings | None = Field(None, description="None: attack the model at its initialisation (DLG's "
                                           "setting); else the model after this FedAvg schedule without defense on "
                                           "the dataset, from the same seed (late in training)")

    @model_validator(mode="after")
    def _trained_models_are_normalised(self) -> AttackCell:
        if self.pretrain is not None and not self.normalised:
            raise ValueError("a trained model keeps the normalisation layer it was trained with: pretrain needs "
                             "normalised=True")
        return self

    def moment(self) -> str:
        """``init`` (the model at its initialisation) or ``trained``."""
        return "init" if self.pretrain is None else "trained"

    def label(self) -> str:
        """``gia``, ``detect-mute + gia`` or ``lti``."""
        return " + ".join(part for part in (self.adaptive, self.attack) if part)

    def describe(self) -> str:
        batch = f" (batch {self.batch_size})" if self.batch_size > 1 else ""
        moment = " on the trained model" if self.pretrain is not None else ""
        return f"{_short(self.dataset)}: {self.label()} vs {self.defense} {_options(self.defense_options)}".strip() \
            + batch + moment


class TrainCell(Cell):
    """One simulated federated training run with a defense."""

    kind: ClassVar[str] = "train"

    dataset: str
    model: str
    defense: str
    defense_options: dict[str, Any] = Field(default_factory=dict)
    train: TrainSettings
    seed: int

    def describe(self) -> str:
        return f"{_short(self.dataset)}: train with {self.defense} {_options(self.defense_options)}".strip()


class SearchCell(Cell):
    """The weakest strength of the probes' defense whose privacy reaches a target: a
    log-bisection over ``strength`` with ``steps`` probes after the two bounds. A probe is every
    cell of ``probes`` with the defense's option set, and its PSNR is the worst case over them
    (per target, the best attack). The target is the ``reference`` cells' worst-case PSNR +
    ``tolerance_db`` or, without a reference, the better no-gradient floor + ``tolerance_db``."""

    kind: ClassVar[str] = "search"

    reference: list[AttackCell] | None
    probes: list[AttackCell] = Field(min_length=1)
    strength: Strength
    steps: int = Field(ge=0)
    tolerance_db: float = Field(ge=0)

    def options_at(self, strength: float) -> dict[str, Any]:
        """The defense's options at ``strength``: the probes' fixed options and the knob's."""
        return {**self.probes[0].defense_options, **self.strength.options(strength)}

    def at(self, strength: float) -> list[AttackCell]:
        options = self.options_at(strength)
        return [probe.model_copy(update={"defense_options": options}) for probe in self.probes]

    def describe(self) -> str:
        probe = self.probes[0]
        target = f"{self.reference[0].defense}'s PSNR" if self.reference else "the floor"
        attacks = "the worst case" if len(self.probes) > 1 else probe.label()
        return (f"{_short(probe.dataset)}: search {probe.defense} {self.strength.option} in "
                f"[{self.strength.low:g}, {self.strength.high:g}] x{self.strength.scale:g} for {target} "
                f"+ {self.tolerance_db:g} dB under {attacks}")


CELL_TYPES: dict[str, type[Cell]] = {cls.kind: cls for cls in (AttackCell, TrainCell, SearchCell)}


def schema_fingerprint() -> str:
    """A hash of every cell class's fields, types and defaults: changes whenever a key would."""
    schemas = {kind: cls.model_json_schema() for kind, cls in sorted(CELL_TYPES.items())}
    return hashlib.sha256(json.dumps(schemas, sort_keys=True).encode()).hexdigest()[:16]


def check_schema() -> None:
    """Refuse to key cells when their fields changed without a store version bump."""
    found = schema_fingerprint()
    if found != SCHEMA_FINGERPRINT:
        raise GradguardError(
            f"cell fields changed (schema {found}, expected {SCHEMA_FINGERPRINT} for store version {STORE_VERSION}): "
            f"bump STORE_VERSION and set SCHEMA_FINGERPRINT = {found!r} in gradguard/experiments/cells.py")


def encode_images(images: torch.Tensor) -> dict[str, Any]:
    """Images in [0, 1] as compact JSON: uint8 bytes in base64 plus the shape."""
    array = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return {"shape": list(array.shape), "uint8_b64": base64.b64encode(array.tobytes()).decode()}


def decode_images(blob: dict[str, Any]) -> torch.Tensor:
    array = np.frombuffer(base64.b64decode(blob["uint8_b64"]), dtype=np.uint8).reshape(blob["shape"])
    return torch.from_numpy(array.copy()).float() / 255


def target_indices(num_train: int, count: int, generator: torch.Generator, pool: int) -> list[int]:
    """Which training images are attacked: a seeded draw from the first ``pool`` images (for
    CIFAR-10, the first 4,000 carry exact pixels)."""
    return torch.randperm(min(pool, num_train), generator=generator)[:count].tolist()


def seeded_model(dataset, name: str, seed: int, normalised: bool = True, **options) -> torch.nn.Module:
    """The model the attacker sees, initialised from the seed; the global RNG is left as it was.

    ``normalised=False`` leaves out the dataset's normalisation layer, as DLG's own LeNet does:
    DLG's L-BFGS at lr 1 diverges on most images through it (docs/attacks.md)."""
    with seeded_global_rng(seed, "model"):
        if normalised:
            return model_for(dataset, name, **options)
        return build_model(name, dataset.image_shape, dataset.num_classes, **options)


def observe(defense: Defense, model, x, y, rounds: int, generator_of) -> Observation:
    """What the attacker sees of one batch: its defended gradient in ``rounds`` rounds at the
    same model (a replayed model), and the client's secret noisy elements for scoring."""
    clean = batch_gradient(model, x, y)
    gradients, secret = [], None
    for r in range(rounds):
        context = DefenseContext(model=model, x=x, y=y, generator=generator_of(r), round=r, local_data=(x, y))
        defended, mask = defense.defend_with_secret(clean, context)
        gradients.append(defended)
        if r == 0:
            secret = mask
    return Observation(gradients, secret, batch_size=len(x))


def aux_indices(num_train: int, targets: list[int], count: int, generator: torch.Generator) -> Tensor:
    """The attacker's own data: up to ``count`` training images that are not targets, in a seeded order."""
    order = torch.randperm(num_train, generator=generator)
    keep = ~torch.isin(order, torch.tensor(targets, dtype=order.dtype))
    return order[keep][:count]


def floors(dataset, index: list[int], truth: Tensor) -> dict[str, list[float]]:
    """Per target, the scores of two guesses that use no gradient: the dataset's mean training
    image (no information) and the mean training image of the target's own label, the target
    left out (the label known: what a leaked label alone gives)."""
    x, y = dataset.x_train, dataset.y_train
    mean = score_reconstruction(x.mean(0, keepdim=True).expand_as(truth), truth, matched=False)
    classes = int(y.max()) + 1
    sums = torch.zeros(classes, *x.shape[1:]).index_add_(0, y, x)
    counts = torch.bincount(y, minlength=classes).float()
    labels = y[index]
    own = (sums[labels] - truth) / (counts[labels] - 1).clamp_min(1).view(-1, *([1] * (truth.dim() - 1)))
    by_label = score_reconstruction(own.clamp(0, 1), truth, matched=False)
    return {"floor_psnr_each": mean.psnr.tolist(), "floor_ssim_each": mean.ssim.tolist(),
            "class_floor_psnr_each": by_label.psnr.tolist(), "class_floor_ssim_each": by_label.ssim.tolist()}


def attacker_view(model: torch.nn.Module) -> torch.nn.Module:
    """The model as the attacker evaluates it: the client's, with dropout off when it was on (the
    attacker cannot know the client's random dropout masks, so it matches the expected network;
    BatchNorm keeps the client's mode). The model itself when it has no active dropout."""
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.training]
    if not dropouts:
        return model
    view = copy.deepcopy(model)
    for module in view.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.eval()
    return view


@dataclass(frozen=True)
class AttackOutcome:
    """An attack cell's result (``record``, what the store keeps) and the tensors behind it."""

    record: dict[str, Any]
    truth: Tensor
    images: Tensor  # reconstructions, in target order after matching
    index: list[int]


def attack_cell(cell: AttackCell, data_root: Path | None, device: torch.device | None = None) -> dict[str, Any]:
    return run_attack(cell, data_root, device=device).record


def run_attack(cell: AttackCell, data_root: Path | None, dataset=None, progress=None,
               device: torch.device | None = None) -> AttackOutcome:
    """Attack the cell's targets; ``progress(iteration, distances)`` follows a plain attack.

    ``device`` (default the CPU) holds the model, the observed batches, the defense's and the
    attack's generators and the attack's variables; the choice of targets, the floors and the
    scores are computed on the CPU, so they are the same on every device."""
    dataset = dataset if dataset is not None else load_dataset(cell.dataset, data_root)
    seed = cell.seed
    device = torch.device(device) if device is not None else torch.device("cpu")
    model = seeded_model(dataset, cell.model, seed, cell.normalised, **cell.model_options)
    if cell.pretrain is not None:
        model.load_state_dict(trained_state(cell, data_root))
    model = model.to(device)
    defense = Defense.from_config(cell.defense, **cell.defense_options)
    attack = Attack.from_config(cell.attack, **cell.attack_overrides) if cell.attack else None
    adaptive = adaptive_attack(cell.adaptive, **cell.adaptive_options) if cell.adaptive else None
    index = target_indices(len(dataset.x_train), cell.images, make_generator(seed, "targets"), cell.target_pool)
    truth, labels = dataset.x_train[index], dataset.y_train[index]
    batch = cell.batch_size
    batches = [(truth[s:s + batch].to(device), labels[s:s + batch].to(device), s) for s in range(0, len(index), batch)]
    # dropout in train mode draws its masks from the global RNG
    with seeded_global_rng(seed, "client-forward", device=device):
        observations = [observe(defense, model, x, y, adaptive.rounds if adaptive else 1,
                                lambda r, s=s: make_generator(seed, "defense", s, r, device=device))
                        for x, y, s in batches]
    model = attacker_view(model)
    generator = make_generator(seed, "attack", device=device)
    detection: list[dict[str, float]] = []
    images_out: list[Tensor] = []
    labels_out: list[Tensor] = []
    if adaptive is None:
        assert attack is not None
        # All targets in one vectorised optimisation; labels reach the attack only if its config says "given".
        results = attack.reconstruct_many(model, [o.gradients[0] for o in observations], dataset.image_shape, batch,
                                          labels=[y for _, y, _ in batches], generator=generator, progress=progress)
        images_out, labels_out = [r.images.detach() for r in results], [r.labels.detach() for r in results]
    else:
        aux = aux_indices(len(dataset.x_train), index, cell.aux_images, make_generator(seed, "aux"))
        public = (dataset.x_train[aux].to(device), dataset.y_train[aux].to(device))  # the attacker's, never a target
        prepared = [adaptive.prepare(model, observation, defense, public) for observation in observations]
        detection = [p.detection for p in prepared]
        if adaptive.reconstructs:
            for p in prepared:
                if p.images is None or p.labels is None:
                    raise ConfigError(f"attack cell: {cell.adaptive} returned no images or no labels")
                images_out.append(p.images.detach())
                labels_out.append(p.labels)
        else:
            if attack is None:
                raise ConfigError(f"attack cell: {cell.adaptive} needs a base attack to invert its gradient")
            results = _invert_prepared(attack, model, prepared, [y for _, y, _ in batches], dataset.image_shape,
                                       batch, generator)
            images_out, labels_out = [r.images.detach() for r in results], [r.labels.detach() for r in results]
    images = torch.cat(images_out).cpu()
    labels_out = [predicted.cpu() for predicted in labels_out]
    scores = score_reconstruction(images, truth)
    each = {"psnr": torch.zeros(len(index)), "ssim": torch.zeros(len(index))}  # by target, after matching
    each["psnr"][scores.truth_index] = scores.psnr
    each["ssim"][scores.truth_index] = scores.ssim
    guessed = floors(dataset, index, truth)
    mean = lambda values: float(sum(values) / len(values))  # noqa: E731
    aligned = torch.empty_like(images)
    aligned[scores.truth_index] = images
    record = {
        "psnr": scores.psnr.tolist(), "ssim": scores.ssim.tolist(), **scores.summary(),
        "psnr_each": each["psnr"].tolist(), "ssim_each": each["ssim"].tolist(), **guessed,
        "label_accuracy": label_accuracy(torch.cat(labels_out), labels),
        "floor_psnr": mean(guessed["floor_psnr_each"]), "floor_ssim": mean(guessed["floor_ssim_each"]),
        "class_floor_psnr": mean(guessed["class_floor_psnr_each"]),
        "class_floor_ssim": mean(guessed["class_floor_ssim_each"]),
        "detection": {k: sum(d[k] for d in detection) / len(detection) for k in (detection[0] if detection else {})},
        "truth": encode_images(truth), "reconstruction": encode_images(images), "targets": index,
    }
    return AttackOutcome(record, truth, aligned, index)


def _invert_prepared(attack: Attack, model, prepared: list[Prepared], labels: list[Tensor], image_shape,
                     batch: int, generator: torch.Generator) -> list[Reconstruction]:
    """Invert every target's prepared gradient, each with its own mute mask and distance scale,
    consecutive targets that share the engine's other configuration changes (e.g. a likelihood
    as the distance) in one vectorised optimisation: the same result as inverting them one
    after another (``reconstruct_many``'s contract; runs in target order keep the generator's
    draws in target order), three to four times faster on LeNet."""
    results: list[Reconstruction] = []
    start = 0
    while start < len(prepared):
        shared = _engine_changes(prepared[start])
        end = start + 1
        while end < len(prepared) and _same_changes(_engine_changes(prepared[end]), shared):
            end += 1
        members = prepared[start:end]
        tuned = Attack(attack.config.model_copy(update=shared)) if shared else attack
        masks = [p.mute_mask for p in members]
        scales = [float(p.overrides.get("distance_scale", 1.0)) for p in members]  # type: ignore[arg-type]
        results += tuned.reconstruct_many(
            model, [p.gradient for p in members], image_shape, batch, labels=labels[start:end], generator=generator,
            mute_masks=None if all(m is None for m in masks) else masks,
            distance_scales=None if all(v == 1.0 for v in scales) else scales)
        start = end
    return results


def _engine_changes(prepared: Prepared) -> dict[str, object]:
    """The configuration changes a target needs other than its distance scale (passed per target)."""
    return {name: value for name, value in prepared.overrides.items() if name != "distance_scale"}


def _same_changes(a: dict[str, object], b: dict[str, object]) -> bool:
    if a.keys() != b.keys():
        return False
    for name, value in a.items():
        other = b[name]
        if isinstance(value, Tensor) or isinstance(other, Tensor):
            if not (isinstance(value, Tensor) and isinstance(other, Tensor) and torch.equal(value, other)):
                return False
        elif value != other:
            return False
    return True


def pretrain_config(cell: AttackCell, data_root: Path | None = None):
    """The :class:`~gradguard.fl.SimulationConfig` of the cell's ``pretrain`` run: FedAvg without
    defense, the cell's dataset, model options and seed, evaluated only at the end."""
    from ..fl import SimulationConfig

    assert cell.pretrain is not None
    return SimulationConfig(dataset=cell.dataset, model=cell.model, model_options=cell.model_options,
                            defense="none", seed=cell.seed, data_root=data_root,
                            **(cell.pretrain.model_dump() | {"eval_every": cell.pretrain.rounds}))


def trained_state(cell: AttackCell, data_root: Path | None) -> dict[str, Tensor]:
    """The state of the cell's model after its ``pretrain`` schedule: FedAvg without defense on
    the cell's dataset from the cell's seed, with the cell's model options, on the CPU. It is
    the profile's ``none`` training cell when the schedules match and the attacked model's
    options are the simulator's (``TRAINING_MODEL_OPTIONS``: for LeNet, DLG's initialisation,
    as profiles attack it). Deterministic, so it is computed once and cached under a hash of
    everything that determines it, gradguard's version and an ``npz:`` file's bytes included
    (``cache_folder("trained")``); concurrent workers may both compute it and write the same file."""
    from .. import __version__
    from ..fl import simulate

    assert cell.pretrain is not None
    what = {"dataset": cell.dataset, "model": cell.model, "model_options": cell.model_options,
            "pretrain": cell.pretrain.model_dump(mode="json"), "seed": cell.seed, "version": STORE_VERSION,
            "gradguard": __version__}
    if cell.dataset.startswith("npz:"):
        with open(cell.dataset[4:], "rb") as handle:
            what["npz_sha256"] = hashlib.file_digest(handle, "sha256").hexdigest()
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:32]
    path = cache_folder("trained") / f"{digest}.pt"
    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
            pass  # a damaged cache entry is computed again
    with seeded_global_rng(cell.seed, "train-forward"):
        state = simulate(pretrain_config(cell, data_root)).final_state
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, partial)
    os.replace(partial, path)
    return state


def train_cell(cell: TrainCell, data_root: Path | None, device: torch.device | None = None) -> dict[str, Any]:
    from ..fl import SimulationConfig, simulate

    config = SimulationConfig(dataset=cell.dataset, model=cell.model, defense=cell.defense,
                              defense_options=cell.defense_options, seed=cell.seed, **cell.train.model_dump(),
                              data_root=data_root, reproducible_noise=True)
    with seeded_global_rng(cell.seed, "train-forward", device=device):  # dropout's masks come from the global RNG
        history = simulate(config, device=device)
    return {"summary": history.summary(),
            "curve": [[r.round, r.accuracy] for r in history.evaluated],
            "accuracy": history.final_accuracy, "art_s": history.art}


def compute(cell: Cell, data_root: Path | None, device: torch.device | None = None) -> dict[str, Any]:
    """The result of an attack or training cell on ``device`` (default the CPU; searches are
    driven by the runner)."""
    if isinstance(cell, AttackCell):
        return attack_cell(cell, data_root, device)
    if isinstance(cell, TrainCell):
        return train_cell(cell, data_root, device)
    raise TypeError(f"{type(cell).__name__} is not computed directly")
