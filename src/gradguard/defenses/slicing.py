"""Cutting the flat gradient into S contiguous slices (docs/design.md section 2, step 2).

Slices are given by their S + 1 bounds into the flat vector of P elements: slice j is
``[bounds[j], bounds[j + 1])``. By construction they are disjoint, non-empty and cover all P
elements (the original code overlaps neighbours by one element and can produce empty or
negative bounds; we do not).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError


def risk_balanced_bounds(risks: Tensor, sizes: Tensor, slices: int) -> Tensor:
    """Bounds of ``slices`` contiguous slices of (nearly) equal total risk.

    Every element of tensor l carries risk ``risks[l] / sizes[l]``. Each interior bound is the
    element boundary whose cumulative risk is nearest to j/S of the total, so each slice's risk
    is within one element's risk of total/S. When a single element outweighs total/S, bounds are
    pushed apart just enough to keep every slice non-empty. Zero total risk gives equal sizes.
    O(number of tensors + S): no per-element arrays.
    """
    risks = risks.double().cpu()
    sizes = sizes.long().cpu()
    total_elements = int(sizes.sum())
    check_slice_count(slices, total_elements)
    total_risk = float(risks.sum())
    if total_risk <= 0:
        bounds = torch.linspace(0, total_elements, slices + 1, dtype=torch.float64).round().long()
        return _separate(bounds, total_elements)
    risk_starts = torch.cat([risks.new_zeros(1), risks.cumsum(0)])  # cumulative risk at tensor starts
    element_starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
    targets = total_risk * torch.arange(1, slices, dtype=torch.float64) / slices
    # First tensor whose cumulative end reaches the target; it has positive risk.
    tensor = torch.searchsorted(risk_starts[1:].contiguous(), targets, side="left").clamp(max=len(risks) - 1)
    per_element = risks[tensor] / sizes[tensor]
    offset = ((targets - risk_starts[tensor]) / per_element).round().long()
    offset = torch.minimum(offset.clamp(min=0), sizes[tensor])
    interior = element_starts[tensor] + offset
    bounds = torch.cat([torch.zeros(1, dtype=torch.long), interior, torch.tensor([total_elements])])
    return _separate(bounds, total_elements)


def group_bounds(sizes: Tensor) -> Tensor:
    """Bounds that make each group of elements (e.g. each layer) one slice."""
    sizes = sizes.long().cpu()
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])


def _separate(bounds: Tensor, total_elements: int) -> Tensor:
    """Make bounds strictly increasing from 0 to P (every slice non-empty), moving each as little as possible."""
    steps = torch.arange(len(bounds))
    bounds = torch.cummax(bounds - steps, 0).values + steps
    return torch.minimum(bounds, total_elements - (len(bounds) - 1) + steps)


def check_slice_count(slices: int, total_elements: int) -> None:
    if slices > total_elements:
        raise ConfigError(f"graddefense: slices={slices} is more than the gradient's {total_elements} elements; "
                          f"use at most {total_elements}")
