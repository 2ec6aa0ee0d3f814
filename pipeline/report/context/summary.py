"""Context of the one-page summary: the recommended policy, its cost, three findings, provenance.

The recommendation is read from the audit's mitigation table (``TargetView.mitigation``, one row
per policy at the audit cut), by column name: a column the audit does not publish (say, events
averted) is simply not quoted. The objective is ``params.report.objective``.
"""

from __future__ import annotations

from typing import Any, Final

import polars as pl

from pipeline.config import Objective
from pipeline.disclosure import Rule
from pipeline.report.context.capacity import capacity_context
from pipeline.report.findings import Finding, headline_findings
from pipeline.report.fmt import count_text, is_number, pct_text
from pipeline.report.model import ReportView, TargetView

__all__ = ["OBJECTIVES", "recommend", "summary_context", "top_findings"]

OBJECTIVES: Final[dict[str, str]] = {
    "events_reached_no_wider_gap": "reach the most events without widening the gap in need "
    "reached between the most and least deprived fifths (compared with ranking by risk)",
    "events_reached": "reach the most events",
    "narrowest_gap": "narrow the gap in need reached between deprivation fifths the most",
}
BASELINE: Final = "risk"
N_FINDINGS: Final = 3
_TOLERANCE: Final = 1e-9


def policies(view: TargetView) -> pl.DataFrame:
    """One row per policy: ``strategy``, ``label``, ``events`` (number), ``events_reached``
    (as published), ``share``, ``gap`` (points), and ``events_averted`` when the audit has it."""
    frame = view.mitigation.unique("strategy", keep="first", maintain_order=True)
    averted = "events_averted" if "events_averted" in frame.columns else None
    return frame.select(
        "strategy",
        pl.coalesce("label", "strategy").alias("label"),
        "events_reached",
        # A published count ("1,270"; "*" when suppressed) as a number, null when suppressed.
        pl.col("events_reached")
        .str.replace_all(",", "")
        .cast(pl.Float64, strict=False)
        .alias("events"),
        pl.col("share_of_events_reached").alias("share"),
        (pl.col("tpr_gap") * 100).alias("gap"),
        (pl.col(averted) if averted else pl.lit(None, pl.String)).alias("events_averted"),
    )


def recommend(view: TargetView, *, objective: Objective) -> dict[str, Any] | None:
    """The policy the objective picks from the mitigation table, with the baseline beside it.

    ``events_reached_no_wider_gap``: the most events among policies whose gap is no wider than
    ranking by risk (ties: the narrower gap); ``events_reached``: the most events (ties: the
    narrower gap); ``narrowest_gap``: the narrowest gap (ties: more events). None when the table
    lacks the events or gaps needed.
    """
    table = policies(view).filter(pl.col("events").is_not_null() & pl.col("gap").is_not_null())
    base_rows = table.filter(pl.col("strategy") == BASELINE)
    if table.is_empty() or base_rows.is_empty():
        return None
    base = base_rows.row(0, named=True)
    candidates = table
    if objective == "events_reached_no_wider_gap":
        candidates = table.filter(pl.col("gap") <= base["gap"] + _TOLERANCE)
    if objective == "narrowest_gap":
        order = candidates.sort(["gap", "events"], descending=[False, True], maintain_order=True)
    else:
        order = candidates.sort(["events", "gap"], descending=[True, False], maintain_order=True)
    best = order.row(0, named=True)
    return {
        "strategy": best["strategy"],
        "label": best["label"],
        "is_baseline": best["strategy"] == BASELINE,
        "events": best["events_reached"],
        "share": pct_text(best["share"]) if is_number(best["share"]) else "",
        "gap": f"{best['gap']:.1f}",
        "averted": best["events_averted"] or "",
        "base_label": base["label"],
        "base_events": base["events_reached"],
        "base_gap": f"{base['gap']:.1f}",
        "base_share": pct_text(base["share"]) if is_number(base["share"]) else "",
        "alternatives": table.height - 1,
    }


def top_findings(report: ReportView) -> list[Finding]:
    """The three findings that matter: each target's first concern, then the other concerns (in
    report order), then the other findings."""
    found = headline_findings(report)
    concerns = [f for f in found if f.tone == "concern"]
    # Each target's first concern, then the remaining concerns, then the other findings.
    firsts = [
        next(f for f in concerns if f.target == t)
        for t in dict.fromkeys(f.target for f in concerns)
    ]
    ranked = firsts + [f for f in concerns if f not in firsts]
    ranked += [f for f in found if f.tone != "concern"]
    return ranked[:N_FINDINGS]


def _cost(view: TargetView, list_sizes: dict[str, str], sdc: Rule) -> dict[str, str]:
    """People to contact: on the outreach lists (list capacity) and at the audit cut, as
    published (with thousands separators)."""
    n_list, n_eligible = list_sizes.get(view.target), view.counts.get("n_eligible")
    return {
        "n_list": count_text(n_list, sdc) if n_list else "",
        "n_eligible": count_text(n_eligible, sdc) if n_eligible else "",
    }


PROVENANCE_KEYS: Final = ("date", "commit", "index_date", "data_hash", "params_digest", "source")


def _provenance(known: dict[str, Any]) -> dict[str, Any]:
    """Every provenance field, "not recorded" where the run could not read it."""
    return {key: "not recorded" for key in PROVENANCE_KEYS} | {"models": []} | known


def summary_context(report: ReportView, *, objective: Objective, sdc: Rule) -> dict[str, Any]:
    """Everything the summary page says, per target and overall."""
    operating = report.targets[0].operating_point if report.targets else {}
    return {
        "objective": OBJECTIVES[objective],
        "audit_cut": capacity_context(operating),
        "list_capacity": capacity_context(report.outreach_meta),
        "list_policy": str(report.outreach_meta.get("policy", "risk")).replace("_", " "),
        "targets": [
            {
                "target": view.target,
                "about": view.description or view.outcome,
                "truth_events": view.truth_events,
                "recommendation": recommend(view, objective=objective),
                "imd_unaudited": view.unaudited.get("imd_quintile"),
                "cost": _cost(view, report.list_sizes, sdc),
            }
            for view in report.targets
        ],
        "findings": top_findings(report),
        "provenance": _provenance(report.provenance),
    }
