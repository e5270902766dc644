"""``lti``: learning to invert (after Wu et al., "Learning to Invert: Simple Adaptive Attacks for
Gradient Inversion in Federated Learning", UAI 2023), as an adaptive attack.

The attacker owns auxiliary images (by default training images that are not targets). It
computes their per-sample gradients at the attacked model, passes each through the client's
defense with its public configuration and fresh secrets, and trains an inversion network from
defended gradient to image. The network therefore adapts to the defense by construction: it
learns whatever survives the noise, pruning or slicing, including the label.

Sized for a CPU: a fixed random projection of the gradient (P elements) to ``projection``
features, standardised, then a two-hidden-layer MLP to the image (sigmoid output, pixel
space), trained with Adam on the squared error. LeNet on MNIST-size images trains in about a
minute on one core with the defaults. Deviations from the paper, and why: the paper's
inverter is larger and trained on GPU for hours on more auxiliary data; this one keeps the
idea (learned inversion of the defended gradient) at a size that fits the harness, so it is a
lower bound on what a learned attacker achieves. Batch size 1 only.

The trained inverter is cached per (model weights, defense configuration, auxiliary data,
inverter settings) in memory and, unless ``cache=False``, on disk under
``$GRADGUARD_CACHE/lti`` (default ``~/.cache/gradguard/lti``); :attr:`LearnedInversion.last_fit`
says whether the last inverter was trained or loaded, and how long training took.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..data.datasets import cache_folder
from ..errors import ConfigError
from ..grads import batch_gradient, flatten, has_batchnorm, is_batchnorm, per_sample_gradients, trainable_parameters
from ..rng import make_generator, seeded_global_rng
from .adaptive import AdaptiveAttack, Observation, Prepared, register_adaptive
from .labels import idlg_labels, last_linear

if TYPE_CHECKING:
    from ..defenses.base import Defense


def cache_root() -> Path:
    """Where trained inverters are kept: ``$GRADGUARD_CACHE/lti`` or ``~/.cache/gradguard/lti``."""
    return cache_folder("lti")


class Inverter(nn.Module):
    """Defended gradient (flat) -> image: fixed random projection, standardisation, MLP."""

    projection: Tensor
    mean: Tensor
    std: Tensor

    def __init__(self, gradient_size: int, image_shape: tuple[int, ...], projection: int, hidden: int, seed: int):
        super().__init__()
        generator = make_generator(seed, "lti-projection")
        self.register_buffer("projection", torch.randn(gradient_size, projection, generator=generator)
                             / projection ** 0.5)
        self.register_buffer("mean", torch.zeros(projection))
        self.register_buffer("std", torch.ones(projection))
        self.image_shape = tuple(image_shape)
        pixels = 1
        for side in image_shape:
            pixels *= side
        self.net = nn.Sequential(nn.Linear(projection, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, pixels))
        with seeded_global_rng(seed, "lti-init"):  # nn.Linear draws from the global RNG; it is restored after
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()

    def features(self, gradients: Tensor) -> Tensor:
        return gradients @ self.projection

    def forward(self, gradients: Tensor) -> Tensor:
        z = (self.features(gradients) - self.mean) / self.std
        return torch.sigmoid(self.net(z)).view(-1, *self.image_shape)


def _per_sample(model: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    """Each image's gradient, as a client at batch size 1 computes it. BatchNorm in train mode
    normalises a batch of one with that image's own statistics, which vmapped per-sample
    gradients refuse (they would mix a batch): then one plain backward pass per image, on a copy
    that leaves the running statistics alone."""
    if not (model.training and has_batchnorm(model)):
        return per_sample_gradients(model, x, y)
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if is_batchnorm(module):
            module.track_running_stats = False
    rows = [batch_gradient(copied, x[i:i + 1], y[i:i + 1]) for i in range(len(x))]
    return [torch.stack(parts) for parts in zip(*rows)]


@dataclass(frozen=True)
class Fit:
    """How the last inverter came to be: trained (with its training time) or loaded from the cache."""

    trained: bool
    seconds: float
    key: str


@register_adaptive
class LearnedInversion(AdaptiveAttack):
    """Train an inverter on the attacker's own data through the defense, then apply it."""

    name = "lti"
    reconstructs = True
    max_batch_size = 1

    def __init__(self, aux_images: int = 3000, projection: int = 1024, hidden: int = 512, epochs: int = 40,
                 draws: int = 2, lr: float = 1e-3, batch: int = 128, seed: int = 0, cache: bool = True):
        for name, value, low in (("aux_images", aux_images, 16), ("projection", projection, 8), ("hidden", hidden, 8),
                                 ("epochs", epochs, 1), ("draws", draws, 1), ("batch", batch, 1)):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{self.name}: {name} must be a whole number >= {low}, got {value!r}")
        if not 0 < lr < 1:
            raise ConfigError(f"{self.name}: lr must be in (0, 1), got {lr}")
        self.settings: dict[str, Any] = {"aux_images": aux_images, "projection": projection, "hidden": hidden,
                                         "epochs": epochs, "draws": draws, "lr": lr, "batch": batch, "seed": seed}
        self.cache = cache
        self.last_fit: Fit | None = None
        self._memory: dict[str, Inverter] = {}

    @classmethod
    def applies_to(cls, defense: Defense) -> bool:
        return True  # learns whatever the defense leaves, so it is run against every defense

    def options(self) -> dict[str, object]:
        return {**self.settings, "cache": self.cache}

    def prepare(self, model: nn.Module, observation: Observation, defense: Defense,
                public_data: tuple[Tensor, Tensor]) -> Prepared:
        gradient = observation.gradients[0]
        inverter = self.inverter(model, defense, public_data)
        with torch.no_grad():
            images = inverter(flatten(gradient).unsqueeze(0).float())
        weight = last_linear(model).weight
        fc_index = next(i for i, p in enumerate(trainable_parameters(model)) if p is weight)
        labels = idlg_labels(gradient[fc_index], 1)
        return Prepared(gradient, images=images, labels=labels)

    # -- training --

    def inverter(self, model: nn.Module, defense: Defense, public_data: tuple[Tensor, Tensor]) -> Inverter:
        """The trained inverter for this model, defense and data: from memory, disk or training."""
        x, y = public_data
        count = min(self.settings["aux_images"], len(x))
        x, y = x[:count], y[:count]
        key = self._key(model, defense, x, y)
        if key in self._memory:
            self.last_fit = Fit(False, 0.0, key)
            return self._memory[key]
        path = cache_root() / f"{key}.pt"
        inverter = Inverter(sum(p.numel() for p in model.parameters() if p.requires_grad), tuple(x.shape[1:]),
                            self.settings["projection"], self.settings["hidden"], self.settings["seed"])
        if self.cache and path.is_file():
            try:
                inverter.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                self.last_fit = Fit(False, 0.0, key)
                self._memory[key] = inverter
                return inverter
            except (OSError, RuntimeError, ValueError):
                pass  # a damaged or outdated file: train again and overwrite it
        start = time.perf_counter()
        self._train(inverter, model, defense, x, y)
        self.last_fit = Fit(True, time.perf_counter() - start, key)
        inverter.eval()
        self._memory[key] = inverter
        if self.cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(inverter.state_dict(), partial)
            partial.replace(path)  # atomic: a concurrent reader sees the old file or the whole new one
        return inverter

    def _key(self, model: nn.Module, defense: Defense, x: Tensor, y: Tensor) -> str:
        digest = hashlib.sha256()
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digest.update(x.contiguous().numpy().tobytes())
        digest.update(y.contiguous().numpy().tobytes())
        described: dict[str, Any] = {"defense": defense.name, "config": defense.config.model_dump(mode="json"),
                                     "settings": self.settings, "version": 1}
        if has_batchnorm(model) or any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()):
            described["training"] = model.training  # the mode changes these layers' gradients
        digest.update(json.dumps(described, sort_keys=True, default=str).encode())
        return digest.hexdigest()[:32]

    def defended_gradients(self, model: nn.Module, defense: Defense, x: Tensor, y: Tensor, draw: int) -> Tensor:
        """Each auxiliary image's gradient after the defense (fresh secrets per draw), as rows."""
        from ..defenses.base import DefenseContext

        rows = []
        for start in range(0, len(x), 256):  # one defend_rows call per 256 images: a ranking defense ranks them at once
            xs, ys = x[start:start + 256], y[start:start + 256]
            per_sample = _per_sample(model, xs, ys)
            contexts = [DefenseContext(model=model, x=xs[i:i + 1], y=ys[i:i + 1], local_data=(xs[i:i + 1], ys[i:i + 1]),
                                       generator=make_generator(self.settings["seed"], "lti-defense", draw, start + i),
                                       client=draw)
                        for i in range(len(xs))]
            clean = torch.cat([g.flatten(1) for g in per_sample], 1)
            rows.append(defense.defend_rows(clean, [g[0] for g in per_sample], contexts))
        return torch.cat(rows).float()

    def _train(self, inverter: Inverter, model: nn.Module, defense: Defense, x: Tensor, y: Tensor) -> None:
        s = self.settings
        features, targets = [], []
        for draw in range(s["draws"] if defense.noise_model() is not None else 1):
            gradients = self.defended_gradients(model, defense, x, y, draw).detach()  # defenses may need autograd
            with torch.no_grad():
                features.append(inverter.features(gradients))
            targets.append(x.flatten(1))
        with torch.no_grad():
            z = torch.cat(features)
            target = torch.cat(targets)
            inverter.mean.copy_(z.mean(0))
            inverter.std.copy_(z.std(0).clamp_min(1e-12))
            z = (z - inverter.mean) / inverter.std
        optimiser = torch.optim.Adam(inverter.net.parameters(), lr=s["lr"])
        generator = make_generator(s["seed"], "lti-batches")
        inverter.train()
        for _ in range(s["epochs"]):
            order = torch.randperm(len(z), generator=generator)
            for start in range(0, len(z), s["batch"]):
                rows = order[start:start + s["batch"]]
                loss = (torch.sigmoid(inverter.net(z[rows])) - target[rows]).square().mean()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()

