"""Charts for the equity report: Altair (Vega-Lite) specs rendered to inline SVG, offline.

vl-convert renders in-process (bundled Vega, no browser, no network: checked with strace, it
opens no socket); ``allowed_base_urls=[]`` makes any URL data in a spec an error rather than a
fetch. Colours are the Okabe-Ito palette (safe for the common colour-vision deficiencies) and
every encoding also differs by shape, dash or position, so the charts read in greyscale print.
Every value plotted is already disclosure-controlled (suppressed cells are left out and say so).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Final, TypeAlias

import altair as alt
import numpy as np
import polars as pl
import vl_convert as vlc
from markupsafe import Markup

from pipeline.report.fmt import to_float

OKABE_ITO: Final = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)
DIVERGING: Final = ("#0072B2", "#f7f7f7", "#D55E00")  # below / at / above the reference

LayeredChart: TypeAlias = alt.LayerChart | alt.FacetChart
"""What ``alt.layer`` returns: a FacetChart only when every layer has the same facet encoding
(no chart here has one, so these are LayerCharts at run time)."""

_CONFIG: Final = {
    "font": "Helvetica, Arial, sans-serif",
    "background": "white",
    "view": {"stroke": None},
    "axis": {"labelFontSize": 12, "titleFontSize": 12, "gridColor": "#e6e6e6"},
    "legend": {"labelFontSize": 12, "titleFontSize": 12, "orient": "bottom", "columns": 4},
    "title": {"fontSize": 14, "anchor": "start", "subtitleFontSize": 12, "subtitleColor": "#444"},
    "header": {"labelFontSize": 12, "titleFontSize": 12},
    "range": {"category": list(OKABE_ITO)},
    # Per-mark ARIA labels would repeat every data point in the file (hundreds of kB); each
    # chart carries one <title> description instead.
    "mark": {"aria": False},
}


SCALE: Final = 1.6
"""How much larger than its spec a chart is drawn in the page (capped at the page width)."""


def to_svg(chart: alt.TopLevelMixin, *, description: str) -> Markup:
    """Render a chart to an SVG string for inlining: no external data, a text description.

    Parameters
    ----------
    chart
        Any Altair chart whose data are inline values.
    description
        What the chart shows, for screen readers (``role="img"`` + ``<title>``).
    """
    spec = chart.to_dict(validate=False)  # specs are built here; validation costs seconds
    spec["config"] = {**_CONFIG, **spec.get("config", {})}
    svg = vlc.vegalite_to_svg(spec, allowed_base_urls=[])
    # Drawn at SCALE times the spec's size (vector: text and marks stay sharp), never wider
    # than the page: small charts used to sit at ~230 px with half the page empty.
    width = re.search(r'^<svg[^>]*?\swidth="([\d.]+)"', svg)
    shown = f"width:min(100%,{float(width.group(1)) * SCALE:.0f}px);" if width else ""
    svg = re.sub(
        r"^<svg ",
        f'<svg role="img" preserveAspectRatio="xMinYMin meet" style="{shown}max-width:100%;'
        'height:auto" ',
        svg,
        count=1,
    )
    title = description.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # Markup: the SVG is the renderer's output for a spec built here, not text from the data,
    # and its one piece of text (the description) is escaped above.
    return Markup(_stable_ids(svg.replace(">", f"><title>{title}</title>", 1)))


def _stable_ids(svg: str) -> str:
    """Rename the SVG's element ids (Vega numbers gradients per process: ``gradient_4``) to
    names derived from the chart itself, so the output is byte-identical run to run and ids of
    different charts inlined in one page never collide."""
    names = list(dict.fromkeys(re.findall(r'\bid="([^"]+)"', svg)))
    if not names:
        return svg
    pattern = re.compile(
        r'(\bid="|url\(#|href="#)(' + "|".join(re.escape(name) for name in names) + r')(?=[")])'
    )
    neutral = pattern.sub(lambda m: m.group(1) + f"id{names.index(m.group(2))}", svg)
    digest = hashlib.sha256(neutral.encode()).hexdigest()[:10]
    return pattern.sub(lambda m: m.group(1) + f"c{digest}-{names.index(m.group(2))}", svg)


def _group_sort(frame: pl.DataFrame, column: str = "group") -> list[str]:
    if "group_order" in frame.columns:
        ordered = frame.select(column, "group_order").unique().sort("group_order", column)
        return ordered[column].cast(pl.String).to_list()
    return list(dict.fromkeys(frame[column].cast(pl.String).to_list()))


def gradient_panel(
    points: pl.DataFrame, line: pl.DataFrame | None, *, title: str, percent: bool
) -> LayeredChart:
    """One indicator across deprivation: each group at the midpoint of its population rank
    (0 = most deprived end) with its CI, and the SII line (Fingertips regression) when known.

    ``points``: group, rank_mid, value, ci_low, ci_high. ``line``: x, y (two end points).
    """
    axis = alt.Axis(format="%") if percent else alt.Axis(format=".2f")
    x = alt.X(
        "rank_mid:Q",
        title="Population ranked by deprivation (0 = most deprived)",
        scale=alt.Scale(domain=[0, 1]),
    )
    base = alt.Chart(points)
    layers: list[alt.Chart] = []
    if line is not None and line.height:
        layers.append(
            alt.Chart(line)
            .mark_line(color=OKABE_ITO[3], strokeDash=[6, 3], strokeWidth=2)
            .encode(x=alt.X("x:Q", scale=alt.Scale(domain=[0, 1])), y="y:Q")
        )
    layers += [
        base.mark_rule(color=OKABE_ITO[0], strokeWidth=2).encode(
            x=x,
            y=alt.Y("ci_low:Q", title=None, axis=axis, scale=alt.Scale(zero=False)),
            y2="ci_high:Q",
        ),
        base.mark_point(filled=True, size=60, color=OKABE_ITO[0]).encode(
            x=x,
            y="value:Q",
            tooltip=["group:N", alt.Tooltip("value:Q", format=".3f")],
        ),
        base.mark_text(dy=-12, fontSize=10, color="#333").encode(
            x=x, y="ci_high:Q", text="group:N"
        ),
    ]
    return alt.layer(*layers).properties(width=250, height=170, title=title)


def grid(charts: Sequence[alt.Chart | LayeredChart], *, columns: int = 2) -> alt.VConcatChart:
    """Small multiples laid out ``columns`` to a row."""
    rows = [alt.hconcat(*charts[i : i + columns]) for i in range(0, len(charts), columns)]
    return alt.vconcat(*rows)


def _forest_data(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows with a positive ratio, a ``status`` for the colour and shape, CIs clipped to the
    log axis."""
    return frame.filter(pl.col("ratio").is_not_null() & (pl.col("ratio") > 0)).with_columns(
        pl.when(pl.col("flagged"))
        .then(pl.lit("outside 0.8-1.25"))
        .otherwise(pl.lit("within 0.8-1.25"))
        .alias("status"),
        pl.col("ratio_ci_low").clip(lower_bound=0.05),
        pl.col("ratio_ci_high").clip(upper_bound=20.0),
    )


def ratio_chart(
    frame: pl.DataFrame, *, title: str, fair_low: float, fair_high: float, metric_label: str
) -> LayeredChart:
    """Forest plot: each group's ratio to the reference group with its CI on a log scale.

    ``frame``: group, ratio, ratio_ci_low, ratio_ci_high, flagged (rows with no ratio are
    dropped here; the table beside the chart says why).
    """
    data = _forest_data(frame)
    order = _group_sort(frame)
    height = max(60, 22 * len(order))
    low = min([fair_low * 0.8, *data["ratio_ci_low"].drop_nulls().to_list()])
    high = max([fair_high * 1.2, *data["ratio_ci_high"].drop_nulls().to_list()])
    scale = alt.Scale(type="log", domain=[low, high], nice=False)
    band = (
        alt.Chart(pl.DataFrame({"lo": [fair_low], "hi": [fair_high]}))
        .mark_rect(color="#e8e8e8")
        .encode(x=alt.X("lo:Q", scale=scale), x2="hi:Q")
    )
    one = alt.Chart(pl.DataFrame({"one": [1.0]})).mark_rule(color="#555").encode(x="one:Q")
    y = alt.Y("group:N", sort=order, title=None)
    ci = (
        alt.Chart(data)
        .mark_rule(strokeWidth=2)
        .encode(
            y=y,
            x=alt.X("ratio_ci_low:Q", scale=scale, title=f"{metric_label}: ratio to reference"),
            x2="ratio_ci_high:Q",
            color=alt.Color(
                "status:N",
                scale=alt.Scale(
                    domain=["within 0.8-1.25", "outside 0.8-1.25"],
                    range=[OKABE_ITO[0], OKABE_ITO[3]],
                ),
                title=None,
            ),
        )
    )
    dots = (
        alt.Chart(data)
        .mark_point(filled=True, size=70)
        .encode(
            y=y,
            x=alt.X("ratio:Q", scale=scale),
            color=alt.Color("status:N", title=None),
            shape=alt.Shape(
                "status:N",
                scale=alt.Scale(
                    domain=["within 0.8-1.25", "outside 0.8-1.25"], range=["circle", "diamond"]
                ),
                title=None,
            ),
            tooltip=["group:N", alt.Tooltip("ratio:Q", format=".2f")],
        )
    )
    return alt.layer(band, one, ci, dots).properties(width=420, height=height, title=title)


def need_by_percentile_chart(
    frame: pl.DataFrame, *, need_label: str, cutoff: float | None
) -> LayeredChart:
    """Label-choice chart: mean need against risk-score percentile, one line per group.

    ``frame``: group, percentile (0-100), mean_need. At equal scores, a group whose line sits
    higher is sicker than the score says: the score under-states its need.
    """
    order = _group_sort(frame)
    lines = (
        alt.Chart(frame)
        .mark_line(strokeWidth=2)
        .encode(
            x=alt.X("percentile:Q", title="Risk score percentile (100 = highest risk)"),
            y=alt.Y("mean_need:Q", title=need_label),
            # order through the scale domain: a sort array would split the merged legend
            color=alt.Color("group:N", title=None, scale=alt.Scale(domain=order)),
            strokeDash=alt.StrokeDash("group:N", title=None, scale=alt.Scale(domain=order)),
        )
    )
    layers: list[alt.Chart] = [lines]
    if cutoff is not None:
        layers.append(
            alt.Chart(pl.DataFrame({"cut": [cutoff], "label": ["selection cut-off"]}))
            .mark_rule(color="#555", strokeDash=[4, 4])
            .encode(x="cut:Q")
        )
    return alt.layer(*layers).properties(width=460, height=260)


def share_vs_need_chart(frame: pl.DataFrame, *, title: str) -> alt.Chart:
    """Grouped bars per group: share of the eligible cohort, of the outreach list, of need.

    ``frame``: group, measure (label), share (0-1); suppressed shares are left out.
    """
    order = _group_sort(frame)
    measures = list(dict.fromkeys(frame["measure"].to_list()))
    return (
        alt.Chart(frame.filter(pl.col("share").is_not_null()))
        .mark_bar()
        .encode(
            y=alt.Y("group:N", sort=order, title=None),
            yOffset=alt.YOffset("measure:N", sort=measures),
            x=alt.X("share:Q", title="Share", axis=alt.Axis(format="%")),
            color=alt.Color(
                "measure:N",
                sort=measures,
                title=None,
                scale=alt.Scale(domain=measures, range=list(OKABE_ITO[: len(measures)])),
            ),
            tooltip=["group:N", "measure:N", alt.Tooltip("share:Q", format=".1%")],
        )
        .properties(width=420, height=alt.Step(9), title=title)
    )


def calibration_chart(frame: pl.DataFrame, *, title: str) -> LayeredChart:
    """Observed event rate against mean predicted risk, one line per group, with the diagonal.

    ``frame``: group, mean_predicted, observed_rate.
    """
    order = _group_sort(frame)
    top = max(
        to_float(frame["mean_predicted"].max() or 0.0),
        to_float(frame["observed_rate"].max() or 0.0),
    )
    diagonal = (
        alt.Chart(pl.DataFrame({"x": [0.0, top], "y": [0.0, top]}))
        .mark_line(color="#888", strokeDash=[4, 4])
        .encode(x="x:Q", y="y:Q")
    )
    lines = (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(filled=True, size=35), strokeWidth=2)
        .encode(
            x=alt.X("mean_predicted:Q", title="Predicted risk", axis=alt.Axis(format="%")),
            y=alt.Y("observed_rate:Q", title="Observed rate", axis=alt.Axis(format="%")),
            color=alt.Color("group:N", title=None, scale=alt.Scale(domain=order)),
            shape=alt.Shape("group:N", title=None, scale=alt.Scale(domain=order)),
            tooltip=[
                "group:N",
                alt.Tooltip("mean_predicted:Q", format=".1%"),
                alt.Tooltip("observed_rate:Q", format=".1%"),
            ],
        )
    )
    return alt.layer(diagonal, lines).properties(width=320, height=260, title=title)


def estimate_chart(frame: pl.DataFrame, *, title: str, x_title: str, percent: bool) -> LayeredChart:
    """Dot-and-whisker of one metric per group (e.g. O/E or TPR) with its CI.

    ``frame``: group, value, ci_low, ci_high; suppressed rows are left out.
    """
    data = frame.filter(pl.col("value").is_not_null())
    order = _group_sort(frame)
    axis = alt.Axis(format="%") if percent else alt.Axis()
    y = alt.Y("group:N", sort=order, title=None)
    rule = (
        alt.Chart(data)
        .mark_rule(strokeWidth=2, color=OKABE_ITO[0])
        .encode(
            y=y,
            x=alt.X("ci_low:Q", title=x_title, axis=axis, scale=alt.Scale(zero=False)),
            x2="ci_high:Q",
        )
    )
    dots = (
        alt.Chart(data)
        .mark_point(filled=True, size=60, color=OKABE_ITO[0])
        .encode(y=y, x="value:Q", tooltip=["group:N", alt.Tooltip("value:Q", format=".3f")])
    )
    return alt.layer(rule, dots).properties(width=380, height=max(60, 22 * len(order)), title=title)


def heat_grid_chart(
    frame: pl.DataFrame,
    *,
    x: str,
    y: str,
    x_title: str,
    title: str,
    value_label: str,
    reference: float,
    percent: bool,
) -> LayeredChart:
    """Heat grid (e.g. ethnicity x IMD quintile) on a diverging blue-orange scale around
    ``reference``; each cell also prints its value (``'*'`` where suppressed), so no colour has
    to be read.

    ``frame``: x, y, value (null where suppressed), text (the printed value).
    """
    data = frame
    values = data["value"].drop_nulls()
    spread = (
        max(abs(to_float(values.max()) - reference), abs(reference - to_float(values.min())), 1e-9)
        if len(values)
        else 1.0
    )
    scale = alt.Scale(
        domain=[reference - spread, reference, reference + spread], range=list(DIVERGING)
    )
    y_order = _group_sort(frame, y) if "group_order" in frame.columns else None
    base = alt.Chart(data).encode(
        x=alt.X(f"{x}:O", title=x_title, axis=alt.Axis(labelAngle=0)),
        y=alt.Y(f"{y}:N", title=None, sort=y_order),
    )
    cells = base.mark_rect(stroke="white", strokeWidth=2).encode(
        color=alt.condition(
            "datum.value == null",
            alt.value("#d9d9d9"),
            alt.Color(
                "value:Q",
                scale=scale,
                title=value_label,
                legend=alt.Legend(format="%" if percent else ".2f"),
            ),
        ),
    )
    # Vega-Lite drops marks whose colour field is null before any condition is read, so the
    # suppressed cells get a grey layer of their own (else they render white)
    hidden = (
        base.transform_filter("datum.value == null")
        .mark_rect(stroke="white", strokeWidth=2)
        .encode(color=alt.value("#d9d9d9"))
    )
    text = base.mark_text(fontSize=12).encode(text="text:N")
    return alt.layer(hidden, cells, text).properties(
        width=alt.Step(62), height=alt.Step(28), title=title
    )


def curve_chart(
    frame: pl.DataFrame,
    *,
    x: str,
    y: str,
    x_title: str,
    y_title: str,
    title: str,
    diagonal: bool,
    percent: bool,
) -> LayeredChart:
    """A model-level curve from the train stage's plot data (ROC, calibration, gain)."""
    axis = alt.Axis(format="%") if percent else alt.Axis()
    top = max(to_float(frame[x].max() or 0.0), to_float(frame[y].max() or 0.0)) if diagonal else 1.0
    layers = []
    if diagonal:
        layers.append(
            alt.Chart(pl.DataFrame({x: [0.0, top], y: [0.0, top]}))
            .mark_line(color="#888", strokeDash=[4, 4])
            .encode(x=f"{x}:Q", y=f"{y}:Q")
        )
    layers.append(
        alt.Chart(frame)
        .mark_line(
            point=alt.OverlayMarkDef(filled=True, size=20), color=OKABE_ITO[0], strokeWidth=2
        )
        .encode(
            x=alt.X(f"{x}:Q", title=x_title, axis=axis), y=alt.Y(f"{y}:Q", title=y_title, axis=axis)
        )
    )
    return alt.layer(*layers).properties(width=260, height=220, title=title)


FUNNEL_STATUS: Final = ("within the 95% limits", "outside the 95% limits", "flagged")


def funnel_curves(
    expected: Sequence[float], *, variance_per_expected: float, tau2: float
) -> pl.DataFrame:
    """Funnel limits (95% and 99.8%, over-dispersion adjusted) on a grid of expected counts
    spanning ``expected``: columns expected, limit (label), side, bound."""
    low = max(min(expected), 0.5)
    high = max(*expected, low * 1.01)
    grid = np.geomspace(low, high, 60)
    spread = np.sqrt(variance_per_expected / grid + tau2)
    parts = [
        pl.DataFrame(
            {
                "expected": grid,
                "limit": label,
                "side": f"{label} {side}",
                "bound": np.maximum(1.0 + sign * z * spread, 0.0),
            }
        )
        for label, z in (("95% limits", 1.959964), ("99.8% limits", 3.090232))
        for side, sign in (("low", -1.0), ("high", 1.0))
    ]
    return pl.concat(parts)


def funnel_chart(
    points: pl.DataFrame, curves: pl.DataFrame, *, title: str, y_title: str
) -> LayeredChart:
    """Funnel plot (Spiegelhalter 2005): each area's standardised ratio against its expected
    count, with the 95% and 99.8% limits around the population value 1; flagged areas are
    named.

    ``points``: group, expected, ratio, status (:data:`FUNNEL_STATUS`), label (name or "").
    ``curves``: :func:`funnel_curves`.
    """
    x = alt.X(
        "expected:Q", title="Expected count (age/sex standardised)", scale=alt.Scale(type="log")
    )
    y_values = [*points["ratio"].drop_nulls().to_list(), *curves["bound"].to_list(), 1.0]
    y_scale = alt.Scale(domain=[max(min(y_values), 0.0), max(y_values)], nice=False)
    one = alt.Chart(pl.DataFrame({"one": [1.0]})).mark_rule(color="#555").encode(y="one:Q")
    limits = (
        alt.Chart(curves)
        .mark_line(color="#777", strokeWidth=1.2)
        .encode(
            x=x,
            y=alt.Y("bound:Q", title=y_title, scale=y_scale),
            detail="side:N",
            strokeDash=alt.StrokeDash(
                "limit:N",
                scale=alt.Scale(domain=["95% limits", "99.8% limits"], range=[[4, 3], [1, 0]]),
                title=None,
            ),
        )
    )
    dots = (
        alt.Chart(points)
        .mark_point(filled=True, size=55)
        .encode(
            x=x,
            y=alt.Y("ratio:Q", scale=y_scale),
            color=alt.Color(
                "status:N",
                scale=alt.Scale(
                    domain=list(FUNNEL_STATUS), range=[OKABE_ITO[0], OKABE_ITO[1], OKABE_ITO[3]]
                ),
                title=None,
            ),
            shape=alt.Shape(
                "status:N",
                scale=alt.Scale(domain=list(FUNNEL_STATUS), range=["circle", "square", "diamond"]),
                title=None,
            ),
            tooltip=["group:N", alt.Tooltip("ratio:Q", format=".2f")],
        )
    )
    names = (
        alt.Chart(points)
        .mark_text(dx=6, align="left", fontSize=10, color="#333")
        .encode(x=x, y=alt.Y("ratio:Q", scale=y_scale), text="label:N")
    )
    return alt.layer(one, limits, dots, names).properties(width=360, height=220, title=title)
