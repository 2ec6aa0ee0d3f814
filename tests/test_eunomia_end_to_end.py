"""The OHDSI Eunomia "GiBleed" sample through every stage, to the report (issue #17).

The overlay of ``examples/eunomia/`` (params, the SNOMED CT GI-bleed list) on the fixture params,
with fewer bootstrap draws: synthesize (the OMOP adapter) -> validate -> features -> train ->
need -> audit -> outreach -> report, in DVC's order. The sample has no home area
(``people.area_id`` null for everyone), no NHS ethnic category and no practice, so the run goes
on without IMD, ICB, region, rurality and ethnicity, and says so. CI also runs the same overlay
with ``dvc repro`` in a scratch clone (``.ci/run``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import polars as pl
import pytest
import yaml

from pipeline import contract, io
from pipeline.config import parse_params
from pipeline.outreach.lists import NO_ICB
from tests.fixture_params import fixture_raw
from tests.stage_chain import run_from_validate

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "eunomia"
TARGETS = ("gi_bleed_5y", "admission_5y")
KEY = b"test-secret-not-for-real-use"


def _prepare() -> ModuleType:
    """``examples/eunomia/prepare.py`` as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("eunomia_prepare", EXAMPLE / "prepare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _params(root: Path, prepare: ModuleType) -> dict[str, object]:
    """The fixture params with the example's overlay (as ``prepare.py`` writes them)."""
    raw = prepare.overlaid(fixture_raw(), yaml.safe_load((EXAMPLE / "params.yaml").read_text()))
    raw["population"]["omop"]["path"] = str(root / prepare.SAMPLE_COPY)
    raw["train"] |= {"n_bootstrap": 20}
    raw["audit"] |= {"n_bootstrap": 40, "n_monte_carlo": 100}
    raw["outreach"]["secret_file"] = str(root / "no-such-key")
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return raw


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every stage run once on the Eunomia sample."""
    from pipeline import synth

    root = tmp_path_factory.mktemp("eunomia_e2e")
    prepare = _prepare()
    shutil.copytree(REPO / "codelists", root / "codelists")
    prepare.copy_sample(root)
    assert prepare.register_snomed_list(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setenv("PHM_PSEUDONYM_KEY", KEY.decode())
        patch.delenv("DVC_EXP_NAME", raising=False)
        patch.chdir(root)
        params, paths = parse_params(_params(root, prepare)), io.Paths.at(root)
        synth.run(params, paths)
        run_from_validate(params, paths, targets=TARGETS, key=KEY)
    return root


def test_validate_accepts_people_without_a_home_area(project: Path) -> None:
    report = io.read_json(project / "reports" / "data_quality.json")
    assert report["valid"] is True
    assert report["tables"]["people"]["null_share"]["area_id"] == 1.0
    assert {report["outcomes"][t]["source"] for t in TARGETS} == {"derived"}


def test_features_carry_no_geography(project: Path) -> None:
    manifest = contract.read_manifest(project / "features" / "manifest.json")
    assert {"area_id", "imd_decile", "ethnicity", "practice_id"} <= set(manifest.unavailable_fields)
    for name in ("region_code", "rural", "imd_decile"):
        assert not manifest.entries[name].model_input, name
    table = pl.read_parquet(project / "features" / "features.parquet")
    for column in ("icb_code", "region", "imd_decile", "rural_urban"):
        assert table[column].null_count() == table.height, column


def test_the_audit_names_every_dimension_it_could_not_audit(project: Path) -> None:
    for target in TARGETS:
        folder = project / "reports" / "audit" / target
        summary = contract.read_summary(contract.AuditSummary, folder / "audit.json")
        assert {"region", "icb_code", "imd_quintile", "ethnicity_group"} <= set(
            summary.unaudited_dimensions
        )
        assert "home area" in summary.unaudited_dimensions["region"]
        assert "home area" in summary.unaudited_dimensions["imd_quintile"]
        impact = pl.read_parquet(folder / "impact.parquet")
        assert set(impact["dimension"]) == {"overall"}
        gradient = pl.read_parquet(folder / "impact_gradient.parquet")
        assert gradient["sii_before"].null_count() == gradient.height


def test_outreach_lists_people_without_an_icb_in_one_list(project: Path) -> None:
    for target in TARGETS:
        lists = sorted((project / "data" / "outreach" / target).glob("*.csv"))
        assert [path.stem for path in lists] == [NO_ICB]
        frame = pl.read_csv(lists[0])
        assert set(frame["icb_code"]) <= {NO_ICB}
        assert frame["pseudonym"].str.len_chars().min() > 0
    summary = json.loads((project / "reports" / "outreach_summary.json").read_text())
    assert set(summary["targets"]) == set(TARGETS)


def test_the_report_says_what_it_could_not_draw(project: Path) -> None:
    html = (project / "reports" / "equity_report.html").read_text()
    assert "Equity by NHS region could not be drawn: the extract has no home area" in html
    assert "Equity by ICB could not be drawn" in html
    assert "IMD is unavailable in this extract" in html
    assert "The label-choice audit (need by score, per group of" in html
    assert "Not available: the region audit table" not in html
    assert "No recommendation: every objective weighs the gap between deprivation fifths" in html
    assert "mitigation table lacks events reached or gaps" not in html
