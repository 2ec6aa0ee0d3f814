"""The report's sections as plain data (tables of disclosure-controlled cells, inline SVG charts,
prose), built from the normalised view in :mod:`pipeline.report.model`.

A section is ``{"id", "title", "lead", "blocks": [...]}``; a block is one of ``para``,
``table``, ``figure``, ``note`` or ``subhead``; the template only lays them out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

import altair as alt
import polars as pl
from markupsafe import Markup

from pipeline.disclosure import SUPPRESSED
from pipeline.report import charts
from pipeline.report.fmt import (
    Cell,
    Disclosure,
    count_cell,
    count_span,
    esc,
    is_number,
    num_text,
    pct_text,
    rate_cell,
    ratio_style,
    text_cell,
)
from pipeline.report.model import ReportView, TargetView
from pipeline.report.scan import METRIC_COUNTS

Block = dict[str, Any]
Section = dict[str, Any]

DIMENSION_LABELS: Final = {
    "imd_quintile": "Deprivation (IMD quintile)",
    "imd_decile": "Deprivation (IMD decile)",
    "region": "NHS region",
    "icb_code": "Integrated care board",
    "ethnicity_group": "Ethnic group",
    "sex": "Sex",
    "age_band": "Age band",
    "ethnicity_group_x_imd_quintile": "Ethnic group x deprivation",
    "rural_urban": "Rural / urban",
}
METRIC_LABELS: Final = {
    "base_rate": "Outcome rate",
    "selection_rate": "Selected",
    "tpr": "Cases reached",
    "fnr": "Cases missed",
    "fpr": "False alarms",
    "ppv": "Precision",
    "auroc": "AUROC",
    "brier": "Brier score",
    "oe_ratio": "Observed / expected",
    "calibration_slope": "Calibration slope",
}
PERCENT_METRICS: Final = frozenset({"base_rate", "selection_rate", "tpr", "fnr", "fpr", "ppv"})
INDICATOR_LABELS: Final = {
    "outcome_rate": "Outcome rate",
    "mean_predicted_risk": "Mean predicted risk",
    "selection_rate": "Selected for outreach",
    "need_reached": "Need reached (share of cases selected)",
}
PERFORMANCE_LABELS: Final = {
    "auroc": ("AUROC (discrimination)", False, "0.5 = chance, 1 = perfect ranking"),
    "auprc": ("AUPRC", False, "area under the precision-recall curve"),
    "brier": ("Brier score", False, "mean squared error of the predicted risk; lower is better"),
    "calibration_intercept": ("Calibration intercept", False, "0 = right on average"),
    "calibration_slope": ("Calibration slope", False, "1 = risks neither too extreme nor too flat"),
    "oe_ratio": ("Observed / expected", False, "1 = as many events as predicted"),
    "ece": ("Expected calibration error", True, "average gap between predicted and observed"),
    "sensitivity_at_capacity": ("Cases reached at capacity", True, "share of events on the list"),
    "ppv_at_capacity": ("Precision at capacity", True, "share of the list who had the event"),
    "oracle_auroc": (
        "AUROC of the true risk",
        False,
        "simulation only: the best any model could do on these data",
    ),
    "oracle_gap": ("Gap to the true risk's AUROC", False, "simulation only; small is good"),
}


def dimension_label(dimension: str) -> str:
    """Plain-English name of an audit dimension."""
    return DIMENSION_LABELS.get(dimension, dimension.replace("_", " ").capitalize())


def group_label(dimension: str, group: str) -> str:
    """Plain-English name of a group (IMD quintiles say which end is deprived)."""
    if dimension in {"imd_quintile", "imd_decile"}:
        last = "5" if dimension == "imd_quintile" else "10"
        if group == "1":
            return "1 (most deprived)"
        if group == last:
            return f"{last} (least deprived)"
    return group


def relabel(frame: pl.DataFrame, dimension: str) -> pl.DataFrame:
    """Replace the ``group`` column's codes by their plain-English labels."""
    labels = {g: group_label(dimension, g) for g in frame["group"].drop_nulls().unique().to_list()}
    return frame.with_columns(pl.col("group").replace_strict(labels, default=pl.col("group")))


def _para(html: str | Markup) -> Block:
    return {"type": "para", "html": Markup(html)}


def _note(text: str | Markup) -> Block:
    return {"type": "note", "html": Markup(text) if isinstance(text, Markup) else esc(text)}


def _figure(svg: str, caption: str) -> Block:
    return {"type": "figure", "svg": Markup(svg), "caption": caption}


def _subhead(text: str) -> Block:
    return {"type": "subhead", "text": text}


def _table(
    columns: list[tuple[str, str]],
    rows: list[list[Cell]],
    *,
    caption: str = "",
    sortable: bool = False,
    compact: bool = False,
) -> Block:
    """``columns``: (label, explanation shown on hover)."""
    return {
        "type": "table",
        "columns": columns,
        "rows": rows,
        "caption": caption,
        "sortable": sortable,
        "compact": compact,
        "collapsed": "",
    }


def _unavailable(what: str) -> Block:
    return _note(f"Not available: {what}.")


TargetBlocks = Callable[[TargetView, ReportView, Disclosure], list[Block]]


def _target_subhead(view: TargetView) -> Block:
    return _subhead(f"{view.target}: {view.description or view.outcome}")


def _per_target(report: ReportView, sdc: Disclosure, body: TargetBlocks) -> list[Block]:
    """Each target's subhead followed by the blocks ``body`` builds for it."""
    blocks: list[Block] = []
    for view in report.targets:
        blocks.append(_target_subhead(view))
        blocks += body(view, report, sdc)
    return blocks


# --- group tables ----------------------------------------------------------------------------


def _wide_groups(view: TargetView, dimension: str) -> list[dict[str, Any]]:
    """One dict per group of ``dimension``: counts, and per metric value/CI/ratio/flag."""
    frame = view.groups.filter(pl.col("dimension") == dimension)
    if frame.is_empty():
        return []
    out: dict[str, dict[str, Any]] = {}
    for row in frame.sort("group_order", "group", nulls_last=True).iter_rows(named=True):
        group = out.setdefault(
            row["group"],
            {
                "group": row["group"],
                "group_order": row["group_order"],
                "n": row["n"],
                "n_events": row["n_events"],
                "n_selected": row["n_selected"],
                "stable": row["stable"],
                "is_reference": row["is_reference"],
                "metrics": {},
            },
        )
        group["metrics"][row["metric"]] = row
    return list(out.values())


def hidden_by_counts(row: dict[str, Any], metric: str) -> bool:
    """``row``'s group size, or one of its published counts (``n``, ``n_events``,
    ``n_selected``) that ``metric`` is computed from, is ``'*'``."""
    counts = {"n": row["n"], "n_events": row["n_events"], "n_selected": row["n_selected"]}
    if counts["n"] == SUPPRESSED:
        return True
    return any(counts.get(name) == SUPPRESSED for name in METRIC_COUNTS.get(metric, ()))


def _suppressed(group: dict[str, Any], metric: str) -> bool:
    """A metric is suppressed upstream, or one of the counts it is computed from is ``'*'``."""
    row = group["metrics"].get(metric)
    if row is not None and row["suppressed"]:
        return True
    return hidden_by_counts(group, metric)


def _metric_cell(group: dict[str, Any], metric: str) -> Cell:
    row = group["metrics"].get(metric)
    if row is None:
        return rate_cell(None)
    return rate_cell(
        row["value"],
        row["ci_low"],
        row["ci_high"],
        percent=metric in PERCENT_METRICS,
        suppressed=_suppressed(group, metric),
    )


def _ratio_cell(group: dict[str, Any], metric: str, view: ReportView) -> Cell:
    row = group["metrics"].get(metric)
    if group["is_reference"]:
        return Cell("ref", "r", "1")
    if row is not None and _suppressed(group, metric):
        return rate_cell(SUPPRESSED)
    if row is None or not is_number(row["ratio"]):
        return rate_cell(None)
    return rate_cell(
        row["ratio"],
        row["ratio_ci_low"],
        row["ratio_ci_high"],
        percent=False,
        style=ratio_style(row["ratio"], low=view.fair_low, high=view.fair_high),
    )


def _status_cell(group: dict[str, Any], metrics: tuple[str, ...]) -> Cell:
    notes = []
    if group["is_reference"]:
        notes.append("reference")
    if group["stable"] is False:
        notes.append("small group")
    flags = []
    for metric in metrics:
        row = group["metrics"].get(metric)
        if row is None or not row["flagged"] or _suppressed(group, metric):
            continue
        side = "higher" if is_number(row["ratio"]) and row["ratio"] > 1 else "lower"
        flags.append(f"{METRIC_LABELS.get(metric, metric).lower()} {side}")
    if flags:
        notes.append("flag: " + ", ".join(flags))
    return text_cell("; ".join(notes))


GROUP_COLUMNS: Final = [
    ("Group", ""),
    ("People", "eligible people in the audited split (rounded to 5; * = 1-7)"),
    ("With outcome", "people who had the outcome in the follow-up window"),
    ("Selected", "people the outreach capacity would select"),
    ("Outcome rate", "share who had the outcome, with 95% CI"),
    ("Selected %", "share selected for outreach, with 95% CI"),
    ("Cases reached", "share of people with the outcome who were selected (sensitivity)"),
    ("Selected: ratio", "selection rate relative to the reference group, 95% CI"),
    ("Cases reached: ratio", "cases reached relative to the reference group, 95% CI"),
    ("Observed / expected", "calibration: 1 = as many events as the model predicted"),
    ("Note", "reference group, small group, or outside the 0.8-1.25 range"),
]


def group_table(
    view: TargetView, report: ReportView, dimension: str, sdc: Disclosure, *, sortable: bool = False
) -> Block | None:
    """The standard per-group table of one dimension."""
    groups = _wide_groups(view, dimension)
    if not groups:
        return None
    rows = []
    for group in groups:
        rows.append(
            [
                text_cell(
                    _icb_label(report, group["group"])
                    if dimension == "icb_code"
                    else group_label(dimension, group["group"]),
                    # numeric order where groups have one (IMD, age), else by name
                    sort=f"{group['group_order']:05d}"
                    if group["group_order"]
                    else str(group["group"]),
                ),
                count_cell(group["n"], sdc),
                count_cell(group["n_events"], sdc),
                count_cell(group["n_selected"], sdc),
                _metric_cell(group, "base_rate"),
                _metric_cell(group, "selection_rate"),
                _metric_cell(group, "tpr"),
                _ratio_cell(group, "selection_rate", report),
                _ratio_cell(group, "tpr", report),
                _metric_cell(group, "oe_ratio"),
                _status_cell(group, ("selection_rate", "tpr")),
            ]
        )
    return _table(
        GROUP_COLUMNS,
        rows,
        caption=f"{view.target}: {dimension_label(dimension).lower()}",
        sortable=sortable,
    )


def _icb_label(report: ReportView, code: str) -> str:
    name = report.icb_names.get(code)
    return f"{code} {name}" if name else code


def _ratio_frame(groups: list[dict[str, Any]], dimension: str, metric: str) -> pl.DataFrame:
    rows = []
    for group in groups:
        row = group["metrics"].get(metric)
        if row is None or group["is_reference"] or _suppressed(group, metric):
            continue
        rows.append(
            {
                "group": group_label(dimension, group["group"]),
                "group_order": group["group_order"] or 0,
                "ratio": row["ratio"],
                "ratio_ci_low": row["ratio_ci_low"] if is_number(row["ratio_ci_low"]) else None,
                "ratio_ci_high": row["ratio_ci_high"] if is_number(row["ratio_ci_high"]) else None,
                "flagged": bool(row["flagged"]),
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "group": pl.String,
            "group_order": pl.Int32,
            "ratio": pl.Float64,
            "ratio_ci_low": pl.Float64,
            "ratio_ci_high": pl.Float64,
            "flagged": pl.Boolean,
        },
    )


def ratio_figure(
    view: TargetView, report: ReportView, dimension: str, metric: str = "tpr"
) -> Block | None:
    """Forest plot of one metric's ratio to the reference across a dimension's groups."""
    groups = _wide_groups(view, dimension)
    frame = _ratio_frame(groups, dimension, metric)
    frame = frame.filter(pl.col("ratio").is_not_null() & (pl.col("ratio") > 0))
    if frame.is_empty():
        return None
    reference = next((g for g in groups if g["is_reference"]), {"group": "reference"})
    label = METRIC_LABELS.get(metric, metric)
    versus = group_label(dimension, reference["group"])
    title = f"{label} by {dimension_label(dimension).lower()}, relative to {versus}"
    chart = charts.ratio_chart(
        frame, title=title, fair_low=report.fair_low, fair_high=report.fair_high, metric_label=label
    )
    return _figure(
        charts.to_svg(chart, description=title),
        f"{title}. Dots: ratio; lines: 95% CI; grey band: 0.8-1.25 (the Aequitas 'fair' range). "
        "Suppressed groups are left out.",
    )


def _table_and_ratios(
    view: TargetView, report: ReportView, dimension: str, sdc: Disclosure, what: str
) -> list[Block]:
    """A dimension's group table (or a note that it is missing) and, when there is anything to
    draw, the forest plot of its cases-reached ratios."""
    blocks = [group_table(view, report, dimension, sdc) or _unavailable(what)]
    figure = ratio_figure(view, report, dimension, "tpr")
    if figure:
        blocks.append(figure)
    return blocks


# --- sections --------------------------------------------------------------------------------


def population_section(report: ReportView, sdc: Disclosure) -> Section:
    """Size and mix of the population and of each target's eligible cohort; data quality."""
    blocks: list[Block] = []
    source = "a synthetic population" if report.source == "synthetic" else "a real data extract"
    total = (
        count_span(report.population_total, sdc) if report.population_total is not None else None
    )
    intro = f"The data are {source}"
    intro += Markup(f", {total} people in all.") if total else "."
    blocks.append(_para(Markup(intro)))
    cohort_rows = []
    for view in report.targets:
        cohort_rows.append(
            [
                text_cell(view.target),
                text_cell(view.description or view.outcome),
                count_cell(view.counts.get("n_eligible"), sdc),
                count_cell(view.counts.get("n_audited"), sdc),
                count_cell(view.counts.get("n_events"), sdc),
                count_cell(view.counts.get("n_selected"), sdc),
            ]
        )
    blocks.append(
        _table(
            [
                ("Target", ""),
                ("Outcome", ""),
                ("Eligible people", "the target's cohort (rounded to 5)"),
                ("Audited", "people in the split the audit measures (the test split)"),
                ("With outcome", "audited people who had the outcome"),
                ("Selected", "audited people the outreach capacity selects"),
            ],
            cohort_rows,
            caption="Eligible cohorts",
        )
    )
    mix = report.population
    if mix.is_empty():
        blocks.append(_unavailable("the population mix by deprivation, region, ethnicity and age"))
    targets = list(dict.fromkeys(mix["target"].to_list()))
    for dimension in ("imd_quintile", "region", "ethnicity_group", "age_band", "sex"):
        part = mix.filter(pl.col("dimension") == dimension)
        if part.is_empty():
            continue
        totals = {
            target: sum(
                int(v)
                for v in part.filter(pl.col("target") == target)["n"].to_list()
                if v is not None and str(v).isdigit()
            )
            for target in targets
        }
        rows = []
        for (group,), by_group in part.sort("group_order", "group").group_by(
            "group", maintain_order=True
        ):
            counts = {row["target"]: row["n"] for row in by_group.iter_rows(named=True)}
            cells = [text_cell(group_label(dimension, str(group)))]
            for target in targets:
                n = counts.get(target)
                share = (
                    int(n) / totals[target] if n and str(n).isdigit() and totals[target] else None
                )
                cells += [count_cell(n, sdc), rate_cell(share, of=(n,))]
            rows.append(cells)
        columns = [(dimension_label(dimension), "")]
        for target in targets:
            columns += [(f"People: {target}", "audited split, rounded to 5"), ("Share", "")]
        blocks.append(
            _table(
                columns,
                rows,
                caption=f"Audited people by {dimension_label(dimension).lower()}",
                compact=True,
            )
        )
    blocks += _data_quality_blocks(report, sdc)
    blocks += _recording_blocks(report)
    return {
        "id": "population",
        "title": "The population",
        "lead": "Who is in the data, and how complete the records are.",
        "blocks": blocks,
        "layout": "columns",
    }


EVENT_LABELS: Final = {
    "gp_consultation": "GP consultations",
    "prescription": "Prescriptions",
    "measurement": "Measurements",
    "outpatient": "Outpatient appointments",
    "ae_attendance": "A&E attendances",
    "emergency_admission": "Emergency admissions",
    "elective_admission": "Elective admissions",
    "diagnosis": "Diagnoses recorded",
}


def _data_quality_blocks(report: ReportView, sdc: Disclosure) -> list[Block]:
    """The validate stage's summary: what was checked, record completeness, activity rates."""
    quality = report.data_quality
    if not quality:
        return [_unavailable("the data quality summary (reports/data_quality.json)")]
    blocks: list[Block] = [_subhead("Data quality")]
    checks = []
    if "valid" in quality:
        checks.append(
            [
                text_cell("Passes the data contract"),
                text_cell("yes" if quality["valid"] else "NO: see reports/data_quality.json"),
            ]
        )
    dates = quality.get("date_range") or {}
    if dates.get("first") and dates.get("last"):
        checks.append(
            [text_cell("Records from"), text_cell(f"{dates['first']} to {dates['last']}")]
        )
    if quality.get("index_date"):
        checks.append(
            [text_cell("Index date (risk measured from)"), text_cell(quality["index_date"])]
        )
    if is_number(quality.get("ethnicity_recorded_share")):
        checks.append(
            [text_cell("Ethnicity recorded"), rate_cell(quality["ethnicity_recorded_share"])]
        )
    tables = quality.get("tables") or {}
    for name in ("people", "events", "areas", "practices", "outcomes"):
        table = tables.get(name) or {}
        if "n_rows" in table:
            checks.append([text_cell(f"Rows in {name}"), count_cell(table["n_rows"], sdc)])
        for column, share in sorted((table.get("null_share") or {}).items()):
            if is_number(share) and share > 0 and not (name == "events" and column == "value"):
                checks.append([text_cell(f"{name}.{column} missing"), rate_cell(share)])
    if checks:
        blocks.append(
            _table([("Check", ""), ("Result", "")], checks, caption="Data checks", compact=True)
        )
    rates = quality.get("events_per_person_year_last_12_months") or {}
    if rates:
        rows = [
            [text_cell(EVENT_LABELS.get(kind, kind)), rate_cell(value, percent=False, digits=2)]
            for kind, value in sorted(rates.items(), key=lambda item: -(item[1] or 0))
        ]
        blocks.append(
            _table(
                [("Recorded activity", ""), ("Per person per year", "last 12 months")],
                rows,
                caption="Activity in the last 12 months",
                compact=True,
            )
        )
    if len(blocks) == 1:
        rows = []
        for key, value in _flat_items(quality):
            if is_number(value):
                rows.append([text_cell(key.replace("_", " ")), rate_cell(value, percent=False)])
        blocks.append(_table([("Item", ""), ("Value", "")], rows[:40], compact=True))
    return blocks


def _recording_blocks(report: ReportView) -> list[Block]:
    """Synthetic data only: how much illness the records miss, most vs least deprived decile."""
    calibration = report.synthetic_calibration or {}
    conditions = calibration.get("conditions") or {}
    if not conditions:
        return []
    rows = []
    for name, block in sorted(conditions.items()):
        deciles = {row.get("imd_decile"): row for row in block.get("by_imd_decile") or []}
        most, least = deciles.get(1) or {}, deciles.get(10) or {}

        def recorded_share(row: dict) -> float | None:
            true, recorded = row.get("true_prevalence"), row.get("recorded_prevalence")
            return recorded / true if is_number(true) and is_number(recorded) and true else None

        rows.append(
            [
                text_cell(name.replace("_", " ").capitalize()),
                rate_cell(most.get("true_prevalence")),
                rate_cell(most.get("recorded_prevalence")),
                rate_cell(recorded_share(most), digits=0),
                rate_cell(least.get("true_prevalence")),
                rate_cell(least.get("recorded_prevalence")),
                rate_cell(recorded_share(least), digits=0),
                rate_cell(most.get("reference_prevalence")),
                rate_cell(least.get("reference_prevalence")),
            ]
        )
    return [
        _subhead("How much illness the records miss (synthetic data)"),
        _para(
            "In the simulation the true conditions are known. The share of true cases that are "
            "recorded is lower in the most deprived areas: a model that learns from records sees "
            "less of their illness. Reference: QOF 2019/20 recorded prevalence by IMD decile "
            "(House of Commons Library)."
        ),
        _table(
            [
                ("Condition", ""),
                ("Decile 1: true", "most deprived tenth of areas"),
                ("Decile 1: recorded", ""),
                ("Decile 1: share recorded", ""),
                ("Decile 10: true", "least deprived tenth"),
                ("Decile 10: recorded", ""),
                ("Decile 10: share recorded", ""),
                ("QOF decile 1", "published recorded prevalence"),
                ("QOF decile 10", ""),
            ],
            rows,
            caption="True and recorded prevalence, most vs least deprived decile",
        ),
    ]


def _flat_items(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key in sorted(node):
            items += _flat_items(node[key], f"{prefix}.{key}" if prefix else str(key))
    elif not isinstance(node, list):
        items.append((prefix, node))
    return items


def performance_section(report: ReportView, sdc: Disclosure) -> Section:
    """Model performance on the test split, with CIs, and calibration by group."""
    blocks: list[Block] = [
        _para(
            "How well each model ranks people by risk (discrimination) and whether its predicted "
            "risks match what happened (calibration), on people the model never saw in training "
            "(the test split). Brackets give 95% confidence intervals (TRIPOD+AI 12e, 23a)."
        )
    ]
    blocks += _per_target(report, sdc, _performance_blocks)
    return {"id": "performance", "title": "Model performance", "lead": "", "blocks": blocks}


def _performance_blocks(view: TargetView, report: ReportView, sdc: Disclosure) -> list[Block]:
    blocks: list[Block] = []
    perf = view.performance
    if perf.is_empty():
        blocks.append(_unavailable(f"models/{view.target}/metrics.json"))
    else:
        rows = []
        for row in perf.iter_rows(named=True):
            label, percent, meaning = PERFORMANCE_LABELS.get(
                row["metric"], (row["metric"].replace("_", " "), False, "")
            )
            cell = rate_cell(
                row["value"],
                row["ci_low"],
                row["ci_high"],
                percent=percent,
                digits=1 if percent else 3,
            )
            rows.append([text_cell(label), cell, text_cell(meaning)])
        blocks.append(
            _table(
                [("Measure", ""), ("Estimate (95% CI)", ""), ("Reading it", "")],
                rows,
                caption=f"{view.target}: test-split performance",
                compact=True,
            )
        )
    figures = []
    curve = view.curves.get("calibration")
    if curve is not None and not curve.is_empty():
        figures.append(
            charts.curve_chart(
                curve,
                x="mean_predicted",
                y="observed_rate",
                x_title="Predicted risk",
                y_title="Observed rate",
                title="Calibration (test split)",
                diagonal=True,
                percent=True,
            )
        )
    gain = view.curves.get("cumulative_gain")
    if gain is not None and not gain.is_empty():
        figures.append(
            charts.curve_chart(
                gain,
                x="share_selected",
                y="share_of_events",
                x_title="Share of people selected (highest risk first)",
                y_title="Share of events reached",
                title="Cumulative gain",
                diagonal=True,
                percent=True,
            )
        )
    if figures:
        blocks.append(
            _figure(
                charts.to_svg(
                    alt.hconcat(*figures),
                    description=f"{view.target}: calibration and cumulative gain",
                ),
                "Left: predicted risk against observed rate (dashed: perfect "
                "calibration). Right: share of all events found by working down the list.",
            )
        )
    calibration = view.calibration
    if not calibration.is_empty():
        for dimension in ("imd_quintile", "ethnicity_group"):
            part = calibration.filter(pl.col("dimension") == dimension)
            if part.is_empty():
                continue
            part = relabel(part, dimension)
            title = f"Calibration by {dimension_label(dimension).lower()}"
            blocks.append(
                _figure(
                    charts.to_svg(charts.calibration_chart(part, title=title), description=title),
                    f"{title}: each line is a group; a line below the diagonal means the "
                    "model over-predicts for that group, above means it under-predicts.",
                )
            )
    else:
        oe = _estimate_frame(view, "ethnicity_group", "oe_ratio")
        if not oe.is_empty():
            title = "Calibration (observed / expected) by ethnic group"
            blocks.append(
                _figure(
                    charts.to_svg(
                        charts.estimate_chart(
                            oe, title=title, x_title="Observed / expected", percent=False
                        ),
                        description=title,
                    ),
                    f"{title}: 1 = the model predicts as many events as happen; above 1 it "
                    "under-predicts the group's risk.",
                )
            )
    return blocks


def _estimate_frame(view: TargetView, dimension: str, metric: str) -> pl.DataFrame:
    rows = []
    for group in _wide_groups(view, dimension):
        row = group["metrics"].get(metric)
        if row is None or _suppressed(group, metric) or not is_number(row["value"]):
            continue
        rows.append(
            {
                "group": group_label(dimension, group["group"]),
                "group_order": group["group_order"] or 0,
                "value": row["value"],
                "ci_low": row["ci_low"] if is_number(row["ci_low"]) else row["value"],
                "ci_high": row["ci_high"] if is_number(row["ci_high"]) else row["value"],
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "group": pl.String,
            "group_order": pl.Int32,
            "value": pl.Float64,
            "ci_low": pl.Float64,
            "ci_high": pl.Float64,
        },
    )


def _gradient_line(view: TargetView, indicator: str) -> pl.DataFrame | None:
    """The SII line's two end points: y(0) = most deprived end, y(1) = least deprived end.

    From SII = b and RII = (a + b) / a: a = b / (RII - 1).
    """
    lines = view.gradient_lines if not view.gradient_lines.is_empty() else view.gradients
    frame = lines.filter(pl.col("indicator") == indicator)
    values = {row["measure"]: row["value"] for row in frame.iter_rows(named=True)}
    sii, rii = values.get("sii"), values.get("rii")
    if not (is_number(sii) and is_number(rii)) or abs(rii - 1.0) < 1e-9:
        return None
    intercept = sii / (rii - 1.0)
    return pl.DataFrame({"x": [0.0, 1.0], "y": [intercept, intercept + sii]})


def deprivation_section(report: ReportView, sdc: Disclosure) -> Section:
    """Equity by deprivation: SII/RII gradients, charts and the IMD quintile table."""
    blocks: list[Block] = [
        _para(
            "Deprivation is measured by the Index of Multiple Deprivation 2019 of each person's "
            "area: quintile 1 is the most deprived fifth of areas in England (the Core20 "
            "population). The <strong>slope index of inequality (SII)</strong> is the modelled "
            "absolute gap between the least and the most deprived ends of the population; the "
            "<strong>relative index (RII)</strong> is their ratio (OHID Fingertips method). For "
            "something good, like the share of cases reached, an SII above 0 means the most "
            "deprived do worse."
        )
    ]
    blocks += _per_target(report, sdc, _deprivation_blocks)
    return {"id": "deprivation", "title": "Equity by deprivation", "lead": "", "blocks": blocks}


def _deprivation_blocks(view: TargetView, report: ReportView, sdc: Disclosure) -> list[Block]:
    return _gradient_blocks(view) + _table_and_ratios(
        view, report, "imd_quintile", sdc, "the IMD quintile audit table"
    )


def _gradient_blocks(view: TargetView) -> list[Block]:
    blocks: list[Block] = []
    gradients = view.gradients
    if gradients.is_empty():
        return [_unavailable("the SII/RII gradients")]
    rows = []
    for indicator in INDICATOR_LABELS:
        part = {
            row["measure"]: row
            for row in gradients.filter(pl.col("indicator") == indicator).iter_rows(named=True)
        }
        if not part:
            continue
        sii, rii = part.get("sii"), part.get("rii")
        rows.append(
            [
                text_cell(INDICATOR_LABELS[indicator]),
                rate_cell(
                    None if sii is None else sii["value"] * 100,
                    None if sii is None else sii["ci_low"] * 100,
                    None if sii is None else sii["ci_high"] * 100,
                    percent=False,
                    digits=1,
                ),
                rate_cell(
                    None if rii is None else rii["value"],
                    None if rii is None else rii["ci_low"],
                    None if rii is None else rii["ci_high"],
                    percent=False,
                ),
                text_cell(_gradient_reading(indicator, sii, rii)),
            ]
        )
    blocks.append(
        _table(
            [
                ("Indicator", ""),
                ("SII, points (95% CI)", "least minus most deprived end, in percentage points"),
                ("RII (95% CI)", "least / most deprived end"),
                ("Reading it", ""),
            ],
            rows,
            caption=f"{view.target}: gradients across IMD deciles",
            compact=True,
        )
    )
    panels = []
    points = view.gradient_points
    for indicator, label in INDICATOR_LABELS.items():
        part = points.filter(pl.col("indicator") == indicator).drop_nulls("value")
        if part.is_empty():
            continue
        panels.append(
            charts.gradient_panel(
                part.sort("rank_mid"), _gradient_line(view, indicator), title=label, percent=True
            )
        )
    if panels:
        blocks.append(
            _figure(
                charts.to_svg(
                    charts.grid(panels), description=f"{view.target}: deprivation gradients"
                ),
                "Each dot is a deprivation group placed at the middle of its share of the "
                "population (0 = most deprived end), with its 95% CI; the dashed line is the "
                "fitted slope whose height difference across the chart is the SII.",
            )
        )
    return blocks


def _gradient_reading(indicator: str, sii: dict | None, rii: dict | None) -> str:
    if not sii or not all(is_number(sii[k]) for k in ("value", "ci_low", "ci_high")):
        return ""
    gap = abs(sii["value"]) * 100
    if sii["ci_low"] <= 0 <= sii["ci_high"]:
        return "no clear gradient (the interval includes 0)"
    higher_in_deprived = sii["value"] < 0
    favourable = indicator in {"selection_rate", "need_reached"}
    where = "higher" if higher_in_deprived else "lower"
    text = f"{where} in the most deprived areas, by about {gap:.1f} points end to end"
    if favourable and not higher_in_deprived:
        text += " (the deprived end is under-served)"
    return text


def geography_section(report: ReportView, sdc: Disclosure) -> Section:
    """Regions and every ICB (sortable table with heat-shaded ratios)."""
    blocks: list[Block] = [
        _para(
            "Every NHS region and every integrated care board (ICB). Ratio cells are shaded "
            "<span class='swatch low'></span> blue when below 0.8 and "
            "<span class='swatch high'></span> orange when above 1.25 of the reference "
            "(the largest group); click a column heading to sort the ICB table."
        )
    ]
    blocks += _per_target(report, sdc, _geography_blocks)
    return {"id": "geography", "title": "Equity by geography", "lead": "", "blocks": blocks}


def _geography_blocks(view: TargetView, report: ReportView, sdc: Disclosure) -> list[Block]:
    blocks = _table_and_ratios(view, report, "region", sdc, "the region audit table")
    icb = group_table(view, report, "icb_code", sdc, sortable=True)
    blocks.append(icb or _unavailable("the ICB audit table"))
    heat = _heat_table(view, "region")
    if heat:
        blocks.append(heat)
    return blocks


HEAT_LABELS: Final = {
    "between_group_variance": "Between-group variance",
    "mean_difference_from_best": "Mean difference from best group",
    "theil_index": "Theil index",
    "population_attributable_fraction": "Population attributable fraction",
}


def _heat_table(view: TargetView, dimension: str) -> Block | None:
    """WHO HEAT summaries of one unordered dimension: a row per indicator, a column per measure."""
    part = view.heat.filter(pl.col("dimension") == dimension)
    if part.is_empty():
        return None
    rows = []
    for indicator in [i for i in INDICATOR_LABELS if i in set(part["indicator"].to_list())]:
        by_measure = {
            row["measure"]: row
            for row in part.filter(pl.col("indicator") == indicator).iter_rows(named=True)
        }
        cells = [text_cell(INDICATOR_LABELS[indicator])]
        for measure in HEAT_LABELS:
            row = by_measure.get(measure)
            percent = measure in {"mean_difference_from_best", "population_attributable_fraction"}
            cells.append(
                rate_cell(
                    None if row is None else row["value"],
                    None if row is None else row["ci_low"],
                    None if row is None else row["ci_high"],
                    percent=percent,
                    digits=1 if percent else 5,
                )
            )
        best = next(iter(by_measure.values()))["best_group"] if by_measure else None
        cells.append(text_cell(group_label(dimension, best) if best else ""))
        rows.append(cells)
    return _table(
        [
            ("Indicator", ""),
            *[(label + " (95% CI)", HEAT_HELP[measure]) for measure, label in HEAT_LABELS.items()],
            ("Best group", "the group with the best value among groups large enough to compare"),
        ],
        rows,
        caption=f"{view.target}: inequality summaries across {dimension_label(dimension).lower()} "
        "(WHO HEAT)",
    )


HEAT_HELP: Final = {
    "between_group_variance": "population-weighted spread of group values around the mean",
    "mean_difference_from_best": "average gap to the best group (absolute)",
    "theil_index": "relative inequality; 0 = equal",
    "population_attributable_fraction": "improvement if everyone did as well as the best group",
}


def ethnicity_section(report: ReportView, sdc: Disclosure) -> Section:
    """Equity by ethnic group (5 broad groups and not recorded)."""
    blocks: list[Block] = [
        _para(
            "Ethnicity as recorded in GP records, in the five broad Census groups plus "
            "'Not recorded'. Ethnicity is audited whether or not it is a model input. People "
            "without a recorded ethnicity are shown as their own group: they are not missing at "
            "random."
        )
    ]
    blocks += _per_target(report, sdc, _ethnicity_blocks)
    return {"id": "ethnicity", "title": "Equity by ethnicity", "lead": "", "blocks": blocks}


def _ethnicity_blocks(view: TargetView, report: ReportView, sdc: Disclosure) -> list[Block]:
    blocks = _table_and_ratios(view, report, "ethnicity_group", sdc, "the ethnicity audit table")
    heat = _heat_table(view, "ethnicity_group")
    if heat:
        blocks.append(heat)
    return blocks


INTERSECTION: Final = "ethnicity_group_x_imd_quintile"


def intersection_section(report: ReportView, sdc: Disclosure) -> Section:
    """Ethnicity x deprivation: heat grids of cases reached and selection."""
    blocks: list[Block] = [
        _para(
            "Inequalities compound: the grid shows each ethnic group within each deprivation "
            "quintile. Cells are coloured blue where the value is below the overall figure and "
            "orange where above; '*' marks a cell too small to publish."
        )
    ]
    blocks += _per_target(report, sdc, _intersection_blocks)
    return {
        "id": "intersection",
        "title": "Ethnicity and deprivation together",
        "lead": "",
        "blocks": blocks,
    }


def _intersection_blocks(view: TargetView, report: ReportView, sdc: Disclosure) -> list[Block]:
    dimension = INTERSECTION
    groups = _wide_groups(view, dimension)
    if not groups:
        return [_unavailable("the ethnicity x deprivation audit")]
    blocks: list[Block] = []
    figures = []
    for metric in ("tpr", "selection_rate"):
        rows = []
        for group in groups:
            ethnicity, _, quintile = group["group"].rpartition(", IMD ")
            row = group["metrics"].get(metric)
            suppressed = _suppressed(group, metric)
            value = None if row is None or suppressed else row["value"]
            rows.append(
                {
                    "ethnicity": ethnicity or group["group"],
                    "imd": quintile or "?",
                    "value": value if is_number(value) else None,
                    "text": SUPPRESSED if suppressed else pct_text(value, digits=0),
                }
            )
        frame = pl.DataFrame(
            rows,
            schema={
                "ethnicity": pl.String,
                "imd": pl.String,
                "value": pl.Float64,
                "text": pl.String,
            },
        )
        overall = view.audit_headline.get(f"overall_{metric}")
        known = frame["value"].drop_nulls()
        reference = (
            float(overall) if is_number(overall) else (float(known.mean()) if len(known) else 0.0)
        )
        title = f"{METRIC_LABELS[metric]} by ethnic group and IMD quintile"
        figures.append(
            charts.heat_grid_chart(
                frame,
                x="imd",
                y="ethnicity",
                x_title="IMD quintile (1 = most deprived)",
                title=title,
                value_label=METRIC_LABELS[metric],
                reference=reference,
                percent=True,
            )
        )
    blocks.append(
        _figure(
            charts.to_svg(
                alt.hconcat(*figures).resolve_scale(color="independent"),
                description=f"{view.target}: cases reached and selection by ethnic "
                "group and IMD quintile",
            ),
            "Left: share of people with the outcome who were selected; right: "
            "share selected. Grey cells with '*' are suppressed (a count of people or events "
            "from 1 to 7).",
        )
    )
    table = group_table(view, report, dimension, sdc, sortable=True)
    if table:
        table["collapsed"] = "Show the table behind the grids"
        blocks.append(table)
    return blocks


NEED_LABELS: Final = {
    "recorded_need": "Recorded conditions (mean)",
    "recorded_multimorbidity": "Recorded conditions (mean)",
    "n_recorded_conditions": "Recorded conditions (mean)",
    "true_need": "True need (simulation only)",
}


def _dimension_rank(dimension: str) -> int:
    order = list(DIMENSION_LABELS)
    return order.index(dimension) if dimension in order else len(order)


def label_choice_section(report: ReportView, sdc: Disclosure) -> Section:
    """Obermeyer's label-choice audit: need by score percentile per group."""
    blocks: list[Block] = [
        _para(
            "A risk score can be well calibrated on the outcome it predicts and still "
            "under-state the need of groups whose care use (and so whose recorded outcomes) is "
            "lower for the same illness (Obermeyer et al., <em>Science</em> 2019). The charts "
            "plot how ill people are, on average, at each risk-score percentile: where a group's "
            "line sits above another's, people in that group are sicker than others with the same "
            "score, so the score under-serves them."
        )
    ]
    blocks += _per_target(report, sdc, _label_choice_blocks)
    return {
        "id": "label-choice",
        "title": "Does the score reflect need?",
        "lead": "",
        "blocks": blocks,
    }


def _label_choice_blocks(view: TargetView, report: ReportView, sdc: Disclosure) -> list[Block]:
    frame = view.label_choice
    if frame.is_empty():
        return [_unavailable("the label-choice audit")]
    blocks: list[Block] = []
    cutoff = view.operating_point.get("cutoff_percentile")
    dimensions = sorted(set(frame["dimension"].to_list()), key=_dimension_rank)
    for dimension in dimensions:
        panels = []
        for need in sorted(set(frame.filter(pl.col("dimension") == dimension)["need_measure"])):
            part = relabel(
                frame.filter((pl.col("dimension") == dimension) & (pl.col("need_measure") == need)),
                dimension,
            ).sort("group_order", "percentile")
            need_label = NEED_LABELS.get(need, need)
            panels.append(
                charts.need_by_percentile_chart(
                    part, need_label=need_label, cutoff=cutoff if is_number(cutoff) else None
                ).properties(title=need_label, width=340)
            )
        title = f"Need by risk-score percentile, by {dimension_label(dimension).lower()}"
        blocks.append(
            _figure(
                charts.to_svg(
                    alt.hconcat(*panels).properties(title=title),
                    description=f"{view.target}: {title}",
                ),
                f"{title}. Each line is a group; where one line runs above another, that "
                "group is sicker at the same score. Dashed vertical line: the outreach "
                "cut-off (people to its right are selected).",
            )
        )
    summary = view.label_summary
    if summary.is_empty():
        return blocks
    for (need, dimension), part in summary.sort(
        "need_measure", "dimension", "group_order", "group"
    ).group_by(["need_measure", "dimension"], maintain_order=True):
        rows = []
        for row in part.iter_rows(named=True):
            note = (
                "reference"
                if row["is_reference"]
                else "sicker at the same score"
                if row["disadvantaged"]
                else ""
            )
            if row["stable"] is False:
                note = "; ".join(filter(None, [note, "small group"]))
            rows.append(
                [
                    text_cell(group_label(str(dimension), row["group"])),
                    count_cell(row["n"], sdc),
                    rate_cell(
                        row["need_gap"],
                        row["need_gap_ci_low"],
                        row["need_gap_ci_high"],
                        percent=False,
                    ),
                    rate_cell(
                        row["need_ratio"],
                        row["need_ratio_ci_low"],
                        row["need_ratio_ci_high"],
                        percent=False,
                    ),
                    rate_cell(row["cutoff_gap"], percent=False),
                    rate_cell(row["share_selected_by_score"]),
                    rate_cell(row["share_selected_by_need"]),
                    text_cell(note),
                ]
            )
        need_label = NEED_LABELS.get(str(need), str(need))
        blocks.append(
            _table(
                [
                    (dimension_label(str(dimension)), ""),
                    ("People", "audited split"),
                    (
                        "Need gap, same score",
                        "mean need minus the reference group's, "
                        "averaged over score percentiles, 95% CI",
                    ),
                    (
                        "Need ratio, same score",
                        "above 1: sicker than the reference at the same score",
                    ),
                    ("Need gap among the selected", "at the cut-off"),
                    ("Share of list, ranked by score", ""),
                    ("Share of list, ranked by true need", "synthetic data only"),
                    ("Note", ""),
                ],
                rows,
                caption=f"{view.target}: {need_label.lower()} at the same score, by "
                f"{dimension_label(str(dimension)).lower()}",
                compact=True,
            )
        )
    return blocks


def outreach_section(report: ReportView, sdc: Disclosure) -> Section:
    """Who the outreach lists reach, against who is eligible and who is in need."""
    meta = report.outreach_meta
    policy = meta.get("policy", "risk")
    capacity = meta.get("capacity")
    mode = meta.get("capacity_mode", "share")
    if mode == "share" and is_number(capacity):
        capacity_text = (
            f"the highest-priority {pct_text(capacity, digits=0)} of each eligible cohort"
        )
    elif is_number(capacity):
        unit = "ICB" if mode == "per_icb" else "GP practice"
        capacity_text = f"{int(capacity):,} people per {unit}"
    else:
        capacity_text = "the capacity in params.yaml"
    blocks: list[Block] = [
        _para(
            f"The outreach lists take {esc(capacity_text)}, ranked by the "
            f"<code>{esc(policy)}</code> policy. A fair list reaches each group roughly in "
            "proportion to its need: the bars compare each group's share of the eligible "
            "cohort, of the list, and of need."
        )
    ]
    if not meta:
        blocks.append(_unavailable("reports/outreach_summary.json"))
    for view in report.targets:
        frame = view.outreach
        if frame.is_empty():
            continue
        blocks.append(_target_subhead(view))
        for dimension in ("imd_quintile", "ethnicity_group", "region"):
            part = frame.filter(pl.col("dimension") == dimension).sort("group_order", "group")
            if part.is_empty():
                continue
            need_label = (
                "Share of true need" if report.has_truth else "Share of events (test split)"
            )
            long = (
                relabel(part, dimension)
                .unpivot(
                    index=["group", "group_order"],
                    on=["share_eligible", "share_list", "share_need"],
                    variable_name="measure",
                    value_name="share",
                )
                .with_columns(
                    pl.col("measure").replace_strict(
                        {
                            "share_eligible": "Share of eligible",
                            "share_list": "Share of outreach list",
                            "share_need": need_label,
                        },
                        return_dtype=pl.String,
                    )
                )
                .drop_nulls("share")
            )
            if long.is_empty():
                continue
            title = f"Outreach list make-up by {dimension_label(dimension).lower()}"
            blocks.append(
                _figure(
                    charts.to_svg(
                        charts.share_vs_need_chart(long, title=title),
                        description=f"{view.target}: {title}",
                    ),
                    f"{title}: a group whose list share is well below its need share is "
                    "under-served.",
                )
            )
            rows = []
            for row in part.iter_rows(named=True):
                share_list, share_need = row["share_list"], row["share_need"]
                ratio = (
                    share_list / share_need
                    if is_number(share_list) and is_number(share_need) and share_need > 0
                    else None
                )
                suppressed = row["n_list"] == SUPPRESSED
                # A row whose list count is suppressed shows no shares at all: the published
                # table never pairs a '*' count with a rate (the scanner's rule).
                rows.append(
                    [
                        text_cell(group_label(dimension, row["group"])),
                        count_cell(row["n_list"], sdc),
                        rate_cell(row["share_eligible"], suppressed=suppressed),
                        rate_cell(row["share_list"], suppressed=suppressed),
                        rate_cell(row["share_need"], suppressed=suppressed),
                        rate_cell(
                            ratio,
                            percent=False,
                            suppressed=suppressed,
                            style=ratio_style(ratio, low=report.fair_low, high=report.fair_high),
                        ),
                    ]
                )
            blocks.append(
                _table(
                    [
                        ("Group", ""),
                        ("On the list", "people selected (rounded to 5; * = 1-7)"),
                        ("Share of eligible", ""),
                        ("Share of list", ""),
                        (need_label, ""),
                        ("List share / need share", "below 0.8: under-served"),
                    ],
                    rows,
                    caption=f"{view.target}: list make-up by {dimension_label(dimension).lower()}",
                    compact=True,
                )
            )
    return {"id": "outreach", "title": "Outreach lists against need", "lead": "", "blocks": blocks}


STRATEGY_LABELS: Final = {
    "risk": "Rank by predicted risk (current)",
    "risk_ranking": "Rank by predicted risk (current)",
    "threshold_optimizer": "Equal opportunity across IMD quintiles (ThresholdOptimizer)",
    "equal_opportunity": "Equal opportunity across IMD quintiles (ThresholdOptimizer)",
    "core20plus5": "Core20PLUS5 uplift",
    "core20plus5_uplift": "Core20PLUS5 uplift",
    "need_label": "Model trained on a need-based label",
    "need_adjusted": "Model trained on a need-based label",
}


def mitigation_section(report: ReportView, sdc: Disclosure) -> Section:
    """The mitigation trade-off table: events reached against the TPR gap and group shares."""
    blocks: list[Block] = [
        _para(
            "Ways to make the list fairer, each at the same capacity: what each reaches overall, "
            "the gap between the best- and worst-reached deprivation quintiles, and how the list "
            "splits across quintiles. A strategy "
            "that narrows the gap while reaching nearly as many events is usually the better "
            "choice; the table makes the trade-off explicit rather than choosing for you."
        )
    ]
    blocks += _per_target(report, sdc, _mitigation_blocks)
    return {"id": "mitigation", "title": "Mitigation: the trade-off", "lead": "", "blocks": blocks}


def _mitigation_blocks(view: TargetView, report: ReportView, sdc: Disclosure) -> list[Block]:
    frame = view.mitigation
    if frame.is_empty():
        return [_unavailable("the mitigation trade-off")]
    blocks: list[Block] = []
    share_groups = [
        g for g in frame["group"].unique(maintain_order=True).to_list() if g is not None
    ]
    truth = "true need" in view.case_definition
    events_help = (
        "events expected on the list from people's true risk (simulation)"
        if view.truth_events
        else "people on the list who had the recorded outcome"
    )
    gap_columns = [
        (
            "Gap in recorded cases reached (points)",
            "best minus worst IMD quintile: share of people with the recorded outcome selected",
        )
    ]
    if truth:
        gap_columns.append(
            (
                "Gap in need reached (points)",
                f"best minus worst IMD quintile: share of the {view.case_definition} selected",
            )
        )

    gap_keys = ("recorded_gap", "tpr_gap") if truth else ("recorded_gap",)

    rows = []
    for strategy in frame["strategy"].unique(maintain_order=True).to_list():
        part = frame.filter(pl.col("strategy") == strategy)
        first = part.row(0, named=True)
        shares = {row["group"]: row["selection_share"] for row in part.iter_rows(named=True)}
        rows.append(
            [
                text_cell(first["label"] or STRATEGY_LABELS.get(strategy, strategy)),
                count_cell(first["events_reached"], sdc),
                rate_cell(
                    first["share_of_events_reached"],
                    suppressed=first["events_reached"] == SUPPRESSED,
                ),
                *[
                    rate_cell(None if gap is None else gap * 100, percent=False, digits=1)
                    for gap in (first[key] for key in gap_keys)
                ],
                *[rate_cell(shares.get(group)) for group in share_groups],
            ]
        )
    blocks.append(
        _table(
            [
                ("Strategy", ""),
                ("Events reached", events_help),
                ("Share of all events", events_help),
                *gap_columns,
                *[
                    (f"List share: {group_label('imd_quintile', g) if g.isdigit() else g}", "")
                    for g in share_groups
                ],
            ],
            rows,
            caption=f"{view.target}: mitigation trade-off",
        )
    )
    return blocks


def limitations_section(report: ReportView) -> Section:
    """What the report cannot tell you."""
    items = [
        "Outcomes are what was recorded. Where people use care less for the same illness "
        "(the planted access bias in the synthetic data; a real pattern in England), recorded "
        "outcomes under-state need in exactly the groups an equity audit cares about; the "
        "label-choice section estimates how much.",
        "Group results come from the test split only (people the model never trained on), so "
        "small groups have wide intervals; a group marked 'small group' should not be "
        "over-read, and '*' cells are suppressed under NHS disclosure rules (counts of 1-7 "
        "hidden, others rounded to the nearest 5; rates from a hidden count hidden too).",
        "Confidence intervals do not cover bias in the data (recording, coding, missing "
        "ethnicity), and many comparisons are shown: about 1 in 20 will look different by "
        "chance at the 95% level.",
        "Deprivation is an area measure (IMD 2019 of the person's LSOA), not a measure of each "
        "person's circumstances.",
        "Ethnicity is not recorded for a share of people; they are shown as a group of their "
        "own, and their results cannot be assigned to any other group.",
    ]
    if report.source == "synthetic":
        items.insert(
            0,
            "These results are from a synthetic population built to behave like English GP and "
            "hospital records, with biases planted on purpose; they show what the audit can "
            "detect, not facts about any real population.",
        )
    else:
        items.insert(
            0,
            "A real extract has no ground truth: need is measured by recorded conditions only, "
            "so the true-need comparisons shown for synthetic data are not available.",
        )
    for view in report.targets:
        items += [f"{view.target}: {note}" for note in view.notes]
    items += list(report.notes)
    return {
        "id": "limitations",
        "title": "Limitations",
        "lead": "",
        "blocks": [{"type": "list", "items": [esc(item) for item in items]}],
    }


def fmt_sii(value: Any) -> str:
    """An SII in percentage points."""
    return num_text(value * 100 if is_number(value) else value, digits=1, signed=True)


def _finite(value: Any) -> bool:
    return is_number(value) and not math.isnan(value)
