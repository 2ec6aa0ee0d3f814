"""NHS disclosure control: 1-7 suppressed, others rounded to the nearest 5."""

from __future__ import annotations

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from pipeline.audit.publish import json_count
from pipeline.disclosure import publish_rate, round_count, round_count_expr


def test_round_count_rules() -> None:
    assert [round_count(n) for n in (0, 1, 7, 8, 12, 13, 100)] == [0, "*", "*", 10, 10, 15, 100]
    assert round_count(None) is None


def test_json_counts_are_rounded_or_the_suppression_mark() -> None:
    published = [json_count(n) for n in (None, 0, 3, 7.0, 8, 12.4, 13)]
    assert published == [None, 0, "*", "*", 10, 10, 15]


def test_rates_follow_their_counts() -> None:
    assert publish_rate(3, 100, 0.03) == "*"
    assert publish_rate(30, 5, 6.0) == "*"
    assert publish_rate(30, 100, 0.3) == 0.3


@given(st.lists(st.integers(min_value=0, max_value=10_000_000), min_size=1, max_size=50))
def test_expression_matches_scalar(counts: list[int]) -> None:
    published = pl.DataFrame({"n": counts}).select(round_count_expr(pl.col("n")))["n"].to_list()
    assert published == [str(round_count(n)) for n in counts]
    for value in published:
        assert value == "*" or int(value) % 5 == 0
