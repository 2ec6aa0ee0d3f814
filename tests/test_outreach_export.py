"""``python -m pipeline export``: one ICB's lists as a deterministic, formula-safe workbook."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl
import pytest

from pipeline.config import OutreachParams
from pipeline.errors import ParamsError, StageError
from pipeline.export import export_icb, export_path
from pipeline.io import write_parquet
from pipeline.outreach import OUTREACH_COLUMNS, lists
from pipeline.outreach.dictionary import data_dictionary

TARGETS = ("cvd", "adm")


def _list(rows: list[tuple[str, str, str, int, float]]) -> pl.DataFrame:
    frame = pl.DataFrame(
        rows, schema=["pseudonym", "practice_id", "icb_code", "rank", "risk_score"], orient="row"
    )
    return frame.with_columns(
        pl.lit("A: first 20% of the list").alias("list_tier"),
        pl.lit(70, dtype=pl.Int16).alias("age"),
        pl.lit("M").alias("sex"),
        pl.lit("hypertension").alias("conditions_recorded"),
        pl.lit('=HYPERLINK("http://x")').alias("reason_1"),  # a hostile cell stays text
        pl.lit("systolic blood pressure 162 mmHg").alias("reason_2"),
        pl.lit(None, pl.String).alias("reason_3"),
        pl.lit("hypertension review (blood pressure control to target)").alias("suggested_action"),
    ).select(OUTREACH_COLUMNS)


@pytest.fixture
def outreach_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "data" / "outreach"
    frames = {
        "cvd": _list([("aa", "P1", "QHM", 1, 0.31), ("bb", "P2", "QHM", 2, 0.22),
                      ("cc", "P9", "QMJ", 1, 0.40)]),
        "adm": _list([("bb", "P2", "QHM", 1, 0.52), ("dd", "P1", "QHM", 2, 0.12)]),
    }  # fmt: skip
    for name, frame in frames.items():
        write_parquet(frame, folder / f"{name}.parquet", sort_by=["icb_code", "rank"])
    merged = lists.merge_lists(frames)
    write_parquet(merged, folder / "merged.parquet", sort_by=["icb_code", "rank"])
    data_dictionary(TARGETS, OutreachParams().tiers).write_csv(folder / lists.DICTIONARY_FILE)
    return folder


def _xml(book: Path) -> dict[str, str]:
    with zipfile.ZipFile(book) as archive:
        return {name: archive.read(name).decode() for name in archive.namelist()}


def test_workbook_is_byte_identical_formula_safe_and_has_every_sheet(outreach_folder, tmp_path):
    first = export_icb(outreach_folder, tmp_path / "a.xlsx", targets=TARGETS, icb="QHM")
    second = export_icb(outreach_folder, tmp_path / "b.xlsx", targets=TARGETS, icb="QHM")
    assert first.read_bytes() == second.read_bytes()
    parts = _xml(first)
    workbook = parts["xl/workbook.xml"]
    for sheet in ("Read me", "All lists", "cvd", "adm", "Data dictionary"):
        assert f'name="{sheet}"' in workbook
    sheets = [text for name, text in parts.items() if name.startswith("xl/worksheets/sheet")]
    assert not any("<f>" in text for text in sheets)  # no cell is a formula
    strings = parts["xl/sharedStrings.xml"]
    assert "&apos;=HYPERLINK" in strings or "'=HYPERLINK" in strings
    assert "cc" not in strings.split("<si>")  # QMJ's person is not in QHM's workbook
    assert "<t>cc</t>" not in strings and "<t>bb</t>" in strings
    assert "HMAC-SHA256" in strings  # the read-me says how to re-identify


def test_practice_filter_and_unknown_codes(outreach_folder, tmp_path) -> None:
    book = export_icb(
        outreach_folder, tmp_path / "p.xlsx", targets=TARGETS, icb="QHM", practices=["P1"]
    )
    strings = _xml(book)["xl/sharedStrings.xml"]
    assert "<t>aa</t>" in strings and "<t>dd</t>" in strings and "<t>bb</t>" not in strings
    with pytest.raises(
        ParamsError, match=r"--icb: no list for ICB 'XXX' \(lists exist for: QHM, QMJ\)"
    ):
        export_icb(outreach_folder, tmp_path / "x.xlsx", targets=TARGETS, icb="XXX")
    with pytest.raises(ParamsError, match=r"--practice: 1 practice.*P9"):
        export_icb(
            outreach_folder, tmp_path / "x.xlsx", targets=TARGETS, icb="QHM", practices=["P9"]
        )
    with pytest.raises(StageError, match="run `dvc repro outreach`"):
        export_icb(outreach_folder, tmp_path / "x.xlsx", targets=("other",), icb="QHM")
    assert not (tmp_path / "x.xlsx").exists()


def test_export_path_names_the_icb_and_practices(tmp_path) -> None:
    assert export_path(tmp_path, icb="QHM", practices=()).name == "outreach_QHM.xlsx"
    assert export_path(tmp_path, icb="QHM", practices=["B", "A"]).name == "outreach_QHM_A_B.xlsx"
    many = export_path(tmp_path, icb="QHM", practices=["A", "B", "C", "D"])
    assert many.name == "outreach_QHM_4_practices.xlsx"


def test_export_command_writes_the_workbook_or_exits_2_naming_the_icb(outreach_folder) -> None:
    root = outreach_folder.parents[1]
    (root / "params.yaml").write_text(
        "targets:\n"
        "  cvd: {outcome: cvd_event, follow_up_months: 60}\n"
        "  adm: {outcome: emergency_admission, follow_up_months: 12}\n"
    )
    command = [sys.executable, "-m", "pipeline", "export", "--root", str(root)]
    done = subprocess.run([*command, "--icb", "QHM"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (root / "data" / "exports" / "outreach_QHM.xlsx").stat().st_size > 5_000
    refused = subprocess.run(
        [*command, "--icb", "ZZZ"], capture_output=True, text=True, check=False
    )
    assert refused.returncode == 2 and "no list for ICB 'ZZZ'" in refused.stderr
