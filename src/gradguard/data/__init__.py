"""Datasets (images in [0, 1] as tensors) and federated partitioners."""

from .datasets import DEFAULT_ROOT, ImageDataset, from_arrays, load_npz
from .partition import partition_dirichlet, partition_iid
from .registry import DATASETS, DEFAULT_DATASET, DatasetSpec, load_dataset, resolve_root, root_and_origin

__all__ = ["DATASETS", "DEFAULT_DATASET", "DEFAULT_ROOT", "DatasetSpec", "ImageDataset", "from_arrays",
           "load_dataset", "load_npz", "partition_dirichlet", "partition_iid", "resolve_root",
           "root_and_origin"]
