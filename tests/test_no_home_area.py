"""People without a home area (``people.area_id`` null), as an OMOP extract without LSOAs has.

A null area_id means "no home area recorded": validate accepts it (the unknown-reference rule
still applies to non-null ids), features carry null ICB, region, IMD and rurality, the impact
tables publish no rows (and no SII) for a dimension nobody has, the report says IMD is
unavailable, and outreach puts people without an ICB in one list (:data:`NO_ICB`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline import contract, impact
from pipeline.disclosure import Rule
from pipeline.errors import ContractError
from pipeline.features import feature_specs, person_attributes
from pipeline.outreach import reasons
from pipeline.outreach.cohort import CohortFiles, read_chunk
from pipeline.outreach.lists import NO_ICB
from pipeline.report.context.impact import NO_IMD, answer, has_imd, verdict
from pipeline.report.model import TargetView
from tests.fixture_params import fixture_raw
from tests.test_impact import PARAMS
from tests.test_validate import INDEX, TARGETS, valid_tables, write_folder


def _without_area(tables: dict[str, pl.DataFrame], *, rows: slice) -> dict[str, pl.DataFrame]:
    people = tables["people"]
    index = pl.int_range(pl.len())
    chosen = index.is_between(rows.start, rows.stop - 1)
    nulled = people.with_columns(
        pl.when(chosen).then(None).otherwise(pl.col("area_id")).alias("area_id")
    )
    return tables | {"people": nulled}


def test_validate_accepts_a_null_area_id(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "pop", _without_area(valid_tables(), rows=slice(0, 5)))
    facts = contract.validate_population(folder, target_names=TARGETS, index_date=INDEX)
    assert facts["nulls"]["people"]["area_id"] == 5


def test_a_non_null_unknown_area_id_is_still_refused(tmp_path: Path) -> None:
    tables = _without_area(valid_tables(), rows=slice(0, 5))
    people = tables["people"].with_columns(
        pl.when(pl.int_range(pl.len()) == 7)
        .then(pl.lit("A9"))
        .otherwise(pl.col("area_id"))
        .alias("area_id")
    )
    folder = write_folder(tmp_path / "pop", tables | {"people": people})
    with pytest.raises(
        ContractError, match=r"people.parquet / area_id: unknown area_id \(1 rows\)"
    ):
        contract.validate_population(folder, target_names=TARGETS, index_date=INDEX)


def test_without_any_area_id_imd_and_the_area_are_unavailable(tmp_path: Path) -> None:
    tables = _without_area(valid_tables(), rows=slice(0, 20))
    folder = write_folder(tmp_path / "pop", tables)
    missing = contract.unavailable_fields(folder)
    assert "area_id" in missing and "imd_decile" in missing
    partial = write_folder(tmp_path / "part", _without_area(valid_tables(), rows=slice(0, 5)))
    assert contract.unavailable_fields(partial) == ()


def test_features_carry_null_geography_for_people_without_an_area() -> None:
    tables = _without_area(valid_tables(), rows=slice(0, 5))
    people, areas = tables["people"].lazy(), tables["areas"].lazy()
    frame = person_attributes(people, areas).collect().sort("person_id")  # the first 5 lack one
    assert frame.height == 20
    head, tail = frame.head(5), frame.tail(15)
    for column in ("icb_code", "region", "imd_decile", "imd_quintile", "rural_urban"):
        assert head[column].null_count() == 5, column
        assert tail[column].null_count() == 0, column
    assert head["region_code"].null_count() == 5


def test_region_and_rurality_are_no_model_inputs_without_an_area() -> None:
    from pipeline.config import parse_params

    params = parse_params(fixture_raw())
    specs = {s.name: s for s in feature_specs(params.features, unavailable=("area_id",))}
    assert not specs["region_code"].model_input and not specs["rural"].model_input
    assert specs["age"].model_input


def test_unaudited_dimensions_name_the_missing_home_area() -> None:
    features = pl.LazyFrame(
        {"region": [None, None], "icb_code": [None, None], "sex": ["F", "M"]},
        schema={"region": pl.String, "icb_code": pl.String, "sex": pl.String},
    )
    reasons_ = contract.unaudited_dimensions(features, ("region", "icb_code", "sex"))
    assert set(reasons_) == {"region", "icb_code"}
    assert "home area" in reasons_["region"] and "people.area_id" in reasons_["icb_code"]
    with_imd = features.with_columns(pl.lit(None, dtype=pl.Int8).alias("imd_quintile"))
    imd = contract.unaudited_dimensions(with_imd, ("imd_quintile",))["imd_quintile"]
    assert imd == contract.unavailable_reason("area_id")  # the cause is the missing area
    placed = with_imd.with_columns(pl.lit("QHM").alias("icb_code"))
    imd = contract.unaudited_dimensions(placed, ("imd_quintile",))["imd_quintile"]
    assert imd == contract.unavailable_reason("imd_decile")


def _cohort(n: int = 400) -> pl.DataFrame:
    rng = np.random.default_rng(3)
    risk = rng.uniform(0.01, 0.5, n)
    return pl.DataFrame(
        {
            "imd_quintile": ["Unknown"] * n,
            "ethnicity_group": rng.choice(["White", "Asian"], n),
            "true_need": risk,
            "risk_score": risk,
            "selected_risk": risk > 0.4,
        }
    )


def test_impact_without_imd_has_no_quintile_rows_and_no_sii() -> None:
    tables = impact.impact_tables(
        _cohort(), basis="true risk", impact=PARAMS, rng=np.random.default_rng(1), confidence=0.95
    )
    assert set(tables["impact"]["dimension"]) == {"overall", "ethnicity_group"}
    gradient = tables["impact_gradient"]
    assert gradient.height == 1
    assert gradient.select("sii_before", "sii_after", "gap_change").null_count().row(0) == (1, 1, 1)
    assert tables["impact"].filter(dimension="overall")["events_averted"].item() > 0


def test_impact_without_imd_or_ethnicity_has_the_overall_row_only() -> None:
    cohort = _cohort().with_columns(pl.lit("Unknown").alias("ethnicity_group"))
    with np.errstate(invalid="ignore"):
        tables = impact.impact_tables(
            cohort, basis="true risk", impact=PARAMS, rng=np.random.default_rng(1), confidence=0.95
        )
    assert tables["impact"]["dimension"].to_list() == ["overall"]


def test_the_report_says_imd_is_unavailable() -> None:
    raw = impact.impact_tables(
        _cohort(), basis="true risk", impact=PARAMS, rng=np.random.default_rng(1), confidence=0.95
    )
    published = impact.publish_impact(raw["impact"], rule=Rule())
    gradient = impact.publish_gradient(raw["impact_gradient"], published)
    view = TargetView(
        target="t",
        description="",
        outcome="o",
        impact=published.select(list(contract.IMPACT_SCHEMA)),
        impact_gradient=gradient.select(list(contract.IMPACT_GRADIENT_SCHEMA)),
        unaudited={"imd_quintile": contract.unavailable_reason("area_id")},
    )
    assert not has_imd(view)
    assert answer(view) == NO_IMD
    assert verdict(gradient.row(0, named=True), imd=False) == "IMD unavailable"


def test_an_outcome_without_its_own_area_gets_the_proactive_care_review() -> None:
    assert reasons.default_area("gi_bleed") == "urgent_care"
    assert reasons.default_area("cvd_event") == "hypertension"


def test_outreach_puts_people_without_an_icb_in_one_list(tmp_path: Path) -> None:
    ids = ["P1", "P2", "P3"]
    scores = pl.DataFrame({"person_id": ids, "risk_score": [0.1, 0.2, 0.3]}).with_columns(
        pl.lit(None, dtype=dtype).alias(column)
        for column, dtype in contract.SCORES_SCHEMA.items()
        if column not in ("person_id", "risk_score")
    )
    from pipeline.outreach.cohort import COHORT_COLUMNS

    features = (
        pl.DataFrame({"person_id": ids})
        .with_columns(pl.lit(None, dtype=pl.String).alias(column) for column in COHORT_COLUMNS)
        .with_columns(pl.Series("icb_code", ["QHM", None, None]))
    )
    scores.write_parquet(tmp_path / "scores.parquet")
    features.write_parquet(tmp_path / "features.parquet")
    files = CohortFiles(
        target="t", scores=tmp_path / "scores.parquet", features=tmp_path / "features.parquet"
    )
    cohort = read_chunk((0, 3), files=files)
    assert cohort["icb_code"].to_list() == ["QHM", NO_ICB, NO_ICB]
    features.filter(pl.col("person_id") != "P3").write_parquet(tmp_path / "features.parquet")
    with pytest.raises(ContractError, match=r"1 scored people of t have no row.*\['P3'\]"):
        read_chunk((0, 3), files=files)


def test_the_trade_off_table_has_no_list_share_by_an_unavailable_imd() -> None:
    from pipeline.report.context.mitigation import mitigation_table
    from pipeline.report.model import MITIGATION_SCHEMA

    row = {name: None for name in MITIGATION_SCHEMA} | {"strategy": "risk", "group": "Unknown"}
    frame = pl.DataFrame([row], schema=MITIGATION_SCHEMA)
    view = TargetView(target="t", description="", outcome="o", mitigation=frame)
    with_imd = mitigation_table(view, Rule())
    assert with_imd is not None and "List share: Unknown" in [c[0] for c in with_imd.columns]
    unaudited = {"imd_quintile": contract.unavailable_reason("area_id")}
    without = mitigation_table(replace(view, unaudited=unaudited), Rule())
    assert without is not None and not [c for c in without.columns if "List share" in c[0]]
