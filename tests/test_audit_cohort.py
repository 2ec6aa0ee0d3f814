"""The audit stage's narrow reads: the audited split and the whole cohort read column by column
from the files give the same frames and the same published tables as the wide whole-cohort
frame they replace (:func:`pipeline.audit.cohort.build_cohort` + a split filter)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from pipeline import contract, io, seeds, selection
from pipeline.audit import (
    _read_cohort,
    _read_cohorts,
    audit_summary,
    audit_tables,
    bounded,
    published_tables,
)
from pipeline.audit.cohort import build_cohort
from pipeline.audit.read import READ_ROWS, slice_bounds
from pipeline.config import Params, parse_params
from pipeline.errors import ContractError, ParamsError
from tests import simworld

TARGET = "sim_target"


def _params(**sections: dict[str, Any]) -> Params:
    raw: dict[str, Any] = {
        "targets": {TARGET: {"outcome": "emergency_admission", "follow_up_months": 12}},
        "audit": {"n_bootstrap": 20, "n_monte_carlo": 100},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return parse_params(raw)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3,000-person world on disk with need scores (a deterministic function of the
    features, some missing, as the need stage leaves people it cannot score)."""
    root = tmp_path_factory.mktemp("world")
    simworld.write_world(root, simworld.simulate_world(3_000, seed=5), targets=(TARGET,))
    features = pl.read_parquet(root / "features/features.parquet")
    need = features.select(
        "person_id",
        pl.when(pl.int_range(pl.len()) % 97 == 0)
        .then(None)
        .otherwise(pl.col(contract.RECORDED_MULTIMORBIDITY) + pl.col("age") / 100.0)
        .cast(pl.Float64)
        .alias("need_score"),
    )
    need_path = root / "data/scores" / contract.NEED_SCORES_DIR / f"{TARGET}.parquet"
    io.write_parquet(need, need_path, sort_by="person_id")
    # truth without the oracle, as the wide frame below joins it (the oracle's own join is
    # the stage's, covered by tests/test_audit_run.py)
    (root / "data/truth/oracle.parquet").unlink()
    return root


def _wide(root: Path, params: Params) -> pl.DataFrame:
    """The whole cohort as one wide frame: every sensitive column, every label, every split."""
    features = pl.scan_parquet(root / "features/features.parquet")
    full = build_cohort(
        pl.scan_parquet(root / "data/scores" / f"{TARGET}.parquet"),
        features.select("person_id", *contract.SENSITIVE_SCHEMA, contract.RECORDED_MULTIMORBIDITY),
        dimensions=(*params.audit.dimensions, *params.audit.label_choice_dimensions),
        capacity_mode=params.operating_point.capacity_mode,
        capacity=params.operating_point.capacity,
        split="all",
        truth=pl.scan_parquet(root / "data/truth/people.parquet"),
        need_case_share=params.audit.need_case_share,
    )
    need = pl.read_parquet(root / "data/scores" / contract.NEED_SCORES_DIR / f"{TARGET}.parquet")
    return full.join(need, on="person_id", how="left", maintain_order="left")


PARAMS = {
    "test split": _params(),
    "every split": _params(audit={"split": "all"}),
    "per ICB": _params(operating_point={"capacity_mode": "per_icb", "capacity": 10}),
    "per practice": _params(operating_point={"capacity_mode": "per_practice", "capacity": 2}),
}


@pytest.mark.parametrize("rows", [READ_ROWS, 1_000, 7])
@pytest.mark.parametrize("name", list(PARAMS))
def test_narrow_reads_are_the_wide_frames_columns(world: Path, name: str, rows: int) -> None:
    params = PARAMS[name]
    audited, whole = _read_cohorts(params, io.Paths.at(world), target=TARGET, read_rows=rows)
    wide = _wide(world, params)
    split = params.audit.split
    expected = wide if split == "all" else wide.filter(pl.col("split") == split)
    assert audited.height == expected.height > 0
    assert audited.equals(expected.select(audited.columns))
    assert whole.equals(wide.select(whole.columns))
    if split == "all":
        assert whole is audited
    else:  # narrow: none of the audited-only labels, no identifiers
        assert not {"person_id", "region", "age_band", "sex", "recorded_need"} & set(whole.columns)
        unit = {"per_icb": "icb_code", "per_practice": "practice_id"}.get(
            params.operating_point.capacity_mode
        )
        assert unit is None or unit in whole.columns


def _published(
    audited: pl.DataFrame, whole: pl.DataFrame, params: Params
) -> dict[str, pl.DataFrame]:
    tables = audit_tables(
        audited,
        audit=params.audit,
        operating_point=params.operating_point,
        outreach=params.outreach,
        seed=params.seed,
        target=TARGET,
        whole_cohort=whole,
        impact=params.impact,
    )
    return published_tables(tables, audit=params.audit, rule=params.disclosure)


@pytest.mark.parametrize("name", ["test split", "per ICB"])
def test_narrow_reads_publish_the_same_tables(world: Path, name: str) -> None:
    params = PARAMS[name]
    audited, whole = _read_cohorts(params, io.Paths.at(world), target=TARGET, read_rows=500)
    wide = _wide(world, params)
    narrow = _published(audited, whole, params)
    reference = _published(wide.filter(pl.col("split") == params.audit.split), wide, params)
    assert narrow.keys() == reference.keys()
    for table, frame in narrow.items():
        assert frame.equals(reference[table]), table


CAPPED = PARAMS["per ICB"].model_copy(
    update={
        "audit": PARAMS["per ICB"].audit.model_copy(
            update={"max_audited_rows": 97, "max_cohort_rows": 301}
        )
    }
)


@pytest.mark.parametrize("params", [PARAMS["per ICB"], CAPPED], ids=["uncapped", "capped"])
def test_slices_read_on_a_cluster_are_the_local_frames(
    world: Path, cluster: str, params: Params
) -> None:
    from distributed import Client

    local = _read_cohorts(params, io.Paths.at(world), target=TARGET)
    with Client(cluster) as client:
        remote = _read_cohorts(
            params, io.Paths.at(world), target=TARGET, client=client, read_rows=400
        )
    for mine, theirs in zip(local, remote, strict=True):
        assert mine.equals(theirs)


def test_an_empty_split_is_named(world: Path, tmp_path: Path) -> None:
    shutil.copytree(world, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "data/scores" / f"{TARGET}.parquet"
    pl.read_parquet(path).filter(pl.col("split") != "test").write_parquet(path)
    with pytest.raises(ContractError, match=r"sim_target.parquet: no rows in split 'test'"):
        _read_cohorts(_params(), io.Paths.at(tmp_path), target=TARGET)


def test_a_person_twice_in_the_features_is_named(world: Path, tmp_path: Path) -> None:
    shutil.copytree(world, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "features/features.parquet"
    features = pl.read_parquet(path)
    scores = pl.read_parquet(tmp_path / "data/scores" / f"{TARGET}.parquet")
    tested = scores.filter(pl.col("split") == "test")["person_id"][0]
    pl.concat([features, features.filter(pl.col("person_id") == tested)]).write_parquet(path)
    unique = r"1 extra row\(s\) joining .*features.parquet.* person_id is not unique"
    with pytest.raises(ContractError, match=unique):
        _read_cohorts(_params(), io.Paths.at(tmp_path), target=TARGET)


def test_slices_cover_the_rows_once_in_order() -> None:
    assert slice_bounds(0, rows=3) == [(0, 0)]
    assert slice_bounds(6, rows=3) == [(0, 3), (3, 6)]
    assert slice_bounds(7, rows=3) == [(0, 3), (3, 6), (6, 7)]
    with pytest.raises(ValueError, match="rows must be positive"):
        slice_bounds(7, rows=0)


# --- caps: past max_audited_rows / max_cohort_rows, seeded samples of exactly that many ----------


def _sample(n: int, cap: int, purpose: str, params: Params) -> np.ndarray:
    positions = bounded.sample_positions(
        n, cap=cap, rng=seeds.rng("audit", TARGET, purpose, root=params.seed)
    )
    assert positions is not None
    return positions


@pytest.mark.parametrize("rows", [1_000, 7])
@pytest.mark.parametrize("name", list(PARAMS))
def test_capped_reads_are_the_wide_frames_sampled_rows(world: Path, name: str, rows: int) -> None:
    """Past both caps the rows held are the wide frame's rows at the seeded positions, with
    the whole cohort's ``selected`` and ``true_case`` (cuts from every slice, the true-need
    cut by the passes of bounded.select_kth)."""
    base = PARAMS[name]
    params = base.model_copy(
        update={
            "audit": base.audit.model_copy(update={"max_audited_rows": 97, "max_cohort_rows": 301})
        }
    )
    cohort = _read_cohort(params, io.Paths.at(world), target=TARGET, read_rows=rows)
    wide = _wide(world, params)
    split = params.audit.split
    in_split = wide if split == "all" else wide.filter(pl.col("split") == split)
    assert cohort.audited_sampled and cohort.whole_sampled
    assert cohort.audited.height == 97 and cohort.whole.height == 301
    audited_rows = in_split[_sample(in_split.height, 97, "audited", params)]
    assert cohort.audited.equals(audited_rows.select(cohort.audited.columns))
    whole_rows = wide[_sample(wide.height, 301, "cohort", params)]
    assert cohort.whole.equals(whole_rows.select(cohort.whole.columns))
    assert cohort.cut_score == selection.cut_score(
        wide,
        capacity_mode=params.operating_point.capacity_mode,
        capacity=params.operating_point.capacity,
    )


def test_a_cap_at_the_cohort_size_samples_nothing(world: Path) -> None:
    n_test = (
        pl.scan_parquet(world / "data/scores" / f"{TARGET}.parquet")
        .filter(pl.col("split") == "test")
        .select(pl.len())
        .collect()
        .item()
    )
    params = _params(audit={"max_audited_rows": n_test, "max_cohort_rows": 3_000})
    cohort = _read_cohort(params, io.Paths.at(world), target=TARGET, read_rows=500)
    assert not cohort.audited_sampled and not cohort.whole_sampled
    assert cohort.audited.height == n_test and cohort.whole.height == 3_000


def test_capped_tables_are_published_and_the_caps_recorded(world: Path) -> None:
    params = _params(audit={"max_audited_rows": 400, "max_cohort_rows": 1_500})
    cohort = _read_cohort(params, io.Paths.at(world), target=TARGET, read_rows=500)
    tables = audit_tables(
        cohort.audited,
        audit=params.audit,
        operating_point=params.operating_point,
        outreach=params.outreach,
        seed=params.seed,
        target=TARGET,
        whole_cohort=cohort.whole,
        impact=params.impact,
        sampled_cut_score=(cohort.cut_score,),
    )
    published = published_tables(tables, audit=params.audit, rule=params.disclosure)
    assert published["groups"].filter(pl.col("dimension") == "overall")["n"].to_list() in (
        ["400"],
        [400],
    )
    summary = audit_summary(
        tables,
        audit=params.audit,
        operating_point=params.operating_point,
        target=TARGET,
        n_people=cohort.audited.height,
        group_metrics=published["group_metrics"],
        rule=params.disclosure,
        sampled={"audited": True, "cohort": True},
    )
    settings = summary.settings
    assert (settings.max_audited_rows, settings.audited_rows_sampled) == (400, True)
    assert (settings.max_cohort_rows, settings.cohort_rows_sampled) == (1_500, True)


def test_samples_are_exactly_the_cap_and_seeded() -> None:
    assert bounded.sample_positions(10, cap=10, rng=np.random.default_rng(1)) is None
    n = 2 * bounded.SAMPLE_BLOCK + 17
    first = bounded.sample_positions(n, cap=5_000, rng=np.random.default_rng(3))
    again = bounded.sample_positions(n, cap=5_000, rng=np.random.default_rng(3))
    other = bounded.sample_positions(n, cap=5_000, rng=np.random.default_rng(4))
    assert first is not None and again is not None and other is not None
    assert first.size == 5_000 and np.unique(first).size == 5_000
    assert np.all(np.diff(first) > 0) and 0 <= first[0] and first[-1] < n
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    part = bounded.split_positions(first, offset=bounded.SAMPLE_BLOCK, length=100_000)
    assert part is not None
    expected = first[(first >= bounded.SAMPLE_BLOCK) & (first < bounded.SAMPLE_BLOCK + 100_000)]
    assert np.array_equal(part, expected - bounded.SAMPLE_BLOCK)


@pytest.mark.parametrize("seed", range(6))
def test_the_kth_value_from_slices_is_polars_quantile(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3_000))
    values = rng.choice([rng.random(n), rng.normal(size=n), np.round(rng.random(n), 2)], axis=0)
    values[: n // 10] = 0.0  # ties and zeros
    slices = np.array_split(values, 7)
    quantile = float(rng.choice([0.8, 0.5, 0.05, 0.999]))

    def histogram(prefix: int, level: int) -> np.ndarray:
        return sum(bounded.digit_histogram(s, prefix=prefix, level=level) for s in slices)

    position = bounded.quantile_position(n, quantile=quantile)
    assert bounded.select_kth(position, histogram) == pl.Series(values).quantile(quantile)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_audited_rows", 0),
        ("max_cohort_rows", -5),
        ("max_audited_rows", 2.5),
        ("max_cohort_rows", "10"),
    ],
)
def test_bad_caps_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ParamsError, match=rf"audit\.{key}"):
        _params(audit={key: value})


@pytest.mark.parametrize("cap", [10_000_000, 301], ids=["held", "sampled"])
def test_a_truth_without_true_need_is_named(world: Path, tmp_path: Path, cap: int) -> None:
    shutil.copytree(world, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "data/truth/people.parquet"
    truth = pl.read_parquet(path)
    truth.with_columns(
        pl.lit(None, dtype=truth["true_need"].dtype).alias("true_need")
    ).write_parquet(path)
    with pytest.raises(ContractError, match="no person of the cohort has a true_need"):
        _read_cohorts(_params(audit={"max_cohort_rows": cap}), io.Paths.at(tmp_path), target=TARGET)
