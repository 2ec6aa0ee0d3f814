"""NHS disclosure control: 1-7 suppressed, others rounded to the nearest 5."""

from __future__ import annotations

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from pipeline.audit.publish import json_count
from pipeline.disclosure import Rule

RULE = Rule()


def test_round_count_rules() -> None:
    assert [RULE.count(n) for n in (0, 1, 7, 8, 12, 13, 100)] == [0, "*", "*", 10, 10, 15, 100]
    assert RULE.count(None) is None


def test_json_counts_are_rounded_or_the_suppression_mark() -> None:
    published = [json_count(n, rule=RULE) for n in (None, 0, 3, 7.0, 8, 12.4, 13)]
    assert published == [None, 0, "*", "*", 10, 10, 15]


def test_rates_follow_their_counts() -> None:
    assert RULE.rate(3, 100, 0.03) == "*"
    assert RULE.rate(30, 5, 6.0) == "*"
    assert RULE.rate(30, 100, 0.3) == 0.3


@given(st.lists(st.integers(min_value=0, max_value=10_000_000), min_size=1, max_size=50))
def test_expression_matches_scalar(counts: list[int]) -> None:
    published = pl.DataFrame({"n": counts}).select(RULE.count_expr(pl.col("n")))["n"].to_list()
    assert published == [str(RULE.count(n)) for n in counts]
    for value in published:
        assert value == "*" or int(value) % 5 == 0


def test_the_rule_in_force_comes_from_params_and_reaches_every_published_count() -> None:
    from pipeline.config import parse_params
    from pipeline.validate import data_quality_report

    target = {"t": {"outcome": "emergency_admission", "follow_up_months": 12}}
    rule = parse_params({"targets": target, "disclosure": {"suppress_below": 11, "round_to": 10}})
    assert rule.disclosure == Rule(suppress_below=11, round_to=10)
    assert [rule.disclosure.count(n) for n in (0, 10, 11, 14, 15)] == [0, "*", 10, 10, 20]
    facts = {
        "rows": {"people": 1234},
        "nulls": {"people": {"ethnicity": 9}},
        "n_people": 1234,
        "ethnicity_recorded": 1225,
        "events_last_year": {},
        "excluded": [{"column": "value", "rule": "implausible", "rows": 14, "examples": ()}],
        "date_min": None,
        "date_max": None,
    }
    report = data_quality_report(facts, folder="x", index_date=None, rule=rule.disclosure)
    assert report["tables"]["people"]["n_rows"] == 1230
    assert report["tables"]["people"]["null_share"]["ethnicity"] == "*"  # 9 < 11
    assert report["n_people"] == 1230
    assert report["excluded"][0]["rows"] == 10  # 14 under the params rule


def test_rule_methods_agree_with_each_other() -> None:
    rule = Rule(suppress_below=6, round_to=3)
    counts = pl.Series("n", [None, 0, 1, 5, 6, 7, 8, 100])
    as_expr = pl.DataFrame({"n": counts}).select(rule.count_expr(pl.col("n")))["n"].to_list()
    scalar = [rule.count(n) for n in counts.to_list()]
    assert as_expr == [None if v is None else str(v) for v in scalar]
    assert all(rule.is_published(v) for v in scalar)
    assert [rule.republish(v) for v in scalar] == scalar  # idempotent
    assert not rule.is_published(7)


def test_a_share_is_of_the_published_counts() -> None:
    # 61 / 1240 = 0.0492 would give back 61 where 60 is published
    assert RULE.share(61, 1240) == 60 / 1240
    assert RULE.share(6, 1240) == "*"
    assert RULE.share(40, 0) is None
    assert RULE.share_of_published("*", 10) == "*"
    frame = pl.DataFrame({"a": [61, 6, 40], "b": [1240, 1240, 0]})
    shares = frame.select(RULE.share_expr(pl.col("a"), pl.col("b")).alias("s"))["s"].to_list()
    assert shares == [60 / 1240, None, None]


@given(st.integers(0, 5_000), st.integers(1, 5_000))
def test_a_share_times_the_published_denominator_is_the_published_numerator(
    numerator: int, denominator: int
) -> None:
    share, den = RULE.share(numerator, denominator), RULE.count(denominator)
    if isinstance(share, float) and isinstance(den, int):
        assert round(share * den) == RULE.count(numerator)


def test_a_lone_suppressed_row_takes_the_next_smallest_with_it() -> None:
    assert RULE.secondary([120, 6, 40, 0, 55]) == [False, True, True, False, False]
    assert RULE.secondary([120, 6, 3, 55]) == [False, True, True, False]  # two already
    assert RULE.secondary([120, 40]) == [False, False]
    assert RULE.secondary([6, 0]) == [True, False]  # nothing else to hide


def test_secondary_expr_matches_secondary_per_dimension() -> None:
    frame = pl.DataFrame(
        {
            "dimension": ["a"] * 5 + ["b"] * 3,
            "group": ["v", "w", "x", "y", "z", "v", "w", "x"],
            "n": [120, 6, 40, 0, 40, 3, 9, 100],
        }
    )
    hidden = frame.select(RULE.secondary_expr(pl.col("n"), over="dimension"))["n"].to_list()
    assert hidden == [False, True, True, False, False, True, True, False]
