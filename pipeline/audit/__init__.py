"""Stage ``audit``: equity audit of one target's risk scores (one DVC stage per target).

Reads ``data/scores/<target>.parquet``, ``features/features.parquet`` (sensitive attributes and
recorded multimorbidity) and, when present, ``data/truth/``; writes aggregate,
disclosure-controlled tables and the ``audit.json`` summary to ``reports/audit/<target>/``
(typed in :mod:`pipeline.contract`, documented in docs/audit_tables.md) and headline figures to
``reports/metrics/audit_<target>.json`` (and the target's MLflow run). The need-based policy
reads ``data/scores/need/<target>.parquet`` from the ``need`` stage (:mod:`pipeline.need`).

Modules: :mod:`~pipeline.audit.cohort` (join, operating point), :mod:`~pipeline.audit.cells`
(MetricFrame on weighted cells, bootstrap of cell counts), :mod:`~pipeline.audit.gradients`
(SII/RII, WHO HEAT), :mod:`~pipeline.audit.label_choice` (Obermeyer), :mod:`~pipeline.audit.
mitigation` (policy trade-off), :mod:`~pipeline.audit.publish` (disclosure control).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import polars as pl
from rich.console import Console

from pipeline import console, contract, engine, fairness, io, seeds, selection, tracking
from pipeline import impact as impact_mod
from pipeline.audit import (
    bounded,
    flags,
    funnel,
    gradients,
    label_choice,
    mitigation,
    publish,
    read,
)
from pipeline.audit import cells as cells_mod
from pipeline.audit import cohort as cohort_mod
from pipeline.audit.aggregate import grouped_moments
from pipeline.config import AuditParams, ImpactParams, OperatingPointParams, OutreachParams, Params
from pipeline.disclosure import Rule
from pipeline.errors import ContractError, ParamsError, StageError
from pipeline.headline import AUDIT_HEADLINE, write_headline

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "audit_summary",
    "audit_tables",
    "dimension_tables",
    "equal_opportunity_thresholds",
    "flag_need_gaps",
    "funnel_counts",
    "gradient_table",
    "headline_metrics",
    "heat_table",
    "label_choice_tables",
    "mitigation_tables",
    "need_gap_rows",
    "planted_bias_check",
    "published_tables",
    "run",
    "truth_available",
    "with_score_bins",
]

_console = Console(stderr=True)


def _warn(message: str) -> None:
    """A non-fatal problem the user should see (printed, so tests' warnings-as-errors and DVC
    runs both carry on)."""
    _console.print(f"[yellow]warning:[/] {message}", highlight=False)


ORDERED_DIMENSIONS: Final = ("imd_quintile", "imd_decile", "age_band")
"""Dimensions with an order (gradients); the rest get WHO HEAT summaries."""
HEADLINE_RATIO_METRICS: Final = ("selection_rate", "tpr", "ppv", "oe_ratio")


def _check_params(audit: AuditParams) -> None:
    if audit.bootstrap_score_bins > audit.score_bins:
        raise ParamsError("audit.bootstrap_score_bins must not exceed audit.score_bins")


# --- pure computation -----------------------------------------------------------------------------


def audit_tables(
    cohort: pl.DataFrame,
    *,
    audit: AuditParams,
    operating_point: OperatingPointParams,
    outreach: OutreachParams,
    seed: int,
    target: str,
    whole_cohort: pl.DataFrame | None = None,
    impact: ImpactParams | None = None,
    sampled_cut_score: tuple[float | None] | None = None,
) -> dict[str, Any]:
    """Every raw (not yet disclosure-controlled) audit table for one audited cohort.

    Parameters
    ----------
    cohort
        Audited people from :func:`~pipeline.audit.cohort.build_cohort` (one split), with
        ``need_score`` when the need-based model ran.
    audit, operating_point, outreach
        The params sections used (``outreach``: the Core20PLUS5 policy's uplifts); every random
        stream derives from the root ``seed``, the ``target`` and a purpose name.
    whole_cohort
        The whole eligible cohort (every split; default: ``cohort``): the equal-opportunity
        thresholds are fitted on it at the operating point exactly as outreach fits them
        (:func:`pipeline.fairness.fit_equal_opportunity`), and the outcomes of each policy's
        contacts (``impact``) are simulated on it - the people the lists would contact - so
        that small targets' figures are not lost to suppression in one split.
    impact
        The outcome simulation's params (:mod:`pipeline.impact`; default: ``ImpactParams()``).
    sampled_cut_score
        When ``whole_cohort`` is a sample (``audit.max_cohort_rows``): the whole cohort's
        lowest selected risk score, as a 1-tuple (its value may be None); the fit then uses it
        rather than the sample's own (:func:`pipeline.fairness.fit_equal_opportunity_at`).

    Returns
    -------
    dict
        Frames ``groups``, ``group_metrics``, ``gradients``, ``heat``, ``need_curves``,
        ``need_gaps``, ``selection_shares``, ``mitigation``, ``mitigation_by_group``,
        ``impact``, ``impact_gradient``; and
        ``equal_opportunity_thresholds``, ``score_resolution``, ``has_truth``, ``has_oracle``.
    """
    has_truth, has_oracle = truth_available(cohort)
    cohort, bin_score, resolution = with_score_bins(cohort, score_bins=audit.score_bins)
    groups, metrics = dimension_tables(cohort, bin_score, audit=audit, seed=seed, target=target)
    case = "true_case" if has_truth else "outcome_case"
    tables: dict[str, Any] = {
        "score_resolution": resolution,
        "has_truth": has_truth,
        "has_oracle": has_oracle,
        "groups": groups,
        "group_metrics": metrics,
        "gradients": gradient_table(cohort, case=case, audit=audit, seed=seed, target=target),
        "heat": heat_table(cohort, case=case, audit=audit, seed=seed, target=target),
        "funnel": funnel_counts(cohort, audit=audit),
    }
    cohort = label_choice.add_score_percentile(cohort, n_bins=audit.label_choice_bins)
    unit = selection.unit_column(operating_point.capacity_mode)
    tables |= label_choice_tables(
        cohort, audit=audit, unit=unit, has_truth=has_truth, has_oracle=has_oracle
    )
    tables |= mitigation_tables(
        cohort,
        whole_cohort=cohort if whole_cohort is None else whole_cohort,
        operating_point=operating_point,
        outreach=outreach,
        impact=impact,
        confidence=audit.confidence,
        impact_rng=seeds.rng("audit", target, "impact", root=seed),
        unit=unit,
        has_truth=has_truth,
        min_group_events=audit.min_group_events,
        rng=seeds.rng("equal_opportunity", target, root=seed),
        sampled_cut_score=sampled_cut_score,
    )
    return tables


def with_score_bins(
    cohort: pl.DataFrame, *, score_bins: int
) -> tuple[pl.DataFrame, np.ndarray, str]:
    """The cohort with ``score_bin`` (:func:`pipeline.audit.cells.add_score_bins`), the
    ``overall`` dimension of one group and ``outcome_case``; each bin's score; the resolution."""
    cohort, resolution = cells_mod.add_score_bins(cohort, score_bins=score_bins)
    bin_score = cells_mod.bin_scores(cohort)
    cohort = cohort.with_columns(
        pl.lit("All").alias("overall"), (pl.col("outcome") == 1).alias("outcome_case")
    )
    return cohort, bin_score, resolution


def truth_available(cohort: pl.DataFrame) -> tuple[bool, bool]:
    """Whether the cohort carries true need (for anyone) and oracle risk (for everyone)."""
    has_truth = "true_need" in cohort.columns and cohort["true_need"].null_count() < cohort.height
    has_oracle = "oracle_risk" in cohort.columns and cohort["oracle_risk"].null_count() == 0
    return has_truth, has_oracle


def dimension_tables(
    cohort: pl.DataFrame,
    bin_score: np.ndarray,
    *,
    audit: AuditParams,
    seed: int,
    target: str,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Group counts and group metrics (with bootstrap CIs) of ``overall`` and every audited
    dimension, each dimension on its own child of the target's ``bootstrap`` seed sequence."""
    dims = ("overall", *audit.dimensions)
    references: dict[str, str] = dict(audit.reference_groups.items())  # "overall" has none
    streams = seeds.sequence("audit", target, "bootstrap", root=seed).spawn(len(dims))
    all_cells = [cells_mod.build_cells(cohort, d, bin_score=bin_score) for d in dims]
    points = cells_mod.cells_metric_frames(all_cells)
    group_frames = [
        cells_mod.group_counts(
            cells, min_group_size=audit.min_group_size, min_group_events=audit.min_group_events
        )
        for cells in all_cells
    ]
    metric_frames = [
        cells_mod.audit_dimension(
            cells,
            preferred_reference=references.get(cells.dimension),
            n_bootstrap=audit.n_bootstrap,
            bootstrap_bins=audit.bootstrap_score_bins,
            rng=np.random.default_rng(stream),
            confidence=audit.confidence,
            min_group_size=audit.min_group_size,
            min_group_events=audit.min_group_events,
            point=point,
        )
        for cells, point, stream in zip(all_cells, points, streams, strict=True)
    ]
    return pl.concat(group_frames), pl.concat(metric_frames)


def funnel_counts(cohort: pl.DataFrame, *, audit: AuditParams) -> pl.DataFrame:
    """Observed and age/sex-standardised expected counts of every audited geography in
    ``audit.funnel_dimensions`` (:func:`pipeline.audit.funnel.standardised_counts`)."""
    empty = pl.DataFrame(
        schema={
            "dimension": pl.String,
            "group": pl.String,
            "metric": pl.String,
            "observed": pl.Int64,
            "expected": pl.Float64,
            "variance": pl.Float64,
        }
    )
    return pl.concat(
        [
            empty,
            *(
                funnel.standardised_counts(cohort, dimension)
                for dimension in audit.funnel_dimensions
                if dimension in audit.dimensions
            ),
        ]
    )


def gradient_table(
    cohort: pl.DataFrame, *, case: str, audit: AuditParams, seed: int, target: str
) -> pl.DataFrame:
    """SII/RII of ``case`` across IMD deciles and quintiles."""
    return pl.concat(
        [
            gradients.deprivation_gradients(
                cohort,
                case=case,
                n_monte_carlo=audit.n_monte_carlo,
                rng=seeds.rng("audit", target, f"sii:{dimension}", root=seed),
                confidence=audit.confidence,
                dimension=dimension,
            )
            for dimension in ("imd_decile", "imd_quintile")
        ]
    )


def heat_table(
    cohort: pl.DataFrame, *, case: str, audit: AuditParams, seed: int, target: str
) -> pl.DataFrame:
    """WHO HEAT summaries of ``case`` for every audited dimension without an order."""
    return pl.concat(
        [
            pl.DataFrame(schema=contract.HEAT_SCHEMA),  # typed even with no unordered dimension
            *(
                gradients.unordered_summaries(
                    cohort,
                    dimension,
                    case=case,
                    n_monte_carlo=audit.n_monte_carlo,
                    rng=seeds.rng("audit", target, f"heat:{dimension}", root=seed),
                    confidence=audit.confidence,
                    min_group_size=audit.min_group_size,
                )
                for dimension in audit.dimensions
                if dimension not in ORDERED_DIMENSIONS
            ),
        ]
    )


# --- label choice ---------------------------------------------------------------------------------


def label_choice_tables(
    cohort: pl.DataFrame,
    *,
    audit: AuditParams,
    unit: str | None,
    has_truth: bool,
    has_oracle: bool,
) -> dict[str, pl.DataFrame]:
    """``need_curves``, ``need_gaps`` (flagged) and ``selection_shares`` of every label-choice
    dimension.

    ``cohort`` has ``score_percentile`` (:func:`pipeline.audit.label_choice.
    add_score_percentile`); each dimension's reference group is ``audit.reference_groups``'
    (else its largest recorded group).
    """
    if not audit.label_choice_dimensions:  # none the extract defines: the columns, no rows
        shaped = audit.model_copy(update={"label_choice_dimensions": ("sex",)})
        tables = label_choice_tables(
            cohort, audit=shaped, unit=unit, has_truth=has_truth, has_oracle=has_oracle
        )
        return {name: frame.head(0) for name, frame in tables.items()}
    needs = ["recorded_need"] + (["true_need"] if has_truth else [])
    rankings = _rankings(has_truth=has_truth, has_oracle=has_oracle)
    curves, gaps, shares = [], [], []
    for dimension in audit.label_choice_dimensions:
        reference = _reference_of(cohort, dimension, audit.reference_groups.get(dimension))
        for need in needs:
            curves.append(label_choice.need_by_percentile(cohort, dimension, need))
            gaps.append(
                need_gap_rows(
                    cohort, dimension, need, reference=reference, confidence=audit.confidence
                )
            )
        shares.append(
            label_choice.selection_shares(
                cohort, dimension, rankings=rankings, unit=unit
            ).with_columns(pl.lit(dimension).alias("dimension"))
        )
    need_gaps = flag_need_gaps(
        pl.concat(gaps, how="diagonal_relaxed"),
        min_group_size=audit.min_group_size,
        need_ratio_material=audit.need_ratio_material,
        confidence=audit.confidence,
        fdr=audit.fdr,
    )
    return {
        "need_curves": pl.concat(curves),
        "need_gaps": need_gaps,
        "selection_shares": pl.concat(shares, how="diagonal_relaxed"),
    }


def _rankings(*, has_truth: bool, has_oracle: bool) -> dict[str, str]:
    rankings = {"risk_score": "risk_score"}
    if has_truth:
        rankings["true_need"] = "true_need"
    if has_oracle:
        rankings["oracle_risk"] = "oracle_risk"
    return rankings


def need_gap_rows(
    cohort: pl.DataFrame, dimension: str, need: str, *, reference: str, confidence: float
) -> pl.DataFrame:
    """Each group's need gap to ``reference`` at the same score and at the cut-off, with its
    size and mean need (one row per group)."""
    same_score = label_choice.need_gap_same_score(
        # compared within the audit's fine score cells, so the spread of scores inside
        # a percentile band cannot masquerade as a need gap
        label_choice.need_by_percentile(cohort, dimension, need, by="score_bin"),
        reference=reference,
        confidence=confidence,
    )
    at_cutoff = label_choice.need_gap_at_cutoff(
        cohort, dimension, need, reference=reference, confidence=confidence
    )
    sizes = grouped_moments(cohort, [dimension], [need]).select(
        dimension, pl.col("n").cast(pl.UInt32), pl.col(f"{need}_mean").alias("mean_need")
    )
    return (
        same_score.join(at_cutoff, on="group", how="full", coalesce=True)
        .join(sizes.rename({dimension: "group"}), on="group", how="left")
        .with_columns(
            pl.lit(dimension).alias("dimension"),
            pl.lit(need).alias("need_measure"),
            pl.lit(reference).alias("reference_group"),
            (pl.col("group") == reference).alias("is_reference"),
        )
    )


def flag_need_gaps(
    gaps: pl.DataFrame,
    *,
    min_group_size: int,
    need_ratio_material: float,
    confidence: float = 0.95,
    fdr: float = 0.05,
) -> pl.DataFrame:
    """Add ``significant`` (need-ratio CI excludes 1), ``q_value`` (Benjamini-Hochberg within
    each dimension and need measure, of the p-value from the CI) and ``disadvantaged`` (CI
    above 1, the ratio at least ``need_ratio_material`` and the q-value below ``fdr``), for
    non-reference groups of at least ``min_group_size``."""
    compared = ~pl.col("is_reference") & (pl.col("n") >= min_group_size)
    p = flags.p_from_interval(
        gaps["need_ratio"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
        gaps["need_ratio_ci_low"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
        gaps["need_ratio_ci_high"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
        confidence=confidence,
    )
    tested = flags.with_q_values(
        gaps.with_columns(
            pl.when(compared).then(pl.Series("p_value", p)).fill_nan(None).alias("p_value")
        ),
        over=["dimension", "need_measure"],
    )
    return tested.with_columns(
        (
            compared
            & (pl.col("need_ratio_ci_low") > 1.0)
            & (pl.col("need_ratio") >= need_ratio_material)
            & (pl.col("q_value") < fdr)
        )
        .fill_null(False)
        .alias("disadvantaged"),
        (compared & ((pl.col("need_ratio_ci_low") > 1.0) | (pl.col("need_ratio_ci_high") < 1.0)))
        .fill_null(False)
        .alias("significant"),
    ).drop("p_value")


def _reference_of(cohort: pl.DataFrame, dimension: str, preferred: str | None) -> str:
    """The dimension's reference group: ``preferred`` when present, else its largest recorded
    group (:func:`pipeline.audit.flags.preferred_reference`)."""
    sizes = cohort.group_by(dimension).agg(pl.len()).sort(dimension)
    groups = tuple(str(g) for g in sizes[dimension].to_list())
    return flags.preferred_reference(groups, sizes["len"].to_numpy(), preferred)


# --- mitigation -----------------------------------------------------------------------------------


def mitigation_tables(
    cohort: pl.DataFrame,
    *,
    whole_cohort: pl.DataFrame,
    operating_point: OperatingPointParams,
    outreach: OutreachParams,
    impact: ImpactParams | None,
    confidence: float,
    impact_rng: np.random.Generator,
    unit: str | None,
    has_truth: bool,
    min_group_events: int,
    rng: np.random.Generator,
    sampled_cut_score: tuple[float | None] | None = None,
) -> dict[str, Any]:
    """The policy trade-off with IMD-quintile TPR gaps (``mitigation``, on the audited
    ``cohort``'s observed outcomes), its per-group table (``mitigation_by_group``), the
    outcomes of each policy's contacts on the ``whole_cohort`` (``impact``,
    ``impact_gradient``: :mod:`pipeline.impact`, on true risk with truth, else on the
    calibrated predicted risk) and the ``equal_opportunity_thresholds`` (None when they could
    not be fitted)."""
    thresholds = equal_opportunity_thresholds(
        whole_cohort, operating_point=operating_point, rng=rng, sampled_cut_score=sampled_cut_score
    )

    def chosen_in(frame: pl.DataFrame) -> pl.DataFrame:
        if "need_score" not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("need_score"))
        return mitigation.policy_selections(
            frame,
            thresholds=thresholds,
            core20_uplift=outreach.core20_uplift,
            plus_uplift=outreach.plus_uplift,
            plus_groups=outreach.plus_groups,
            unit=unit,
        )

    chosen = chosen_in(cohort)
    summary, by_group = mitigation.tradeoff_table(
        chosen,
        dimensions=tuple(d for d in ("imd_quintile", "ethnicity_group") if d in chosen.columns),
        has_truth=has_truth,
    )
    gaps_imd = mitigation.tpr_gaps(
        by_group, dimension="imd_quintile", min_group_events=min_group_events
    )
    contacted = chosen if whole_cohort is cohort else chosen_in(whole_cohort)
    outcomes = impact_mod.impact_tables(
        contacted,
        basis="true risk" if has_truth else "calibrated predicted risk",
        impact=impact or ImpactParams(),
        rng=impact_rng,
        confidence=confidence,
    )
    return {
        "mitigation": summary.join(gaps_imd, on="policy", how="left"),
        "mitigation_by_group": by_group,
        "equal_opportunity_thresholds": thresholds,
    } | outcomes


def equal_opportunity_thresholds(
    whole_cohort: pl.DataFrame,
    *,
    operating_point: OperatingPointParams,
    rng: np.random.Generator,
    sampled_cut_score: tuple[float | None] | None = None,
) -> dict[str, float] | None:
    """The equal-opportunity policy's IMD-quintile thresholds at the operating point, fitted by
    the function outreach uses (:func:`pipeline.fairness.fit_equal_opportunity`; on a sample
    of the cohort, at the whole cohort's ``sampled_cut_score``); None (with a warning) when
    they cannot be fitted."""
    try:
        if sampled_cut_score is not None:
            return fairness.fit_equal_opportunity_at(
                whole_cohort, cut_score=sampled_cut_score[0], rng=rng
            )
        return fairness.fit_equal_opportunity(
            whole_cohort,
            capacity_mode=operating_point.capacity_mode,
            capacity=operating_point.capacity,
            rng=rng,
        )
    except StageError as error:
        _warn(f"audit: equal_opportunity skipped: {error}")
        return None


# --- publishing (layouts: docs/audit_tables.md) ---------------------------------------------------


def published_tables(
    tables: dict[str, Any], *, audit: AuditParams, rule: Rule
) -> dict[str, pl.DataFrame]:
    """Disclosure-controlled tables of :data:`pipeline.contract.AUDIT_TABLES`, by name
    (counts published by ``rule``, rates of the published counts, values of suppressed counts
    null, columns exactly the contract's; Wilson intervals at ``audit.confidence`` of the
    published counts; funnel statistics of the published counts; flags with the FDR of
    :mod:`pipeline.audit.flags`; the policies' TPR gaps from the published rates, groups gated
    by ``audit.min_group_events``; no NaN or infinity anywhere)."""
    min_group_size, min_group_events = audit.min_group_size, audit.min_group_events
    bounds = {"fair_low": audit.fair_ratio_low, "oe_material": audit.oe_material, "fdr": audit.fdr}
    groups = publish.group_counts_table(tables["groups"], rule=rule)
    funnels = publish.funnel_table(
        tables["funnel"], groups, min_group_events=min_group_events, **bounds
    )
    metrics = publish.flag_group_metrics(
        publish.group_metrics_table(
            tables["group_metrics"], groups, confidence=audit.confidence, rule=rule
        ),
        funnels,
        fair_high=audit.fair_ratio_high,
        risk_factor_dimensions=tuple(audit.risk_factor_dimensions),
        **bounds,
    )
    by_group = publish.policy_groups_table(tables["mitigation_by_group"], rule=rule)
    published = {
        "groups": groups,
        "group_metrics": metrics,
        "gradients": tables["gradients"],
        "heat": tables["heat"],
        "need_by_score": publish.need_curves_table(tables["need_curves"], rule=rule),
        "need_gaps": publish.need_gaps_table(
            tables["need_gaps"], min_group_size=min_group_size, rule=rule
        ),
        "selection_shares": publish.selection_shares_table(tables["selection_shares"], rule=rule),
        "mitigation": publish.published_gaps(
            publish.policy_tradeoffs_table(tables["mitigation"], rule=rule),
            by_group,
            min_group_events=min_group_events,
        ),
        "mitigation_by_group": by_group,
        "funnel": funnels,
        "impact": impact_mod.publish_impact(tables["impact"], rule=rule),
    }
    published["impact_gradient"] = impact_mod.publish_gradient(
        tables["impact_gradient"], published["impact"]
    )
    return {
        name: publish.finite(contract.AUDIT_TABLES[name].conform(frame))
        for name, frame in published.items()
    }


def audit_summary(
    tables: dict[str, Any],
    *,
    audit: AuditParams,
    operating_point: OperatingPointParams,
    target: str,
    n_people: int,
    group_metrics: pl.DataFrame,
    rule: Rule,
    sampled: dict[str, bool] | None = None,
) -> contract.AuditSummary:
    """What was audited and how: ``audit.json`` (the numbers are in the published tables;
    ``group_metrics`` is the published one, whose shown flags are counted; ``sampled``:
    whether the audited split and the cohort were past their caps, default neither)."""
    return contract.AuditSummary(
        target=target,
        split=audit.split,
        n=publish.json_count(n_people, rule=rule),
        truth_available=tables["has_truth"],
        score_resolution=tables["score_resolution"],
        operating_point=contract.OperatingPointSummary(
            capacity_mode=operating_point.capacity_mode,
            capacity=operating_point.capacity,
            selection=selection.capacity_text(
                capacity_mode=operating_point.capacity_mode, capacity=operating_point.capacity
            ),
        ),
        settings=_settings(audit, has_truth=tables["has_truth"], sampled=sampled or {}),
        flagged_comparisons=int(group_metrics["flagged"].sum()),
        planted_bias_check=planted_bias_check(
            tables,
            min_group_size=audit.min_group_size,
            need_ratio_material=audit.need_ratio_material,
        ),
        mitigation=_mitigation_summary(tables),
    )


def _settings(
    audit: AuditParams, *, has_truth: bool, sampled: dict[str, bool]
) -> contract.AuditSettings:
    return contract.AuditSettings(
        confidence=audit.confidence,
        fair_ratio_low=audit.fair_ratio_low,
        fair_ratio_high=audit.fair_ratio_high,
        n_bootstrap=audit.n_bootstrap,
        n_monte_carlo=audit.n_monte_carlo,
        min_group_size=audit.min_group_size,
        min_group_events=audit.min_group_events,
        score_bins=audit.score_bins,
        bootstrap_score_bins=audit.bootstrap_score_bins,
        need_case_share=audit.need_case_share,
        fdr=audit.fdr,
        oe_material=audit.oe_material,
        funnel_dimensions=tuple(audit.funnel_dimensions),
        need_case_definition=(
            f"top {audit.need_case_share:.0%} of the cohort by true need"
            if has_truth
            else "recorded outcome (no truth available)"
        ),
        max_audited_rows=audit.max_audited_rows,
        audited_rows_sampled=sampled.get("audited", False),
        max_cohort_rows=audit.max_cohort_rows,
        cohort_rows_sampled=sampled.get("cohort", False),
    )


def _mitigation_summary(tables: dict[str, Any]) -> contract.MitigationSummary:
    thresholds = tables.get("equal_opportunity_thresholds")
    return contract.MitigationSummary(
        case_definition="true-need case" if tables["has_truth"] else "recorded outcome",
        true_events_source="expected events from data/truth oracle risk"
        if tables["has_oracle"]
        else "recorded outcome only (no oracle)",
        equal_opportunity_thresholds=None
        if thresholds is None
        else {str(k): float(v) for k, v in sorted(thresholds.items())},
    )


def planted_bias_check(
    tables: dict[str, Any], *, min_group_size: int, need_ratio_material: float
) -> contract.PlantedBiasCheck:
    """Groups the audit names as disadvantaged: more true need than the reference group at the
    same score (need-ratio CI above 1). Needs truth; comparisons counted for the null check."""
    if not tables["has_truth"]:
        return contract.PlantedBiasCheck(available=False, reason="no data/truth: true need unknown")
    gaps = tables["need_gaps"].filter(
        (pl.col("need_measure") == "true_need")
        & ~pl.col("is_reference")
        & (pl.col("n") >= min_group_size)
    )
    named = gaps.filter(pl.col("disadvantaged")).sort("dimension", "group")
    return contract.PlantedBiasCheck(
        available=True,
        measure="true need at the same score, ratio to the reference group",
        rule=f"need ratio CI above 1 and ratio >= {need_ratio_material}",
        comparisons=gaps.height,
        significant_comparisons=int(gaps["significant"].sum()),
        disadvantaged_groups=[
            contract.DisadvantagedGroup.model_validate(
                {k: publish.json_value(v) for k, v in row.items()}
            )
            for row in named.select(
                "dimension",
                "group",
                "reference_group",
                "need_ratio",
                "need_ratio_ci_low",
                "need_ratio_ci_high",
                "need_gap",
            ).iter_rows(named=True)
        ],
    )


# --- headline metrics -----------------------------------------------------------------------------


def headline_metrics(
    published: dict[str, pl.DataFrame], *, dimensions: tuple[str, ...], has_truth: bool
) -> dict[str, Any]:
    """Headline figures (flat, numeric, sorted by name) for DVC metrics and the MLflow run,
    read from the ``published`` tables (so every figure is one the tables show); suppressed or
    undefined figures are left out."""
    metrics = published["group_metrics"]
    out = {
        **_overall_headlines(metrics),
        **_imd_ratio_headlines(metrics),
        **_flag_headlines(metrics, dimensions=dimensions),
        **_gradient_headlines(published["gradients"]),
        **_mitigation_headlines(published["mitigation"]),
    }
    if has_truth:
        out |= _true_need_headlines(published["need_gaps"])
    return {k: v for k, v in sorted(out.items()) if v is not None and v != "*"}


def _overall_headlines(metrics: pl.DataFrame) -> dict[str, Any]:
    return {
        f"overall_{row['metric']}": publish.json_value(row["value"])
        for row in metrics.filter(pl.col("dimension") == "overall").iter_rows(named=True)
    }


def _imd_ratio_headlines(metrics: pl.DataFrame) -> dict[str, Any]:
    """IMD quintile 1 (Core20) against the reference quintile, for the headline ratios."""
    core20 = metrics.filter(
        (pl.col("dimension") == "imd_quintile")
        & (pl.col("group") == "1")
        & ~pl.col("is_reference")
        & pl.col("metric").is_in(HEADLINE_RATIO_METRICS)
    )
    return {
        f"imd_q1_vs_q{row['reference_group']}_{row['metric']}_ratio": publish.json_value(
            row["ratio"]
        )
        for row in core20.iter_rows(named=True)
    }


def _flag_headlines(metrics: pl.DataFrame, *, dimensions: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"flagged_comparisons": int(metrics["flagged"].sum())}
    for dimension in dimensions:
        out[f"flagged_comparisons_{dimension}"] = int(
            metrics.filter(pl.col("dimension") == dimension)["flagged"].sum()
        )
    return out


def _gradient_headlines(gradient_rows: pl.DataFrame) -> dict[str, Any]:
    return {
        f"{row['measure']}_{row['indicator']}": publish.json_value(row["value"])
        for row in gradient_rows.filter(pl.col("dimension") == "imd_decile").iter_rows(named=True)
    }


def _mitigation_headlines(tradeoffs: pl.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in tradeoffs.iter_rows(named=True):
        policy = row["policy"]
        out[f"mitigation_{policy}_share_of_events_reached"] = publish.json_value(
            row["share_of_events_reached"]
        )
        out[f"mitigation_{policy}_share_of_true_events_reached"] = publish.json_value(
            row["share_of_true_events_reached"]
        )
        out[f"mitigation_{policy}_tpr_gap_imd_quintile"] = publish.json_value(row["tpr_gap"])
    return out


def _true_need_headlines(need_gaps: pl.DataFrame) -> dict[str, Any]:
    true_need = need_gaps.filter(pl.col("need_measure") == "true_need")
    q1 = true_need.filter((pl.col("dimension") == "imd_quintile") & (pl.col("group") == "1"))
    out: dict[str, Any] = {
        "disadvantaged_groups_named": int(true_need["disadvantaged"].fill_null(False).sum())
    }
    if q1.height:
        out["imd_q1_true_need_ratio_same_score"] = publish.json_value(q1["need_ratio"][0])
    return out


# --- IO -------------------------------------------------------------------------------------------


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise StageError(f"audit: {what} not found at {path} (run the upstream stage first)")
    return path


def _check_columns(frame: pl.LazyFrame, required: dict[str, Any] | list[str], source: Path) -> None:
    present = frame.collect_schema().names()
    missing = [c for c in required if c not in present]
    if missing:
        raise ContractError(f"{source}: missing column(s) {missing}")


def _read_truth(paths: io.Paths, target: str) -> tuple[pl.LazyFrame | None, pl.LazyFrame | None]:
    """``data/truth`` people and this target's oracle risks, each None when absent (real data)."""
    truth = oracle = None
    people_path = paths.truth / "people.parquet"
    if people_path.exists():
        truth = pl.scan_parquet(people_path)
        _check_columns(truth, ["person_id", "true_need", "n_true_conditions"], people_path)
    oracle_path = paths.truth / "oracle.parquet"
    if oracle_path.exists():
        oracle_all = pl.scan_parquet(oracle_path)
        _check_columns(oracle_all, contract.TRUTH_ORACLE_SCHEMA, oracle_path)
        oracle = oracle_all.filter(pl.col("target") == target)
        if oracle.select(pl.len()).collect().item() == 0:
            oracle = None
    if truth is not None and oracle is not None:
        # the target's own true need (e.g. true CVD risk), not the generic need index
        truth = truth.drop("true_need").join(
            oracle.select("person_id", "true_need"), on="person_id", how="left"
        )
    return truth, oracle


def _source_paths(paths: io.Paths, *, target: str) -> read.SourcePaths:
    """The audit's row-level inputs, checked for their columns (truth and oracle None when
    absent, the oracle also when it has no row of ``target``)."""
    scores_path = _require(paths.scores / f"{target}.parquet", "scores")
    features_path = _require(paths.features / "features.parquet", "features")
    need_path = _require(paths.scores / contract.NEED_SCORES_DIR / f"{target}.parquet", "need")
    _check_columns(pl.scan_parquet(scores_path), contract.SCORES_SCHEMA, scores_path)
    sensitive_cols = [*contract.SENSITIVE_SCHEMA, contract.RECORDED_MULTIMORBIDITY]
    _check_columns(pl.scan_parquet(features_path), ["person_id", *sensitive_cols], features_path)
    _check_columns(pl.scan_parquet(need_path), contract.NEED_SCORES_SCHEMA, need_path)
    truth, oracle = _read_truth(paths, target)
    return read.SourcePaths(
        scores=scores_path,
        features=features_path,
        need=need_path,
        truth=None if truth is None else paths.truth / "people.parquet",
        oracle=None if oracle is None else paths.truth / "oracle.parquet",
        target=target,
    )


def _label_dimensions(params: Params) -> tuple[str, ...]:
    return tuple(params.audit.dimensions) + tuple(params.audit.label_choice_dimensions)


def _audited_sources(params: Params) -> tuple[str, ...]:
    """The feature columns the audited people's labels (and the capacity unit) are read from."""
    unit = selection.unit_column(params.operating_point.capacity_mode)
    read_columns = {
        *cohort_mod.source_columns(_label_dimensions(params)),
        *([unit] if unit else []),
    }
    return (
        *(c for c in contract.SENSITIVE_SCHEMA if c in read_columns),
        contract.RECORDED_MULTIMORBIDITY,
    )


def _whole_sources(params: Params) -> tuple[str, ...]:
    """The feature columns the whole cohort keeps: the impact's groups and the capacity unit."""
    unit = selection.unit_column(params.operating_point.capacity_mode)
    kept = {*impact_mod.IMPACT_DIMENSIONS, *([unit] if unit else [])}
    return tuple(c for c in contract.SENSITIVE_SCHEMA if c in kept)


@dataclass(frozen=True)
class AuditCohort:
    """The rows the stage holds (:func:`_read_cohort`) and how they stand to the cohort.

    ``audited``: the audited split's people (a seeded sample past ``audit.max_audited_rows``);
    ``whole``: the whole eligible cohort's narrow columns (a seeded sample past
    ``audit.max_cohort_rows``; the same frame as ``audited`` when the split is ``all`` and
    neither is sampled); ``cut_score``: the lowest risk score the operating point selects in
    the whole cohort.
    """

    audited: pl.DataFrame
    whole: pl.DataFrame
    cut_score: float | None
    audited_sampled: bool
    whole_sampled: bool


def _read_cohorts(
    params: Params,
    paths: io.Paths,
    *,
    target: str,
    client: Client | None = None,
    read_rows: int = read.READ_ROWS,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The audited people and the whole cohort's narrow columns of :func:`_read_cohort`."""
    cohort = _read_cohort(params, paths, target=target, client=client, read_rows=read_rows)
    return cohort.audited, cohort.whole


def _summary(
    params: Params,
    sources: read.SourcePaths,
    bounds: list[tuple[int, int]],
    n_rows: int,
    *,
    client: Client | None,
) -> bounded.SliceSummary:
    """The first pass: every slice's counts and candidates, folded, and checked (the true
    need counted only when the cohort will be sampled: else the held rows are checked)."""
    count_truth = sources.truth is not None and n_rows > params.audit.max_cohort_rows
    operating_point = params.operating_point
    unit = selection.unit_column(operating_point.capacity_mode)
    summary = engine.fold_partitions(
        read.slice_summary,
        bounds,
        combine=bounded.merge_summaries(capacity=operating_point.capacity, unit=unit),
        client=client,
        sources=sources,
        split=params.audit.split,
        unit=unit,
        capacity=operating_point.capacity,
        share_rank=bounded.share_list_size(
            n_rows, capacity_mode=operating_point.capacity_mode, capacity=operating_point.capacity
        ),
        truth=count_truth,
    )
    # the checks of cohort_mod.check_cohort on the whole cohort, from its counts
    if summary.n_rows == 0:
        raise ContractError("scores: no rows in split 'all' to audit")
    if summary.n_missing:
        raise ContractError(f"scores: {summary.n_missing} rows with a null risk_score or outcome")
    if count_truth and summary.n_true_need == 0:
        _no_true_need()
    if sum(summary.split_counts.values()) == 0:
        raise ContractError(f"{sources.scores}: no rows in split {params.audit.split!r} to audit")
    return summary


def _no_true_need() -> None:
    raise ContractError("data/truth/people.parquet: no person of the cohort has a true_need")


def _slice_tasks(
    bounds: list[tuple[int, int]],
    split_counts: dict[int, int],
    *,
    whole: np.ndarray | None,
    audited: np.ndarray | None,
    skip_whole: bool,
) -> list[read.SliceTask]:
    """Each slice with its share of the samples' positions (``skip_whole``: no whole rows)."""
    offsets = np.cumsum([0, *(split_counts[start] for start, _ in bounds)])
    return [
        read.SliceTask(
            bounds=(start, stop),
            whole=np.empty(0, dtype=np.int64)
            if skip_whole
            else bounded.split_positions(whole, offset=start, length=stop - start),
            audited=bounded.split_positions(
                audited, offset=int(offsets[index]), length=split_counts[start]
            ),
        )
        for index, (start, stop) in enumerate(bounds)
    ]


def _true_need_cut(
    params: Params,
    sources: read.SourcePaths,
    bounds: list[tuple[int, int]],
    *,
    n_true_need: int,
    whole: pl.DataFrame | None,
    client: Client | None,
) -> float | None:
    """The true-need cut of ``true_case``: Polars' quantile of the held whole cohort, else the
    same value found exactly pass by pass (:func:`pipeline.audit.bounded.select_kth`)."""
    quantile = 1.0 - params.audit.need_case_share
    if whole is not None:
        value = whole["true_need"].quantile(quantile)
        return None if value is None else float(value)

    def histogram(prefix: int, level: int) -> np.ndarray:
        return engine.fold_partitions(
            read.slice_digits,
            bounds,
            combine=np.add,
            client=client,
            sources=sources,
            prefix=prefix,
            level=level,
        )

    position = bounded.quantile_position(n_true_need, quantile=quantile)
    return bounded.select_kth(position, histogram)


def _read_cohort(
    params: Params,
    paths: io.Paths,
    *,
    target: str,
    client: Client | None = None,
    read_rows: int = read.READ_ROWS,
) -> AuditCohort:
    """The audited people (``audit.split``, every column the tables read, groups labelled) and
    the whole eligible cohort (every split; only the columns the equal-opportunity fit, the
    policies and their impact read: the scores', truth, need, ``selected`` and the impact's
    groups and the capacity unit (:func:`_whole_sources`); the same frame when the split is
    ``all``), each capped by a seeded sample (``audit.max_audited_rows``,
    ``audit.max_cohort_rows``).

    Read in slices of at most ``read_rows`` rows of the scores file on the engine of
    ``client`` (:mod:`pipeline.audit.read`), in two passes: the whole cohort's counts and cuts
    (``selected``, ``true_case``), then the rows held. No join of the whole cohort and, past
    the caps, none of its rows is ever held."""
    sources = _source_paths(paths, target=target)
    audit, split = params.audit, params.audit.split
    whole_columns, split_columns = _whole_sources(params), _audited_sources(params)
    n_rows = pl.scan_parquet(sources.scores).select(pl.len()).collect().item()
    bounds = read.slice_bounds(n_rows, rows=read_rows)
    summary = _summary(params, sources, bounds, n_rows, client=client)
    cuts = bounded.cohort_cuts(
        summary,
        capacity_mode=params.operating_point.capacity_mode,
        capacity=params.operating_point.capacity,
        source=str(sources.scores),
    )
    n_split = sum(summary.split_counts.values())
    sample_whole = bounded.sample_positions(
        n_rows,
        cap=audit.max_cohort_rows,
        rng=seeds.rng("audit", target, "cohort", root=params.seed),
    )
    sample_audited = bounded.sample_positions(
        n_split,
        cap=audit.max_audited_rows,
        rng=seeds.rng("audit", target, "audited", root=params.seed),
    )
    # with the split "all" and nothing sampled, the audited people are the whole cohort
    same = split == "all" and sample_whole is None and sample_audited is None
    tasks = _slice_tasks(
        bounds, summary.split_counts, whole=sample_whole, audited=sample_audited, skip_whole=same
    )
    parts = engine.map_partitions(
        read.slice_rows,
        tasks,
        client=client,
        sources=sources,
        whole_columns=whole_columns,
        split_columns=split_columns,
        split=split,
    )
    # one chunk per column, as the whole-cohort computations left them: the tables' many
    # passes over a frame of a chunk per slice would each copy it whole again
    narrow_parts, chosen_parts = [rows for rows, _ in parts], [people for _, people in parts]
    del parts
    narrow = pl.concat(narrow_parts, rechunk=True)
    del narrow_parts  # freed before the second copy: one list and one frame at a time
    chosen = pl.concat(chosen_parts, rechunk=True)
    del chosen_parts
    if sources.truth is not None:
        held = chosen if same else (None if sample_whole is not None else narrow)
        if held is not None and held["true_need"].null_count() == held.height:
            _no_true_need()
        cuts = replace(
            cuts,
            true_need_cut=_true_need_cut(
                params, sources, bounds, n_true_need=summary.n_true_need, whole=held, client=client
            ),
        )
    narrow_columns = [c for c in narrow.columns]
    audited = cohort_mod.with_group_labels(
        pl.concat(
            [
                bounded.with_cuts(chosen.select(narrow_columns), cuts).drop(whole_columns),
                chosen.select(split_columns),
            ],
            how="horizontal",
        ).lazy(),
        _label_dimensions(params),
    ).collect()
    del chosen
    cohort = AuditCohort(
        audited=audited,
        whole=audited,
        cut_score=cuts.cut_score,
        audited_sampled=sample_audited is not None,
        whole_sampled=sample_whole is not None,
    )
    if same:
        return cohort
    labelled = set(cohort_mod.labelled_dimensions(_label_dimensions(params)))
    whole = bounded.with_cuts(narrow, cuts).with_columns(
        *(cohort_mod.dimension_expr(c) for c in whole_columns if c in labelled),
        pl.col("outcome").cast(pl.Int8),
    )
    return replace(cohort, whole=whole)


def _without_unavailable_dimensions(
    params: Params, paths: io.Paths
) -> tuple[Params, dict[str, str]]:
    """``params`` without the audit dimensions the extract cannot define (an equity field absent
    or empty: :func:`pipeline.contract.unaudited_dimensions`), and those dimensions with why."""
    features_path = _require(paths.features / "features.parquet", "features")
    audit = params.audit
    wanted = (*audit.dimensions, *audit.label_choice_dimensions)
    unaudited = contract.unaudited_dimensions(pl.scan_parquet(features_path), wanted)
    if not unaudited:
        return params, {}
    for dimension, reason in unaudited.items():
        _warn(f"audit: {dimension} not audited - {reason}")
    kept = {
        name: tuple(d for d in getattr(audit, name) if d not in unaudited)
        for name in ("dimensions", "label_choice_dimensions", "funnel_dimensions")
    }
    return params.model_copy(update={"audit": audit.model_copy(update=kept)}), unaudited


def run(params: Params, paths: io.Paths, *, target: str) -> None:
    """Audit one target: read scores, groups and truth; write reports/audit/<target>/."""
    _check_params(params.audit)
    if target not in params.targets:
        raise ParamsError(f"audit: unknown target {target!r}")
    tracking.preflight(paths.root)  # fails fast when the MLflow store does not answer
    params, unaudited = _without_unavailable_dimensions(params, paths)
    audit, operating_point = params.audit, params.operating_point
    with engine.connect_for(params) as client:
        cohort = _read_cohort(params, paths, target=target, client=client)
    n_people = cohort.audited.height
    tables = audit_tables(
        cohort.audited,
        audit=audit,
        operating_point=operating_point,
        outreach=params.outreach,
        seed=params.seed,
        target=target,
        whole_cohort=cohort.whole,
        impact=params.impact,
        sampled_cut_score=(cohort.cut_score,) if cohort.whole_sampled else None,
    )
    sampled = {"audited": cohort.audited_sampled, "cohort": cohort.whole_sampled}
    del cohort  # row-level: everything below is aggregate
    rule = params.disclosure
    published = published_tables(tables, audit=audit, rule=rule)
    summary = audit_summary(
        tables,
        audit=audit,
        operating_point=operating_point,
        target=target,
        n_people=n_people,
        group_metrics=published["group_metrics"],
        rule=rule,
        sampled=sampled,
    )
    if unaudited:
        summary = summary.model_copy(update={"unaudited_dimensions": unaudited})
    headline = contract.AuditHeadline(
        headline_metrics(published, dimensions=audit.dimensions, has_truth=tables["has_truth"])
    )

    # write: aggregates under reports/ (folder swapped whole)
    with io.atomic_dir(paths.reports / "audit" / target) as folder:
        contract.write_summary(summary, folder / contract.AUDIT_SUMMARY_FILE)
        for name, frame in published.items():
            table = contract.AUDIT_TABLES[name]
            io.write_parquet(frame, folder / table.file, sort_by=list(table.sort_by))
    contract.write_summary(headline, paths.reports / "metrics" / f"audit_{target}.json")
    write_headline(
        headline.root, keys=AUDIT_HEADLINE, root=paths.root, target=target, name="audit.json"
    )
    console.stage_done(
        "audit",
        target=target,
        did=f"{console.count(n_people)} people, {len(audit.dimensions)} dimensions",
        figure=f"{headline.root.get('flagged_comparisons', '*')} comparisons flagged",
    )
    _log_to_mlflow(headline.root, paths, target=target)


def _log_to_mlflow(headline: dict[str, Any], paths: io.Paths, *, target: str) -> None:
    """Log the headline as ``audit.*`` metrics of the registered version's (finished) training
    run, without reopening it, and tag that version with the count of flagged comparisons."""
    model_file = paths.models / target / "model.txt"
    if not model_file.exists():
        _warn(f"audit: {model_file} not found; metrics not logged to MLflow")
        return
    found = tracking.find_model_version(model_file, root=paths.root)
    if found is None:
        _warn(f"audit: no registered MLflow model version holds {model_file}; metrics not logged")
        return
    version, run = found
    import mlflow

    with tracking.store_errors(f"audit {target}: logging to MLflow", root=paths.root):
        tracking.log_flat_metrics(headline, prefix="audit", run_id=run.info.run_id)
        flags = headline.get("flagged_comparisons")
        if isinstance(flags, int):
            mlflow.MlflowClient().set_model_version_tag(
                version.name, version.version, "audit_flags", str(flags)
            )
