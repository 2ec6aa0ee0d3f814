"""The synthetic world's truth: each target's own true need, and the intersectional bias."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline import contract
from pipeline.errors import ParamsError
from pipeline.io import Paths
from pipeline.synth import run
from pipeline.synth.conditions import (
    CONDITION_ORDER,
    draw_conditions,
    intersection_shifts,
    recording_logit_shift,
)
from pipeline.synth.events import access_penalty, access_shift
from pipeline.synth.geography import build_geography
from pipeline.synth.people import draw_people
from tests.test_synth import make_params


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("truth")
    run(make_params(), Paths.at(root))
    return root


def _people(n: int = 20_000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    geo = build_geography(n, area_size=400, practice_size=500, rng=rng)
    return draw_people(geo, np.arange(n), rng, not_recorded_share=0.15)


def _inside(people: dict[str, np.ndarray], group: int, quintile: int) -> np.ndarray:
    return (people["group"] == group) & ((people["decile"] + 1) // 2 == quintile)


def test_oracle_holds_each_targets_own_true_need(world: Path) -> None:
    oracle = pl.read_parquet(world / "data/truth/oracle.parquet")
    people = pl.read_parquet(world / "data/truth/people.parquet")
    assert dict(oracle.schema) == contract.TRUTH_ORACLE_SCHEMA
    assert oracle["true_need"].is_between(0.0, 1.0, closed="none").all()
    # emergency admission: the generic 12-month need index of true health alone
    ea = oracle.filter(pl.col("target") == "emergency_admission_12m").join(
        people.select("person_id", pl.col("true_need").alias("index")), on="person_id"
    )
    np.testing.assert_allclose(ea["true_need"], ea["index"])
    # CVD: everything recorded and no access penalty can only raise the 5-year risk, and it
    # does for people with an unrecorded condition
    cvd = oracle.filter(pl.col("target") == "cvd_event_5y")
    assert (cvd["true_need"] >= cvd["oracle_risk"] - 1e-12).all()
    assert (cvd["true_need"] > cvd["oracle_risk"] * 1.01).sum() > 0.1 * cvd.height
    # ... and it is not the emergency-admission index
    joined = cvd.join(
        people.select("person_id", pl.col("true_need").alias("index")), on="person_id"
    )
    assert not np.allclose(joined["true_need"], joined["index"], rtol=0.1)


def test_intersectional_shifts_only_inside_the_intersection() -> None:
    people = _people()
    inside = _inside(people, group=2, quintile=1)
    assert 0 < inside.sum() < len(inside)
    base_rec, base_access = recording_logit_shift(people, 1.0), access_shift(people, 1.0)
    np.testing.assert_allclose(base_access, access_penalty(people))
    people |= intersection_shifts(people, ethnic_group=2, imd_quintile=1, recording=0.9, access=0.4)
    np.testing.assert_allclose(recording_logit_shift(people, 1.0) - base_rec, 0.9 * inside)
    np.testing.assert_allclose(access_shift(people, 1.0) - base_access, 0.4 * inside)


def test_intersectional_recording_bias_hides_conditions_in_that_group_only() -> None:
    people = _people()
    offsets = {c: (np.zeros(10), np.zeros(7)) for c in CONDITION_ORDER}
    plain = draw_conditions(people, np.random.default_rng(1), offsets=offsets, under_recording=1.0)
    biased_people = people | intersection_shifts(
        people, ethnic_group=2, imd_quintile=1, recording=3.0, access=0.0
    )
    biased = draw_conditions(
        biased_people, np.random.default_rng(1), offsets=offsets, under_recording=1.0
    )
    inside = _inside(people, group=2, quintile=1)
    for condition in ("hypertension", "diabetes"):
        rec = f"rec_{condition}"
        np.testing.assert_array_equal(biased[rec][~inside], plain[rec][~inside])
        assert biased[rec][inside].sum() < 0.5 * plain[rec][inside].sum()
        np.testing.assert_array_equal(biased[f"true_{condition}"], plain[f"true_{condition}"])


def test_intersectional_params_are_validated() -> None:
    params = make_params(bias={"intersectional": {"ethnicity_group": "Asian", "recording": 0.5}})
    inter = params.population.bias.intersectional
    assert (inter.ethnicity_group, inter.imd_quintile, inter.recording, inter.access) == (
        "Asian",
        1,
        0.5,
        0.0,
    )
    with pytest.raises(ParamsError, match="intersectional"):
        make_params(bias={"intersectional": {"ethnicity_group": "Not recorded"}})
    with pytest.raises(ParamsError, match="imd_quintile"):
        make_params(bias={"intersectional": {"imd_quintile": 6}})
