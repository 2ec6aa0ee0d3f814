"""Plain-English names of the audit's codes: dimensions, groups, metrics, indicators, measures.

Labels are vocabulary, not prose: the context functions put them into table cells, column
headings and chart titles, and the templates escape them like any other value.
"""

from __future__ import annotations

from typing import Final

import polars as pl

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
"""metric -> (label, shown as a percentage, how to read it)."""
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
HEAT_LABELS: Final = {
    "between_group_variance": "Between-group variance",
    "mean_difference_from_best": "Mean difference from best group",
    "theil_index": "Theil index",
    "population_attributable_fraction": "Population attributable fraction",
}
HEAT_HELP: Final = {
    "between_group_variance": "population-weighted spread of group values around the mean",
    "mean_difference_from_best": "average gap to the best group (absolute)",
    "theil_index": "relative inequality; 0 = equal",
    "population_attributable_fraction": "improvement if everyone did as well as the best group",
}
NEED_LABELS: Final = {
    "recorded_need": "Recorded conditions (mean)",
    "recorded_multimorbidity": "Recorded conditions (mean)",
    "n_recorded_conditions": "Recorded conditions (mean)",
    "true_need": "True need (simulation only)",
}
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


def dimension_label(dimension: str) -> str:
    """Plain-English name of an audit dimension.

    >>> dimension_label("imd_quintile"), dimension_label("long_term_condition")
    ('Deprivation (IMD quintile)', 'Long term condition')
    """
    return DIMENSION_LABELS.get(dimension, dimension.replace("_", " ").capitalize())


def dimension_rank(dimension: str) -> int:
    """Position of ``dimension`` in the report's order (unknown dimensions last)."""
    order = list(DIMENSION_LABELS)
    return order.index(dimension) if dimension in order else len(order)


def group_label(dimension: str, group: str) -> str:
    """Plain-English name of a group (IMD quintiles say which end is deprived).

    >>> group_label("imd_quintile", "1"), group_label("imd_decile", "10"), group_label("sex", "F")
    ('1 (most deprived)', '10 (least deprived)', 'F')
    """
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


def who_text(dimension: str, group: str) -> str:
    """A group as people, in words: "Black people", "people aged 85+".

    >>> who_text("imd_quintile", "1")
    'people in the most deprived fifth of areas (IMD quintile 1)'
    >>> who_text("ethnicity_group_x_imd_quintile", "Black, IMD 2")
    'Black people in IMD quintile 2'
    """
    if dimension in {"imd_quintile", "imd_decile"}:
        unit, last = ("fifth", "5") if dimension == "imd_quintile" else ("tenth", "10")
        name = "IMD quintile" if dimension == "imd_quintile" else "IMD decile"
        if group == "1":
            return f"people in the most deprived {unit} of areas ({name} 1)"
        if group == last:
            return f"people in the least deprived {unit} of areas ({name} {last})"
        return f"people in {name} {group}"
    if dimension == "ethnicity_group_x_imd_quintile":
        ethnicity, _, quintile = group.rpartition(", IMD ")
        return f"{who_text('ethnicity_group', ethnicity)} in IMD quintile {quintile}"
    special = {
        ("ethnicity_group", "Not recorded"): "people with no recorded ethnicity",
        ("ethnicity_group", "Other"): "people of other ethnic groups",
        ("sex", "F"): "women",
        ("sex", "M"): "men",
    }
    patterns = {
        "ethnicity_group": "{} people",
        "region": "people in {}",
        "icb_code": "people in ICB {}",
        "age_band": "people aged {}",
        "sex": "people of sex {}",
    }
    if (dimension, group) in special:
        return special[(dimension, group)]
    if dimension in patterns:
        return patterns[dimension].format(group)
    return f"{group} ({dimension_label(dimension).lower()})"
