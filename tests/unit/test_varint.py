"""The one varint length function, checked against the definition of LEB128."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.spime.codec import uvarint_len


@pytest.mark.parametrize(
    ("n", "size"),
    [(0, 1), (1, 1), (127, 1), (128, 2), (16383, 2), (16384, 3), (2**63 - 1, 9), (2**64, 10)],
)
def test_boundaries(n: int, size: int) -> None:
    assert uvarint_len(n) == size


@given(st.integers(min_value=0, max_value=2**200))
def test_is_the_smallest_count_of_7_bit_groups_that_holds_n(n: int) -> None:
    size = uvarint_len(n)
    assert n < 1 << (7 * size)
    assert size == 1 or n >= 1 << (7 * (size - 1))
