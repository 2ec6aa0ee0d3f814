"""An extract without IMD, ethnicity, practice or an outcomes table runs end to end.

A small extract as an OMOP adapter would write it: events over the whole observation period
(follow-up included), no ``outcomes`` table (the target is derived from the events after the
index date), no ``areas.imd_decile``, no ``people.ethnicity``, no ``people.practice_id`` and no
``practices`` table. validate -> features -> train -> need -> audit -> outreach ->
report all run; the features those fields feed are no model inputs, and the audit and the report
say which dimensions could not be audited and why.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from pipeline import contract, io
from pipeline.config import Params, parse_params
from tests.fixture_params import fixture_raw
from tests.stage_chain import run_from_validate

INDEX = dt.date(2025, 4, 1)
TARGET = "emergency_admission_12m"
N_PEOPLE = 3_000
ICBS = (("QHM", "North East and Yorkshire"), ("QMJ", "London"), ("QT6", "South West"))
KEY = b"test-secret-not-for-real-use"


def _areas() -> pl.DataFrame:
    """Areas without an IMD decile (the column is absent)."""
    rows = [
        (f"E0100{i:04d}", code, f"ICB {code}", region, "urban" if i % 3 else "rural")
        for i, (code, region) in enumerate(ICBS * 10)
    ]
    return pl.DataFrame(
        rows,
        schema=["area_id", "icb_code", "icb_name", "region", "rural_urban"],
        orient="row",
    )


def _people(rng: np.random.Generator, areas: pl.DataFrame) -> pl.DataFrame:
    """People without ethnicity or practice (the columns are absent)."""
    return pl.DataFrame(
        {
            "person_id": [f"P{i:06d}" for i in range(N_PEOPLE)],
            "sex": rng.choice(["F", "M"], N_PEOPLE),
            "age": rng.integers(18, 95, N_PEOPLE).astype(np.int16),
            "area_id": rng.choice(areas["area_id"].to_numpy(), N_PEOPLE),
        }
    )


def _events(rng: np.random.Generator, people: pl.DataFrame) -> pl.DataFrame:
    """A history before the index date and a year of follow-up after it; the chance of an
    emergency admission in the follow-up rises with age, conditions and past admissions."""
    ids, age = people["person_id"].to_numpy(), people["age"].to_numpy()
    frail = rng.random(N_PEOPLE) < 0.1 + 0.5 * (age - 18) / 77
    past = rng.poisson(0.2 + 1.5 * frail)
    risk = 1 / (1 + np.exp(-(-3.2 + 1.6 * frail + 0.5 * np.minimum(past, 3))))
    admitted = rng.random(N_PEOPLE) < risk
    rows: list[tuple[str, dt.date, str, str, float | None]] = []
    for i in range(N_PEOPLE):
        before = [INDEX - dt.timedelta(days=int(d)) for d in rng.integers(0, 700, 3 + past[i])]
        rows.append((ids[i], before[0], "gp_consultation", "face_to_face", None))
        rows.append((ids[i], before[1], "measurement", "sbp", float(rng.normal(135, 15))))
        if frail[i]:
            rows.append((ids[i], before[2], "diagnosis", "I10X", None))  # X-padded ICD-10
            rows.append((ids[i], before[2], "prescription", "0205", None))
        rows += [(ids[i], day, "emergency_admission", "J18.9", None) for day in before[3:]]
        if admitted[i]:
            later = INDEX + dt.timedelta(days=int(rng.integers(1, 366)))
            rows.append((ids[i], later, "emergency_admission", "I21.0", None))
        rows.append((ids[i], INDEX + dt.timedelta(days=400), "gp_consultation", "online", None))
    return pl.DataFrame(rows, schema=contract.EVENTS_SCHEMA, orient="row")


def write_extract(folder: Path, *, seed: int = 5) -> None:
    """The extract: areas, people, events only (no practices, no outcomes)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    areas = _areas()
    people = _people(rng, areas)
    areas.write_parquet(folder / "areas.parquet")
    people.write_parquet(folder / "people.parquet")
    _events(rng, people).write_parquet(folder / "events.parquet")


def _params(root: Path) -> Params:
    raw = fixture_raw()
    raw["population"] |= {"source": "extract", "extract_dir": "data/population"}
    raw["validation"]["extract_end"] = "2026-06-30"
    raw["targets"] = {TARGET: raw["targets"][TARGET]}
    raw["train"] |= {"n_estimators": 60, "n_bootstrap": 20, "min_child_samples": 20}
    raw["audit"] |= {"n_bootstrap": 40, "n_monte_carlo": 100}
    raw["outreach"]["secret_file"] = str(root / "no-such-key")
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return parse_params(raw)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every stage run once on the extract, in DVC's order."""
    root = tmp_path_factory.mktemp("missing_fields")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setenv("PHM_PSEUDONYM_KEY", KEY.decode())
        patch.delenv("DVC_EXP_NAME", raising=False)
        patch.chdir(root)
        params, paths = _params(root), io.Paths.at(root)
        write_extract(paths.population)
        run_from_validate(params, paths, targets=(TARGET,), key=KEY)
    return root


def test_validate_derives_the_outcome_and_reports_the_missing_fields(project: Path) -> None:
    report = io.read_json(project / "reports" / "data_quality.json")
    assert report["valid"] is True
    assert report["outcomes"][TARGET]["source"] == "derived"
    assert "practices" not in report["tables"] and "outcomes" not in report["tables"]
    assert report["tables"]["people"]["null_share"]["ethnicity"] == 1.0
    assert report["tables"]["areas"]["null_share"]["imd_decile"] == 1.0
    assert report["ethnicity_recorded_share"] == 0.0


def test_features_drop_the_inputs_the_missing_fields_feed(project: Path) -> None:
    manifest = contract.read_manifest(project / "features" / "manifest.json")
    assert set(manifest.unavailable_fields) == {"imd_decile", "ethnicity", "practice_id"}
    for name in ("imd_decile", "practice_list_size", "practice_prevalence_diabetes"):
        assert not manifest.entries[name].model_input, name
    assert "imd_decile" not in manifest.model_inputs
    table = pl.read_parquet(project / "features" / "features.parquet")
    assert table.height == N_PEOPLE
    for column in ("imd_quintile", "ethnicity_group", "practice_id", "practice_list_size"):
        assert table[column].null_count() == N_PEOPLE, column


def test_the_audit_and_report_say_what_could_not_be_audited(project: Path) -> None:
    summary = contract.read_summary(
        contract.AuditSummary, project / "reports" / "audit" / TARGET / "audit.json"
    )
    assert set(summary.unaudited_dimensions) == {
        "imd_quintile",
        "ethnicity_group",
        "ethnicity_group_x_imd_quintile",
    }
    assert "IMD decile" in summary.unaudited_dimensions["imd_quintile"]
    groups = pl.read_parquet(project / "reports" / "audit" / TARGET / "groups.parquet")
    assert {"sex", "age_band", "region"} <= set(groups["dimension"])
    assert not {"imd_quintile", "ethnicity_group"} & set(groups["dimension"])
    html = (project / "reports" / "equity_report.html").read_text()
    assert "imd quintile could not be audited: the extract has no IMD decile" in html
    assert "ethnicity group could not be audited: the extract has no ethnic category" in html


def test_outreach_lists_are_written(project: Path) -> None:
    lists = sorted((project / "data" / "outreach" / TARGET).glob("*.csv"))
    assert [path.stem for path in lists] == ["QHM", "QMJ", "QT6"]
    summary = json.loads((project / "reports" / "outreach_summary.json").read_text())
    assert TARGET in summary["targets"]
