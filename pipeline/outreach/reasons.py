"""Reasons: the selected people's top contributions in plain words, and a suggested action.

Each selected person's first three positive contributions (:mod:`pipeline.explain`) that are
not context (age, sex, place, practice figures: :func:`is_context`) become
``reason_1..3``, worded from the feature's manifest entry (``kind``, ``unit``, ``description``;
``features/manifest.json`` read through ``contract.read_manifest``) and the person's value of the
feature. The first reason that points to a Core20PLUS5 clinical area (``AREAS``) names it,
otherwise the target's outcome does; the ``suggested_action`` is that area's review when the
condition is already recorded, its case-finding when not. See ``docs/outreach.md``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import polars as pl

from pipeline import contract
from pipeline.errors import ContractError

__all__ = [
    "AREAS",
    "GLOSSARY_SCHEMA",
    "N_REASONS",
    "Area",
    "action_expr",
    "area_for_feature",
    "attach_reasons",
    "conditions_expr",
    "default_area",
    "feature_glossary",
    "feature_values",
    "is_context",
    "reason_text",
    "recorded_flags",
    "word_reasons",
]

N_REASONS: Final = 3
"""Reasons per person on a list (:mod:`pipeline.explain` keeps more contributions, so that
three remain once context features are set aside)."""


@dataclass(frozen=True)
class Area:
    """A Core20PLUS5 clinical area: the feature keywords that point to it, the flags that say
    the condition is already recorded, and the action in each case."""

    keywords: tuple[str, ...]
    recorded: tuple[str, ...]
    if_recorded: str
    if_unrecorded: str


# The first matching area (in this order) names the action; context never names one.
AREAS: Final = {
    "smi": Area(("severe_mental", "antipsychotic"), ("has_severe_mental_illness",),
                "SMI annual physical health check", "SMI annual physical health check"),
    "respiratory": Area(("copd", "asthma", "bronchodilator", "respiratory"),
                        ("has_copd", "has_asthma"),
                        "COPD / asthma review (inhalers, self-management plan)",
                        "respiratory case-finding (symptom check, spirometry)"),
    "diabetes": Area(("hba1c", "diabetes"), ("has_diabetes",),
                     "diabetes review (HbA1c control, annual care processes)",
                     "HbA1c check (diabetes case-finding; NHS Diabetes Prevention Programme)"),
    "hypertension": Area(("sbp", "dbp", "hypertension", "ckd", "blood_pressure"),
                         ("has_hypertension",),
                         "hypertension review (blood pressure control to target)",
                         "blood pressure check (hypertension case-finding)"),
    "cardiovascular": Area(("cholesterol", "lipid", "chd", "stroke", "atrial", "heart_failure",
                            "cvd"),
                           ("has_chd", "has_stroke", "has_heart_failure",
                            "has_atrial_fibrillation"),
                           "cardiovascular review (secondary prevention, lipid optimisation)",
                           "CVD risk assessment (QRISK3, lipid check)"),
    "smoking": Area(("smok",), (), "smoking cessation support", "smoking cessation support"),
    "cancer": Area(("cancer",), (), "early cancer diagnosis: check screening uptake",
                   "early cancer diagnosis: check screening uptake"),
    "urgent_care": Area(("emergency_admission", "ae_attendance"), (),
                        "proactive care review (multidisciplinary case management)",
                        "proactive care review (multidisciplinary case management)"),
    "diabetes_prevention": Area((), ("has_diabetes",),
                                "diabetes review (HbA1c control, annual care processes)",
                                "diabetes prevention review (NHS Diabetes Prevention Programme)"),
}  # fmt: skip
_DEFAULT_AREA: Final = {
    "emergency_admission": "urgent_care",
    "ae_attendance": "urgent_care",
    "cvd_event": "hypertension",
    "diabetes_onset": "diabetes_prevention",
}
_FLAG_OPPOSITES: Final = {
    "rural": "lives in an urban area",
    "sex_female": "recorded sex is not female",
}
"""Flags whose 0 is not simply "no ...": what they say when they are 0."""
CONTEXT_KINDS: Final = ("age", "decile", "category")
CONTEXT_FEATURES: Final = ("sex_female", "rural")
"""Context, never a reason: who someone is or where they live (age, sex, deprivation, rurality,
region, ethnicity) and their practice's figures. Lists show age and sex as columns instead."""

GLOSSARY_SCHEMA: Final = {
    "feature": pl.String,
    "kind": pl.String,
    "description": pl.String,
    "singular": pl.String,
    "label": pl.String,
    "unit": pl.String,
    "negation": pl.String,
    "area": pl.String,
    "context": pl.Boolean,
}


def area_for_feature(feature: str) -> str | None:
    """The Core20PLUS5 clinical area (a key of ``AREAS``) a person-level feature points to.

    >>> area_for_feature("latest_hba1c"), area_for_feature("practice_prevalence_copd")
    ('diabetes', None)
    """
    name = feature.lower()
    if name.startswith("practice_"):
        return None
    for area, rule in AREAS.items():
        if any(word in name for word in rule.keywords):
            return area
    return None


def is_context(name: str, kind: str) -> bool:
    """Whether a feature is context (age, sex, place, practice figures), never a reason.

    >>> is_context("age", "age"), is_context("practice_list_size", "numeric")
    (True, True)
    >>> is_context("latest_sbp", "measurement")
    False
    """
    return kind in CONTEXT_KINDS or name in CONTEXT_FEATURES or name.startswith("practice_")


def default_area(outcome: str) -> str:
    """The area when no reason points to one, from the target's outcome (urgent care, the
    proactive care review, for an outcome without its own area)."""
    return _DEFAULT_AREA.get(outcome, "urgent_care")  # an outcome derived from events (#16)


def recorded_flags() -> tuple[str, ...]:
    """Every flag that says a condition is recorded (``AREAS``), sorted."""
    return tuple(sorted({flag for area in AREAS.values() for flag in area.recorded}))


def action_expr(*, available: Sequence[str]) -> pl.Expr:
    """``suggested_action`` from ``area`` and the person's recorded flags (those ``available``).

    A recorded condition gets its review (e.g. blood pressure control); an unrecorded one gets
    case-finding. Flags absent from the features count as not recorded.
    """
    chain: Any = pl
    for name, area in AREAS.items():
        flags = [pl.col(flag).fill_null(0) > 0 for flag in area.recorded if flag in available]
        recorded = pl.any_horizontal(flags) if flags else pl.lit(False)
        action = (
            pl.when(recorded).then(pl.lit(area.if_recorded)).otherwise(pl.lit(area.if_unrecorded))
        )
        chain = chain.when(pl.col("area") == name).then(action)
    return chain.otherwise(pl.lit(None, pl.String)).alias("suggested_action")


def _singular(description: str) -> str:
    """The phrase after the number 1: "emergency admissions in ..." -> "emergency admission in".

    >>> _singular("diagnoses recorded in the last 3 months")
    'diagnosis recorded in the last 3 months'
    """
    words = description.split(" ")
    for index, word in enumerate(words):
        if word == "diagnoses":
            words[index] = "diagnosis"
            break
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            words[index] = word[:-1]
            break
    return " ".join(words)


def _negation(name: str, description: str) -> str:
    """What a flag says when it is 0 ("no diabetes recorded", "HbA1c recorded")."""
    if name in _FLAG_OPPOSITES:
        return _FLAG_OPPOSITES[name]
    if description.startswith("no "):
        return description[3:]
    if description.endswith(" recorded"):
        return "no " + description
    return description + ": no"


def _glossary_row(entry: contract.FeatureEntry) -> dict[str, str | bool | None]:
    """One manifest entry's phrases. Descriptions are words that follow a value ("emergency
    admissions in the last 12 months"); kind and unit come from the manifest."""
    description = re.sub(r"\s*\(empty when none recorded\)", "", entry.description)
    description = description.strip().rstrip(".")
    label = description
    if entry.kind == "measurement":  # "latest HbA1c (mmol/mol)" -> "HbA1c"
        label = description.removeprefix("latest ")
        label = label.removesuffix(f" ({entry.unit})") if entry.unit else label
    elif entry.kind == "days":  # "days since the latest HbA1c reading" -> "HbA1c reading"
        label = re.sub(r"^days since the (?:last|latest) ", "", description)
    elif entry.kind == "share":  # "share of the practice's patients ..." -> "the practice's ..."
        description = description.removeprefix("share of ")
    return {
        "feature": entry.name,
        "kind": entry.kind,
        "description": description,
        "singular": _singular(description) if entry.kind == "count" else description,
        "label": label,
        "unit": entry.unit,
        "negation": _negation(entry.name, description),
        "area": area_for_feature(entry.name),
        "context": is_context(entry.name, entry.kind),
    }


def feature_glossary(entries: Sequence[contract.FeatureEntry]) -> pl.DataFrame:
    """One row per feature: how to say it in plain words.

    Parameters
    ----------
    entries
        Manifest entries (``contract.read_manifest(...).features``).

    Returns
    -------
    pl.DataFrame
        ``GLOSSARY_SCHEMA``: ``feature``, ``kind``, ``description``, ``singular`` (a count's
        words after "1"), ``label`` (what a measurement or a missing value is called), ``unit``,
        ``negation`` (a flag's words when it is 0), ``area`` (a key of ``AREAS`` or null) and
        ``context`` (never a reason: :func:`is_context`).
    """
    return pl.DataFrame([_glossary_row(entry) for entry in entries], schema=GLOSSARY_SCHEMA)


def _number_text(value: pl.Expr, decimals: int = 1) -> pl.Expr:
    whole = value.round(0)
    return (
        pl.when(value == whole)
        .then(whole.cast(pl.Int64).cast(pl.String))
        .otherwise(value.round(decimals).cast(pl.String))
    )


def reason_text(value: pl.Expr) -> pl.Expr:
    """Plain words for one (feature, value) pair, by the glossary columns of the feature."""
    kind, description, label = pl.col("kind"), pl.col("description"), pl.col("label")
    unit_suffix = pl.when(pl.col("unit").is_null()).then(pl.lit("")).otherwise(" " + pl.col("unit"))
    number = _number_text(value)
    missing = value.is_null() | value.is_nan()
    return (
        pl.when(missing & kind.is_in(["measurement", "days"]))
        .then("no " + label + " recorded")
        .when(missing)
        .then(description + ": not recorded")
        .when(kind == "flag")
        .then(pl.when(value > 0).then(description).otherwise(pl.col("negation")))
        .when(kind == "age")
        .then("age " + number)
        .when(kind == "decile")
        .then("home area in IMD decile " + number + " (1 = most deprived)")
        .when(kind == "measurement")
        .then(label + " " + number + unit_suffix)
        .when(kind == "share")
        .then((value * 100).round(0).cast(pl.Int64).cast(pl.String) + "% of " + description)
        .when(kind == "rate")
        .then(_number_text(value, 2) + " " + description)
        .when(kind == "category")
        .then(description + " (code " + number + ")")
        .when((kind == "count") & (value == 1))
        .then("1 " + pl.col("singular"))
        .otherwise(number + " " + description)  # descriptions follow a value and name the unit
    )


def word_reasons(
    explanations: pl.DataFrame, values: pl.DataFrame, glossary: pl.DataFrame
) -> pl.DataFrame:
    """``reason_1..3`` and the first clinical area named, per person with a positive reason.

    Only positive contributions of features that are not context (:func:`is_context`) become
    reasons, renumbered 1, 2, 3 in position order.

    Parameters
    ----------
    explanations
        ``contract.EXPLANATIONS_SCHEMA`` rows of the people to word.
    values
        ``person_id``, ``feature``, ``value`` (Float64): the people's feature values.
    glossary
        From :func:`feature_glossary`; must cover every feature in ``explanations``.

    Returns
    -------
    pl.DataFrame
        ``person_id``, ``reason_1..3`` (null past the positive contributions) and ``area``
        (null when no reason names a clinical area), one row per person, unordered.
    """
    words = (
        explanations.join(glossary, on="feature", how="left")
        .filter((pl.col("contribution") > 0) & ~pl.col("context"))
        .with_columns(pl.col("position").rank("ordinal").over("person_id").alias("reason_no"))
        .filter(pl.col("reason_no") <= N_REASONS)
        .join(values, on=["person_id", "feature"], how="left")
        .with_columns(reason_text(pl.col("value")).alias("reason"))
    )
    return words.group_by("person_id").agg(
        *[
            pl.col("reason").filter(pl.col("reason_no") == k).first().alias(f"reason_{k}")
            for k in range(1, N_REASONS + 1)
        ],
        pl.col("area").sort_by("position").drop_nulls().first(),
    )


def conditions_expr(glossary: pl.DataFrame, *, available: Sequence[str]) -> pl.Expr:
    """``conditions_recorded``: the person's recorded long-term conditions, in words.

    From the ``has_*`` flags present in the features ("hypertension, diabetes"); empty when none.
    """
    flags = glossary.filter(
        pl.col("feature").str.starts_with("has_") & pl.col("feature").is_in(list(available))
    )
    named = [
        pl.when(pl.col(name).fill_null(0) > 0).then(pl.lit(words.removesuffix(" recorded")))
        for name, words in flags.select("feature", "description").iter_rows()
    ]
    if not named:
        return pl.lit(None, pl.String).alias("conditions_recorded")
    return pl.concat_str(named, separator=", ", ignore_nulls=True).alias("conditions_recorded")


def feature_values(explanations: pl.DataFrame, features: pl.DataFrame) -> pl.DataFrame:
    """The value of each explained feature for its person: ``person_id``, ``feature``, ``value``
    (Float64), one row per explanation row.

    Looked up per explanation row (a few per person) rather than unpivoting every person's
    features: 50,000 people's long table of 40 features held 0.75 GB.
    """
    names = explanations["feature"].unique().sort().to_list()
    value = pl.coalesce(
        pl.lit(None, pl.Float64),
        *[
            pl.when(pl.col("feature") == name).then(pl.col(name).cast(pl.Float64, strict=False))
            for name in names
        ],
    )
    return (
        explanations.select("person_id", "feature")
        .join(features.select("person_id", *names), on="person_id", how="left")
        .select("person_id", "feature", value.alias("value"))
    )


def attach_reasons(
    selected: pl.DataFrame,
    explanations: pl.LazyFrame,
    features: pl.LazyFrame,
    glossary: pl.DataFrame,
    *,
    area: str,
) -> pl.DataFrame:
    """Add ``reason_1..3``, ``conditions_recorded`` and ``suggested_action`` to the selected.

    Parameters
    ----------
    selected
        ``person_id`` and whatever else (from :func:`pipeline.outreach.lists.select_outreach`).
    explanations
        ``contract.EXPLANATIONS_SCHEMA`` rows (lazy, from :func:`pipeline.explain.explain_cohort`);
        every selected person must be in it.
    features
        ``features/features.parquet`` (lazy).
    glossary
        From :func:`feature_glossary`.
    area
        The area when no reason names one (:func:`default_area` of the target's outcome).

    Returns
    -------
    pl.DataFrame
        ``selected`` with the reasons, recorded conditions and action, in the same row order.

    Raises
    ------
    ContractError
        A selected person without explanations, or an explained feature that the manifest or
        the features table does not have.
    """
    wanted = selected.select("person_id")
    explained = explanations.join(wanted.lazy(), on="person_id", how="semi").collect()
    names = explained["feature"].unique().sort().to_list()
    _check_explained(explained, n_selected=selected.height, glossary=glossary)
    present = features.collect_schema().names()
    absent = [name for name in names if name not in present]
    if absent:
        raise ContractError(f"features/features.parquet: missing column(s) {', '.join(absent)}")
    flags = [name for name in glossary["feature"] if name.startswith("has_") and name in present]
    flags += [name for name in recorded_flags() if name in present and name not in flags]
    inputs = (
        features.select("person_id", *sorted(set(names) | set(flags)))
        .join(wanted.lazy(), on="person_id", how="semi")
        .collect()
    )
    reasons = word_reasons(explained, feature_values(explained, inputs), glossary)
    recorded = inputs.select("person_id", *flags, conditions_expr(glossary, available=flags)).join(
        reasons, on="person_id", how="left"
    )
    actions = recorded.with_columns(pl.col("area").fill_null(area)).select(
        "person_id",
        "conditions_recorded",
        *[pl.col(f"reason_{k}").cast(pl.String) for k in range(1, N_REASONS + 1)],
        action_expr(available=flags),
    )
    return selected.join(actions, on="person_id", how="left", maintain_order="left")


def _check_explained(explained: pl.DataFrame, *, n_selected: int, glossary: pl.DataFrame) -> None:
    n_explained = explained["person_id"].n_unique()
    if n_explained != n_selected:
        raise ContractError(
            f"explanations: {n_selected - n_explained} of {n_selected} selected people have no "
            "explanations (each needs one row in features/features.parquet)"
        )
    unknown = set(explained["feature"]) - set(glossary["feature"])
    if unknown:
        raise ContractError(
            f"features/manifest.json: no entry for explained feature {sorted(unknown)[0]!r}"
        )
