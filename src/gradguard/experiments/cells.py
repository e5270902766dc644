"""The two kinds of cell a reproduction computes: an attack on a set of images, and a training run.

Each is a pure function of its configuration: the model's initialisation, the choice of
target images, the defense's noise and the attack's randomness all derive from the config's
seed, so the store's cached result equals a recomputation.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..attacks import Attack
from ..attacks.adaptive import Observation, adaptive_attack
from ..data import load_dataset
from ..defenses import Defense, DefenseContext
from ..grads import batch_gradient
from ..metrics import label_accuracy, score_reconstruction
from ..models import build_model, model_for


def derived_generator(*parts: Any) -> torch.Generator:
    """A generator seeded from a hash of ``parts`` (e.g. the seed and a purpose)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def encode_images(images: torch.Tensor) -> dict[str, Any]:
    """Images in [0, 1] as compact JSON: uint8 bytes in base64 plus the shape."""
    array = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return {"shape": list(array.shape), "uint8_b64": base64.b64encode(array.tobytes()).decode()}


def decode_images(blob: dict[str, Any]) -> torch.Tensor:
    array = np.frombuffer(base64.b64decode(blob["uint8_b64"]), dtype=np.uint8).reshape(blob["shape"])
    return torch.from_numpy(array.copy()).float() / 255


def target_indices(num_train: int, count: int, generator: torch.Generator, pool: int = 4000) -> list[int]:
    """Which training images are attacked: a seeded draw from the first ``pool`` images (for
    CIFAR-10 those carry exact pixels)."""
    return torch.randperm(min(pool, num_train), generator=generator)[:count].tolist()


def seeded_model(dataset, name: str, seed: int, normalised: bool = True, **options) -> torch.nn.Module:
    """The model the attacker sees, initialised from the seed without touching the global RNG.

    ``normalised=False`` leaves out the dataset's normalisation layer, as DLG's own LeNet does:
    DLG's L-BFGS at lr 1 diverges on most images through it (docs/attacks.md)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if normalised:
            return model_for(dataset, name, **options)
        return build_model(name, dataset.image_shape, dataset.num_classes, **options)


def observe(defense, model, x, y, rounds: int, generator_of) -> Observation:
    """What the attacker sees of one batch: its defended gradient in ``rounds`` rounds at the
    same model (a replayed model), and the client's secret noisy elements for scoring."""
    clean = batch_gradient(model, x, y)
    gradients, secret = [], None
    for r in range(rounds):
        context = DefenseContext(model=model, x=x, y=y, generator=generator_of(r), round=r, local_data=(x, y))
        gradients.append(defense.defend(clean, context))
        if r == 0 and "noisy_slices" in context.extras:
            secret = torch.zeros(sum(g.numel() for g in clean), dtype=torch.bool)
            for start, end in context.extras["noisy_slices"]:
                secret[start:end] = True
    return Observation(gradients, secret)


def attack_cell(config: dict[str, Any], data_root: Path | None) -> dict[str, Any]:
    """Attack ``images`` training images, ``batch_size`` at a time, through a defense; with an
    ``adaptive`` entry, the adaptive attacker prepares each observation first."""
    dataset = load_dataset(config["dataset"], data_root)
    seed = config["seed"]
    model = seeded_model(dataset, config["model"], seed, config["normalised"], **config["model_options"])
    defense = Defense.from_config(config["defense"], **config["defense_options"])
    attack = Attack.from_config(config["attack"], **config["attack_overrides"])
    adaptive = adaptive_attack(**config["adaptive"]) if config.get("adaptive") else None
    index = target_indices(len(dataset.x_train), config["images"], derived_generator(seed, "targets"))
    truth, labels = dataset.x_train[index], dataset.y_train[index]
    batch = config["batch_size"]
    batches = [(truth[s:s + batch], labels[s:s + batch], s) for s in range(0, len(index), batch)]
    observations = [observe(defense, model, x, y, adaptive.rounds if adaptive else 1,
                            lambda r, s=s: derived_generator(seed, "defense", s, r)) for x, y, s in batches]
    generator = derived_generator(seed, "attack")
    detection: list[dict[str, float]] = []
    if adaptive is None:
        # All targets in one vectorised optimisation; labels reach the attack only if its config says "given".
        results = attack.reconstruct_many(model, [o.gradients[0] for o in observations], dataset.image_shape, batch,
                                          labels=[y for _, y, _ in batches], generator=generator)
    else:
        public = (dataset.x_test[:64], dataset.y_test[:64])  # the attacker's own data, never a target
        results = []
        for observation, (_, y, _) in zip(observations, batches):
            prepared = adaptive.prepare(model, observation, defense, public)
            detection.append(prepared.detection)
            muted = Attack(attack.config.model_copy(update={"mute_mask": prepared.mute_mask}))
            results.append(muted.reconstruct(model, prepared.gradient, dataset.image_shape, batch, labels=y,
                                             generator=generator))
    images = torch.cat([r.images.detach() for r in results])
    scores = score_reconstruction(images, truth)
    floor = score_reconstruction(dataset.x_train.mean(0, keepdim=True).expand_as(truth), truth, matched=False)
    return {
        "psnr": scores.psnr.tolist(), "ssim": scores.ssim.tolist(), **scores.summary(),
        "label_accuracy": label_accuracy(torch.cat([r.labels.detach() for r in results]), labels),
        "floor_psnr": float(floor.psnr.mean()), "floor_ssim": float(floor.ssim.mean()),
        "detection": {k: sum(d[k] for d in detection) / len(detection) for k in (detection[0] if detection else {})},
        "truth": encode_images(truth), "reconstruction": encode_images(images), "targets": index,
    }


def train_cell(config: dict[str, Any], data_root: Path | None) -> dict[str, Any]:
    """One simulated federated training run: the accuracy curve, ACC and ART."""
    from ..fl import SimulationConfig, simulate

    history = simulate(SimulationConfig(**config, data_root=data_root, reproducible_noise=True))
    return {"summary": history.summary(),
            "curve": [[r.round, r.accuracy] for r in history.evaluated],
            "accuracy": history.final_accuracy, "art_s": history.art}


COMPUTE: dict[str, Callable[[dict[str, Any], Path | None], dict[str, Any]]] = {
    "attack": attack_cell,
    "train": train_cell,
}
