"""Atomic, deterministic writers."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline.io import atomic_dir, atomic_path, dumps_json, scan_table, write_json, write_parquet


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out" / "table.parquet"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_failed_dir_write_keeps_previous_output(tmp_path: Path) -> None:
    target = tmp_path / "lists"
    target.mkdir()
    (target / "old.csv").write_text("kept")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "new.csv").write_text("half")
        raise RuntimeError("boom")
    assert [p.name for p in target.iterdir()] == ["old.csv"]


def test_parquet_sorted_and_byte_identical(tmp_path: Path) -> None:
    frame = pl.DataFrame({"person_id": ["P3", "P1", "P2"], "risk": [0.3, 0.1, 0.2]})
    first = write_parquet(frame, tmp_path / "a.parquet", sort_by="person_id")
    second = write_parquet(frame.reverse(), tmp_path / "b.parquet", sort_by="person_id")
    assert pl.read_parquet(first)["person_id"].to_list() == ["P1", "P2", "P3"]
    assert first.read_bytes() == second.read_bytes()


def test_json_is_deterministic_and_nan_safe(tmp_path: Path) -> None:
    assert dumps_json({"b": 1, "a": float("nan")}) == '{\n  "a": null,\n  "b": 1\n}\n'
    path = write_json({"x": (1, 2)}, tmp_path / "x.json")
    assert path.read_text() == '{\n  "x": [\n    1,\n    2\n  ]\n}\n'


def test_scan_table_reads_file_or_folder_of_parts(tmp_path: Path) -> None:
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "people.parquet")
    (tmp_path / "events").mkdir()
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "events" / "part-00000.parquet")
    pl.DataFrame({"a": [2]}).write_parquet(tmp_path / "events" / "part-00001.parquet")
    assert scan_table(tmp_path, "people").collect().height == 1
    assert sorted(scan_table(tmp_path, "events").collect()["a"].to_list()) == [1, 2]
    with pytest.raises(FileNotFoundError, match="outcomes"):
        scan_table(tmp_path, "outcomes")
