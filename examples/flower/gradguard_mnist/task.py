"""The learning task shared by the client and the server: data, model, local training, evaluation."""

from __future__ import annotations

import hashlib
import tomllib
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from flwr.app import Context
from torch import Tensor, nn

import gradguard

DATASET = "mnist-sample"
PARTITION_SEED = 0  # the same on every node, so the partitions are disjoint

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _flatten(table: dict, prefix: str = "") -> dict:
    """Nested TOML tables as Flower's flat dotted keys."""
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@lru_cache(maxsize=1)
def defaults() -> dict:
    """The run config as [tool.flwr.app.config] in pyproject.toml declares it. `flwr run` passes
    it (with overrides) in the context; run_simulation passes none, so the apps fall back to this."""
    with open(PYPROJECT, "rb") as f:
        return _flatten(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def run_config(context: Context) -> dict:
    """The run config over its defaults."""
    return {**defaults(), **context.run_config}


@lru_cache(maxsize=1)
def dataset() -> gradguard.ImageDataset:
    return gradguard.load_dataset(DATASET)


@torch.no_grad()
def build_model(seed: int = 0) -> nn.Module:
    """DLG's LeNet with DLG's uniform(-0.5, 0.5) init (the sigmoid LeNet barely moves from
    PyTorch's default init with plain SGD), drawn from a generator seeded with ``seed``."""
    model = gradguard.model_for(dataset(), "lenet")
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.uniform_(-0.5, 0.5, generator=generator)
    return model


def local_data(context: Context) -> tuple[Tensor, Tensor]:
    """This node's IID share of the training set, chosen by its ``partition-id`` node config."""
    part, parts = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    return partition(part, parts)


@lru_cache(maxsize=64)
def partition(part: int, parts: int) -> tuple[Tensor, Tensor]:
    data = dataset()
    index = gradguard.partition_iid(len(data.y_train), parts, torch.Generator().manual_seed(PARTITION_SEED))[part]
    return data.x_train[index], data.y_train[index]


def train(model: nn.Module, x: Tensor, y: Tensor, *, lr: float, steps: int, batch_size: int,
          generator: torch.Generator) -> float:
    """``steps`` steps of minibatch SGD (full batch when ``batch_size`` is 0); returns the mean
    training loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    total = 0.0
    for _ in range(steps):
        batch = torch.randint(0, len(y), (batch_size,), generator=generator) if batch_size else slice(None)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / steps


@torch.no_grad()
def evaluate(model: nn.Module) -> tuple[float, float]:
    """Loss and accuracy of ``model`` on the held-out test set."""
    data = dataset()
    logits = model(data.x_test)
    return F.cross_entropy(logits, data.y_test).item(), (logits.argmax(1) == data.y_test).float().mean().item()


def batch_generator(context: Context, server_round: int) -> torch.Generator:
    """Minibatch order per (node, round): reproducible, and unrelated to the defense's noise."""
    digest = hashlib.sha256(f"{context.node_config['partition-id']}:{server_round}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
