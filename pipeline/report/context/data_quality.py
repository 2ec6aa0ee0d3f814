"""The validate stage's summary as tables: what was checked, completeness, activity rates."""

from __future__ import annotations

from typing import Any, Final

from pipeline.disclosure import Rule
from pipeline.report.context.blocks import Table
from pipeline.report.context.labels import EVENT_LABELS
from pipeline.report.fmt import Cell, count_cell, is_number, rate_cell, text_cell

QUALITY_TABLES: Final = ("people", "events", "areas", "practices", "outcomes")
FALLBACK_ROWS: Final = 40


def _summary_checks(quality: dict[str, Any]) -> list[list[Cell]]:
    checks = []
    if "valid" in quality:
        verdict = "yes" if quality["valid"] else "NO: see reports/data_quality.json"
        checks.append([text_cell("Passes the data contract"), text_cell(verdict)])
    dates = quality.get("date_range") or {}
    if dates.get("first") and dates.get("last"):
        span = f"{dates['first']} to {dates['last']}"
        checks.append([text_cell("Records from"), text_cell(span)])
    if quality.get("index_date"):
        label = "Index date (risk measured from)"
        checks.append([text_cell(label), text_cell(quality["index_date"])])
    if is_number(quality.get("ethnicity_recorded_share")):
        share = quality["ethnicity_recorded_share"]
        checks.append([text_cell("Ethnicity recorded"), rate_cell(share)])
    return checks


def _table_checks(tables: dict[str, Any], sdc: Rule) -> list[list[Cell]]:
    checks = []
    for name in QUALITY_TABLES:
        table = tables.get(name) or {}
        if "n_rows" in table:
            checks.append([text_cell(f"Rows in {name}"), count_cell(table["n_rows"], sdc)])
        for column, share in sorted((table.get("null_share") or {}).items()):
            # an event's value is empty by design for events that carry none
            if is_number(share) and share > 0 and not (name == "events" and column == "value"):
                checks.append([text_cell(f"{name}.{column} missing"), rate_cell(share)])
    return checks


def activity_table(rates: dict[str, Any]) -> Table | None:
    """Recorded events per person-year, most frequent first."""
    if not rates:
        return None
    rows = [
        [text_cell(EVENT_LABELS.get(kind, kind)), rate_cell(value, percent=False, digits=2)]
        for kind, value in sorted(rates.items(), key=lambda item: -(item[1] or 0))
    ]
    columns = [("Recorded activity", ""), ("Per person per year", "last 12 months")]
    return Table(columns, rows, caption="Activity in the last 12 months", compact=True)


def excluded_table(excluded: list[dict[str, Any]], sdc: Rule) -> Table | None:
    """Records left out by the record rules (``validation.record_problems``), by rule."""
    if not excluded:
        return None
    rows = [
        [
            text_cell(f"{item['table']}.{item['column']}: {item['rule']}"),
            count_cell(item["rows"], sdc),
            text_cell(", ".join(item.get("examples") or []) or "-"),
        ]
        for item in excluded
    ]
    columns = [("Rule", ""), ("Records excluded", ""), ("Most frequent values", "")]
    caption = "Records left out as implausible or unusable (every stage reads the same rows)"
    return Table(columns, rows, caption=caption, compact=True)


def flat_items(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted.key, leaf)`` of every non-list leaf of a nested dict, keys sorted."""
    items: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key in sorted(node):
            items += flat_items(node[key], f"{prefix}.{key}" if prefix else str(key))
    elif not isinstance(node, list):
        items.append((prefix, node))
    return items


def fallback_table(quality: dict[str, Any]) -> Table:
    """Every number of a summary in an unknown layout, so nothing is silently dropped."""
    rows = [
        [text_cell(key.replace("_", " ")), rate_cell(value, percent=False)]
        for key, value in flat_items(quality)
        if is_number(value)
    ]
    return Table([("Item", ""), ("Value", "")], rows[:FALLBACK_ROWS], compact=True)


def quality_context(quality: dict[str, Any], sdc: Rule) -> dict[str, Any] | None:
    """The data-quality tables (``None`` when the summary is missing); ``fallback`` only when
    the summary has none of the known parts."""
    if not quality:
        return None
    checks = _summary_checks(quality) + _table_checks(quality.get("tables") or {}, sdc)
    check_table = (
        Table([("Check", ""), ("Result", "")], checks, caption="Data checks", compact=True)
        if checks
        else None
    )
    activity = activity_table(quality.get("events_per_person_year_last_12_months") or {})
    known = check_table is not None or activity is not None
    return {
        "checks": check_table,
        "excluded": excluded_table(quality.get("excluded") or [], sdc),
        "activity": activity,
        "fallback": None if known else fallback_table(quality),
    }
