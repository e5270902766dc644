"""Shared fixtures: the embedded dataset, a tiny federated dataset, and the full-data folder when given."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gradguard.data import load_dataset

# The tests run many small tensor operations; on the shared 2-core machine two intra-op threads
# spend most of their time waiting for each other (tests/test_fl*.py: 296 s with two threads,
# 11 s with one). Results do not depend on the thread count.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Learned inverters and other caches go to a folder of this test session, not the user's."""
    previous = os.environ.get("GRADGUARD_CACHE")
    os.environ["GRADGUARD_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("GRADGUARD_CACHE", None)
    else:
        os.environ["GRADGUARD_CACHE"] = previous


@pytest.fixture(scope="session")
def mnist_sample():
    return load_dataset("mnist-sample")


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory, mnist_sample) -> str:
    """A real but tiny dataset for fast federated runs: the first 210 training and 100 test
    images of mnist-sample, as an interchange-format npz; returns its dataset name (npz:PATH)."""
    path = tmp_path_factory.mktemp("data") / "tiny_mnist.npz"
    as_uint8 = lambda x: (x[:, 0] * 255).round().byte().numpy()  # noqa: E731
    np.savez(path, x_train=as_uint8(mnist_sample.x_train[:210]), y_train=mnist_sample.y_train[:210].numpy(),
             x_test=as_uint8(mnist_sample.x_test[:100]), y_test=mnist_sample.y_test[:100].numpy())
    return f"npz:{path}"


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


@pytest.fixture
def flower_task_identity():
    """Flower messages built outside a running app need the identity a ServerApp process would
    set (test-only use of a Flower internal; the library itself only builds replies)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
