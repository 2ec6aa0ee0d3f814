"""The outreach capacity of an operating point or of the lists, as values for a sentence."""

from __future__ import annotations

from typing import Any

from pipeline.report.fmt import is_number, pct_text


def capacity_context(selection: dict[str, Any]) -> dict[str, str]:
    """``share`` ("5%") for a share of each cohort, else ``count`` ("1,000") and ``unit``
    ("ICB" or "GP practice"); both empty when the capacity is not known.

    >>> capacity_context({"capacity": 0.05, "capacity_mode": "share"})["share"]
    '5%'
    >>> capacity_context({"capacity": 1000, "capacity_mode": "per_icb"})["count"]
    '1,000'
    """
    capacity = selection.get("capacity")
    mode = selection.get("capacity_mode", "share")
    if not is_number(capacity):
        return {"share": "", "count": "", "unit": ""}
    if mode == "share":
        return {"share": pct_text(capacity, digits=0), "count": "", "unit": ""}
    unit = "ICB" if mode == "per_icb" else "GP practice"
    return {"share": "", "count": f"{int(capacity):,}", "unit": unit}
