"""The outreach stage reads each cohort in chunks: the lists and the summary must be those of the
whole cohort at once, whatever the chunk size and whichever order the chunks are folded in."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import polars as pl
import polars.selectors as cs
import pytest
from polars.testing import assert_frame_equal

from pipeline import contract, seeds, selection
from pipeline.config import OutreachParams
from pipeline.disclosure import Rule
from pipeline.errors import ContractError
from pipeline.io import Paths, write_parquet
from pipeline.outreach import cohort, lists, policies, summary
from pipeline.outreach.stage import select_target
from tests import test_outreach

TARGET = test_outreach.TARGET
CASES = [
    {"policy": "risk", "capacity_mode": "share", "capacity": 0.05},
    {"policy": "core20plus5", "capacity_mode": "per_icb", "capacity": 40},
    {"policy": "equal_opportunity", "capacity_mode": "share", "capacity": 0.1},
    {"policy": "need_adjusted", "capacity_mode": "per_practice", "capacity": 5},
]


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    return test_outreach.make_world()


def _files(tmp_path: Path, world: dict[str, Any]) -> cohort.CohortFiles:
    paths: Paths = test_outreach._project(tmp_path, world)
    need = world["population"].select(
        "person_id",
        # ties on purpose: the order falls back on risk_rank
        (pl.col("has_copd") * 2 + pl.col("age") // 20).cast(pl.Float64).alias("need_score"),
    )
    need_path = paths.scores / contract.NEED_SCORES_DIR / f"{TARGET}.parquet"
    write_parquet(need, need_path, sort_by="person_id")
    return cohort.CohortFiles(
        target=TARGET,
        scores=paths.scores / f"{TARGET}.parquet",
        features=paths.features / "features.parquet",
        need=need_path,
        oracle=paths.truth / "oracle.parquet",
    )


def _selection(files: cohort.CohortFiles, outreach: OutreachParams, *, chunk_people: int):
    capacity = selection.list_sizes(
        cohort.scan_units(files.scores, files.features, capacity_mode=outreach.capacity_mode),
        capacity_mode=outreach.capacity_mode,
        capacity=outreach.capacity,
        key="outreach.capacity",
    )
    rng = seeds.rng("equal_opportunity", TARGET, root=20261123)
    chosen = select_target(
        files, capacity=capacity, outreach=outreach, rng=rng, chunk_people=chunk_people
    )
    return capacity, *chosen


def _published(aggregates, capacity, outreach: OutreachParams) -> dict[str, Any]:
    return summary.publish_target(
        aggregates,
        capacity=capacity,
        capacity_mode=outreach.capacity_mode,
        min_group_size=outreach.min_group_size,
        rule=Rule(),
    )


@pytest.mark.parametrize("case", CASES, ids=[case["policy"] for case in CASES])
def test_chunks_select_and_summarise_as_the_whole_cohort(
    tmp_path: Path, world: dict[str, Any], case: dict[str, Any]
) -> None:
    outreach = OutreachParams(**case)
    files = _files(tmp_path, world)
    capacity, whole, whole_sums, whole_fit = _selection(files, outreach, chunk_people=10**6)
    _, chunked, chunked_sums, chunked_fit = _selection(files, outreach, chunk_people=97)

    assert chunked.height == int(capacity["list_size"].sum()) > 0
    assert_frame_equal(chunked, whole)
    assert chunked_fit == whole_fit
    for level, rows in whole_sums.items():
        # counts add up exactly; float sums to rounding (16 chunks added in another order)
        counts = cs.integer() | cs.string() | cs.boolean()
        assert_frame_equal(chunked_sums[level].select(counts), rows.select(counts))
        assert_frame_equal(chunked_sums[level], rows, check_exact=False, rel_tol=1e-12)
    assert _published(chunked_sums, capacity, outreach) == _published(
        whole_sums, capacity, outreach
    )

    # ... and they are what ranking and summarising the whole cohort held at once gives
    held = cohort.read_chunk((0, 10**6), files=files)
    need = pl.scan_parquet(files.need) if outreach.policy == "need_adjusted" else None
    rng = seeds.rng("equal_opportunity", TARGET, root=20261123)
    prioritised, thresholds = policies.prioritise(held, outreach=outreach, rng=rng, need=need)
    assert thresholds == whole_fit
    defined = lists.select_people(prioritised, capacity, capacity_mode=outreach.capacity_mode)
    assert_frame_equal(whole, defined)
    oracle = pl.read_parquet(files.oracle)
    block = summary.summarise_target(
        held.with_columns(
            pl.col("person_id").is_in(defined["person_id"].implode()).alias("selected")
        ),
        capacity=capacity,
        truth_need=summary.target_true_need(oracle, TARGET),
        capacity_mode=outreach.capacity_mode,
        min_group_size=outreach.min_group_size,
        rule=Rule(),
    )
    assert block == _published(chunked_sums, capacity, outreach)
    assert block["true_need"]["n_need_list"] == Rule().count(int(capacity["list_size"].sum()))


def test_merging_candidates_does_not_depend_on_the_order(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    """On Dask the chunks' candidates are folded in the order the workers finish."""
    outreach = OutreachParams(policy="core20plus5", capacity_mode="per_icb", capacity=60)
    files = _files(tmp_path, world)
    capacity = selection.list_sizes(
        cohort.scan_units(files.scores, files.features, capacity_mode="per_icb"),
        capacity_mode="per_icb",
        capacity=60,
        key="outreach.capacity",
    )
    found = [
        cohort.chunk_candidates(
            bounds, files=files, outreach=outreach, thresholds=None, capacity=capacity
        )
        for bounds in cohort.chunk_bounds(files.scores, chunk_people=400)
    ]
    assert len(found) == 4

    def fold(order: list[int]) -> cohort.Candidates:
        running = found[order[0]]
        for index in order[1:]:
            running = cohort.merge_candidates(
                running, found[index], capacity=capacity, capacity_mode="per_icb"
            )
        return running

    forward, backward = fold([0, 1, 2, 3]), fold([3, 1, 0, 2])
    assert_frame_equal(forward.selected, backward.selected)
    assert forward.need is not None and backward.need is not None
    assert_frame_equal(forward.need.sort("person_id"), backward.need.sort("person_id"))
    assert forward.selected.height == 3 * 60


def test_a_chunk_lacking_need_scores_names_the_file_count_and_range(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    files = _files(tmp_path, world)
    assert files.need is not None
    need = pl.read_parquet(files.need).filter(~pl.col("person_id").str.ends_with("7"))
    write_parquet(need, files.need, sort_by="person_id")
    chunk = cohort.read_chunk((0, 500), files=files)["person_id"]
    lacking = int(chunk.str.ends_with("7").sum())
    outreach = OutreachParams(policy="need_adjusted")
    capacity = pl.DataFrame({"unit": ["all"], "n_eligible": [1_500], "list_size": [75]})
    message = (
        f"{files.need}: no need_score for {lacking} eligible people of {TARGET} "
        f"with person_id {chunk.min()!r} to {chunk.max()!r}"
    )
    with pytest.raises(ContractError, match=re.escape(message)):
        cohort.chunk_candidates(
            (0, 500), files=files, outreach=outreach, thresholds=None, capacity=capacity
        )
