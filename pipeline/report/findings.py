"""Headline findings in plain English, generated from the numbers (nothing hard-coded).

Each finding says who, by how much and how sure we are. Certainty follows the 95% interval of
the ratio to the reference group: entirely outside the 0.8-1.25 range -> "clear"; excluding 1
but reaching into the range -> "likely, but modest"; including 1 -> "could be chance".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import polars as pl
from markupsafe import Markup, escape

from pipeline.disclosure import SUPPRESSED
from pipeline.report.fmt import ci_text, is_number, num_text, pct_text
from pipeline.report.model import ReportView, TargetView
from pipeline.report.sections import (
    INDICATOR_LABELS,
    dimension_label,
    hidden_by_counts,
)

Tone = Literal["concern", "ok", "info"]

UNDER_SERVED_DIMENSIONS = (  # listed in this order: the main dimensions first
    "imd_quintile",
    "ethnicity_group",
    "region",
    "age_band",
    "sex",
    "icb_code",
    "ethnicity_group_x_imd_quintile",
)


@dataclass(frozen=True)
class Finding:
    """One headline: a tone (for the margin colour and icon) and a sentence of HTML."""

    tone: Tone
    html: Markup
    target: str = ""


def who_text(dimension: str, group: str) -> str:
    """A group as people, in words: "Black people in IMD quintile 1", "people aged 85+"."""
    if dimension in {"imd_quintile", "imd_decile"}:
        unit, last = ("fifth", "5") if dimension == "imd_quintile" else ("tenth", "10")
        name = "IMD quintile" if dimension == "imd_quintile" else "IMD decile"
        if group == "1":
            return f"people in the most deprived {unit} of areas ({name} 1)"
        if group == last:
            return f"people in the least deprived {unit} of areas ({name} {last})"
        return f"people in {name} {group}"
    if dimension == "ethnicity_group":
        if group == "Not recorded":
            return "people with no recorded ethnicity"
        if group == "Other":
            return "people of other ethnic groups"
        return f"{group} people"
    if dimension == "region":
        return f"people in {group}"
    if dimension == "icb_code":
        return f"people in ICB {group}"
    if dimension == "age_band":
        return f"people aged {group}"
    if dimension == "sex":
        return {"F": "women", "M": "men"}.get(group, f"people of sex {group}")
    if dimension == "ethnicity_group_x_imd_quintile":
        ethnicity, _, quintile = group.rpartition(", IMD ")
        return f"{who_text('ethnicity_group', ethnicity)} in IMD quintile {quintile}"
    return f"{group} ({dimension_label(dimension).lower()})"


def certainty(ratio: Any, low: Any, high: Any, *, fair_low: float, fair_high: float) -> str:
    """How sure we are that a ratio differs from 1, in words."""
    if not (is_number(low) and is_number(high)):
        return "with no interval available"
    if high < fair_low or low > fair_high:
        return "a clear gap: the whole 95% interval lies outside the 0.8-1.25 range"
    if high < 1 or low > 1:
        return "a real gap (the 95% interval excludes no difference), though it may be small"
    return "which could be chance (the 95% interval includes no difference)"


def _row(view: TargetView, dimension: str, group: str | None, metric: str) -> dict | None:
    frame = view.groups.filter((pl.col("dimension") == dimension) & (pl.col("metric") == metric))
    if group is None:
        frame = frame.filter(pl.col("is_reference"))
    else:
        frame = frame.filter(pl.col("group") == group)
    return frame.row(0, named=True) if frame.height else None


def _usable(row: dict | None, metric: str) -> bool:
    if row is None or row["suppressed"] or not is_number(row["value"]):
        return False
    return not hidden_by_counts(row, metric)


def _strong(text: str) -> Markup:
    return Markup("<strong>{}</strong>").format(text)


def deprivation_finding(view: TargetView, report: ReportView) -> Finding | None:
    """Cases reached in the most deprived fifth against the reference group."""
    q1 = _row(view, "imd_quintile", "1", "tpr")
    ref = _row(view, "imd_quintile", None, "tpr")
    if not (_usable(q1, "tpr") and _usable(ref, "tpr")) or ref["group"] == "1":
        return None
    ratio, low, high = q1["ratio"], q1["ratio_ci_low"], q1["ratio_ci_high"]
    sure = certainty(ratio, low, high, fair_low=report.fair_low, fair_high=report.fair_high)
    worse = is_number(ratio) and ratio < 1
    tone: Tone = "concern" if worse and is_number(high) and high < 1 else "info"
    if is_number(ratio) and is_number(low) and is_number(high):
        if report.fair_low <= low and high <= report.fair_high:
            tone = "ok"
    html = Markup(
        "{who}: of the people in the most deprived fifth of areas who went on to have a "
        "recorded {outcome}, the list reaches {v1} (95% CI {c1}), against {vr} {ref}: "
        "{ratio} times as many (95% CI {ratio_ci}), {sure}."
    ).format(
        who=_strong("Deprivation"),
        outcome=view.outcome,
        v1=pct_text(q1["value"]),
        c1=ci_text(q1["ci_low"], q1["ci_high"], percent=True),
        vr=pct_text(ref["value"]),
        ref=who_text("imd_quintile", ref["group"]).removeprefix("people "),
        ratio=num_text(ratio),
        ratio_ci=ci_text(low, high, percent=False, digits=2) if is_number(low) else "n/a",
        sure=sure,
    )
    return Finding(tone, html, view.target)


def under_served_finding(view: TargetView, report: ReportView) -> Finding | None:
    """Groups whose share of cases reached is clearly below the reference's."""
    # The audit's own flag: outside 0.8-1.25, CI excluding 1, both groups stable.
    frame = view.groups.filter(
        pl.col("dimension").is_in(UNDER_SERVED_DIMENSIONS)
        & (pl.col("metric") == "tpr")
        & ~pl.col("is_reference").fill_null(False)
        & pl.col("flagged").fill_null(False)
        & (pl.col("ratio") < 1.0)
        & ~pl.col("suppressed").fill_null(False)
        & (pl.col("n") != SUPPRESSED)
        & (pl.col("n_events") != SUPPRESSED)
    ).with_columns(
        pl.col("dimension")
        .replace_strict({d: i for i, d in enumerate(UNDER_SERVED_DIMENSIONS)}, default=99)
        .alias("_rank")
    )
    frame = frame.sort("_rank", "ratio")
    if frame.is_empty():
        return Finding(
            "ok",
            Markup(
                "{who}: no group's share of cases reached is flagged: none is below 0.8 of its "
                "reference group with a 95% interval excluding no difference."
            ).format(who=_strong("Who is under-served")),
            view.target,
        )
    listed = []
    for row in frame.head(6).iter_rows(named=True):
        listed.append(
            Markup("{g}: {r} ({ci})").format(
                g=who_text(row["dimension"], row["group"]),
                r=num_text(row["ratio"]),
                ci=ci_text(row["ratio_ci_low"], row["ratio_ci_high"], percent=False, digits=2),
            )
        )
    more = frame.height - len(listed)
    return Finding(
        "concern",
        Markup(
            "{who}: {k} group{s} of people who went on to have the outcome {were} reached clearly "
            "less often than their reference group (ratio of cases reached, 95% CI): "
            "{items}{more}."
        ).format(
            who=_strong("Who is under-served"),
            k=frame.height,
            s="s" if frame.height != 1 else "",
            were="were" if frame.height != 1 else "was",
            items=Markup("; ").join(listed),
            more=f"; and {more} more in the tables below" if more > 0 else "",
        ),
        view.target,
    )


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
        direction = "lower" if value > 0 else "higher"
        if indicator == "need_reached" and "true need" in view.case_definition:
            what = Markup(
                "the share of people in greatest need ({d}; known only in the simulation) whom "
                "the list reaches"
            ).format(d=view.case_definition)
        elif indicator == "need_reached":
            what = Markup("the share of people with the outcome whom the list reaches")
        else:
            what = Markup(INDICATOR_LABELS[indicator].lower())
        html = Markup(
            "{who}: {what} is {dir} at the most deprived end than at the least by about {gap} "
            "percentage points (slope index of inequality {sii}, 95% CI {ci}); {sure}."
        ).format(
            who=_strong("Across the deprivation gradient"),
            what=what,
            dir=direction,
            gap=f"{abs(value) * 100:.1f}",
            sii=f"{value * 100:+.1f}",
            ci=ci_text(low * 100, high * 100, percent=False) if is_number(low) else "n/a",
            sure="the interval excludes 0"
            if clear
            else "the interval includes 0, so this could be chance",
        )
        tone: Tone = "concern" if clear and value > 0 else "info"
        return Finding(tone, html, view.target)
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
    need = "true need" if report.has_truth else "events"
    under = worst["ratio"] < report.fair_low
    html = Markup(
        "{who}: {g} account for {sn} of {need} but only {sl} of the outreach list "
        "(list share / need share {r})."
    ).format(
        who=_strong("The outreach lists"),
        g=who_text(worst["dimension"], worst["group"]),
        sn=pct_text(worst["share_need"]),
        need=need,
        sl=pct_text(worst["share_list"]),
        r=num_text(worst["ratio"]),
    )
    return Finding("concern" if under else "info", html, view.target)


def label_choice_finding(view: TargetView, report: ReportView) -> Finding | None:
    """The group most under-stated by the score at the same score, with its CI."""
    frame = view.label_summary.filter(
        pl.col("need_ratio").is_not_null() & ~pl.col("is_reference").fill_null(False)
    )
    if frame.is_empty():
        return None
    if report.has_truth and frame.filter(pl.col("need_measure") == "true_need").height:
        frame = frame.filter(pl.col("need_measure") == "true_need")
    else:
        frame = frame.filter(pl.col("need_measure") == frame["need_measure"][0])
    named = frame.filter(pl.col("disadvantaged"))
    measure = "true need" if frame["need_measure"][0] == "true_need" else "recorded illness"
    who = _strong("Does the score reflect need?")
    if named.is_empty():
        return Finding(
            "ok",
            Markup(
                "{who}: at the same risk score, no group has clearly more {m} than its "
                "reference group."
            ).format(who=who, m=measure),
            view.target,
        )
    worst = named.sort("need_ratio", descending=True).row(0, named=True)
    others = named.height - 1
    extra = Markup("")
    if is_number(worst["share_selected_by_score"]) and is_number(worst["share_selected_by_need"]):
        extra = Markup(
            " Ranking by true need instead would change their share of the list from {a} to {b}."
        ).format(
            a=pct_text(worst["share_selected_by_score"]),
            b=pct_text(worst["share_selected_by_need"]),
        )
    html = Markup(
        "{who}: at the same risk score, {g} have {r} times the {m} of the reference group "
        "(95% CI {ci}): the score under-states their need{others}.{extra}"
    ).format(
        who=who,
        g=who_text(worst["dimension"], worst["group"]),
        r=num_text(worst["need_ratio"]),
        m=measure,
        ci=ci_text(
            worst["need_ratio_ci_low"], worst["need_ratio_ci_high"], percent=False, digits=2
        ),
        others=f", and {others} other group{'s' if others != 1 else ''} likewise" if others else "",
        extra=extra,
    )
    return Finding("concern", html, view.target)


def performance_finding(view: TargetView) -> Finding | None:
    """Discrimination and calibration overall, in one sentence."""
    metrics = {row["metric"]: row for row in view.performance.iter_rows(named=True)}
    auroc, oe = metrics.get("auroc"), metrics.get("oe_ratio")
    if not auroc or not is_number(auroc["value"]):
        return None
    quality = "good" if auroc["value"] >= 0.8 else "moderate" if auroc["value"] >= 0.7 else "weak"
    parts = Markup(
        "{who}: the model ranks people with {q} accuracy (AUROC {a}, 95% CI {ci})"
    ).format(
        who=_strong("The model"),
        q=quality,
        a=num_text(auroc["value"], digits=3),
        ci=ci_text(auroc["ci_low"], auroc["ci_high"], percent=False, digits=3),
    )
    if oe and is_number(oe["value"]):
        calibrated = (is_number(oe["ci_low"]) and oe["ci_low"] <= 1 <= oe["ci_high"]) or 0.9 <= oe[
            "value"
        ] <= 1.1
        parts += Markup(
            " and predicts {how} events overall (observed / expected {v}, {ci})"
        ).format(
            how="about the right number of" if calibrated else "too many or too few",
            v=num_text(oe["value"]),
            ci=ci_text(oe["ci_low"], oe["ci_high"], percent=False, digits=2),
        )
    return Finding("info", parts + Markup("."), view.target)


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
        return Finding(
            "info",
            Markup(
                "{who}: none of the alternatives narrows the gap in cases reached between "
                "deprivation quintiles below ranking by risk ({g} points)."
            ).format(who=_strong("Making it fairer"), g=f"{base['tpr_gap'] * 100:.1f}"),
            view.target,
        )
    cost = Markup("")
    if is_number(best["share_of_events_reached"]) and is_number(base["share_of_events_reached"]):
        events = "the events expected from true risk" if view.truth_events else "events"
        cost = Markup(", while reaching {a} of {e} against {b} when ranking by risk").format(
            a=pct_text(best["share_of_events_reached"]),
            e=events,
            b=pct_text(base["share_of_events_reached"]),
        )
    html = Markup(
        "{who}: '{label}' narrows the gap in {what} between the best- and worst-reached "
        "deprivation quintiles from {g0} to {g1} percentage points{cost}."
    ).format(
        who=_strong("Making it fairer"),
        what="need reached" if "true need" in view.case_definition else "cases reached",
        label=best["label"] or best["strategy"],
        g0=f"{base['tpr_gap'] * 100:.1f}",
        g1=f"{best['tpr_gap'] * 100:.1f}",
        cost=cost,
    )
    return Finding("info", html, view.target)


def headline_findings(report: ReportView) -> list[Finding]:
    """All headline findings, most important first within each target."""
    found: list[Finding] = []
    for view in report.targets:
        for finding in (
            deprivation_finding(view, report),
            under_served_finding(view, report),
            gradient_finding(view),
            outreach_finding(view, report),
            label_choice_finding(view, report),
            mitigation_finding(view),
            performance_finding(view),
        ):
            if finding is not None:
                found.append(finding)
    return found


def summary_sentence(findings: list[Finding]) -> Markup:
    """One line above the findings: how many point to a concern."""
    concerns = sum(f.tone == "concern" for f in findings)
    if not findings:
        return Markup("No findings could be computed: the audit outputs are missing.")
    if concerns == 0:
        return Markup("None of the findings below shows a clear equity concern.")
    return Markup("{k} of the {n} findings below point to a group being under-served.").format(
        k=concerns, n=len(findings)
    )


def escape_text(text: str) -> Markup:
    """Escape plain text for the template."""
    return escape(text)
