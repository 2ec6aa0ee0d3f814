"""One selection rule for train, audit and outreach (pipeline.selection)."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline import selection
from pipeline.errors import ParamsError


def _selected(frame: pl.DataFrame, **capacity) -> list[bool]:
    return frame.select(selection.select_top(pl.col("risk_rank"), **capacity))["selected"].to_list()


def test_per_icb_takes_the_top_n_of_each_icb() -> None:
    scores = pl.DataFrame(
        {"icb_code": ["A", "A", "A", "B", "B", "C"], "risk_rank": [1, 2, 6, 3, 5, 4]}
    )
    assert _selected(scores, capacity_mode="per_icb", capacity=2) == [
        True, True, False, True, True, True,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("n_people", "share", "expected"),
    [(6, 0.5, 3), (10, 0.05, 1), (10, 0.25, 3), (30, 0.05, 2), (200, 0.0125, 3)],
)
def test_share_rounds_half_up(n_people: int, share: float, expected: int) -> None:
    scores = pl.DataFrame({"risk_rank": list(range(n_people, 0, -1))})
    chosen = scores.filter(
        selection.select_top(pl.col("risk_rank"), capacity_mode="share", capacity=share)
    )
    assert chosen["risk_rank"].sort().to_list() == list(range(1, expected + 1))


def test_list_sizes_agree_with_select_top_in_every_mode() -> None:
    cohort = pl.DataFrame(
        {
            "risk_rank": list(range(1, 41)),
            "icb_code": ["A"] * 25 + ["B"] * 15,
            "practice_id": [f"P{i % 7}" for i in range(40)],
        }
    )
    for mode, capacity in (("share", 0.13), ("per_icb", 4), ("per_practice", 2)):
        sizes = selection.list_sizes(cohort, capacity_mode=mode, capacity=capacity, key="k")
        chosen = cohort.filter(
            selection.select_top(pl.col("risk_rank"), capacity_mode=mode, capacity=capacity)
        )
        assert chosen.height == sizes["list_size"].sum(), mode


def test_list_sizes_name_the_key_when_nobody_or_everybody_is_selected() -> None:
    cohort = pl.DataFrame({"risk_rank": [1, 2, 3], "icb_code": ["A", "A", "B"]})
    with pytest.raises(ParamsError, match=r"outreach\.capacity: a share .* selects nobody"):
        selection.list_sizes(cohort, capacity_mode="share", capacity=0.1, key="outreach.capacity")
    with pytest.raises(ParamsError, match=r"operating_point\.capacity: 5 per ICB"):
        selection.list_sizes(
            cohort, capacity_mode="per_icb", capacity=5, key="operating_point.capacity"
        )


def test_select_like_matches_list_sizes_per_unit() -> None:
    cohort = pl.DataFrame(
        {
            "icb_code": ["A", "A", "A", "B", "B"],
            "selected": [True, False, False, True, True],
            "need": [0.1, 0.9, 0.5, 0.2, 0.3],
            "risk_rank": [1, 2, 3, 4, 5],
        }
    )
    by_need = cohort.select(
        selection.select_like(pl.col("need"), selected=pl.col("selected"), unit="icb_code")
    ).to_series()
    assert by_need.to_list() == [False, True, False, True, True]


def test_cut_score_is_the_lowest_selected_score() -> None:
    cohort = pl.DataFrame({"risk_rank": [1, 2, 3, 4], "risk_score": [0.9, 0.7, 0.4, 0.1]})
    assert selection.cut_score(cohort, capacity_mode="share", capacity=0.5) == 0.7


def test_ties_in_any_ranking_are_broken_by_risk_rank() -> None:
    cohort = pl.DataFrame(
        {
            "priority": [0.5, 0.5, 0.5, 0.9, None],
            "risk_rank": [4, 2, 3, 5, 1],
            "selected": [True, True, True, False, False],
        }
    )
    order = cohort.select(selection.priority_order(pl.col("priority"))).to_series()
    assert order.to_list() == [4, 2, 3, 1, 5]  # null priority last, whatever its risk rank
    chosen = cohort.select(
        selection.select_priority(pl.col("priority"), capacity_mode="share", capacity=0.4)
    ).to_series()
    assert chosen.to_list() == [False, True, False, True, False]
    like = cohort.select(
        selection.select_like(pl.col("priority"), selected=pl.col("selected"), unit=None)
    ).to_series()
    assert like.to_list() == [False, True, True, True, False]


def test_risk_rank_ties_follow_a_seeded_key_not_the_id_order() -> None:
    ids = pl.Series("person_id", [f"P{i:05d}" for i in range(2_000)])
    frame = pl.DataFrame({"person_id": ids, "risk_score": [0.5] * ids.len()})
    keys, descending = selection.risk_order(root_seed=3)
    first = frame.sort(keys, descending=descending)["person_id"]
    again = frame.sort(keys, descending=descending)["person_id"]
    keys_4, descending_4 = selection.risk_order(root_seed=4)
    other_seed = frame.sort(keys_4, descending=descending_4)["person_id"]
    assert first.equals(again)
    assert not first.equals(ids) and not first.equals(other_seed)
    # the first 5% of a tie spread over the id range instead of taking the lowest ids
    assert first.head(100).is_in(ids.head(100)).sum() < 20
