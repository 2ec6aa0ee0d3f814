"""The report's own view of its inputs: small, normalised Polars frames per target.

:mod:`pipeline.report.inputs` maps the upstream files (audit, outreach, train, validate,
synthesize) onto these frames; where a frame mirrors an audit table its columns are the
contract's (:mod:`pipeline.contract`, docs/audit_tables.md). Everything downstream (findings,
charts, tables) reads only these, so a change in an upstream layout touches one module. Every
frame may be empty: its section then says the analysis is not available instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import polars as pl

from pipeline import contract
from pipeline.config import Objective
from pipeline.contract import TableSchema

_METRICS: Final = contract.GROUP_METRICS_SCHEMA
GROUPS_SCHEMA: Final[TableSchema] = {
    "dimension": pl.String,
    "group": pl.String,
    "group_order": pl.Int32,
    **{
        name: _METRICS[name]
        for name in (
            "n",  # published counts: "*" or digits
            "n_events",
            "n_selected",
            "stable",
            "is_reference",
            "metric",
            "value",
            "ci_low",
            "ci_high",
            "suppressed",
            "ratio",
            "ratio_ci_low",
            "ratio_ci_high",
            "flagged",
            "comparator",
            "flag_reason",
            "reference_group",
        )
    },
}
"""Long: one row per (dimension, group, metric), from ``group_metrics.parquet`` (the
reference group's own ratio is null). ``suppressed``: value and CI withheld (a count is 1-7)."""

GRADIENTS_SCHEMA: Final[TableSchema] = contract.GRADIENTS_SCHEMA
"""``gradients.parquet`` as written, one dimension at a time."""
GRADIENT_POINTS_SCHEMA: Final[TableSchema] = {
    "indicator": pl.String,
    "group": pl.String,  # IMD decile or quintile label, 1 = most deprived
    "rank_mid": pl.Float64,  # midpoint of the group's cumulative population rank, 0-1
    "value": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
}
HEAT_SCHEMA: Final[TableSchema] = contract.HEAT_SCHEMA
"""``heat.parquet`` as written."""
LABEL_CHOICE_SCHEMA: Final[TableSchema] = {
    "need_measure": pl.String,
    "dimension": pl.String,
    "group": pl.String,
    "group_order": pl.Int32,
    "percentile": pl.Float64,
    "mean_need": pl.Float64,
}
LABEL_SUMMARY_SCHEMA: Final[TableSchema] = {
    "need_measure": pl.String,  # recorded_need, true_need
    "dimension": pl.String,
    "group": pl.String,
    "group_order": pl.Int32,
    "is_reference": pl.Boolean,
    "n": pl.String,
    "stable": pl.Boolean,
    "need_gap": pl.Float64,  # mean need minus the reference's at the same score percentile
    "need_gap_ci_low": pl.Float64,
    "need_gap_ci_high": pl.Float64,
    "need_ratio": pl.Float64,
    "need_ratio_ci_low": pl.Float64,
    "need_ratio_ci_high": pl.Float64,
    "cutoff_gap": pl.Float64,  # among the selected: mean need minus the reference's
    "disadvantaged": pl.Boolean,
    "share_selected_by_score": pl.Float64,
    "share_selected_by_need": pl.Float64,
    "share_selected_by_oracle": pl.Float64,
}
"""``need_gaps.parquet`` with each group's ``selection_shares.parquet`` shares beside it."""
MITIGATION_SCHEMA: Final[TableSchema] = {
    "strategy": pl.String,
    "label": pl.String,
    "events_reached": pl.String,  # published count
    "share_of_events_reached": pl.Float64,
    "tpr_gap": pl.Float64,  # need reached (true-need cases with truth), best - worst quintile
    "recorded_gap": pl.Float64,  # recorded-outcome TPR, best - worst quintile
    "events_averted": pl.String,  # published count, when the audit simulates it (else null)
    "group": pl.String,  # a selection-share column per group, long
    "selection_share": pl.Float64,
}
CALIBRATION_SCHEMA: Final[TableSchema] = {
    "dimension": pl.String,
    "group": pl.String,
    "group_order": pl.Int32,
    "mean_predicted": pl.Float64,
    "observed_rate": pl.Float64,
}
PERFORMANCE_SCHEMA: Final[TableSchema] = {
    "metric": pl.String,
    "value": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
}
OUTREACH_SCHEMA: Final[TableSchema] = {
    "dimension": pl.String,
    "group": pl.String,
    "group_order": pl.Int32,
    "n_list": pl.String,
    "share_eligible": pl.Float64,
    "share_list": pl.Float64,
    "share_need": pl.Float64,
}
POPULATION_SCHEMA: Final[TableSchema] = {
    "target": pl.String,
    "dimension": pl.String,
    "group": pl.String,
    "group_order": pl.Int32,
    "n": pl.String,
}


def empty(schema: TableSchema) -> pl.DataFrame:
    """An empty frame with ``schema``."""
    return pl.DataFrame(schema=schema)


def conform(frame: pl.DataFrame, schema: TableSchema) -> pl.DataFrame:
    """Select and cast ``frame`` to ``schema``; missing columns become nulls."""
    return frame.select(
        [
            pl.col(name).cast(dtype, strict=False)
            if name in frame.columns
            else pl.lit(None, dtype=dtype).alias(name)
            for name, dtype in schema.items()
        ]
    )


@dataclass(frozen=True)
class TargetView:
    """Everything the report shows about one target."""

    target: str
    description: str
    outcome: str
    groups: pl.DataFrame = field(default_factory=lambda: empty(GROUPS_SCHEMA))
    gradients: pl.DataFrame = field(default_factory=lambda: empty(GRADIENTS_SCHEMA))
    gradient_points: pl.DataFrame = field(default_factory=lambda: empty(GRADIENT_POINTS_SCHEMA))
    gradient_lines: pl.DataFrame = field(default_factory=lambda: empty(GRADIENTS_SCHEMA))
    """SII/RII across the same groups as ``gradient_points`` (quintiles), for the chart lines."""
    heat: pl.DataFrame = field(default_factory=lambda: empty(HEAT_SCHEMA))
    funnel: pl.DataFrame = field(default_factory=lambda: empty(contract.FUNNEL_SCHEMA))
    """``funnel.parquet`` as written: geographies against the population value."""
    label_choice: pl.DataFrame = field(default_factory=lambda: empty(LABEL_CHOICE_SCHEMA))
    label_summary: pl.DataFrame = field(default_factory=lambda: empty(LABEL_SUMMARY_SCHEMA))
    mitigation: pl.DataFrame = field(default_factory=lambda: empty(MITIGATION_SCHEMA))
    impact: pl.DataFrame = field(default_factory=lambda: empty(contract.IMPACT_SCHEMA))
    """``impact.parquet``: events averted per policy x group (:mod:`pipeline.impact`)."""
    impact_gradient: pl.DataFrame = field(
        default_factory=lambda: empty(contract.IMPACT_GRADIENT_SCHEMA)
    )
    """``impact_gradient.parquet``: the outcome gap across IMD quintiles, before and after."""
    calibration: pl.DataFrame = field(default_factory=lambda: empty(CALIBRATION_SCHEMA))
    performance: pl.DataFrame = field(default_factory=lambda: empty(PERFORMANCE_SCHEMA))
    curves: dict[str, pl.DataFrame] = field(default_factory=dict)
    outreach: pl.DataFrame = field(default_factory=lambda: empty(OUTREACH_SCHEMA))
    operating_point: dict[str, Any] = field(default_factory=dict)
    audit_headline: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    """Published cohort counts: n_eligible, n_test, n_events, n_selected, n_list."""
    notes: tuple[str, ...] = ()
    """What was missing or odd in this target's inputs (shown under Limitations)."""
    unaudited: dict[str, str] = field(default_factory=dict)
    """Audit dimensions the extract could not support, with why (``unaudited_dimensions`` of
    the audit summary): their sections say so instead of drawing them."""
    split: str = "test"
    case_definition: str = ""
    truth_events: bool = False
    """Mitigation counts events expected from the oracle (true) risk, not recorded outcomes."""
    """Who counts as a 'case' for need reached (e.g. "top 20% of the cohort by true need")."""


@dataclass(frozen=True)
class ReportView:
    """The whole report's data."""

    title: str
    source: str  # "synthetic" or "extract"
    targets: tuple[TargetView, ...]
    population: pl.DataFrame = field(default_factory=lambda: empty(POPULATION_SCHEMA))
    population_total: Any = None
    data_quality: dict[str, Any] = field(default_factory=dict)
    synthetic_calibration: dict[str, Any] | None = None
    outreach_meta: dict[str, Any] = field(default_factory=dict)
    fair_low: float = 0.8
    fair_high: float = 1.25
    confidence: float = 0.95
    has_truth: bool = False
    inputs_used: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    icb_names: dict[str, str] = field(default_factory=dict)
    """ICB code -> name (from the population's areas table when present)."""
    objective: Objective = "events_reached_no_wider_gap"
    """``params.report.objective``: what the summary's recommendation maximises."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Date, commit, data hash, params digest, model versions (``pipeline.report.provenance``)."""
    list_sizes: dict[str, str] = field(default_factory=dict)
    """Target -> people on its outreach lists, as published (``outreach_summary.json``)."""
