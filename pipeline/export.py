"""``python -m pipeline export --icb QHM [--practice P ...]``: one ICB's lists as an xlsx workbook.

Sheets: ``Read me`` (what the lists are, how a practice re-identifies a pseudonym), ``All
lists`` (the merged list: each person once), one sheet per target, ``Data dictionary``. Written
with xlsxwriter: every text cell with ``write_string`` (never run as a formula) after
:func:`pipeline.outreach.lists.spreadsheet_safe`, fixed workbook properties and timestamps, so
the same lists give a byte-identical file. Output stays under ``data/`` (row-level, never in git).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import polars as pl
import xlsxwriter  # type: ignore[import-untyped]

from pipeline.errors import ContractError, ParamsError, StageError
from pipeline.io import atomic_path
from pipeline.outreach import lists
from pipeline.outreach.dictionary import README_LINES

__all__ = ["EXPORT_DIR", "export_icb", "export_path", "read_lists", "write_workbook"]

EXPORT_DIR: Final = Path("data") / "exports"
_FIXED_TIME: Final = dt.datetime(2000, 1, 1)
"""Workbook creation time written into the file (a constant: the same lists, the same bytes)."""
_WIDTH: Final = {"pseudonym": 18, "reason": 44, "action": 44, "conditions": 30, "tier": 24}


def read_lists(folder: Path, targets: Sequence[str]) -> dict[str, pl.DataFrame]:
    """``merged`` and each target's list from ``data/outreach`` (stage ``outreach``).

    Raises
    ------
    StageError
        A list file is missing (run ``dvc repro outreach`` first).
    """
    names = [lists.MERGED_FILE, *targets]
    missing = [name for name in names if not (folder / f"{name}.parquet").exists()]
    if missing:
        raise StageError(
            f"export: {folder / (missing[0] + '.parquet')} not found; run `dvc repro outreach`"
        )
    return {name: pl.read_parquet(folder / f"{name}.parquet") for name in names}


def _filtered(
    frames: Mapping[str, pl.DataFrame], *, icb: str, practices: Sequence[str]
) -> dict[str, pl.DataFrame]:
    """The rows of one ICB (and of the given practices), naming any unknown code."""
    merged = frames[lists.MERGED_FILE]
    known_icbs = merged["icb_code"].unique().sort().to_list()
    if icb not in known_icbs:
        shown = ", ".join(known_icbs[:10]) + (" ..." if len(known_icbs) > 10 else "")
        raise ParamsError(f"--icb: no list for ICB {icb!r} (lists exist for: {shown})")
    in_icb = merged.filter(pl.col("icb_code") == icb)
    known_practices = set(in_icb["practice_id"])
    unknown = [code for code in practices if code not in known_practices]
    if unknown:
        raise ParamsError(
            f"--practice: {len(unknown)} practice(s) with nobody on {icb}'s lists, "
            f"e.g. {', '.join(unknown[:3])}"
        )
    keep = pl.col("icb_code") == icb
    if practices:
        keep &= pl.col("practice_id").is_in(list(practices))
    return {name: frame.filter(keep) for name, frame in frames.items()}


def _column_width(name: str) -> int:
    for word, width in _WIDTH.items():
        if word in name:
            return width
    return max(10, len(name) + 2)


def _write_sheet(book: Any, name: str, frame: pl.DataFrame, formats: Mapping[str, Any]) -> None:
    """One table: bold header, frozen, filterable; text with ``write_string`` only."""
    sheet = book.add_worksheet(name[:31])
    safe = lists.spreadsheet_safe(frame)
    for col, column in enumerate(safe.columns):
        sheet.write_string(0, col, column, formats["header"])
        sheet.set_column(col, col, _column_width(column))
        numeric = safe.schema[column].is_numeric()
        for row, value in enumerate(safe[column].to_list(), start=1):
            if value is None:
                continue
            if numeric:
                sheet.write_number(row, col, value, formats.get(column, formats["plain"]))
            else:
                sheet.write_string(row, col, str(value))
    sheet.freeze_panes(1, 1)
    sheet.autofilter(0, 0, max(safe.height, 1), max(safe.width - 1, 0))


def write_workbook(
    target: Path, frames: Mapping[str, pl.DataFrame], dictionary: pl.DataFrame, *, title: str
) -> Path:
    """Write the workbook atomically (sheets as described in the module docstring)."""
    with atomic_path(target) as tmp:
        book = xlsxwriter.Workbook(
            str(tmp), {"strings_to_formulas": False, "strings_to_urls": False}
        )
        book.set_properties({"title": title, "author": "phm pipeline", "created": _FIXED_TIME})
        formats = {
            "header": book.add_format({"bold": True, "bg_color": "#DDEBF7", "border": 1}),
            "plain": book.add_format(),
            "risk": book.add_format({"num_format": "0.0000"}),
        }
        formats |= {name: formats["risk"] for name in _risk_columns(frames)}
        readme = book.add_worksheet("Read me")
        readme.set_column(0, 0, 120)
        for row, line in enumerate([title, *README_LINES]):
            readme.write_string(row, 0, line, formats["header"] if row == 0 else None)
        _write_sheet(book, "All lists", frames[lists.MERGED_FILE], formats)
        for name, frame in frames.items():
            if name != lists.MERGED_FILE:
                _write_sheet(book, name, frame, formats)
        _write_sheet(book, "Data dictionary", dictionary, formats)
        book.close()
    return target


def _risk_columns(frames: Mapping[str, pl.DataFrame]) -> set[str]:
    return {name for frame in frames.values() for name in frame.columns if "risk_score" in name}


def export_path(root: Path, *, icb: str, practices: Sequence[str]) -> Path:
    """``data/exports/outreach_<ICB>[_<practice>...].xlsx`` (more than 3 practices: a count)."""
    suffix = ""
    if 0 < len(practices) <= 3:
        suffix = "_" + "_".join(sorted(practices))
    elif practices:
        suffix = f"_{len(practices)}_practices"
    return root / EXPORT_DIR / f"outreach_{icb}{suffix}.xlsx"


def export_icb(
    folder: Path,
    target: Path,
    *,
    targets: Sequence[str],
    icb: str,
    practices: Sequence[str] = (),
) -> Path:
    """Export one ICB's lists (optionally some practices only) to ``target`` as xlsx.

    Parameters
    ----------
    folder
        ``data/outreach`` (lists, merged list and data dictionary).
    target
        The workbook to write (parent folders are created).
    targets
        The targets with lists (``outreach.targets``).
    icb, practices
        Which rows: an ICB code, and optionally practice codes within it.

    Raises
    ------
    ParamsError
        An ICB or practice with no list.
    StageError, ContractError
        The lists or the data dictionary are missing.
    """
    frames = _filtered(read_lists(folder, targets), icb=icb, practices=practices)
    dictionary_file = folder / lists.DICTIONARY_FILE
    if not dictionary_file.exists():
        raise ContractError(f"export: {dictionary_file} not found; run `dvc repro outreach`")
    dictionary = pl.read_csv(dictionary_file)
    where = f" (practices {', '.join(sorted(practices))})" if practices else ""
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_workbook(target, frames, dictionary, title=f"Outreach lists for {icb}{where}")
