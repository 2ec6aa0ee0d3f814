"""Read the upstream outputs and map them onto the report's normalised view.

The only module that knows the upstream layouts (see ``/work/notes/<stage>_outputs.md``):

- ``reports/audit/<target>/audit.json`` (+ ``need_by_score.parquet``): group metrics with CIs
  and ratios, SII/RII, WHO HEAT, label choice, mitigation;
- ``reports/metrics/audit_<target>.json``: the audit's headline figures;
- ``models/<target>/metrics.json`` and ``plots/*.csv``: test-split performance;
- ``reports/outreach_summary.json``: the lists' make-up against need;
- ``reports/data_quality.json`` and ``reports/synthetic_calibration.json`` (absent for a real
  extract: the report says so and carries on).

A missing or unreadable optional input becomes an empty frame plus a note under Limitations;
a report with no audit at all is refused (:class:`~pipeline.errors.StageError`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import polars as pl

from pipeline import contract
from pipeline.disclosure import SUPPRESSED
from pipeline.errors import StageError
from pipeline.io import Paths, read_json, scan_table
from pipeline.report.model import (
    CALIBRATION_SCHEMA,
    GRADIENT_POINTS_SCHEMA,
    GRADIENTS_SCHEMA,
    GROUPS_SCHEMA,
    HEAT_SCHEMA,
    LABEL_CHOICE_SCHEMA,
    LABEL_SUMMARY_SCHEMA,
    MITIGATION_SCHEMA,
    OUTREACH_SCHEMA,
    PERFORMANCE_SCHEMA,
    POPULATION_SCHEMA,
    ReportView,
    TargetView,
    conform,
    empty,
)

if TYPE_CHECKING:
    from pipeline.config import Params

AUDIT_FILE: Final = "audit.json"
NEED_CURVES_FILE: Final = "need_by_score.parquet"
PERFORMANCE_METRICS: Final = (*contract.MODEL_METRICS, *contract.ORACLE_METRICS)
CURVES: Final = ("roc", "precision_recall", "calibration", "cumulative_gain")
POLICY_LABELS: Final = {
    "risk": "Rank by predicted risk (as now)",
    "equal_opportunity": "Equal opportunity across IMD quintiles (fairlearn ThresholdOptimizer)",
    "core20plus5": "Core20PLUS5 uplift (IMD quintile 1 and PLUS groups)",
    "need_based": "Model trained on a need-based label",
    "need_adjusted": "Model trained on a need-based label",
}
ORDERED_POLICIES: Final = ("risk", "equal_opportunity", "core20plus5", "need_based")


# --- ordering of group labels -------------------------------------------------------------------


def group_order(dimension: str, group: str) -> int:
    """A stable display order: IMD by number, regions and ethnic groups in the contract's order,
    age bands by their lower bound, everything else alphabetical (by the caller's sort)."""
    if group is None:
        return 9_999
    if dimension in {"imd_quintile", "imd_decile"}:
        return int(group) if str(group).isdigit() else 99
    if dimension == "region" and group in contract.REGIONS:
        return contract.REGIONS.index(group)
    if dimension == "ethnicity_group" and group in contract.BROAD_ETHNIC_GROUPS:
        return contract.BROAD_ETHNIC_GROUPS.index(group)
    if dimension == "age_band":
        match = re.match(r"(\d+)", str(group))
        return int(match.group(1)) if match else 999
    if dimension == "ethnicity_group_x_imd_quintile":
        ethnicity, _, quintile = str(group).rpartition(", IMD ")
        base = (
            contract.BROAD_ETHNIC_GROUPS.index(ethnicity)
            if ethnicity in contract.BROAD_ETHNIC_GROUPS
            else 9
        )
        return base * 10 + (int(quintile) if quintile.isdigit() else 9)
    return 0


def _count_text(value: Any) -> str | None:
    """A published count as the String the normalised frames carry."""
    if value is None:
        return None
    if value == SUPPRESSED:
        return SUPPRESSED
    if isinstance(value, float):
        return str(round(value))
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None or value == SUPPRESSED:
        return None
    if isinstance(value, int | float):
        return float(value)
    return None


# --- audit.json -> frames (pure) ------------------------------------------------------------------


def groups_from_audit(audit: dict[str, Any]) -> pl.DataFrame:
    """``dimensions`` of audit.json -> the long group-metrics frame (``GROUPS_SCHEMA``)."""
    rows = []
    for dimension, block in (audit.get("dimensions") or {}).items():
        reference = block.get("reference_group")
        for group in block.get("groups", []):
            label = str(group.get("group"))
            base = {
                "dimension": dimension,
                "group": label,
                "group_order": group_order(dimension, label),
                "n": _count_text(group.get("n")),
                "n_events": _count_text(group.get("n_events")),
                "n_selected": _count_text(group.get("n_selected")),
                "stable": group.get("stable"),
                "is_reference": bool(group.get("is_reference", label == reference)),
            }
            for metric, published in (group.get("metrics") or {}).items():
                entry = published if isinstance(published, dict) else {"value": published}
                hidden = entry.get("value") == SUPPRESSED
                flag = entry.get("flag")
                if flag is None:
                    flag = entry.get("outside_fair_range")
                rows.append(
                    base
                    | {
                        "metric": metric,
                        "value": _number(entry.get("value")),
                        "ci_low": _number(entry.get("ci_low")),
                        "ci_high": _number(entry.get("ci_high")),
                        "suppressed": hidden,
                        "ratio": _number(entry.get("ratio")),
                        "ratio_ci_low": _number(entry.get("ratio_ci_low")),
                        "ratio_ci_high": _number(entry.get("ratio_ci_high")),
                        "flagged": flag is True,
                    }
                )
    if not rows:
        return empty(GROUPS_SCHEMA)
    return conform(pl.DataFrame(rows, infer_schema_length=None), GROUPS_SCHEMA)


def gradients_from_audit(audit: dict[str, Any], *, dimension: str = "imd_decile") -> pl.DataFrame:
    """``gradients[dimension][indicator][sii|rii]`` -> ``GRADIENTS_SCHEMA``."""
    rows = [
        {"indicator": indicator, "measure": measure}
        | {k: _number(estimate.get(k)) for k in ("value", "ci_low", "ci_high")}
        for indicator, measures in ((audit.get("gradients") or {}).get(dimension) or {}).items()
        for measure, estimate in measures.items()
        if isinstance(estimate, dict)
    ]
    return conform(pl.DataFrame(rows), GRADIENTS_SCHEMA) if rows else empty(GRADIENTS_SCHEMA)


def heat_from_audit(audit: dict[str, Any]) -> pl.DataFrame:
    """``heat[dimension][indicator][measure]`` -> ``HEAT_SCHEMA``."""
    rows = []
    for dimension, indicators in (audit.get("heat") or {}).items():
        for indicator, measures in indicators.items():
            for measure, estimate in measures.items():
                if not isinstance(estimate, dict):
                    continue
                rows.append(
                    {
                        "dimension": dimension,
                        "indicator": indicator,
                        "measure": measure,
                        "best_group": measures.get("best_group"),
                    }
                    | {k: _number(estimate.get(k)) for k in ("value", "ci_low", "ci_high")}
                )
    return conform(pl.DataFrame(rows), HEAT_SCHEMA) if rows else empty(HEAT_SCHEMA)


def gradient_points(groups: pl.DataFrame, mitigation: dict[str, Any] | None) -> pl.DataFrame:
    """Quintile points for the gradient charts, each at the midpoint of its population rank.

    outcome_rate <- base_rate, selection_rate <- selection_rate, need_reached <- the risk
    policy's ``case_tpr`` by IMD quintile (true-need cases with truth, else recorded outcome).
    """
    imd = groups.filter(pl.col("dimension") == "imd_quintile")
    if imd.is_empty():
        return empty(GRADIENT_POINTS_SCHEMA)
    sizes = (
        imd.select("group", "n")
        .unique("group")
        .with_columns(
            pl.col("n").cast(pl.Float64, strict=False),
            pl.col("group").cast(pl.Int32, strict=False).alias("order"),
        )
        .drop_nulls()
        .sort("order")
    )
    total = sizes["n"].sum()
    if not total:
        return empty(GRADIENT_POINTS_SCHEMA)
    sizes = sizes.with_columns(
        ((pl.col("n").cum_sum() - pl.col("n") / 2) / total).alias("rank_mid")
    ).select("group", "rank_mid")
    frames = []
    for indicator, metric in (("outcome_rate", "base_rate"), ("selection_rate", "selection_rate")):
        frames.append(
            imd.filter((pl.col("metric") == metric) & ~pl.col("suppressed"))
            .select("group", "value", "ci_low", "ci_high")
            .with_columns(pl.lit(indicator).alias("indicator"))
        )
    risk = next(
        (p for p in (mitigation or {}).get("policies", []) if p.get("policy") == "risk"), None
    )
    if risk is not None:
        reach = (risk.get("by_group") or {}).get("imd_quintile") or {}
        rows = [
            {"group": group, "value": _number(item.get("case_tpr"))}
            for group, item in reach.items()
            if _number(item.get("case_tpr")) is not None
        ]
        if rows:
            frames.append(
                pl.DataFrame(rows)
                .with_columns(
                    pl.lit(None, dtype=pl.Float64).alias("ci_low"),
                    pl.lit(None, dtype=pl.Float64).alias("ci_high"),
                    pl.lit("need_reached").alias("indicator"),
                )
                .select("group", "value", "ci_low", "ci_high", "indicator")
            )
    points = pl.concat(frames, how="diagonal_relaxed").join(sizes, on="group", how="inner")
    points = points.with_columns(
        pl.col("ci_low").fill_null(pl.col("value")), pl.col("ci_high").fill_null(pl.col("value"))
    )
    return conform(points, GRADIENT_POINTS_SCHEMA).sort("indicator", "rank_mid")


def label_summary_from_audit(audit: dict[str, Any]) -> pl.DataFrame:
    """Need gaps (same score, and at the cut-off) with each group's share of the list when
    ranked by score and by need -> ``LABEL_SUMMARY_SCHEMA``."""
    label = audit.get("label_choice") or {}
    shares: dict[tuple[str, str], dict[str, Any]] = {}
    for dimension, items in (label.get("selection_shares") or {}).items():
        for item in items:
            shares[(dimension, str(item.get("group")))] = item
    rows = []
    for dimension, needs in (label.get("need_gaps") or {}).items():
        for need, block in needs.items():
            for item in block.get("groups", []):
                group = str(item.get("group"))
                share = shares.get((dimension, group), {})
                by_need = share.get("share_by_true_need")
                rows.append(
                    {
                        "need_measure": need,
                        "dimension": dimension,
                        "group": group,
                        "group_order": group_order(dimension, group),
                        "is_reference": bool(item.get("is_reference")),
                        "n": _count_text(item.get("n")),
                        "stable": item.get("stable"),
                        "need_gap": _number(item.get("need_gap")),
                        "need_gap_ci_low": _number(item.get("need_gap_ci_low")),
                        "need_gap_ci_high": _number(item.get("need_gap_ci_high")),
                        "need_ratio": _number(item.get("need_ratio")),
                        "need_ratio_ci_low": _number(item.get("need_ratio_ci_low")),
                        "need_ratio_ci_high": _number(item.get("need_ratio_ci_high")),
                        "cutoff_gap": _number(item.get("cutoff_gap")),
                        "disadvantaged": item.get("disadvantaged") is True,
                        "share_selected_by_score": _number(share.get("share_by_risk_score")),
                        "share_selected_by_need": _number(by_need),
                        "share_selected_by_oracle": _number(share.get("share_by_oracle_risk")),
                    }
                )
    if not rows:
        return empty(LABEL_SUMMARY_SCHEMA)
    return conform(pl.DataFrame(rows, infer_schema_length=None), LABEL_SUMMARY_SCHEMA)


def label_curves(frame: pl.DataFrame | None) -> pl.DataFrame:
    """``need_by_score.parquet`` -> mean need per group and score percentile (0-100 scale)."""
    if frame is None or frame.is_empty():
        return empty(LABEL_CHOICE_SCHEMA)
    bins = frame["score_percentile"].max() or 100
    curves = frame.filter(pl.col("mean_need").is_not_null())
    if "suppressed" in curves.columns:
        curves = curves.filter(~pl.col("suppressed").fill_null(False))
    if "n" in curves.columns:
        curves = curves.filter(pl.col("n").cast(pl.String) != SUPPRESSED)
    curves = curves.with_columns(
        (pl.col("score_percentile").cast(pl.Float64) * 100.0 / float(bins)).alias("percentile"),
        pl.col("group").cast(pl.String),
    )
    orders = pl.DataFrame(
        [
            {"dimension": d, "group": g, "group_order": group_order(d, g)}
            for d, g in curves.select("dimension", "group").unique().iter_rows()
        ],
        schema={"dimension": pl.String, "group": pl.String, "group_order": pl.Int32},
    )
    curves = curves.join(orders, on=["dimension", "group"], how="left")
    return conform(curves, LABEL_CHOICE_SCHEMA)


def mitigation_from_audit(audit: dict[str, Any]) -> pl.DataFrame:
    """``mitigation.policies`` -> ``MITIGATION_SCHEMA`` (one row per policy x IMD quintile)."""
    policies = (audit.get("mitigation") or {}).get("policies") or []
    truth = any("n_true_events_reached" in p for p in policies)
    rows = []
    order = {name: i for i, name in enumerate(ORDERED_POLICIES)}
    for policy in sorted(policies, key=lambda p: order.get(p.get("policy"), 99)):
        name = policy.get("policy")
        events_key = "n_true_events_reached" if truth else "n_events_reached"
        share_key = "share_of_true_events_reached" if truth else "share_of_events_reached"
        gap = policy.get("case_tpr_gap_imd_quintile") if truth else None
        if gap is None:
            gap = policy.get("tpr_gap_imd_quintile")
        base = {
            "strategy": name,
            "label": POLICY_LABELS.get(name, name),
            "events_reached": _count_text(policy.get(events_key)),
            "share_of_events_reached": _number(policy.get(share_key)),
            "tpr_gap": _number(gap),
            "recorded_gap": _number(policy.get("tpr_gap_imd_quintile")),
        }
        shares = ((policy.get("by_group") or {}).get("imd_quintile")) or {}
        if not shares:
            rows.append(base | {"group": None, "selection_share": None})
        for group in sorted(shares, key=lambda g: group_order("imd_quintile", g)):
            rows.append(
                base
                | {"group": group, "selection_share": _number(shares[group].get("selection_share"))}
            )
    if not rows:
        return empty(MITIGATION_SCHEMA)
    return conform(pl.DataFrame(rows, infer_schema_length=None), MITIGATION_SCHEMA)


def population_from_audit(target: str, groups: pl.DataFrame) -> pl.DataFrame:
    """Each group's size in the audited split -> ``POPULATION_SCHEMA`` rows for ``target``."""
    frame = (
        groups.filter(
            pl.col("dimension").is_in(
                ["imd_quintile", "region", "ethnicity_group", "age_band", "sex"]
            )
        )
        .select("dimension", "group", "group_order", "n")
        .unique(["dimension", "group"], keep="first")
        .with_columns(pl.lit(target).alias("target"))
    )
    return conform(frame, POPULATION_SCHEMA)


# --- outreach_summary.json -> frames (pure) -----------------------------------------------------


def outreach_from_summary(summary: dict[str, Any], target: str, *, has_truth: bool) -> pl.DataFrame:
    """One target's list make-up -> ``OUTREACH_SCHEMA``.

    Need share: each group's share of true need (synthetic data), else its share of the
    recorded events in the test split (from published counts; '*' counts leave it blank).
    """
    block = (summary.get("targets") or {}).get(target) or {}
    rows = []
    for dimension, groups in (block.get("make_up") or {}).items():
        events = [(g.get("test_split") or {}).get("n_events") for g in groups]
        total_events = sum(
            int(e) for e in events if isinstance(e, int | float) and not isinstance(e, bool)
        )
        for group in groups:
            label = str(group.get("group"))
            if has_truth and group.get("share_of_true_need") is not None:
                need = _number(group.get("share_of_true_need"))
            else:
                n_events = (group.get("test_split") or {}).get("n_events")
                need = (
                    float(n_events) / total_events
                    if isinstance(n_events, int | float)
                    and not isinstance(n_events, bool)
                    and total_events
                    else None
                )
            rows.append(
                {
                    "dimension": dimension,
                    "group": label,
                    "group_order": group_order(dimension, label),
                    "n_list": _count_text(group.get("n_selected")),
                    "share_eligible": _number(group.get("share_of_eligible")),
                    "share_list": _number(group.get("share_of_selected")),
                    "share_need": need,
                }
            )
    if not rows:
        return empty(OUTREACH_SCHEMA)
    return conform(pl.DataFrame(rows, infer_schema_length=None), OUTREACH_SCHEMA)


def performance_from_metrics(metrics: dict[str, Any]) -> pl.DataFrame:
    """Flat train ``metrics.json`` (``<m>``, ``<m>_ci_low``, ``<m>_ci_high``) -> long frame."""
    rows = [
        {
            "metric": name,
            "value": _number(metrics.get(name)),
            "ci_low": _number(metrics.get(f"{name}_ci_low")),
            "ci_high": _number(metrics.get(f"{name}_ci_high")),
        }
        for name in PERFORMANCE_METRICS
        if name in metrics
    ]
    return conform(pl.DataFrame(rows), PERFORMANCE_SCHEMA) if rows else empty(PERFORMANCE_SCHEMA)


# --- IO ------------------------------------------------------------------------------------------


def _read_optional(path: Path, notes: list[str], what: str) -> Any:
    if not path.exists():
        notes.append(f"{what} was not available ({path.name} missing).")
        return None
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError) as error:
        notes.append(f"{what} could not be read ({path.name}: {error}).")
        return None


def _target_view(
    name: str, params: Params, paths: Paths, outreach: dict[str, Any] | None, has_truth: bool
) -> tuple[TargetView, pl.DataFrame]:
    notes: list[str] = []
    folder = paths.reports / "audit" / name
    audit_file = folder / AUDIT_FILE
    if not audit_file.exists():
        raise StageError(
            f"report: {audit_file} not found; run the audit first "
            f"(python -m pipeline audit --target {name})"
        )
    audit = read_json(audit_file)
    groups = groups_from_audit(audit)
    if groups.is_empty():
        raise StageError(f"report: {audit_file}: no group metrics under 'dimensions'")
    headline = (
        _read_optional(
            paths.reports / "metrics" / f"audit_{name}.json", notes, "The audit headline"
        )
        or audit.get("headline")
        or {}
    )
    curves_file = folder / NEED_CURVES_FILE
    curves = pl.read_parquet(curves_file) if curves_file.exists() else None
    if curves is None:
        notes.append("The need-by-score curves were not available.")
    metrics = _read_optional(paths.models / name / "metrics.json", notes, "Model metrics") or {}
    plots = {}
    for curve in CURVES:
        path = paths.models / name / "plots" / f"{curve}.csv"
        if path.exists():
            plots[curve] = pl.read_csv(path)
    target_params = params.targets[name]
    operating = dict(audit.get("operating_point") or {})
    capacity = operating.get("capacity", params.operating_point.capacity)
    if operating.get("capacity_mode", params.operating_point.capacity_mode) == "share":
        operating["cutoff_percentile"] = 100.0 * (1.0 - float(capacity))
    overall = groups.filter(pl.col("dimension") == "overall")
    first = overall.row(0, named=True) if overall.height else {}
    outreach_block = ((outreach or {}).get("targets") or {}).get(name) or {}
    view = TargetView(
        target=name,
        description=target_params.description,
        outcome=target_params.outcome.replace("_", " "),
        groups=groups.filter(pl.col("dimension") != "overall"),
        gradients=gradients_from_audit(audit),
        gradient_points=gradient_points(groups, audit.get("mitigation")),
        gradient_lines=gradients_from_audit(audit, dimension="imd_quintile"),
        heat=heat_from_audit(audit),
        label_choice=label_curves(curves),
        label_summary=label_summary_from_audit(audit),
        mitigation=mitigation_from_audit(audit),
        calibration=empty(CALIBRATION_SCHEMA),
        performance=performance_from_metrics(metrics),
        curves=plots,
        outreach=outreach_from_summary(outreach or {}, name, has_truth=has_truth),
        operating_point=operating,
        audit_headline=headline,
        counts={
            "n_eligible": outreach_block.get("n_eligible", metrics.get("n_cohort")),
            "n_audited": first.get("n", audit.get("n")),
            "n_events": first.get("n_events"),
            "n_selected": first.get("n_selected"),
        },
        notes=tuple(notes),
        split=str(audit.get("split", "test")),
        case_definition=str((audit.get("settings") or {}).get("need_case_definition") or ""),
        truth_events=any(
            "n_true_events_reached" in policy
            for policy in (audit.get("mitigation") or {}).get("policies") or []
        ),
    )
    return view, population_from_audit(name, groups)


def icb_names(paths: Paths) -> dict[str, str]:
    """ICB code -> name from ``data/population`` areas (area-level, not person-level); empty
    when the table is not there."""
    try:
        areas = scan_table(paths.population, "areas")
        pairs = areas.select("icb_code", "icb_name").unique().collect()
    except (FileNotFoundError, pl.exceptions.PolarsError):
        return {}
    return {code: name for code, name in pairs.iter_rows() if code and name}


def load_view(params: Params, paths: Paths) -> ReportView:
    """Read every input of the report and build its normalised view.

    Raises
    ------
    StageError
        When a target has no ``reports/audit/<target>/audit.json``.
    """
    notes: list[str] = []
    outreach = _read_optional(
        paths.reports / "outreach_summary.json", notes, "The outreach summary"
    )
    quality = _read_optional(paths.reports / "data_quality.json", notes, "The data quality summary")
    calibration_file = paths.reports / "synthetic_calibration.json"
    synthetic = read_json(calibration_file) if calibration_file.exists() else None
    has_truth = (
        bool((outreach or {}).get("truth_available")) or (paths.truth / "people.parquet").exists()
    )
    views, populations = [], []
    for name in params.targets:
        view, population = _target_view(name, params, paths, outreach, has_truth)
        views.append(view)
        populations.append(population)
    has_truth = has_truth or any(
        v.label_summary.filter(pl.col("need_measure") == "true_need").height for v in views
    )
    source = "synthetic" if params.population.source == "synthetic" else "extract"
    used = [
        str(p.relative_to(paths.root))
        for p in (
            paths.population / "areas.parquet",
            paths.reports / "audit",
            paths.reports / "metrics",
            paths.reports / "outreach_summary.json",
            paths.reports / "data_quality.json",
            calibration_file,
            paths.models,
        )
        if p.exists()
    ]
    total = None
    if isinstance(quality, dict):
        for key in ("n_people", "n_persons", "n"):
            if key in quality:
                total = quality[key]
                break
        else:
            total = ((quality.get("tables") or {}).get("people") or {}).get("n_rows")
    return ReportView(
        title=params.report.title,
        source=source,
        targets=tuple(views),
        population=pl.concat(populations) if populations else empty(POPULATION_SCHEMA),
        population_total=total,
        data_quality=quality or {},
        synthetic_calibration=synthetic,
        outreach_meta={k: v for k, v in (outreach or {}).items() if k != "targets"},
        fair_low=params.audit.fair_ratio_low,
        fair_high=params.audit.fair_ratio_high,
        confidence=params.audit.confidence,
        has_truth=has_truth,
        inputs_used=tuple(used),
        notes=tuple(notes),
        icb_names=icb_names(paths),
    )
