"""Slice bounds: disjoint, non-empty, covering, and balanced in risk."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradguard.defenses.slicing import group_bounds, risk_balanced_bounds
from gradguard.errors import ConfigError


@st.composite
def slicing_cases(draw):
    count = draw(st.integers(1, 6))
    sizes = draw(st.lists(st.integers(1, 300), min_size=count, max_size=count))
    risks = draw(st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1e3)), min_size=count, max_size=count))
    slices = draw(st.integers(1, min(sum(sizes), 40)))
    return torch.tensor(risks, dtype=torch.float64), torch.tensor(sizes), slices


@settings(max_examples=300, deadline=None)
@given(slicing_cases())
def test_slices_are_disjoint_nonempty_covering_and_risk_balanced(case):
    risks, sizes, slices = case
    bounds = risk_balanced_bounds(risks, sizes, slices)
    assert len(bounds) == slices + 1
    assert bounds[0] == 0 and bounds[-1] == sizes.sum()
    assert (bounds[1:] > bounds[:-1]).all()  # strictly increasing: disjoint and non-empty, and covering

    element_risk = (risks / sizes).repeat_interleave(sizes)
    total = float(element_risk.sum())
    if total == 0:
        return
    heaviest = float(element_risk.max())
    if heaviest < total / slices:  # otherwise no slicing can balance, only non-emptiness is promised
        cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), element_risk.cumsum(0)])
        slice_risk = cumulative[bounds[1:]] - cumulative[bounds[:-1]]
        assert (slice_risk - total / slices).abs().max() <= heaviest * (1 + 1e-9) + 1e-9 * total


def test_zero_risk_gives_equal_sizes():
    bounds = risk_balanced_bounds(torch.zeros(2, dtype=torch.float64), torch.tensor([50, 50]), 4)
    assert bounds.tolist() == [0, 25, 50, 75, 100]


def test_more_slices_than_elements_is_an_error():
    with pytest.raises(ConfigError, match="slices=11"):
        risk_balanced_bounds(torch.ones(2), torch.tensor([5, 5]), 11)


def test_group_bounds_follow_groups():
    assert group_bounds(torch.tensor([3, 1, 6])).tolist() == [0, 3, 4, 10]
