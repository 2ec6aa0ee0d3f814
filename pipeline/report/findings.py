"""Headline findings, generated from the published numbers (nothing hard-coded).

Each function picks the numbers of one finding and returns them as a :class:`Finding`; the
sentence is ``templates/_findings.html.j2``'s macro of the same ``kind``. Each says who, by how
much and how sure we are. Certainty follows the 95% interval of the ratio to the reference group:
entirely outside the 0.8-1.25 range -> "clear"; excluding 1 but reaching into the range ->
"real"; including 1 -> "chance".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

import polars as pl

from pipeline.disclosure import SUPPRESSED
from pipeline.report.context.groups import hidden_by_counts
from pipeline.report.context.labels import INDICATOR_LABELS, who_text
from pipeline.report.fmt import ci_text, is_number, num_text, pct_text
from pipeline.report.model import ReportView, TargetView

Tone = Literal["concern", "ok", "info"]
Certainty = Literal["none", "clear", "real", "chance"]

UNDER_SERVED_DIMENSIONS = (  # listed in this order: the main dimensions first
    "imd_quintile",
    "ethnicity_group",
    "region",
    "age_band",
    "sex",
    "icb_code",
    "ethnicity_group_x_imd_quintile",
)
LISTED_GROUPS = 6
TRUE_NEED_TEXT = {  # data/truth/oracle.parquet true_need: each target's own (synthetic data)
    "emergency_admission": "true 12-month risk of an emergency admission (free of recording and "
    "access bias)",
    "cvd_event": "true risk of a first heart attack or stroke (as if every condition were "
    "recorded)",
}
"""What "true need" is for a target's outcome, in the label-choice finding."""


def true_need_text(outcome: str) -> str:
    """The target's own true need in words (a generic phrase for other outcomes)."""
    return TRUE_NEED_TEXT.get(
        outcome.replace(" ", "_"), "true risk of the outcome (free of recording bias)"
    )


@dataclass(frozen=True)
class Finding:
    """One headline: a tone (for the margin colour and icon), the template macro that words it
    (``kind``) and the values it needs (``facts``)."""

    tone: Tone
    kind: str
    target: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


def certainty(low: Any, high: Any, *, fair_low: float, fair_high: float) -> Certainty:
    """How sure we are that a ratio differs from 1 (the template words it)."""
    if not (is_number(low) and is_number(high)):
        return "none"
    if high < fair_low or low > fair_high:
        return "clear"
    if high < 1 or low > 1:
        return "real"
    return "chance"


def _row(view: TargetView, dimension: str, group: str | None, metric: str) -> dict | None:
    frame = view.groups.filter((pl.col("dimension") == dimension) & (pl.col("metric") == metric))
    if group is None:
        frame = frame.filter(pl.col("is_reference"))
    else:
        frame = frame.filter(pl.col("group") == group)
    return frame.row(0, named=True) if frame.height else None


def _usable(row: dict | None, metric: str) -> TypeGuard[dict[str, Any]]:
    if row is None or row["suppressed"] or not is_number(row["value"]):
        return False
    return not hidden_by_counts(row, metric)


def _deprivation_tone(ratio: Any, low: Any, high: Any, report: ReportView) -> Tone:
    tone: Tone = (
        "concern" if is_number(ratio) and ratio < 1 and is_number(high) and high < 1 else "info"
    )
    if is_number(ratio) and is_number(low) and is_number(high):
        if report.fair_low <= low and high <= report.fair_high:
            tone = "ok"
    return tone


def deprivation_finding(view: TargetView, report: ReportView) -> Finding | None:
    """Cases reached in the most deprived fifth against the reference group."""
    q1 = _row(view, "imd_quintile", "1", "tpr")
    ref = _row(view, "imd_quintile", None, "tpr")
    if not (_usable(q1, "tpr") and _usable(ref, "tpr")) or ref["group"] == "1":
        return None
    ratio, low, high = q1["ratio"], q1["ratio_ci_low"], q1["ratio_ci_high"]
    facts = {
        "outcome": view.outcome,
        "value": pct_text(q1["value"]),
        "ci": ci_text(q1["ci_low"], q1["ci_high"], percent=True),
        "reference_value": pct_text(ref["value"]),
        "reference": who_text("imd_quintile", ref["group"]).removeprefix("people "),
        "ratio": num_text(ratio),
        "ratio_ci": ci_text(low, high, percent=False, digits=2) if is_number(low) else "n/a",
        "certainty": certainty(low, high, fair_low=report.fair_low, fair_high=report.fair_high),
    }
    return Finding(_deprivation_tone(ratio, low, high, report), "deprivation", view.target, facts)


def who(dimension: str, group: str, report: ReportView) -> str:
    """A group in words, an ICB by its name (:func:`who_text` otherwise)."""
    if dimension == "icb_code":
        name = report.icb_names.get(group)
        return f"people in {name} ({group})" if name else who_text(dimension, group)
    return who_text(dimension, group)


def _flagged(view: TargetView, metric: str, reason: str) -> pl.DataFrame:
    """Published, shown flags of ``metric`` with ``reason``, main dimensions first."""
    return (
        view.groups.filter(
            pl.col("dimension").is_in(UNDER_SERVED_DIMENSIONS)
            & (pl.col("metric") == metric)
            & pl.col("flagged").fill_null(False)
            & (pl.col("flag_reason") == reason)
            & ~pl.col("suppressed").fill_null(False)
            & (pl.col("n") != SUPPRESSED)
            & (pl.col("n_events") != SUPPRESSED)
        )
        .with_columns(
            pl.col("dimension")
            .replace_strict({d: i for i, d in enumerate(UNDER_SERVED_DIMENSIONS)}, default=99)
            .alias("_rank")
        )
        .sort("_rank", "ratio" if metric == "tpr" else "value", descending=[False, metric != "tpr"])
    )


def _listed(frame: pl.DataFrame, report: ReportView, *, value: str) -> list[dict[str, Any]]:
    low, high = ("ratio_ci_low", "ratio_ci_high") if value == "ratio" else ("ci_low", "ci_high")
    return [
        {
            "who": who(row["dimension"], row["group"], report),
            "ratio": num_text(row[value]),
            "ci": ci_text(row[low], row[high], percent=False, digits=2),
            "against": "the population value (age/sex standardised)"
            if row["comparator"] == "population (funnel)"
            else who_text(row["dimension"], row["reference_group"] or "").removeprefix("people "),
        }
        for row in frame.head(LISTED_GROUPS).iter_rows(named=True)
    ]


def under_served_finding(view: TargetView, report: ReportView) -> Finding:
    """Groups flagged for fewer cases reached (equal opportunity): against their reference
    group, or for areas against the population value (funnel plots), after the FDR."""
    frame = _flagged(view, "tpr", "fewer cases reached")
    if frame.is_empty():
        return Finding("ok", "none_under_served", view.target)
    listed = _listed(frame, report, value="ratio")
    facts = {"count": frame.height, "listed": listed, "more": frame.height - len(listed)}
    return Finding("concern", "under_served", view.target, facts)


def calibration_finding(view: TargetView, report: ReportView) -> Finding | None:
    """Groups whose events the model under-predicts (O/E interval above 1, O/E >= the material
    level, after the FDR): the score ranks them too low."""
    frame = _flagged(view, "oe_ratio", "under-prediction")
    if frame.is_empty():
        return None
    listed = _listed(frame, report, value="value")
    facts = {"count": frame.height, "listed": listed, "more": frame.height - len(listed)}
    return Finding("concern", "under_predicted", view.target, facts)


def not_recorded_finding(view: TargetView) -> Finding | None:
    """Ethnicity not recorded: a data-quality finding (never a reference group), from the
    published counts of the ethnic groups."""
    rows = view.groups.filter(
        (pl.col("dimension") == "ethnicity_group") & (pl.col("metric") == "base_rate")
    )
    counts = dict(zip(rows["group"].to_list(), rows["n"].to_list(), strict=True))
    missing = counts.get("Not recorded")
    if missing is None or missing == SUPPRESSED or SUPPRESSED in counts.values():
        return None
    total = sum(int(v) for v in counts.values() if v is not None)
    share = int(missing) / total if total else None
    facts = {"n": f"{int(missing):,}", "share": pct_text(share)}
    return Finding("info", "not_recorded", view.target, facts)


def gradient_finding(view: TargetView) -> Finding | None:
    """The SII of need reached (or selection) across IMD deciles."""
    for indicator in ("need_reached", "selection_rate"):
        frame = view.gradients.filter(
            (pl.col("indicator") == indicator) & (pl.col("measure") == "sii")
        )
        if frame.is_empty():
            continue
        row = frame.row(0, named=True)
        value, low, high = row["value"], row["ci_low"], row["ci_high"]
        if not is_number(value):
            continue
        clear = is_number(low) and is_number(high) and not (low <= 0 <= high)
        facts = {
            "indicator": indicator,
            "true_need": "true need" in view.case_definition,
            "case_definition": view.case_definition,
            "indicator_label": INDICATOR_LABELS[indicator].lower(),
            "direction": "lower" if value > 0 else "higher",
            "gap": f"{abs(value) * 100:.1f}",
            "sii": f"{value * 100:+.1f}",
            "ci": ci_text(low * 100, high * 100, percent=False) if is_number(low) else "n/a",
            "clear": clear,
        }
        tone: Tone = "concern" if clear and value > 0 else "info"
        return Finding(tone, "gradient", view.target, facts)
    return None


def outreach_finding(view: TargetView, report: ReportView) -> Finding | None:
    """The group whose share of the list falls furthest short of its share of need."""
    frame = view.outreach.filter(
        pl.col("share_list").is_not_null()
        & pl.col("share_need").is_not_null()
        & (pl.col("share_need") > 0)
        & (pl.col("n_list") != SUPPRESSED)
    ).with_columns((pl.col("share_list") / pl.col("share_need")).alias("ratio"))
    if frame.is_empty():
        return None
    worst = frame.sort("ratio").row(0, named=True)
    facts = {
        "who": who_text(worst["dimension"], worst["group"]),
        "share_need": pct_text(worst["share_need"]),
        "need": "true need" if report.has_truth else "events",
        "share_list": pct_text(worst["share_list"]),
        "ratio": num_text(worst["ratio"]),
    }
    tone: Tone = "concern" if worst["ratio"] < report.fair_low else "info"
    return Finding(tone, "outreach", view.target, facts)


def _need_frame(view: TargetView, report: ReportView) -> pl.DataFrame:
    """Non-reference label-choice rows of one need measure (true need when known)."""
    frame = view.label_summary.filter(
        pl.col("need_ratio").is_not_null() & ~pl.col("is_reference").fill_null(False)
    )
    if frame.is_empty():
        return frame
    if report.has_truth and frame.filter(pl.col("need_measure") == "true_need").height:
        return frame.filter(pl.col("need_measure") == "true_need")
    return frame.filter(pl.col("need_measure") == frame["need_measure"][0])


def label_choice_finding(view: TargetView, report: ReportView) -> Finding | None:
    """The group most under-stated by the score at the same score, with its CI."""
    frame = _need_frame(view, report)
    if frame.is_empty():
        return None
    true_need = frame["need_measure"][0] == "true_need"
    measure = true_need_text(view.outcome) if true_need else "recorded illness"
    named = frame.filter(pl.col("disadvantaged"))
    if named.is_empty():
        return Finding("ok", "need_reflected", view.target, {"measure": measure})
    worst = named.sort("need_ratio", descending=True).row(0, named=True)
    by_score, by_need = worst["share_selected_by_score"], worst["share_selected_by_need"]
    facts = {
        "who": who_text(worst["dimension"], worst["group"]),
        "ratio": num_text(worst["need_ratio"]),
        "measure": measure,
        "ci": ci_text(
            worst["need_ratio_ci_low"], worst["need_ratio_ci_high"], percent=False, digits=2
        ),
        "others": named.height - 1,
        "by_score": pct_text(by_score) if is_number(by_score) and is_number(by_need) else "",
        "by_need": pct_text(by_need),
    }
    return Finding("concern", "label_choice", view.target, facts)


def performance_finding(view: TargetView) -> Finding | None:
    """Discrimination and calibration overall, in one sentence."""
    metrics = {row["metric"]: row for row in view.performance.iter_rows(named=True)}
    auroc, oe = metrics.get("auroc"), metrics.get("oe_ratio")
    if not auroc or not is_number(auroc["value"]):
        return None
    facts: dict[str, Any] = {
        "quality": "good"
        if auroc["value"] >= 0.8
        else "moderate"
        if auroc["value"] >= 0.7
        else "weak",
        "auroc": num_text(auroc["value"], digits=3),
        "auroc_ci": ci_text(auroc["ci_low"], auroc["ci_high"], percent=False, digits=3),
        "oe": None,
    }
    if oe and is_number(oe["value"]):
        in_interval = is_number(oe["ci_low"]) and oe["ci_low"] <= 1 <= oe["ci_high"]
        facts["calibrated"] = in_interval or 0.9 <= oe["value"] <= 1.1
        facts["oe"] = num_text(oe["value"])
        facts["oe_ci"] = ci_text(oe["ci_low"], oe["ci_high"], percent=False, digits=2)
    return Finding("info", "performance", view.target, facts)


def mitigation_finding(view: TargetView) -> Finding | None:
    """Which strategy narrows the deprivation gap most, and at what cost in events reached."""
    frame = view.mitigation.filter(pl.col("tpr_gap").is_not_null()).unique(
        "strategy", keep="first", maintain_order=True
    )
    if frame.height < 2 or frame["strategy"][0] != "risk":
        return None
    base = frame.row(0, named=True)
    best = frame.sort("tpr_gap").row(0, named=True)
    if best["strategy"] == base["strategy"]:
        facts: dict[str, Any] = {"gap": f"{base['tpr_gap'] * 100:.1f}"}
        return Finding("info", "no_better_strategy", view.target, facts)
    has_cost = is_number(best["share_of_events_reached"]) and is_number(
        base["share_of_events_reached"]
    )
    facts = {
        "label": best["label"] or best["strategy"],
        "true_need": "true need" in view.case_definition,
        "gap_before": f"{base['tpr_gap'] * 100:.1f}",
        "gap_after": f"{best['tpr_gap'] * 100:.1f}",
        "reached": pct_text(best["share_of_events_reached"]) if has_cost else "",
        "reached_before": pct_text(base["share_of_events_reached"]),
        "truth_events": view.truth_events,
    }
    return Finding("info", "mitigation", view.target, facts)


def headline_findings(report: ReportView) -> list[Finding]:
    """All headline findings, most important first within each target."""
    found: list[Finding] = []
    for view in report.targets:
        for finding in (
            deprivation_finding(view, report),
            under_served_finding(view, report),
            calibration_finding(view, report),
            gradient_finding(view),
            outreach_finding(view, report),
            label_choice_finding(view, report),
            mitigation_finding(view),
            performance_finding(view),
            not_recorded_finding(view),
        ):
            if finding is not None:
                found.append(finding)
    return found


def findings_context(report: ReportView) -> dict[str, Any]:
    """The findings per target and the count of concerns, for the summary line."""
    findings = headline_findings(report)
    groups = [
        {
            "title": f"{target.description or target.outcome} ({target.target})",
            "findings": [f for f in findings if f.target == target.target],
        }
        for target in report.targets
    ]
    concerns = sum(f.tone == "concern" for f in findings)
    return {"count": len(findings), "concerns": concerns, "groups": groups}
