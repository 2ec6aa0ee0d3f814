"""Read the upstream outputs and map them onto the report's normalised view.

The only module of the report that knows the upstream files; their layouts are typed in
:mod:`pipeline.contract` (section "Stage outputs: audit -> report") and documented in
docs/audit_tables.md:

- ``reports/audit/<target>/*.parquet``: the audit's disclosure-controlled tables
  (:data:`~pipeline.contract.AUDIT_TABLES`), read as written;
- ``reports/audit/<target>/audit.json`` (:class:`~pipeline.contract.AuditSummary`) and
  ``reports/metrics/audit_<target>.json`` (:class:`~pipeline.contract.AuditHeadline`);
- ``models/<target>/metrics.json`` and ``metrics/<target>/plots/*.csv``: test-split performance;
- ``reports/outreach_summary.json`` (:class:`~pipeline.contract.OutreachSummary`);
- ``reports/data_quality.json`` and ``reports/synthetic_calibration.json`` (absent for a real
  extract: the report says so and carries on).

A missing or unreadable optional input becomes an empty frame plus a note under Limitations;
a report with no audit at all is refused (:class:`~pipeline.errors.StageError`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import polars as pl
from pydantic import BaseModel, ValidationError

from pipeline import contract
from pipeline.disclosure import SUPPRESSED
from pipeline.errors import StageError
from pipeline.headline import plots_folder
from pipeline.io import Paths, read_json, scan_table
from pipeline.report.fmt import to_float
from pipeline.report.model import (
    CALIBRATION_SCHEMA,
    GRADIENT_POINTS_SCHEMA,
    GROUPS_SCHEMA,
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
    from pipeline.config import Params, TargetParams

PERFORMANCE_METRICS: Final = (*contract.MODEL_METRICS, *contract.ORACLE_METRICS)
POLICY_LABELS: Final = {
    "risk": "Rank by predicted risk (as now)",
    "equal_opportunity": "Equal opportunity across IMD quintiles (fairlearn ThresholdOptimizer)",
    "core20plus5": "Core20PLUS5 uplift (IMD quintile 1 and PLUS groups)",
    "need_based": "Model trained on a need-based label",
    "need_adjusted": "Model trained on a need-based label",
}
ORDERED_POLICIES: Final = ("risk", "equal_opportunity", "core20plus5", "need_based")
SummaryT = TypeVar("SummaryT", bound=BaseModel)


# --- ordering of group labels -------------------------------------------------------------------


def _position(label: pl.Expr, labels: tuple[str, ...], *, default: int) -> pl.Expr:
    return label.replace_strict(
        {name: index for index, name in enumerate(labels)}, default=default, return_dtype=pl.Int32
    )


def _leading_int(text: pl.Expr, *, default: int) -> pl.Expr:
    return text.str.extract(r"^(\d+)").cast(pl.Int32, strict=False).fill_null(default)


def group_order_expr(dimension: str = "dimension", group: str = "group") -> pl.Expr:
    """A stable display order (Int32 ``group_order``): IMD by number, regions and ethnic groups
    in the contract's order, age bands by their lower bound, ethnicity x IMD by group then
    quintile; everything else 0 (alphabetical by the caller's sort)."""
    dim, label = pl.col(dimension), pl.col(group)
    whole_number = pl.when(label.str.contains(r"^\d+$")).then(label.cast(pl.Int32, strict=False))
    # "<ethnic group>, IMD <quintile>": split at the last separator
    parts = label.str.extract_groups(r"^(.*), IMD (.*)$")
    quintile = pl.coalesce(parts.struct.field("2"), label)
    ethnicity = parts.struct.field("1").fill_null("")
    return (
        pl.when(label.is_null())
        .then(9_999)
        .when(dim.is_in(["imd_quintile", "imd_decile"]))
        .then(whole_number.fill_null(99))
        .when(dim == "region")
        .then(_position(label, contract.REGIONS, default=0))
        .when(dim == "ethnicity_group")
        .then(_position(label, contract.BROAD_ETHNIC_GROUPS, default=0))
        .when(dim == "age_band")
        .then(_leading_int(label, default=999))
        .when(dim == "ethnicity_group_x_imd_quintile")
        .then(
            _position(ethnicity, contract.BROAD_ETHNIC_GROUPS, default=9) * 10
            + pl.when(quintile.str.contains(r"^\d+$"))
            .then(quintile.cast(pl.Int32, strict=False))
            .otherwise(9)
        )
        .otherwise(0)
        .cast(pl.Int32)
        .alias("group_order")
    )


def _finite(frame: pl.DataFrame) -> pl.DataFrame:
    """NaN or infinite (an undefined estimate) -> null: the report shows it as not available."""
    floats = pl.col(pl.Float64)
    return frame.with_columns(pl.when(floats.is_finite()).then(floats))


# --- audit tables -> view frames (pure) ---------------------------------------------------------


def read_audit_tables(folder: Path) -> dict[str, pl.DataFrame]:
    """Every table of :data:`~pipeline.contract.AUDIT_TABLES` under ``folder``, checked against
    its contract schema.

    Raises
    ------
    StageError
        When a table is missing or its columns are not the contract's.
    """
    tables = {}
    for name, table in contract.AUDIT_TABLES.items():
        path = folder / table.file
        if not path.exists():
            raise StageError(f"report: {path} not found; run the audit first")
        frame = pl.read_parquet(path)
        if dict(frame.schema) != table.schema:
            raise StageError(f"report: {path}: columns differ from contract.AUDIT_TABLES[{name!r}]")
        tables[name] = _finite(frame)
    return tables


def groups_view(group_metrics: pl.DataFrame) -> pl.DataFrame:
    """``group_metrics.parquet`` -> ``GROUPS_SCHEMA`` (a group is not compared with itself)."""
    own = [
        pl.when(pl.col("is_reference")).then(None).otherwise(pl.col(name)).alias(name)
        for name in ("ratio", "ratio_ci_low", "ratio_ci_high")
    ]
    return group_metrics.with_columns(group_order_expr(), *own).select(list(GROUPS_SCHEMA))


def gradient_points(groups: pl.DataFrame, reach: pl.DataFrame) -> pl.DataFrame:
    """Quintile points for the gradient charts, each at the midpoint of its population rank.

    outcome_rate <- base_rate, selection_rate <- selection_rate, need_reached <- the risk
    policy's ``case_tpr`` by IMD quintile (``reach``: ``mitigation_by_group.parquet``).
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
    frames = [
        imd.filter((pl.col("metric") == metric) & ~pl.col("suppressed"))
        .select("group", "value", "ci_low", "ci_high")
        .with_columns(pl.lit(indicator).alias("indicator"))
        for indicator, metric in (
            ("outcome_rate", "base_rate"),
            ("selection_rate", "selection_rate"),
        )
    ]
    frames.append(
        reach.filter(
            (pl.col("policy") == "risk")
            & (pl.col("dimension") == "imd_quintile")
            & pl.col("case_tpr").is_not_null()
        ).select(
            "group",
            pl.col("case_tpr").alias("value"),
            pl.lit(None, dtype=pl.Float64).alias("ci_low"),
            pl.lit(None, dtype=pl.Float64).alias("ci_high"),
            pl.lit("need_reached").alias("indicator"),
        )
    )
    points = pl.concat(frames, how="diagonal_relaxed").join(sizes, on="group", how="inner")
    points = points.with_columns(
        pl.col("ci_low").fill_null(pl.col("value")), pl.col("ci_high").fill_null(pl.col("value"))
    )
    return conform(points, GRADIENT_POINTS_SCHEMA).sort("indicator", "rank_mid")


def label_summary_view(need_gaps: pl.DataFrame, shares: pl.DataFrame) -> pl.DataFrame:
    """``need_gaps.parquet`` with each group's share of the list when ranked by score, by true
    need and by oracle risk (``selection_shares.parquet``) -> ``LABEL_SUMMARY_SCHEMA``."""
    beside = shares.select(
        "dimension",
        "group",
        pl.col("share_by_risk_score").alias("share_selected_by_score"),
        pl.col("share_by_true_need").alias("share_selected_by_need"),
        pl.col("share_by_oracle_risk").alias("share_selected_by_oracle"),
    )
    return (
        need_gaps.join(beside, on=["dimension", "group"], how="left", maintain_order="left")
        .with_columns(group_order_expr(), pl.col("disadvantaged").fill_null(False))
        .select(list(LABEL_SUMMARY_SCHEMA))
    )


def label_curves(frame: pl.DataFrame) -> pl.DataFrame:
    """``need_by_score.parquet`` -> mean need per group and score percentile (0-100 scale)."""
    if frame.is_empty():
        return empty(LABEL_CHOICE_SCHEMA)
    bins = frame["score_percentile"].max() or 100
    curves = frame.filter(
        pl.col("mean_need").is_not_null() & ~pl.col("suppressed") & (pl.col("n") != SUPPRESSED)
    )
    return conform(
        curves.with_columns(
            (pl.col("score_percentile").cast(pl.Float64) * 100.0 / to_float(bins)).alias(
                "percentile"
            ),
            group_order_expr(),
        ),
        LABEL_CHOICE_SCHEMA,
    )


def mitigation_view(
    tradeoffs: pl.DataFrame, reach: pl.DataFrame, impact: pl.DataFrame
) -> pl.DataFrame:
    """``mitigation.parquet`` with the IMD quintiles' selection shares of
    ``mitigation_by_group.parquet`` and each policy's simulated events averted (the overall row
    of ``impact.parquet``) -> ``MITIGATION_SCHEMA`` (one row per policy x quintile).

    With expected true events (oracle) the events reached are those and the gap is the gap in
    cases reached; otherwise recorded events and the recorded-outcome TPR gap.
    """
    if tradeoffs.is_empty():
        return empty(MITIGATION_SCHEMA)
    truth = tradeoffs["n_expected_true_events_reached"].is_not_null().any()
    policy = pl.col("policy")
    policies = tradeoffs.select(
        policy.alias("strategy"),
        policy.replace_strict(POLICY_LABELS, default=policy).alias("label"),
        pl.col("n_expected_true_events_reached" if truth else "n_events_reached").alias(
            "events_reached"
        ),
        pl.col("share_of_true_events_reached" if truth else "share_of_events_reached").alias(
            "share_of_events_reached"
        ),
        (pl.coalesce("case_tpr_gap", "tpr_gap") if truth else pl.col("tpr_gap")).alias("tpr_gap"),
        pl.col("tpr_gap").alias("recorded_gap"),
        _position(policy, ORDERED_POLICIES, default=99).alias("_rank"),
    )
    averted = impact.filter(pl.col("dimension") == "overall").select(
        pl.col("policy").alias("strategy"), pl.col("n_events_averted").alias("events_averted")
    )
    policies = policies.join(averted, on="strategy", how="left")
    shares = reach.filter(pl.col("dimension") == "imd_quintile").select(
        pl.col("policy").alias("strategy"), "group", "selection_share", group_order_expr()
    )
    return conform(
        policies.join(shares, on="strategy", how="left").sort(
            "_rank", "strategy", "group_order", "group", nulls_last=True
        ),
        MITIGATION_SCHEMA,
    )


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


# --- other stages' summaries -> frames (pure) ---------------------------------------------------


def outreach_from_summary(
    summary: contract.OutreachSummary | None, target: str, *, has_truth: bool
) -> pl.DataFrame:
    """One target's list make-up -> ``OUTREACH_SCHEMA``.

    Need share: each group's share of true need (synthetic data), else its share of the
    recorded events in the test split (from published counts; '*' counts leave it blank).
    """
    block = summary.targets.get(target) if summary is not None else None
    rows = [
        {
            "dimension": dimension,
            "group": group.group,
            "n_list": None if group.n_selected is None else str(group.n_selected),
            "share_eligible": _number(group.share_of_eligible),
            "share_list": _number(group.share_of_selected),
            "true_need_given": has_truth and group.share_of_true_need is not None,
            "share_true_need": _number(group.share_of_true_need),
            "n_events": _number((group.test_split or {}).get("n_events")),
        }
        for dimension, groups in (block.make_up if block is not None else {}).items()
        for group in groups
    ]
    if not rows:
        return empty(OUTREACH_SCHEMA)
    events_share = pl.col("n_events") / pl.col("n_events").sum().over("dimension")
    frame = pl.DataFrame(rows, infer_schema_length=None).with_columns(
        pl.when(pl.col("true_need_given"))
        .then(pl.col("share_true_need"))
        .otherwise(pl.when(pl.col("n_events").sum().over("dimension") > 0).then(events_share))
        .alias("share_need"),
        group_order_expr(),
    )
    return conform(frame, OUTREACH_SCHEMA)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None or value == SUPPRESSED:
        return None
    if isinstance(value, int | float):
        return float(value)
    return None


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


def _read_summary(
    model: type[SummaryT], path: Path, notes: list[str], what: str
) -> SummaryT | None:
    """A contract summary, or None with a note when it is missing or does not follow it."""
    if not path.exists():
        notes.append(f"{what} was not available ({path.name} missing).")
        return None
    try:
        return contract.read_summary(model, path)
    except (OSError, ValidationError) as error:
        first = str(error).splitlines()[0]
        notes.append(f"{what} could not be read ({path.name}: {first}).")
        return None


def _as_dict(summary: BaseModel | None, **options: Any) -> dict[str, Any]:
    """A summary as the plain JSON-like dict the presentation reads."""
    if summary is None:
        return {}
    return summary.model_dump(mode="json", exclude_unset=True, **options)


def _operating_point(summary: contract.AuditSummary) -> dict[str, Any]:
    operating = summary.operating_point.model_dump(mode="json")
    if summary.operating_point.capacity_mode == "share":
        operating["cutoff_percentile"] = 100.0 * (1.0 - summary.operating_point.capacity)
    return operating


def sample_notes(settings: contract.AuditSettings) -> list[str]:
    """What the reader must know when the audit's tables are of seeded samples (populations
    past ``audit.max_audited_rows`` / ``audit.max_cohort_rows``: docs/audit_tables.md)."""
    notes = []
    if settings.audited_rows_sampled:
        notes.append(
            f"The audit's group tables describe a random sample of {settings.max_audited_rows:,} "
            "people of the audited split, not all of it (audit.max_audited_rows): counts are "
            "the sample's; rates and ratios estimate the whole split's."
        )
    if settings.cohort_rows_sampled:
        notes.append(
            f"The policies' trade-offs and their impact are simulated on a random sample of "
            f"{settings.max_cohort_rows:,} eligible people (audit.max_cohort_rows): their "
            "counts are the sample's."
        )
    return notes


def _audit_summary(path: Path, target: str) -> contract.AuditSummary:
    if not path.exists():
        raise StageError(
            f"report: {path} not found; run the audit first "
            f"(python -m pipeline audit --target {target})"
        )
    try:
        return contract.read_summary(contract.AuditSummary, path)
    except ValidationError as error:
        raise StageError(f"report: {path} does not follow contract.AuditSummary: {error}") from None


def _target_view(
    name: str,
    target: TargetParams,
    paths: Paths,
    outreach: contract.OutreachSummary | None,
    has_truth: bool,
) -> tuple[TargetView, pl.DataFrame]:
    """One target's view and its groups' sizes, from its audit folder, headline and model."""
    notes: list[str] = []
    folder = paths.reports / "audit" / name
    summary = _audit_summary(folder / contract.AUDIT_SUMMARY_FILE, name)
    notes += [
        f"{dimension.replace('_', ' ')} could not be audited: {reason}."
        for dimension, reason in summary.unaudited_dimensions.items()
    ]
    notes += sample_notes(summary.settings)
    tables = read_audit_tables(folder)
    groups = groups_view(tables["group_metrics"])
    if groups.is_empty():
        raise StageError(f"report: {folder}: no group metrics")
    headline = _read_summary(
        contract.AuditHeadline,
        paths.reports / "metrics" / f"audit_{name}.json",
        notes,
        "The audit headline",
    )
    metrics = _read_optional(paths.models / name / "metrics.json", notes, "Model metrics") or {}
    gradients = tables["gradients"]
    view = TargetView(
        target=name,
        description=target.description,
        outcome=target.outcome.replace("_", " "),
        groups=groups.filter(pl.col("dimension") != "overall"),
        gradients=gradients.filter(pl.col("dimension") == "imd_decile"),
        gradient_points=gradient_points(groups, tables["mitigation_by_group"]),
        gradient_lines=gradients.filter(pl.col("dimension") == "imd_quintile"),
        heat=tables["heat"],
        funnel=tables["funnel"],
        label_choice=label_curves(tables["need_by_score"]),
        label_summary=label_summary_view(tables["need_gaps"], tables["selection_shares"]),
        mitigation=mitigation_view(
            tables["mitigation"], tables["mitigation_by_group"], tables["impact"]
        ),
        impact=tables["impact"],
        impact_gradient=tables["impact_gradient"],
        calibration=empty(CALIBRATION_SCHEMA),
        performance=performance_from_metrics(metrics),
        curves=_model_curves(plots_folder(paths.root, name)),
        outreach=outreach_from_summary(outreach, name, has_truth=has_truth),
        operating_point=_operating_point(summary),
        audit_headline={} if headline is None else dict(headline.root),
        counts=_headline_counts(
            groups,
            summary,
            outreach=outreach.targets.get(name) if outreach is not None else None,
            metrics=metrics,
        ),
        notes=tuple(notes),
        unaudited=dict(summary.unaudited_dimensions),
        split=summary.split,
        case_definition=summary.settings.need_case_definition,
        truth_events=tables["mitigation"]["n_expected_true_events_reached"].is_not_null().any(),
    )
    return view, population_from_audit(name, groups)


def _model_curves(folder: Path) -> dict[str, pl.DataFrame]:
    """The train stage's test-split curves (``plots/<curve>.csv``) that exist."""
    return {
        curve: pl.read_csv(folder / f"{curve}.csv", schema=schema)
        for curve, schema in contract.MODEL_CURVES.items()
        if (folder / f"{curve}.csv").exists()
    }


def _headline_counts(
    groups: pl.DataFrame,
    summary: contract.AuditSummary,
    *,
    outreach: contract.OutreachTarget | None,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Eligible (outreach, else the model's cohort), audited, events and selected (overall)."""
    overall = groups.filter(pl.col("dimension") == "overall")
    first = overall.row(0, named=True) if overall.height else {}
    return {
        "n_eligible": outreach.n_eligible if outreach is not None else metrics.get("n_cohort"),
        "n_audited": first.get("n", summary.n),
        "n_events": first.get("n_events"),
        "n_selected": first.get("n_selected"),
    }


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
        When a target has no ``reports/audit/<target>/audit.json`` or its tables do not
        follow the contract.
    """
    notes: list[str] = []
    outreach = _read_summary(
        contract.OutreachSummary,
        paths.reports / "outreach_summary.json",
        notes,
        "The outreach summary",
    )
    quality = _read_summary(
        contract.DataQuality, paths.reports / "data_quality.json", notes, "The data quality summary"
    )
    synthetic = _read_synthetic(paths.reports / "synthetic_calibration.json")
    has_truth = (outreach is not None and outreach.truth_available) or (
        paths.truth / "people.parquet"
    ).exists()
    built = [
        _target_view(name, target, paths, outreach, has_truth)
        for name, target in params.targets.items()
    ]
    views = [view for view, _ in built]
    populations = [population for _, population in built]
    has_truth = has_truth or any(
        v.label_summary.filter(pl.col("need_measure") == "true_need").height for v in views
    )
    return ReportView(
        title=params.report.title,
        source="synthetic" if params.population.source == "synthetic" else "extract",
        targets=tuple(views),
        population=pl.concat(populations) if populations else empty(POPULATION_SCHEMA),
        population_total=None if quality is None else quality.n_people,
        data_quality=_as_dict(quality),
        synthetic_calibration=None if synthetic is None else _as_dict(synthetic),
        outreach_meta=_as_dict(outreach, exclude={"targets"}),
        fair_low=params.audit.fair_ratio_low,
        fair_high=params.audit.fair_ratio_high,
        confidence=params.audit.confidence,
        has_truth=has_truth,
        inputs_used=_inputs_used(paths),
        notes=tuple(notes),
        icb_names=icb_names(paths),
    )


def _read_synthetic(path: Path) -> contract.SyntheticCalibration | None:
    """The synthesiser's calibration summary; None for a real extract (no such file)."""
    return contract.read_summary(contract.SyntheticCalibration, path) if path.exists() else None


def _inputs_used(paths: Paths) -> tuple[str, ...]:
    """The upstream files and folders the report read that exist, relative to the root."""
    candidates = (
        paths.population / "areas.parquet",
        paths.reports / "audit",
        paths.reports / "metrics",
        paths.reports / "outreach_summary.json",
        paths.reports / "data_quality.json",
        paths.reports / "synthetic_calibration.json",
        paths.models,
    )
    return tuple(str(p.relative_to(paths.root)) for p in candidates if p.exists())
