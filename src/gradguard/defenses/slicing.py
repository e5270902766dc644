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


def equal_bounds(total_elements: int, slices: int) -> Tensor:
    """Bounds of ``slices`` contiguous slices of nearly equal size: every slice ceil(P/S) long
    but the last, which is shorter by less than S elements, so the slices are the rows of a
    (S, ceil(P/S)) matrix holding the flat vector padded with fewer than S zeros (one tensor
    operation per step, see :class:`SliceLayout`). When that would leave the last slice empty
    or shorter than half the others (P < 2 S^2, far from any real model), the sizes differ by
    at most one element instead (as ``torch.tensor_split``)."""
    check_slice_count(slices, total_elements)
    stride = -(-total_elements // slices)
    if total_elements - (slices - 1) * stride >= stride / 2:
        lengths = torch.tensor([stride] * (slices - 1) + [total_elements - (slices - 1) * stride])
    else:
        base, extra = divmod(total_elements, slices)
        lengths = torch.tensor([base + 1] * extra + [base] * (slices - extra))
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])


def group_bounds(sizes: Tensor) -> Tensor:
    """Bounds that make each group of elements (e.g. each layer) one slice."""
    sizes = sizes.long().cpu()
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])


class SliceLayout:
    """Per-slice reductions and scalings of a flat vector cut at fixed bounds, without a Python
    loop over slices.

    When every slice but the last has the same length L and the last is no longer (the
    :func:`equal_bounds` layout), the slices are the rows of a (S, L) view of the vector padded
    with ``padding`` zeros at the end: each per-slice operation is one tensor operation, and the
    caller flattens into a padded vector (:meth:`pad`) to avoid a copy. Otherwise per-slice
    values are expanded to elements with ``repeat_interleave`` and reduced with
    ``segment_reduce``. Methods take tensors with any leading dimensions (e.g. per-sample
    gradients) and the element axis last; zero padding changes no norm or sum.
    """

    def __init__(self, bounds: Tensor):
        self.bounds = bounds.long().cpu()
        self.lengths = self.bounds[1:] - self.bounds[:-1]
        self.count = len(self.lengths)
        self.size = int(self.bounds[-1])
        stride = int(self.lengths[0])
        regular = bool((self.lengths[:-1] == stride).all()) and int(self.lengths[-1]) <= stride
        self.stride = stride if regular else None
        self.padding = self.count * stride - self.size if regular else 0
        self.padded = self.size + self.padding if regular else -1  # the length rows() takes; -1: none

    def pad(self, values: Tensor) -> Tensor:
        """``values`` (..., P) with the padding the row view needs (a no-op without)."""
        if not self.padding or values.shape[-1] != self.size:
            return values
        return torch.cat([values, values.new_zeros(*values.shape[:-1], self.padding)], -1)

    def rows(self, values: Tensor) -> Tensor:
        """``values`` (..., P + padding) as (..., S, L) (only for the equal-slice layout)."""
        assert self.stride is not None
        return values.unflatten(-1, (self.count, self.stride))

    def sums(self, values: Tensor) -> Tensor:
        """Sum of ``values`` over each slice: (..., S)."""
        if self.stride is not None:
            return self.rows(self.pad(values)).sum(-1)
        return torch.segment_reduce(values, "sum", lengths=self.lengths.to(values.device), axis=values.dim() - 1)

    def norms(self, values: Tensor) -> Tensor:
        """L2 norm of each slice of ``values``: (..., S)."""
        if self.stride is not None:
            return torch.linalg.vector_norm(self.rows(self.pad(values)), dim=-1)
        return self.sums(values.square()).sqrt()

    def scale_(self, values: Tensor, per_slice: Tensor) -> Tensor:
        """Multiply every element of ``values`` (..., P, or padded) in place by its slice's entry
        of ``per_slice`` (..., S); returns ``values``."""
        if self.stride is not None and values.shape[-1] == self.size + self.padding:
            self.rows(values).mul_(per_slice.unsqueeze(-1))
            return values
        return values.mul_(self.expand(per_slice))

    def expand(self, per_slice: Tensor) -> Tensor:
        """``per_slice`` (..., S) repeated over each slice's elements: (..., P)."""
        lengths = self.lengths.to(per_slice.device)
        return per_slice.repeat_interleave(lengths, dim=-1, output_size=self.size)


def _separate(bounds: Tensor, total_elements: int) -> Tensor:
    """Make bounds strictly increasing from 0 to P (every slice non-empty), moving each as little as possible."""
    steps = torch.arange(len(bounds))
    bounds = torch.cummax(bounds - steps, 0).values + steps
    return torch.minimum(bounds, total_elements - (len(bounds) - 1) + steps)


def check_slice_count(slices: int, total_elements: int) -> None:
    if slices > total_elements:
        raise ConfigError(f"graddefense: slices={slices} is more than the gradient's {total_elements} elements; "
                          f"use at most {total_elements}")
