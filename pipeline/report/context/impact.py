"""Context of the outcomes section: events each policy's contacts would avert, and whether
targeting narrows the gap in outcomes across IMD quintiles (``impact*.parquet``,
:mod:`pipeline.impact`)."""

from __future__ import annotations

from typing import Any, Final

import polars as pl

from pipeline.disclosure import SUPPRESSED, Rule
from pipeline.report.context.blocks import Section, Table, heading
from pipeline.report.context.labels import STRATEGY_LABELS, group_label
from pipeline.report.fmt import Cell, ci_text, count_cell, num_text, rate_cell, text_cell
from pipeline.report.model import ReportView, TargetView

LABELS: Final = STRATEGY_LABELS | {"need_based": STRATEGY_LABELS["need_adjusted"]}
"""Strategy names (the audit calls the need stage's ranking ``need_based``)."""
DIMENSION_TITLES: Final = {
    "overall": "Everyone",
    "imd_quintile": "IMD quintile",
    "ethnicity_group": "Ethnic group",
}


NO_IMD: Final = (
    "IMD is unavailable in this extract (no home area or IMD decile recorded), so the gap in "
    "outcomes across IMD quintiles cannot be measured: events averted are shown without it."
)


def has_imd(view: TargetView) -> bool:
    """False when the audit could not audit IMD quintiles (the extract has no IMD): the impact
    tables then have no quintile rows and no SII (:func:`pipeline.impact.recorded_dimensions`)."""
    return "imd_quintile" not in view.unaudited


def has_groups(view: TargetView) -> bool:
    """Whether the impact tables have any group rows (none without IMD and ethnicity)."""
    return not view.impact.filter(pl.col("dimension") != "overall").is_empty()


def verdict(row: dict[str, Any], *, imd: bool = True) -> str:
    """Plain words for one policy's change in the outcome gap across IMD quintiles."""
    if not imd:
        return "IMD unavailable"
    if row["suppressed"] or row["gap_change"] is None:
        return "not shown (a quintile's figures are suppressed)"
    if row["narrows"]:
        return "narrows the gap"
    if row["widens"]:
        return "widens the gap"
    return "no clear change in the gap (the interval includes 0)"


def _risk_sentence(risk: dict[str, Any]) -> str:
    """The current ranking's change in the gap, in words, with its interval."""
    change = -float(risk["gap_change"])
    low, high = (
        None if risk[k] is None else -float(risk[k])
        for k in ("gap_change_ci_high", "gap_change_ci_low")
    )
    interval = ci_text(low, high, percent=False, digits=2)
    if risk["narrows"]:
        effect = f"narrows the gap by {num_text(change, digits=2)}"
    elif risk["widens"]:
        effect = f"widens the gap by {num_text(-change, digits=2)}"
    else:
        effect = (
            f"changes the gap by {num_text(-change, digits=2, signed=True)}, which could be chance,"
        )
    return (
        f"Contacting the list ranked by predicted risk {effect} expected events per 1,000 "
        f"people between the most and least deprived ends (narrowing, 95% CI {interval})."
    )


def answer(view: TargetView) -> str:
    """Per target: does targeting narrow the gap in outcomes?"""
    frame = view.impact_gradient
    if frame.is_empty():
        return ""
    if not has_imd(view):
        return NO_IMD
    rows = {row["policy"]: row for row in frame.iter_rows(named=True)}
    shown = {p: row for p, row in rows.items() if not row["suppressed"]}
    if not shown:
        return (
            "Not shown: for every strategy some IMD quintile's expected events averted are "
            "1-7, so they are suppressed, and the change in the gap could reveal them."
        )
    parts = []
    if "risk" in shown and shown["risk"]["gap_change"] is not None:
        parts.append(_risk_sentence(shown["risk"]))
    narrowing = [LABELS.get(p, p) for p, row in shown.items() if row["narrows"]]
    if narrowing:
        parts.append("Strategies that clearly narrow the gap: " + "; ".join(narrowing) + ".")
    else:
        parts.append("No strategy shown clearly narrows the gap at this capacity.")
    hidden = [LABELS.get(p, p) for p in rows if p not in shown]
    if hidden:
        parts.append("Not shown (a quintile's figures are suppressed): " + "; ".join(hidden) + ".")
    return " ".join(parts)


def gradient_table(view: TargetView, sdc: Rule) -> Table:
    """Per policy: events averted (with CI), the SII before and after, the gap change."""
    groups = view.impact.filter(pl.col("dimension") == "overall")
    averted = {row["policy"]: row for row in groups.iter_rows(named=True)}
    rows: list[list[Cell]] = []
    imd = has_imd(view)
    for row in view.impact_gradient.iter_rows(named=True):
        total = averted.get(row["policy"], {})
        interval = ci_text(
            total.get("n_events_averted_ci_low"),
            total.get("n_events_averted_ci_high"),
            percent=False,
            digits=0,
        )
        hidden = bool(row["suppressed"]) and imd  # without IMD there is no SII to hide
        rows.append(
            [
                text_cell(LABELS.get(row["policy"], row["policy"])),
                count_cell(total.get("n_events_averted"), sdc),
                text_cell(interval),
                rate_cell(row["sii_before"], percent=False, suppressed=hidden),
                rate_cell(
                    row["sii_after"],
                    row["sii_after_ci_low"],
                    row["sii_after_ci_high"],
                    percent=False,
                    suppressed=hidden,
                ),
                rate_cell(
                    row["gap_change"],
                    row["gap_change_ci_low"],
                    row["gap_change_ci_high"],
                    percent=False,
                    suppressed=hidden,
                ),
                text_cell(verdict(row, imd=imd)),
            ]
        )
    columns = [
        ("Strategy", ""),
        (
            "Events averted",
            "expected events averted among the audited people (rounded like a count)",
        ),
        ("95% CI", "people bootstrap"),
        (
            "SII before",
            "slope index of inequality of expected events per 1,000 across IMD quintiles; "
            "negative: worse at the deprived end",
        ),
        ("SII after", "the same after the strategy's contacts"),
        ("Gap change", "|SII after| - |SII before| per 1,000: negative = the gap narrows"),
        ("Verdict", ""),
    ]
    return Table(columns, rows, caption=f"{view.target}: outcomes of each strategy's contacts")


def groups_table(view: TargetView, sdc: Rule) -> Table:
    """Expected events and events averted per IMD quintile and ethnic group, per policy."""
    frame = view.impact.filter(pl.col("dimension") != "overall")
    policies = frame["policy"].unique(maintain_order=True).to_list()
    rows: list[list[Cell]] = []
    keys = frame.select("dimension", "group").unique(maintain_order=True)
    for dimension, group in keys.iter_rows():
        part = frame.filter((pl.col("dimension") == dimension) & (pl.col("group") == group))
        by_policy = {row["policy"]: row for row in part.iter_rows(named=True)}
        first = part.row(0, named=True)
        rows.append(
            [
                text_cell(
                    f"{DIMENSION_TITLES.get(dimension, dimension)}: {group_label(dimension, group)}"
                ),
                count_cell(first["n_expected_events"], sdc),
                rate_cell(
                    first["rate_before"],
                    percent=False,
                    digits=1,
                    suppressed=first["n_expected_events"] == SUPPRESSED,
                ),
                *(count_cell(by_policy.get(p, {}).get("n_events_averted"), sdc) for p in policies),
            ]
        )
    columns = [
        ("Group", ""),
        ("Expected events", "without any contact, in the audited people"),
        ("Per 1,000", "expected events per 1,000 people, of the published counts"),
        *((f"Averted: {LABELS.get(p, p)}", "") for p in policies),
    ]
    return Table(columns, rows, caption=f"{view.target}: events averted by group")


def impact_section(report: ReportView, sdc: Rule) -> Section:
    """Does targeting narrow the gap in outcomes? One answer, and two tables, per target."""
    targets: list[dict[str, Any]] = []
    for view in report.targets:
        available = not view.impact_gradient.is_empty()
        basis = view.impact_gradient["risk_basis"][0] if available else ""
        targets.append(
            {
                "heading": heading(view),
                "available": available,
                "answer": answer(view) if available else "",
                "basis": basis,
                "split": view.split,
                "gradient": gradient_table(view, sdc) if available else None,
                "groups": groups_table(view, sdc) if available and has_groups(view) else None,
            }
        )
    return Section(
        "impact",
        "Outcomes: does targeting narrow the gap?",
        "sections/impact.html.j2",
        {"targets": targets},
    )
