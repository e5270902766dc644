"""Shared test fixtures."""

import numpy as np
import pytest
import torch

from gradguard.data import load_dataset

# The tests run many small tensor operations; on the shared 2-core machine two intra-op threads
# spend most of their time waiting for each other (tests/test_fl*.py: 296 s with two threads,
# 11 s with one). Results do not depend on the thread count.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> str:
    """A real but tiny dataset for fast federated runs: the first 210 training and 100 test
    images of mnist-sample, as an interchange-format npz; returns its dataset name (npz:PATH)."""
    data = load_dataset("mnist-sample")
    path = tmp_path_factory.mktemp("data") / "tiny_mnist.npz"
    as_uint8 = lambda x: (x[:, 0] * 255).round().byte().numpy()  # noqa: E731
    np.savez(path, x_train=as_uint8(data.x_train[:210]), y_train=data.y_train[:210].numpy(),
             x_test=as_uint8(data.x_test[:100]), y_test=data.y_test[:100].numpy())
    return f"npz:{path}"
