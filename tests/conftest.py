"""Shared fixtures: the embedded dataset, small models, and the full-data folder when given."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from gradguard.data import load_dataset


@pytest.fixture(scope="session")
def mnist_sample():
    return load_dataset("mnist-sample")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder of full datasets named by GRADGUARD_DATA; tests that need it skip without it."""
    value = os.environ.get("GRADGUARD_DATA")
    if not value:
        pytest.skip("GRADGUARD_DATA is not set: full-dataset tests need it (CI sets ../shared/data)")
    root = Path(value)
    if not root.is_dir():
        pytest.skip(f"GRADGUARD_DATA={value} is not a folder")
    return root


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
