"""Reasons: the ``explain`` stage's top contributions in plain words, and a suggested action.

Each selected person's positive contributions (``data/explanations/<target>.parquet``, position
1-3) become ``reason_1..3``, worded from the feature's manifest entry (``kind``, ``unit``,
``description``; ``features/manifest.json`` read through ``contract.read_manifest``) and the
person's value of the feature. The first reason that points to a Core20PLUS5 clinical area names
the ``suggested_action``; otherwise the target's outcome does. See ``docs/outreach.md``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import polars as pl

from pipeline import contract
from pipeline.errors import ContractError

__all__ = [
    "GLOSSARY_SCHEMA",
    "N_REASONS",
    "action_for_feature",
    "attach_reasons",
    "default_action",
    "feature_glossary",
    "feature_values",
    "reason_text",
    "word_reasons",
]

N_REASONS: Final = contract.EXPLAINED_FEATURES

# Core20PLUS5 adult clinical areas (and the routine reviews they lead to), by feature keyword.
# The first matching rule names the action; practice-level context never names one.
_ACTION_RULES: Final = (
    (("severe_mental", "antipsychotic"), "SMI annual physical health check"),
    (("copd", "asthma", "bronchodilator", "respiratory"), "COPD / chronic respiratory review"),
    (("hba1c", "diabetes"), "diabetes review"),
    (("sbp", "dbp", "hypertension", "ckd", "blood_pressure"),
     "blood pressure check (hypertension case-finding)"),
    (("cholesterol", "lipid", "chd", "stroke", "atrial", "heart_failure", "cvd"),
     "cardiovascular risk review (lipid optimisation)"),
    (("smok",), "smoking cessation support"),
    (("cancer",), "early cancer diagnosis: check screening uptake"),
    (("emergency_admission", "ae_attendance"),
     "proactive care review (multidisciplinary case management)"),
)  # fmt: skip
_DEFAULT_ACTION: Final = {
    "emergency_admission": "proactive care review (multidisciplinary case management)",
    "ae_attendance": "proactive care review (multidisciplinary case management)",
    "cvd_event": "blood pressure check (hypertension case-finding)",
    "diabetes_onset": "diabetes prevention review (NHS Diabetes Prevention Programme)",
}
_FLAG_OPPOSITES: Final = {
    "rural": "lives in an urban area",
    "sex_female": "recorded sex is not female",
}
"""Flags whose 0 is not simply "no ...": what they say when they are 0."""

GLOSSARY_SCHEMA: Final = {
    "feature": pl.String,
    "kind": pl.String,
    "description": pl.String,
    "singular": pl.String,
    "label": pl.String,
    "unit": pl.String,
    "negation": pl.String,
    "action": pl.String,
}


def action_for_feature(feature: str) -> str | None:
    """The Core20PLUS5 action suggested by a person-level feature name, or None.

    >>> action_for_feature("latest_hba1c"), action_for_feature("practice_prevalence_copd")
    ('diabetes review', None)
    """
    name = feature.lower()
    if name.startswith("practice_"):
        return None
    for keywords, action in _ACTION_RULES:
        if any(word in name for word in keywords):
            return action
    return None


def default_action(outcome: str) -> str:
    """The action when no reason points to a clinical area, from the target's outcome."""
    return _DEFAULT_ACTION[outcome]


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


def _glossary_row(entry: contract.FeatureEntry) -> dict[str, str | None]:
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
        "action": action_for_feature(entry.name),
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
        ``negation`` (a flag's words when it is 0) and ``action`` (Core20PLUS5 area or null).
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
        ``person_id``, ``reason_1..3`` (null past the positive contributions) and ``action``
        (null when no reason names a clinical area), one row per person, unordered.
    """
    words = (
        explanations.filter(pl.col("contribution") > 0)  # only what raises the risk is a reason
        .join(values, on=["person_id", "feature"], how="left")
        .join(glossary, on="feature", how="left")
        .with_columns(reason_text(pl.col("value")).alias("reason"))
    )
    return words.group_by("person_id").agg(
        *[
            pl.col("reason").filter(pl.col("position") == k).first().alias(f"reason_{k}")
            for k in range(1, N_REASONS + 1)
        ],
        pl.col("action").sort_by("position").drop_nulls().first(),
    )


def feature_values(features: pl.DataFrame, names: Sequence[str]) -> pl.DataFrame:
    """Wide features (``person_id`` + ``names``) -> long ``person_id``, ``feature``, ``value``."""
    return features.select(
        "person_id", *[pl.col(name).cast(pl.Float64, strict=False) for name in names]
    ).unpivot(index="person_id", variable_name="feature", value_name="value")


def attach_reasons(
    selected: pl.DataFrame,
    explanations: pl.LazyFrame,
    features: pl.LazyFrame,
    glossary: pl.DataFrame,
    *,
    action: str,
) -> pl.DataFrame:
    """Add ``reason_1..3`` and ``suggested_action`` to the selected people.

    Parameters
    ----------
    selected
        ``person_id`` and whatever else (from :func:`pipeline.outreach.lists.select_outreach`).
    explanations
        ``data/explanations/<target>.parquet`` (lazy); every selected person must be in it.
    features
        ``features/features.parquet`` (lazy).
    glossary
        From :func:`feature_glossary`.
    action
        The default action (:func:`default_action` of the target's outcome).

    Returns
    -------
    pl.DataFrame
        ``selected`` with the reasons and action, in the same row order.

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
    absent = [name for name in names if name not in features.collect_schema()]
    if absent:
        raise ContractError(f"features/features.parquet: missing column(s) {', '.join(absent)}")
    inputs = features.select("person_id", *names).join(wanted.lazy(), on="person_id", how="semi")
    reasons = word_reasons(explained, feature_values(inputs.collect(), names), glossary)
    return selected.join(reasons, on="person_id", how="left", maintain_order="left").select(
        pl.exclude("action", *[f"reason_{k}" for k in range(1, N_REASONS + 1)]),
        *[pl.col(f"reason_{k}").cast(pl.String) for k in range(1, N_REASONS + 1)],
        pl.col("action").fill_null(action).alias("suggested_action"),
    )


def _check_explained(explained: pl.DataFrame, *, n_selected: int, glossary: pl.DataFrame) -> None:
    n_explained = explained["person_id"].n_unique()
    if n_explained != n_selected:
        raise ContractError(
            f"{contract.EXPLANATIONS_DIR}: {n_selected - n_explained} of {n_selected} selected "
            "people have no explanations (re-run the explain stage: dvc repro)"
        )
    unknown = set(explained["feature"]) - set(glossary["feature"])
    if unknown:
        raise ContractError(
            f"features/manifest.json: no entry for explained feature {sorted(unknown)[0]!r}"
        )
