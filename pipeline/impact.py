"""Outcomes, not just lists: what each selection policy's contacts would change.

For every policy of the audit's trade-off (``risk``, ``equal_opportunity``, ``core20plus5``,
``need_based``: the columns ``selected_<policy>`` of :func:`pipeline.audit.mitigation.
policy_selections`), each selected person is contacted; a share of them take up the offer
(``impact.uptake_by_imd_quintile``, by IMD quintile, optionally combined with
``impact.uptake_by_ethnicity_group`` on the log-odds scale: :func:`uptake_expr`) and their
outcome risk falls by ``impact.relative_risk_reduction``. Expected events averted by person ``i``::

    averted_i = selected_i x uptake(quintile_i) x rrr x risk_i

``risk_i`` is the person's *true* risk of the target's outcome (``true_need`` from
``data/truth/oracle.parquet``: free of the planted recording and access biases) with truth, and
the calibrated predicted risk (``risk_score``) without it - which assumes the model is
calibrated in every group, the assumption the audit's O/E checks test.

Per policy this gives events averted overall, per IMD quintile and per ethnic group, and the
outcome rate (expected events per 1,000 people over the follow-up) per IMD quintile before and
after contact; the slope index of inequality of that rate across IMD quintiles (Fingertips WLS,
:func:`sii`) before and after, and ``gap_change = |SII after| - |SII before|``: negative when
targeting narrows the gap in outcomes. Intervals: the people bootstrap of
:func:`pipeline.metrics.poisson_bootstrap` (one stream, ``seeds.rng("audit", target,
"impact")``), percentile intervals. Because everything averted is proportional to ``rrr``, the
sign of ``gap_change`` (does it narrow?) does not depend on the assumed effect size.

Publishing (:func:`publish_impact`, :func:`publish_gradient`): expected events and events
averted are model quantities but are published like counts (rounded to whole people, then the
disclosure rule with complementary suppression within each policy x dimension); rates come from
the published counts; a policy's SII is withheld when any of its quintile rows is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

import numpy as np
import polars as pl

from pipeline import metrics
from pipeline.audit import publish
from pipeline.audit.cohort import UNKNOWN
from pipeline.config import ImdQuintile, ImpactParams
from pipeline.disclosure import Rule

__all__ = [
    "IMPACT_DIMENSIONS",
    "RiskBasis",
    "averted_frame",
    "impact_tables",
    "publish_gradient",
    "publish_impact",
    "recorded_dimensions",
    "resampling_cells",
    "sii",
    "uptake_expr",
]

IMPACT_DIMENSIONS: Final = ("imd_quintile", "ethnicity_group")
QUINTILES: Final = ("1", "2", "3", "4", "5")
"""IMD quintile labels, most deprived first (the SII's rank order)."""
OVERALL: Final = ("overall", "All")
PER: Final = 1_000.0
"""Rates are expected events per 1,000 people over the target's follow-up."""
RISK_BANDS: Final = 100
"""Equal bands of risk in which like people are pooled for the bootstrap (width 0.01)."""
RiskBasis = Literal["true risk", "calibrated predicted risk"]
RISK_COLUMN: Final = {"true risk": "true_need", "calibrated predicted risk": "risk_score"}


def uptake_expr(
    uptake_by_quintile: Mapping[ImdQuintile, float],
    *,
    default: float,
    by_ethnicity: Mapping[str, float] | None = None,
) -> pl.Expr:
    """Each person's uptake from their IMD quintile label (``"1"``..``"5"``; else ``default``),
    shifted for their ethnic group when ``by_ethnicity`` gives one.

    The two published margins are combined as independent effects on the log-odds scale,
    anchored at the national uptake ``default``: ``logit u = logit u_quintile + logit
    u_group - logit default``. A group at the national uptake leaves the quintile's uptake
    unchanged; groups not listed (and "Not recorded" unless listed) are not shifted.

    >>> frame = pl.DataFrame({"imd_quintile": ["1", "5", "Unknown"]})
    >>> frame.select(uptake_expr({1: 0.4, 5: 0.5}, default=0.45))["uptake"].to_list()
    [0.4, 0.5, 0.45]
    >>> frame = pl.DataFrame({"imd_quintile": ["5", "5"], "ethnicity_group": ["Asian", "White"]})
    >>> shifted = uptake_expr({5: 0.5}, default=0.5, by_ethnicity={"Asian": 0.6})
    >>> [round(u, 3) for u in frame.select(shifted)["uptake"]]
    [0.6, 0.5]
    """
    mapping = {str(q): float(u) for q, u in uptake_by_quintile.items()}
    base = (
        pl.col("imd_quintile")
        .cast(pl.String)
        .replace_strict(mapping, default=default, return_dtype=pl.Float64)
    )
    if not by_ethnicity:
        return base.alias("uptake")
    anchor = _logit(default)
    shifts = {group: _logit(u) - anchor for group, u in by_ethnicity.items()}
    shift = (
        pl.col("ethnicity_group")
        .cast(pl.String)
        .replace_strict(shifts, default=0.0, return_dtype=pl.Float64)
        .fill_null(0.0)
    )
    log_odds = base.log() - (1.0 - base).log() + shift
    return (1.0 / (1.0 + (-log_odds).exp())).alias("uptake")


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def averted_frame(
    cohort: pl.DataFrame, *, policies: tuple[str, ...], basis: RiskBasis, impact: ImpactParams
) -> pl.DataFrame:
    """``risk`` (the basis column), ``uptake`` and ``averted_<policy>`` per person, with the
    impact dimensions."""
    risk = pl.col(RISK_COLUMN[basis]).cast(pl.Float64).fill_null(0.0).alias("risk")
    frame = cohort.select(
        *IMPACT_DIMENSIONS,
        risk,
        uptake_expr(
            impact.uptake_by_imd_quintile,
            default=impact.uptake_default,
            by_ethnicity={str(g): u for g, u in impact.uptake_by_ethnicity_group.items()},
        ),
        *(pl.col(f"selected_{p}") for p in policies),
    )
    effect = pl.col("uptake") * impact.relative_risk_reduction * pl.col("risk")
    return frame.with_columns(
        (pl.col(f"selected_{p}").cast(pl.Float64) * effect).alias(f"averted_{p}") for p in policies
    )


def sii(values: np.ndarray, population: np.ndarray) -> np.ndarray:
    """Slope index of inequality, Fingertips WLS (Low & Low 2004), of ``values`` ``(..., G)``
    over groups ordered most to least deprived with ``population`` ``(..., G)`` (both may carry
    resamples on the leading axes): the slope of value on the midpoint of each group's
    cumulative population rank, weights = population share. Negative: higher values at the
    deprived end. The same estimator as :func:`pipeline.audit.gradients.slope_index`, with a
    population per resample.

    >>> float(sii(np.array([3.0, 2.0, 1.0]), np.array([1.0, 1.0, 1.0])))
    -3.0
    """
    share = population / population.sum(axis=-1, keepdims=True)
    rank = np.cumsum(share, axis=-1) - share / 2.0
    x_bar = np.sum(share * rank, axis=-1, keepdims=True)
    y_bar = np.sum(share * values, axis=-1, keepdims=True)
    num = np.sum(share * (rank - x_bar) * (values - y_bar), axis=-1)
    return num / np.sum(share * (rank - x_bar) ** 2, axis=-1)


def recorded_dimensions(frame: pl.DataFrame) -> tuple[str, ...]:
    """The :data:`IMPACT_DIMENSIONS` someone in ``frame`` has a value of: a dimension whose
    only group is ``Unknown`` is not in the extract (no IMD without a home area, no ethnic
    category: :data:`pipeline.contract.EQUITY_FIELDS`) and gets no rows, nor an SII.

    Examples
    --------
    >>> frame = pl.DataFrame({"imd_quintile": ["Unknown"], "ethnicity_group": ["White"]})
    >>> recorded_dimensions(frame)
    ('ethnicity_group',)
    """
    return tuple(d for d in IMPACT_DIMENSIONS if not (frame[d] == UNKNOWN).all())


def _indicators(
    cells: pl.DataFrame, *, keys: list[tuple[str, str]] | None = None
) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Every (dimension, group) of the tables (or the given ``keys``) and the 0/1 membership
    matrix ``(rows, groups)``."""
    if keys is None:
        keys = [OVERALL] + [
            (dimension, str(group))
            for dimension in recorded_dimensions(cells)
            for group in cells[dimension].unique().sort().to_list()
        ]
    member = cells.with_columns(  # with_columns: a lone literal still spans every row
        (pl.lit(True) if dimension == OVERALL[0] else pl.col(dimension) == group)
        .cast(pl.Float64)
        .alias(f"_member{index}")
        for index, (dimension, group) in enumerate(keys)
    ).select(f"_member{index}" for index in range(len(keys)))
    return keys, member.to_numpy()


def resampling_cells(
    frame: pl.DataFrame, *, policies: tuple[str, ...], risk_bands: int = RISK_BANDS
) -> pl.DataFrame:
    """The cells the bootstrap resamples: people of the same IMD quintile, ethnic group, set of
    policies that select them and risk band (``risk_bands`` equal bands of [0, 1]), with
    ``base`` = their number and the *mean* risk and events averted of each policy.

    Within a cell everyone has the same uptake and the same selections, so ``base`` x the mean
    is each sum exactly (point estimates are exact); a cell of ``n`` people drawn as one
    Poisson(``n``) weight is the people bootstrap up to the spread of risk inside a band.
    """
    averted = [f"averted_{p}" for p in policies]
    selected = [f"selected_{p}" for p in policies]
    band = (pl.col("risk") * risk_bands).floor().clip(0, risk_bands - 1).cast(pl.Int32)
    # one small integer per person: band, then the policies that select them as bits
    pattern = pl.sum_horizontal(pl.col(c).cast(pl.Int32) * (1 << k) for k, c in enumerate(selected))
    cell = (band * (1 << len(selected)) + pattern).alias("_cell")
    return (
        frame.group_by(*IMPACT_DIMENSIONS, cell, maintain_order=True)
        .agg(
            pl.col(*selected).first(),
            pl.col("risk", *averted).mean(),
            pl.len().cast(pl.Float64).alias("base"),
        )
        .sort(*IMPACT_DIMENSIONS, "_cell")
        .drop("_cell")
    )


def _design(member: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``(rows, G x (1 + K))``: membership, then membership x each value column (risk, then each
    policy's averted), so one product with the weights gives every group sum."""
    return np.hstack([member, *(member * values[:, [k]] for k in range(values.shape[1]))])


def _sums(
    weights: np.ndarray, design: np.ndarray, *, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """People, expected events and events averted per group (and policy) under ``weights``
    ``(sets, rows)``: ``(sets, G)``, ``(sets, G)``, ``(sets, P, G)`` (``design``:
    :func:`_design`)."""
    parts = (weights @ design).reshape(weights.shape[0], -1, n_groups)
    return parts[:, 0], parts[:, 1], parts[:, 2:]


def _gradient(
    people: np.ndarray, events: np.ndarray, averted: np.ndarray, quintiles: list[int]
) -> dict[str, np.ndarray]:
    """SII before ``(sets,)``, after and gap change ``(sets, P)`` of the rate per 1,000 across
    the IMD quintile columns ``quintiles`` (most deprived first); NaN without any (no IMD)."""
    if not quintiles:
        none = np.full(averted.shape[:2], np.nan)
        return {"sii_before": none[:, 0], "sii_after": none, "gap_change": none}
    n = people[:, quintiles]
    with np.errstate(invalid="ignore", divide="ignore"):
        before = PER * events[:, quintiles] / n
        after = PER * (events[:, None, quintiles] - averted[:, :, quintiles]) / n[:, None, :]
    sii_before = sii(before, n)
    sii_after = sii(after, n[:, None, :])
    return {
        "sii_before": sii_before,
        "sii_after": sii_after,
        "gap_change": np.abs(sii_after) - np.abs(sii_before)[:, None],
    }


def impact_tables(
    chosen: pl.DataFrame,
    *,
    basis: RiskBasis,
    impact: ImpactParams,
    rng: np.random.Generator,
    confidence: float,
) -> dict[str, pl.DataFrame]:
    """Raw ``impact`` (policy x dimension x group) and ``impact_gradient`` (policy) tables.

    Parameters
    ----------
    chosen
        The audited cohort with ``selected_<policy>`` columns, ``imd_quintile`` and
        ``ethnicity_group`` labels, and the basis column (``true_need`` / ``risk_score``).
    basis
        Whose risk the contacts lower: ``true risk`` (synthetic truth) or the calibrated
        predicted risk.
    impact
        Uptake, relative risk reduction and bootstrap size.
    rng
        The bootstrap stream.
    confidence
        Of the percentile intervals.
    """
    policies = tuple(
        c.removeprefix("selected_") for c in chosen.columns if c.startswith("selected_")
    )
    frame = averted_frame(chosen, policies=policies, basis=basis, impact=impact)
    cells = resampling_cells(frame, policies=policies)
    keys, row_member = _indicators(cells)
    values = cells.select("risk", *(f"averted_{p}" for p in policies)).to_numpy()
    base = cells["base"].to_numpy()
    quintiles = [keys.index(("imd_quintile", q)) for q in QUINTILES if ("imd_quintile", q) in keys]

    design = _design(row_member, values)

    def statistic(weights: np.ndarray) -> dict[str, np.ndarray]:
        people, events, averted = _sums(weights, design, n_groups=len(keys))
        return {"averted": averted} | _gradient(people, events, averted, quintiles)

    point = statistic(base[None, :])
    draws = metrics.poisson_bootstrap(
        statistic, base, n_resamples=impact.n_bootstrap, rng=rng, chunk=50
    )
    interval = {
        name: metrics.percentile_interval(draw, confidence=confidence)
        for name, draw in draws.items()
    }
    selected = cells.select(pl.col(f"selected_{p}") * pl.col("base") for p in policies)
    counts = selected.to_numpy().T @ row_member  # (P, G)
    people, events, _ = _sums(base[None, :], design, n_groups=len(keys))
    groups = pl.DataFrame(
        {
            "policy": [p for p in policies for _ in keys],
            "dimension": [d for _ in policies for d, _ in keys],
            "group": [g for _ in policies for _, g in keys],
            "n": np.tile(people[0], len(policies)).round().astype(np.int64),
            "n_selected": counts.ravel().round().astype(np.int64),
            "expected_events": np.tile(events[0], len(policies)),
            "events_averted": point["averted"][0].ravel(),
            "events_averted_ci_low": interval["averted"][0].ravel(),
            "events_averted_ci_high": interval["averted"][1].ravel(),
        }
    )
    return {
        "impact": groups,
        "impact_gradient": _gradient_frame(point, interval, policies=policies, basis=basis),
    }


def _gradient_frame(
    point: Mapping[str, np.ndarray],
    interval: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    policies: tuple[str, ...],
    basis: RiskBasis,
) -> pl.DataFrame:
    """One row per policy: SII before and after with intervals, the gap change, and whether
    the interval of the change lies below 0 (``narrows``) or above it (``widens``)."""
    n = len(policies)
    before_low, before_high = (np.repeat(np.ravel(b), n) for b in interval["sii_before"])
    after_low, after_high = interval["sii_after"]
    change_low, change_high = interval["gap_change"]
    return pl.DataFrame(
        {
            "policy": list(policies),
            "risk_basis": [basis] * n,
            "sii_before": np.repeat(point["sii_before"][0], n),
            "sii_before_ci_low": before_low,
            "sii_before_ci_high": before_high,
            "sii_after": point["sii_after"][0],
            "sii_after_ci_low": after_low,
            "sii_after_ci_high": after_high,
            "gap_change": point["gap_change"][0],
            "gap_change_ci_low": change_low,
            "gap_change_ci_high": change_high,
            "narrows": change_high < 0,
            "widens": change_low > 0,
        }
    ).with_columns(pl.col(pl.Float64).fill_nan(None))


# --- publishing -----------------------------------------------------------------------------------

WHOLE: Final = (
    "expected_events",
    "events_averted",
    "events_averted_ci_low",
    "events_averted_ci_high",
)


def publish_impact(raw: pl.DataFrame, *, rule: Rule) -> pl.DataFrame:
    """Raw ``impact`` -> ``impact.parquet``: model quantities rounded to whole people and
    published like counts, complementary suppression within each policy x dimension (whose
    total is the ``overall`` row), rates per 1,000 of the published counts, the averted
    interval hidden with its row."""
    whole = raw.with_columns(
        pl.col(c).fill_nan(None).round(0).cast(pl.Int64).alias(f"n_{c}") for c in WHOLE
    ).drop(WHOLE)
    counts = ["n", "n_selected", "n_expected_events", "n_events_averted"]
    shown, hidden = publish.hide_counts(
        whole, counts=counts, over=["policy", "dimension"], rule=rule
    )
    n, events, averted = (publish.published_number(c) for c in counts[:1] + counts[2:])
    rates = shown.with_columns(
        (PER * publish.published_share(events, n)).alias("rate_before"),
        (PER * publish.published_share(events - averted, n)).alias("rate_after"),
        *(
            pl.when(hidden)
            .then(pl.lit(None, dtype=pl.String))
            .otherwise(rule.count_expr(pl.col(c)))
            .alias(c)
            for c in ("n_events_averted_ci_low", "n_events_averted_ci_high")
        ),
    )
    # the rate before needs only n and expected events; the rate after needs every count
    before_hidden = publish.hidden_expr(["n", "n_expected_events"])
    return rates.with_columns(
        pl.when(before_hidden).then(None).otherwise(pl.col("rate_before")).alias("rate_before"),
        pl.when(hidden).then(None).otherwise(pl.col("rate_after")).alias("rate_after"),
        hidden.alias("suppressed"),
    )


def publish_gradient(raw: pl.DataFrame, published: pl.DataFrame) -> pl.DataFrame:
    """Raw ``impact_gradient`` -> ``impact_gradient.parquet``: a policy's SII figures are
    withheld (null, ``suppressed``) when any of its IMD-quintile rows in the published
    ``impact`` table is."""
    hidden = (
        published.filter(pl.col("dimension") == "imd_quintile")
        .group_by("policy")
        .agg(pl.col("suppressed").any().alias("_hidden"))
    )
    joined = raw.join(hidden, on="policy", how="left", maintain_order="left").with_columns(
        pl.col("_hidden").fill_null(True)
    )
    values = [c for c in raw.columns if c not in ("policy", "risk_basis")]
    return joined.with_columns(
        *(pl.when(pl.col("_hidden")).then(None).otherwise(pl.col(c)).alias(c) for c in values),
        pl.col("_hidden").alias("suppressed"),
    ).drop("_hidden")
