"""Conversions between Flower ArrayRecords and torch tensors, and the one-record lookups both
the mod and the strategy need."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from flwr.app import Array, ArrayRecord, RecordDict
from torch import Tensor

from ..errors import ConfigError


def only_array_record(content: RecordDict, who: str) -> tuple[str, ArrayRecord]:
    """The single ArrayRecord of a message (the model), with its key."""
    records = list(content.array_records.items())
    if len(records) != 1:
        raise ConfigError(f"{who}: expected exactly one ArrayRecord in the message, found {len(records)}")
    return records[0]


def tensors(record: ArrayRecord, names: Sequence[str]) -> list[Tensor]:
    """The named arrays of ``record`` as torch tensors."""
    missing = [n for n in names if n not in record]
    if missing:
        raise ConfigError(f"arrays: the message lacks the arrays {missing}; it has {list(record.keys())}")
    return [torch.from_numpy(record[n].numpy()) for n in names]


def floating_names(record: ArrayRecord) -> list[str]:
    """Names of the floating-point arrays of ``record``, in record order."""
    return [n for n, a in record.items() if torch.from_numpy(a.numpy()).is_floating_point()]


def replace(record: ArrayRecord, updates: dict[str, Tensor]) -> ArrayRecord:
    """A copy of ``record`` with the arrays in ``updates`` replaced, order kept."""
    return ArrayRecord({n: Array(updates[n].numpy()) if n in updates else a for n, a in record.items()})
