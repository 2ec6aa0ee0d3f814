"""Stage ``features``: one row per person at the index date, from the event-level records.

``data/population/`` (validated against the contract) -> ``features/features.parquet`` and
``features/manifest.json``. The whole table is one lazy Polars query: ``scan_parquet`` ->
filters and expressions -> ``group_by().agg()`` per person (conditional aggregations) -> joins on
``person_id`` -> ``sink_parquet`` on the streaming engine, sorted on ``person_id``. Populations
above ``params.features.chunk_people`` run that query once per ``person_id`` range and
concatenate the sorted parts (same output, flat memory). A population split by ICB
(:mod:`pipeline.partitions`) runs it once per partition, as tasks of ``params.engine``
(:mod:`pipeline.engine`), and concatenates the parts in partition order when their
``person_id`` ranges ascend (the synthetic world's), otherwise merges them on ``person_id``.
Either way each chunk's or partition's events are read and cleaned once: its part is written
without the practice context (aggregates over all of a practice's patients), its integer sums
per practice are taken from the written rows, and the concatenation joins the context of
everybody (those sums summed, then divided: exact).

Only events dated on or before the index date count. A window of ``w`` months covers the dates
``index_date - w months < date <= index_date``.

The split is a pure function of ``person_id`` and ``params.seed``: a seeded FNV-1a hash of the
id's UTF-8 bytes, finished with the splitmix64 mixer, gives a number in [0, 1) that is cut at the
cumulative ``split_fractions``. It is written in plain 64-bit arithmetic (not ``Expr.hash``,
whose values may change between Polars versions), so it is portable and reproducible anywhere.
People of ``params.features.holdout_icb`` get the split ``external``.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import polars as pl
from rich.progress import Progress

from pipeline import console, contract, engine, io, partitions, receipt, seeds
from pipeline.codelists import Codelists, concept_match, load_codelists, normalise_code
from pipeline.config import FeatureParams, Params
from pipeline.errors import ContractError, ParamsError, StageError

if TYPE_CHECKING:
    from distributed import Client

FEATURES_FILE: Final = "features.parquet"
MANIFEST_FILE: Final = "manifest.json"
ROW_GROUP_SIZE: Final = 100_000
RECENCY_EVENTS: Final = ("ae_attendance", "emergency_admission")
EXTERNAL_SPLIT: Final = "external"
# The registry's risk factor "smoking" (ICD-10 F17, tobacco use); not a contract condition.
SMOKING_CONCEPT: Final = "smoking"
SMOKING_FEATURE: Final = "smoking_recorded"
ADMISSIONS: Final = "_n_emergency_admissions"
"""Per person: emergency admissions in the ``polypharmacy_months`` window (practice partials)."""
CODELISTS_DIR: Final = "codelists"
"""The codelist registry's folder under the project root (codelists/registry.yaml)."""

EVENT_NOUNS: Final = {
    "gp_consultation": "GP consultations",
    "diagnosis": "diagnoses recorded",
    "prescription": "prescriptions issued",
    "measurement": "measurements recorded",
    "ae_attendance": "A&E attendances",
    "emergency_admission": "emergency admissions",
    "elective_admission": "elective admissions",
    "outpatient": "outpatient appointments",
}
EVENT_SINGULAR: Final = {
    "ae_attendance": "A&E attendance",
    "emergency_admission": "emergency admission",
}
CONDITION_LABELS: Final = {
    "hypertension": "hypertension",
    "diabetes": "diabetes",
    "copd": "COPD",
    "asthma": "asthma",
    "chd": "coronary heart disease",
    "ckd": "chronic kidney disease",
    "heart_failure": "heart failure",
    "atrial_fibrillation": "atrial fibrillation",
    "depression": "depression",
    "severe_mental_illness": "severe mental illness",
    "stroke": "stroke",
    "obesity": "obesity",
}
MEASUREMENT_LABELS: Final = {
    "sbp": "systolic blood pressure",
    "dbp": "diastolic blood pressure",
    "bmi": "BMI",
    "hba1c": "HbA1c",
    "cholesterol": "total cholesterol",
}

# 64-bit FNV-1a and splitmix64 constants (public, well-known).
_FNV_OFFSET: Final = 0xCBF29CE484222325
_FNV_PRIME: Final = 0x100000001B3
_MIX1: Final = 0xBF58476D1CE4E5B9
_MIX2: Final = 0x94D049BB133111EB
_MASK64: Final = (1 << 64) - 1


# --- Feature catalogue -------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSpec:
    """One feature column and its manifest entry."""

    name: str
    description: str
    dtype: pl.DataType
    source_events: tuple[str, ...] = ()
    source_table: contract.FeatureSource = "events"
    window_months: int | None = None
    model_input: bool = True
    categorical: bool = False
    categories: tuple[str, ...] = field(default=())
    kind: contract.FeatureKind = "numeric"
    unit: str | None = None

    def manifest_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "dtype": str(self.dtype),
            "source_events": list(self.source_events),
            "source_table": self.source_table,
            "window_months": self.window_months,
            "model_input": self.model_input,
            "categorical": self.categorical,
            "kind": self.kind,
            "unit": self.unit,
        }
        if self.categorical:
            entry["categories"] = {str(code): label for code, label in enumerate(self.categories)}
        return entry


def count_column(event_type: str, months: int) -> str:
    """Name of the count of ``event_type`` events in the last ``months`` months."""
    return f"n_{event_type}_{months}m"


def _person_specs(features: FeatureParams) -> list[FeatureSpec]:
    """Demographics and place (from ``people`` and the home area)."""
    people: contract.FeatureSource = "people"
    areas: contract.FeatureSource = "areas"
    return [
        FeatureSpec("age", "age in years at the index date", pl.Int16(), kind="age",
                    source_table=people, unit="years"),
        FeatureSpec("sex_female", "recorded sex is female", pl.Int8(), kind="flag",
                    source_table=people),
        FeatureSpec("imd_decile", "IMD 2019 decile of the home area (1 = most deprived)",
                    pl.Int8(), kind="decile", source_table=areas,
                    model_input=features.deprivation_as_input),
        FeatureSpec("rural", "lives in a rural area", pl.Int8(), kind="flag", source_table=areas),
        FeatureSpec("ethnicity_code", "broad ethnic group (coded)", pl.Int8(), kind="category",
                    source_table=people, model_input=features.ethnicity_as_input,
                    categorical=True, categories=contract.BROAD_ETHNIC_GROUPS),
        FeatureSpec("region_code", "NHS England region of the home area (coded)", pl.Int8(),
                    kind="category", source_table=areas, model_input=features.region_as_input,
                    categorical=True, categories=contract.REGIONS),
    ]  # fmt: skip


def _count_specs(windows_months: Sequence[int]) -> list[FeatureSpec]:
    """Events of each type in each look-back window."""
    return [
        FeatureSpec(
            count_column(event_type, months),
            f"{EVENT_NOUNS[event_type]} in the last {months} months",
            pl.Int32(),
            kind="count",
            source_events=(event_type,),
            window_months=months,
        )
        for event_type in contract.EVENT_TYPES
        for months in windows_months
    ]


def _recency_specs() -> list[FeatureSpec]:
    """Days since the last A&E attendance / emergency admission, and whether there was one."""
    specs = []
    for event_type in RECENCY_EVENTS:
        noun = EVENT_SINGULAR[event_type]
        specs += [
            FeatureSpec(f"days_since_last_{event_type}",
                        f"days since the last {noun} (empty when none recorded)", pl.Int32(),
                        kind="days", source_events=(event_type,), unit="days"),
            FeatureSpec(f"no_prior_{event_type}", f"no {noun} recorded before the index date",
                        pl.Int8(), kind="flag", source_events=(event_type,)),
        ]  # fmt: skip
    return specs


def _condition_specs() -> list[FeatureSpec]:
    """Recorded long-term conditions, their number, and recorded smoking."""
    return [
        *[
            FeatureSpec(f"has_{condition}", f"{CONDITION_LABELS[condition]} recorded", pl.Int8(),
                        kind="flag", source_events=("diagnosis",))
            for condition in contract.CONDITIONS
        ],
        FeatureSpec(contract.RECORDED_MULTIMORBIDITY,
                    f"long-term conditions recorded (of {len(contract.CONDITIONS)})", pl.Int8(),
                    kind="count", source_events=("diagnosis",)),
        FeatureSpec(SMOKING_FEATURE, "current smoking recorded", pl.Int8(), kind="flag",
                    source_events=("diagnosis",)),
    ]  # fmt: skip


def _measurement_specs(measurements: Sequence[str]) -> list[FeatureSpec]:
    """Latest value, days since it and a missing flag per measurement."""
    specs = []
    for code in measurements:
        label = MEASUREMENT_LABELS[code]
        unit = contract.MEASUREMENT_CODES[code][0]
        specs += [
            FeatureSpec(f"latest_{code}", f"latest {label} ({unit})", pl.Float64(),
                        kind="measurement", source_events=("measurement",), unit=unit),
            FeatureSpec(f"days_since_{code}",
                        f"days since the latest {label} reading (empty when none recorded)",
                        pl.Int32(), kind="days", source_events=("measurement",), unit="days"),
            FeatureSpec(f"{code}_missing", f"no {label} recorded", pl.Int8(), kind="flag",
                        source_events=("measurement",)),
        ]  # fmt: skip
    return specs


def _practice_specs(months: int) -> list[FeatureSpec]:
    """Polypharmacy, then the GP practice's context (list size, prevalences, admission rate)."""
    return [
        FeatureSpec(f"n_bnf_sections_{months}m",
                    f"different BNF medicine sections prescribed in the last {months} months",
                    pl.Int16(), kind="count", source_events=("prescription",),
                    window_months=months),
        FeatureSpec("practice_list_size", "registered patients at the GP practice", pl.Int32(),
                    kind="numeric", source_table="people", unit="patients"),
        *[
            FeatureSpec(f"practice_prevalence_{condition}",
                        f"share of the GP practice's patients with {CONDITION_LABELS[condition]} "
                        "recorded", pl.Float64(), kind="share", source_events=("diagnosis",),
                        source_table="people+events")
            for condition in contract.CONDITIONS
        ],
        FeatureSpec(f"practice_emergency_admission_rate_{months}m",
                    "emergency admissions per registered patient at the GP practice in the last "
                    f"{months} months", pl.Float64(), kind="rate",
                    source_events=("emergency_admission",), source_table="people+events",
                    window_months=months),
    ]  # fmt: skip


def fed_by(name: str, polypharmacy_months: int) -> str | None:
    """The equity field (:data:`pipeline.contract.EQUITY_FIELDS`) a feature is computed from,
    if any: IMD, the ethnic category, the home area (region, rurality) or the GP practice
    (practice context)."""
    if name == "imd_decile":
        return "imd_decile"
    if name == "ethnicity_code":
        return "ethnicity"
    if name in ("region_code", "rural"):
        return "area_id"
    practice_rate = f"practice_emergency_admission_rate_{polypharmacy_months}m"
    if name == practice_rate or name.startswith(("practice_list_size", "practice_prevalence_")):
        return "practice_id"
    return None


def feature_specs(features: FeatureParams, *, unavailable: Sequence[str] = ()) -> list[FeatureSpec]:
    """The feature catalogue for these params, in column order.

    Parameters
    ----------
    features
        The ``features`` section of the params (windows, measurements, input switches).
    unavailable
        Equity fields the extract lacks (:func:`pipeline.contract.unavailable_fields`): the
        features they feed stay as (empty) columns but are no model inputs.

    Returns
    -------
    list[FeatureSpec]
        Every feature column; ``age`` and ``imd_decile`` are also sensitive columns.
    """
    specs = [
        *_person_specs(features),
        *_count_specs(features.windows_months),
        *_recency_specs(),
        *_condition_specs(),
        *_measurement_specs(features.measurements),
        *_practice_specs(features.polypharmacy_months),
    ]
    return [
        replace(spec, model_input=False)
        if fed_by(spec.name, features.polypharmacy_months) in unavailable
        else spec
        for spec in specs
    ]


def window_starts(index_date: dt.date, months: Sequence[int]) -> dict[int, dt.date]:
    """Exclusive start date of each look-back window (calendar months, clamped to month end)."""
    starts = pl.select(
        [pl.lit(index_date).dt.offset_by(f"-{m}mo").alias(str(m)) for m in months]
    ).row(0)
    return dict(zip(months, starts, strict=True))


# --- Split -------------------------------------------------------------------------------------


def _u64(value: int) -> pl.Expr:
    return pl.lit(value & _MASK64, dtype=pl.UInt64)


def seed_basis(seed: int) -> int:
    """The FNV-1a starting state for ``seed`` (offset basis mixed with the seed)."""
    z = (seed + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return _FNV_OFFSET ^ (z ^ (z >> 31))


def with_split_unit(
    people: pl.LazyFrame, *, seed: int, id_bytes: int, column: str = "_split_u"
) -> pl.LazyFrame:
    """Add a uniform number in [0, 1) per person: seeded FNV-1a of ``person_id``, mixed.

    Parameters
    ----------
    people
        Frame with a ``person_id`` string column.
    seed
        ``params.seed``.
    id_bytes
        Longest ``person_id`` in bytes (the hash loops over byte positions, not over people).
    column
        Name of the added Float64 column.
    """
    raw = pl.col("person_id").cast(pl.Binary)
    frame = people.with_columns(_h=_u64(seed_basis(seed)))
    for position in range(id_bytes):
        byte = raw.bin.get(position, null_on_oob=True).cast(pl.UInt64)
        frame = frame.with_columns(
            _h=pl.when(byte.is_null())
            .then(pl.col("_h"))
            .otherwise((pl.col("_h").xor(byte)) * _u64(_FNV_PRIME))
        )
    h = pl.col("_h")
    # splitmix64 finaliser: unsigned // 2**k is a logical right shift.
    frame = frame.with_columns(_h=(h.xor(h // _u64(1 << 30))) * _u64(_MIX1))
    frame = frame.with_columns(_h=(h.xor(h // _u64(1 << 27))) * _u64(_MIX2))
    frame = frame.with_columns(_h=h.xor(h // _u64(1 << 31)))
    unit = (h // _u64(1 << 11)).cast(pl.Float64) / float(1 << 53)
    return frame.with_columns(unit.alias(column)).drop("_h")


def split_expr(
    unit: pl.Expr,
    icb_code: pl.Expr,
    *,
    fractions: Sequence[float],
    holdout_icb: str | None,
) -> pl.Expr:
    """train / validation / test by cumulative ``fractions``; the held-out ICB -> ``external``."""
    train, validation, _ = fractions
    split = (
        pl.when(unit < train)
        .then(pl.lit(contract.SPLITS[0]))
        .when(unit < train + validation)
        .then(pl.lit(contract.SPLITS[1]))
        .otherwise(pl.lit(contract.SPLITS[2]))
    )
    if holdout_icb is not None:
        split = pl.when(icb_code == holdout_icb).then(pl.lit(EXTERNAL_SPLIT)).otherwise(split)
    return split.alias("split")


# --- Person-level attributes -------------------------------------------------------------------


def person_attributes(
    people: pl.LazyFrame, areas: pl.LazyFrame, *, unavailable: Sequence[str] = ()
) -> pl.LazyFrame:
    """People joined to their home area: sensitive columns and demographic features.

    Geography (ICB, region, IMD, rurality) is that of the home area, so deprivation and place
    describe the same neighbourhood. Without ethnicity in the extract (``"ethnicity"`` in
    ``unavailable``) the ethnic group is null, not "Not recorded": nobody's was asked.
    """
    area_cols = areas.select("area_id", "icb_code", "region", "imd_decile", "rural_urban")
    ethnicity_group = (
        pl.lit(None, dtype=pl.String)
        if "ethnicity" in unavailable
        else contract.ethnicity_group_expr(pl.col("ethnicity"))
    )
    return people.join(area_cols, on="area_id", how="left").select(
        "person_id",
        pl.col("sex").cast(pl.String),
        pl.col("age").cast(pl.Int16),
        contract.age_band_expr(pl.col("age")).alias("age_band"),
        pl.col("imd_decile").cast(pl.Int8),
        contract.imd_quintile_expr(pl.col("imd_decile")).alias("imd_quintile"),
        pl.col("region").cast(pl.String),
        pl.col("icb_code").cast(pl.String),
        pl.col("practice_id").cast(pl.String),
        ethnicity_group.alias("ethnicity_group"),
        pl.col("rural_urban").cast(pl.String),
        (pl.col("sex") == "F").cast(pl.Int8).alias("sex_female"),
        (pl.col("rural_urban") == "rural").cast(pl.Int8).alias("rural"),
        ethnicity_group.replace_strict(
            {group: code for code, group in enumerate(contract.BROAD_ETHNIC_GROUPS)},
            default=None,
            return_dtype=pl.Int8,
        ).alias("ethnicity_code"),
        pl.col("region")
        .replace_strict(
            {region: code for code, region in enumerate(contract.REGIONS)},
            default=None,
            return_dtype=pl.Int8,
        )
        .alias("region_code"),
    )


# --- Event-level aggregation -------------------------------------------------------------------
# Each branch below scans the events with its own filter pushed into the scan and reduces them
# with streamable aggregations (sums / maxima of element-wise expressions); the person table
# joins them on person_id. Filters inside agg() or value mappings over all events would force
# the in-memory engine and hold every event in memory.


def require_concepts(codelists: Codelists, *, measurements: Sequence[str]) -> None:
    """The registry must define every contract condition, each measurement in params and the
    smoking risk factor (features match events to them).

    Raises
    ------
    ContractError
        Naming the concepts missing from the registry (or of another kind).
    """
    wanted = {
        "condition": contract.CONDITIONS,
        "measurement": tuple(measurements),
        "risk_factor": (SMOKING_CONCEPT,),
    }
    missing = [
        f"{name} ({kind})"
        for kind, names in wanted.items()
        for name in names
        if name not in codelists.concepts(kind)  # type: ignore[arg-type]
    ]
    if missing:
        raise ContractError(f"codelists/registry.yaml: concepts missing: {', '.join(missing)}")


def concept_expr(codelists: Codelists, concept: str) -> pl.Expr:
    """True where an event (``_code`` normalised, ``code_system``) is in the concept's lists."""
    return concept_match(
        pl.col("_code"), pl.col("code_system"), codelists.codes_of(concept), normalised=True
    )


def recorded_events(events: pl.LazyFrame, *, index_date: dt.date) -> pl.LazyFrame:
    """Events on or before the index date, with the contract's columns, each event's code system
    (``code_system``: its own or its event_type's) and its code normalised once (``_code``)."""
    system = contract.event_code_system_expr()
    return (
        contract.with_code_system(events)
        .filter(pl.col("date") <= pl.lit(index_date))
        .select(*contract.EVENTS_SCHEMA, system.alias("code_system"))
        .with_columns(normalise_code(pl.col("code"), pl.col("code_system")).alias("_code"))
    )


def event_counts(
    events: pl.LazyFrame,
    *,
    index_date: dt.date,
    windows_months: Sequence[int],
    admissions_months: int | None = None,
) -> pl.LazyFrame:
    """Per person with any event: count of each event type in each window, and the dates of the
    last A&E attendance and emergency admission (``_last_<event_type>``).

    Parameters
    ----------
    events
        Events already restricted to the index date (:func:`recorded_events`).
    index_date
        The index date.
    windows_months
        Look-back windows in months.
    admissions_months
        When given, also :data:`ADMISSIONS` (as :func:`recent_emergency_admissions` counts them
        in this window, 0 for people with other events only).
    """
    starts = window_starts(
        index_date, list(dict.fromkeys([*windows_months, *_given(admissions_months)]))
    )
    etype, date = pl.col("event_type"), pl.col("date")
    admissions = [
        ((etype == "emergency_admission") & (date > pl.lit(starts[months])))
        .sum()
        .cast(pl.Int32)
        .alias(ADMISSIONS)
        for months in _given(admissions_months)
    ]
    return events.group_by("person_id").agg(
        *[
            ((etype == event_type) & (date > pl.lit(starts[months])))
            .sum()
            .cast(pl.Int32)
            .alias(count_column(event_type, months))
            for event_type in contract.EVENT_TYPES
            for months in windows_months
        ],
        *[
            pl.when(etype == event_type).then(date).max().alias(f"_last_{event_type}")
            for event_type in RECENCY_EVENTS
        ],
        *admissions,
    )


def _given(value: int | None) -> list[int]:
    return [] if value is None else [value]


def recorded_conditions(events: pl.LazyFrame, *, codelists: Codelists) -> pl.LazyFrame:
    """Per person with a diagnosis: ``has_<condition>`` (0/1) for every contract condition and
    ``smoking_recorded``, each from the registry's lists (any code system).

    Parameters
    ----------
    events
        :func:`recorded_events`.
    codelists
        The codelist registry (:func:`pipeline.codelists.load_codelists`).
    """
    return (
        events.filter(pl.col("event_type") == "diagnosis")
        .group_by("person_id")
        .agg(
            *[
                concept_expr(codelists, condition).cast(pl.Int8).max().alias(f"has_{condition}")
                for condition in contract.CONDITIONS
            ],
            concept_expr(codelists, SMOKING_CONCEPT).cast(pl.Int8).max().alias(SMOKING_FEATURE),
        )
    )


def polypharmacy(
    events: pl.LazyFrame, *, index_date: dt.date, months: int, codelists: Codelists
) -> pl.LazyFrame:
    """Per person with a prescription in the window: distinct medicine groups of the registry
    (the BNF sections, by BNF or dm+d code) prescribed."""
    start = window_starts(index_date, [months])[months]
    groups = codelists.concepts("medicine")
    return (
        events.filter((pl.col("event_type") == "prescription") & (pl.col("date") > pl.lit(start)))
        .group_by("person_id")
        .agg(concept_expr(codelists, group).max().alias(f"_rx_{group}") for group in groups)
        .select(
            "person_id",
            pl.sum_horizontal(f"_rx_{group}" for group in groups)
            .cast(pl.Int16)
            .alias(f"n_bnf_sections_{months}m"),
        )
        .filter(pl.col(f"n_bnf_sections_{months}m") > 0)
    )


def recent_emergency_admissions(
    events: pl.LazyFrame, *, index_date: dt.date, months: int
) -> pl.LazyFrame:
    """Per person with one: emergency admissions in the window (``_n_emergency_admissions``)."""
    start = window_starts(index_date, [months])[months]
    return (
        events.filter(
            (pl.col("event_type") == "emergency_admission") & (pl.col("date") > pl.lit(start))
        )
        .group_by("person_id")
        .agg(pl.len().cast(pl.Int32).alias(ADMISSIONS))
    )


def measurement_expr(codelists: Codelists, measurements: Sequence[str]) -> pl.Expr:
    """The measurement (of ``measurements``) an event's code is in, by the registry's lists
    (a local code or a SNOMED CT observable); null for none."""
    expr = pl.lit(None, dtype=pl.String)
    for name in reversed(measurements):
        expr = pl.when(concept_expr(codelists, name)).then(pl.lit(name)).otherwise(expr)
    return expr


def latest_measurements(
    events: pl.LazyFrame, *, measurements: Sequence[str], codelists: Codelists
) -> pl.LazyFrame:
    """Per person with a reading: ``latest_<measurement>`` and its date ``_date_<measurement>``.

    Several readings on the latest date resolve to the highest value (deterministic): readings
    are first reduced to one per person, measurement and date, so the latest date is unique.
    """
    keys = ["person_id", "_measurement"]
    per_day = (
        events.filter((pl.col("event_type") == "measurement") & pl.col("value").is_not_null())
        .with_columns(measurement_expr(codelists, measurements).alias("_measurement"))
        .filter(pl.col("_measurement").is_not_null())
        .group_by(*keys, "date")
        .agg(pl.col("value").max())
    )
    latest = per_day.group_by(keys).agg(pl.col("value").max_by("date"), pl.col("date").max())
    is_code = {code: pl.col("_measurement") == code for code in measurements}
    return latest.group_by("person_id").agg(
        *[
            pl.when(is_code[c]).then(pl.col("value")).max().alias(f"latest_{c}")
            for c in measurements
        ],
        *[pl.when(is_code[c]).then(pl.col("date")).max().alias(f"_date_{c}") for c in measurements],
    )


PRACTICE_SUMS: Final = "_sum_"
"""Prefix of the additive columns of :func:`practice_partials`."""
PRACTICE_SUMMED: Final = (*(f"has_{condition}" for condition in contract.CONDITIONS), ADMISSIONS)
"""The per-person columns :func:`practice_partials` sums per practice."""


def practice_partials(
    people: pl.LazyFrame, conditions: pl.LazyFrame, admissions: pl.LazyFrame
) -> pl.LazyFrame:
    """Per practice, additive counts of its registered people: ``practice_list_size``, and the
    sums of each ``has_<condition>`` flag and of ``_n_emergency_admissions``. Integers, so the
    partials of several partitions summed are exactly those of all of them.

    Parameters
    ----------
    people
        ``person_id``, ``practice_id`` of everyone registered (or of one partition).
    conditions
        :func:`recorded_conditions`.
    admissions
        :func:`recent_emergency_admissions`.
    """
    registered = (
        people.select("person_id", "practice_id")
        .join(conditions, on="person_id", how="left")
        .join(admissions, on="person_id", how="left")
        .with_columns(pl.col(PRACTICE_SUMMED).fill_null(0))
    )
    return sum_per_practice(registered)


def sum_per_practice(registered: pl.LazyFrame) -> pl.LazyFrame:
    """:func:`practice_partials` of one row per registered person with ``practice_id`` and the
    :data:`PRACTICE_SUMMED` columns (0, not null, where none): people counted, columns summed."""
    return registered.group_by("practice_id").agg(
        pl.len().cast(pl.Int64).alias("practice_list_size"),
        *[
            pl.col(name).cast(pl.Int64).sum().alias(f"{PRACTICE_SUMS}{name}")
            for name in PRACTICE_SUMMED
        ],
    )


def practice_rates(partials: pl.LazyFrame, *, polypharmacy_months: int) -> pl.LazyFrame:
    """Practice context from :func:`practice_partials`: list size, recorded prevalence of each
    condition and emergency admissions per patient in the window (sum / list size)."""
    size = pl.col("practice_list_size")
    return partials.select(
        "practice_id",
        size.cast(pl.Int32),
        *[
            (pl.col(f"{PRACTICE_SUMS}has_{condition}") / size).alias(
                f"practice_prevalence_{condition}"
            )
            for condition in contract.CONDITIONS
        ],
        (pl.col(f"{PRACTICE_SUMS}{ADMISSIONS}") / size).alias(
            f"practice_emergency_admission_rate_{polypharmacy_months}m"
        ),
    )


def sum_practice_partials(found: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Several partitions' :func:`practice_partials` as one (summed per practice, sorted)."""
    return (
        pl.concat(list(found))
        .group_by("practice_id")
        .agg(pl.exclude("practice_id").sum())
        .sort("practice_id", nulls_last=True)
    )


def practice_partials_query(
    people: pl.LazyFrame,
    events: pl.LazyFrame,
    *,
    index_date: dt.date,
    polypharmacy_months: int,
    codelists: Codelists,
) -> pl.LazyFrame:
    """:func:`practice_partials` straight from the contract tables."""
    recorded = recorded_events(events, index_date=index_date)
    return practice_partials(
        people,
        recorded_conditions(recorded, codelists=codelists),
        recent_emergency_admissions(recorded, index_date=index_date, months=polypharmacy_months),
    )


def practice_context_query(
    people: pl.LazyFrame,
    events: pl.LazyFrame,
    *,
    index_date: dt.date,
    polypharmacy_months: int,
    codelists: Codelists,
) -> pl.LazyFrame:
    """Per practice, from the recorded data of its registered people (``people`` and
    ``events``: the contract tables): :func:`practice_rates` of :func:`practice_partials`."""
    partials = practice_partials_query(
        people,
        events,
        index_date=index_date,
        polypharmacy_months=polypharmacy_months,
        codelists=codelists,
    )
    return practice_rates(partials, polypharmacy_months=polypharmacy_months)


def days_before(index_date: dt.date, date: pl.Expr) -> pl.Expr:
    """Whole days from ``date`` to the index date (null stays null)."""
    return (pl.lit(index_date) - date).dt.total_days().cast(pl.Int32)


def person_aggregates(
    people: pl.LazyFrame,
    areas: pl.LazyFrame,
    recorded: pl.LazyFrame,
    practices: pl.LazyFrame | None,
    *,
    features: FeatureParams,
    index_date: dt.date,
    codelists: Codelists,
    unavailable: Sequence[str] = (),
) -> pl.LazyFrame:
    """Person attributes joined to every event-level branch and the practice context.

    People without events of a branch get 0 for its counts and flags (dates and measurements
    stay null); people without a practice get no practice context. ``practices`` None: no
    practice context (joined later, :func:`join_practice_context`), and :data:`ADMISSIONS`
    kept for the practice partials (:func:`sum_per_practice`).
    """
    months = features.polypharmacy_months
    deferred = practices is None
    flags = [f"has_{condition}" for condition in contract.CONDITIONS]
    counts = [count_column(t, m) for t in contract.EVENT_TYPES for m in features.windows_months]
    counts += [ADMISSIONS] if deferred else []
    branches = [
        event_counts(
            recorded,
            index_date=index_date,
            windows_months=features.windows_months,
            admissions_months=months if deferred else None,
        ),
        recorded_conditions(recorded, codelists=codelists),
        latest_measurements(recorded, measurements=features.measurements, codelists=codelists),
        polypharmacy(recorded, index_date=index_date, months=months, codelists=codelists),
    ]
    persons = person_attributes(people, areas, unavailable=unavailable)
    for branch in branches:
        persons = persons.join(branch, on="person_id", how="left")
    if practices is not None:
        persons = persons.join(practices, on="practice_id", how="left")
    return persons.with_columns(
        pl.col([*counts, *flags, SMOKING_FEATURE, f"n_bnf_sections_{months}m"]).fill_null(0)
    )


def derived_features(features: FeatureParams, *, index_date: dt.date) -> dict[str, pl.Expr]:
    """Features computed from the aggregates: multimorbidity, recency and measurement flags."""
    flags = [f"has_{condition}" for condition in contract.CONDITIONS]
    return {
        contract.RECORDED_MULTIMORBIDITY: pl.sum_horizontal(flags),
        **{
            f"days_since_last_{t}": days_before(index_date, pl.col(f"_last_{t}"))
            for t in RECENCY_EVENTS
        },
        **{f"no_prior_{t}": pl.col(f"_last_{t}").is_null() for t in RECENCY_EVENTS},
        **{
            f"days_since_{c}": days_before(index_date, pl.col(f"_date_{c}"))
            for c in features.measurements
        },
        **{f"{c}_missing": pl.col(f"latest_{c}").is_null() for c in features.measurements},
    }


def output_columns(features: FeatureParams, *, index_date: dt.date) -> list[pl.Expr]:
    """The output columns in order: key, split, sensitive columns, then every feature (derived
    ones computed here), each cast to its manifest dtype."""
    derived = derived_features(features, index_date=index_date)
    sensitive = list(contract.SENSITIVE_SCHEMA)
    return [
        pl.col("person_id").cast(pl.String),
        split_expr(
            pl.col("_split_u"),
            pl.col("icb_code"),
            fractions=features.split_fractions,
            holdout_icb=features.holdout_icb,
        ),
        *[pl.col(name).cast(dtype) for name, dtype in contract.SENSITIVE_SCHEMA.items()],
        *[
            derived.get(spec.name, pl.col(spec.name)).cast(spec.dtype).alias(spec.name)
            for spec in feature_specs(features)
            if spec.name not in sensitive
        ],
    ]


def build_features(
    people: pl.LazyFrame,
    areas: pl.LazyFrame,
    events: pl.LazyFrame,
    *,
    features: FeatureParams,
    index_date: dt.date,
    seed: int,
    id_bytes: int,
    practices: pl.LazyFrame | None = None,
    codelists: Codelists | None = None,
    unavailable: Sequence[str] = (),
) -> pl.LazyFrame:
    """The features query: one row per person in ``people`` (not yet sorted).

    Parameters
    ----------
    people, areas, events
        Contract tables (lazy); events may include dates after the index date (dropped here).
    features
        The ``features`` section of the params.
    index_date
        Only events on or before it count; windows end on it.
    seed
        The root seed (``params.seed``); the split hash uses a stream derived from it.
    id_bytes
        Longest ``person_id`` in bytes, for the split hash.
    practices
        Practice context (:func:`practice_context_query`) computed over the whole population;
        needed when ``people`` is one chunk of it. ``None``: computed here from ``people``.
    codelists
        The codelist registry; ``None``: the shipped ``codelists/``.
    unavailable
        Equity fields the extract lacks (:func:`pipeline.contract.unavailable_fields`).

    Returns
    -------
    pl.LazyFrame
        ``person_id``, ``split``, the sensitive columns, then every feature of
        :func:`feature_specs`, each cast to its manifest dtype.
    """
    codelists = load_codelists() if codelists is None else codelists
    require_concepts(codelists, measurements=features.measurements)
    if practices is None:
        practices = practice_context_query(
            people,
            events,
            index_date=index_date,
            polypharmacy_months=features.polypharmacy_months,
            codelists=codelists,
        )
    persons = _persons_with_split(
        people,
        areas,
        events,
        practices,
        features=features,
        index_date=index_date,
        seed=seed,
        id_bytes=id_bytes,
        codelists=codelists,
        unavailable=unavailable,
    )
    return persons.select(output_columns(features, index_date=index_date))


def _persons_with_split(
    people: pl.LazyFrame,
    areas: pl.LazyFrame,
    events: pl.LazyFrame,
    practices: pl.LazyFrame | None,
    *,
    features: FeatureParams,
    index_date: dt.date,
    seed: int,
    id_bytes: int,
    codelists: Codelists,
    unavailable: Sequence[str],
) -> pl.LazyFrame:
    """:func:`person_aggregates` of the recorded events, with the split and its hash unit."""
    persons = person_aggregates(
        people,
        areas,
        recorded_events(events, index_date=index_date),
        practices,
        features=features,
        index_date=index_date,
        codelists=codelists,
        unavailable=unavailable,
    )
    return with_split_unit(persons, seed=split_seed(seed), id_bytes=id_bytes)


def split_seed(seed: int) -> int:
    """The split hash's seed: a stream of the root seed (``params.seed``)."""
    return seeds.derive("features", "split", root=seed, bits=64)


def context_columns(features: FeatureParams) -> list[str]:
    """The practice-context features (:func:`practice_rates`' columns but ``practice_id``)."""
    months = features.polypharmacy_months
    return [
        spec.name for spec in feature_specs(features) if fed_by(spec.name, months) == "practice_id"
    ]


def build_features_part(
    people: pl.LazyFrame,
    areas: pl.LazyFrame,
    events: pl.LazyFrame,
    *,
    features: FeatureParams,
    index_date: dt.date,
    seed: int,
    id_bytes: int,
    codelists: Codelists,
    unavailable: Sequence[str] = (),
) -> pl.LazyFrame:
    """:func:`build_features` of one part of the population, before the practice context is
    known: its output columns but the :func:`context_columns`, then :data:`ADMISSIONS`. The
    part's :func:`sum_per_practice` are its practice partials; :func:`join_practice_context`
    completes it once the context of everybody is known.
    """
    require_concepts(codelists, measurements=features.measurements)
    persons = _persons_with_split(
        people,
        areas,
        events,
        None,
        features=features,
        index_date=index_date,
        seed=seed,
        id_bytes=id_bytes,
        codelists=codelists,
        unavailable=unavailable,
    )
    context = set(context_columns(features))
    columns = output_columns(features, index_date=index_date)
    return persons.select(
        *[column for column in columns if column.meta.output_name() not in context], ADMISSIONS
    )


def join_practice_context(
    parts: pl.LazyFrame, practices: pl.LazyFrame, *, features: FeatureParams
) -> pl.LazyFrame:
    """:func:`build_features_part` rows with the practice context (:func:`practice_rates`)
    joined on ``practice_id``, in their order, as the output columns of :func:`build_features`.
    """
    joined = parts.join(practices, on="practice_id", how="left", maintain_order="left")
    return joined.select(list(output_schema(features)))


def output_schema(features: FeatureParams) -> dict[str, Any]:
    """Column -> dtype of ``features/features.parquet`` for these params, in column order."""
    schema: dict[str, Any] = {**contract.FEATURES_KEY_SCHEMA, **contract.SENSITIVE_SCHEMA}
    for spec in feature_specs(features):
        schema.setdefault(spec.name, spec.dtype)
    return schema


def build_manifest(
    features: FeatureParams, *, index_date: dt.date, seed: int, unavailable: Sequence[str] = ()
) -> contract.FeatureManifest:
    """``features/manifest.json``: index date, windows, split, sensitive columns and features.

    Parameters
    ----------
    features
        The ``features`` section of the params.
    index_date, seed
        ``params.index_date`` and the root seed (recorded with the split).
    unavailable
        Equity fields the extract lacks: recorded (``unavailable_fields``, with why) when any,
        and the features they feed are no model inputs.
    """
    specs = feature_specs(features, unavailable=unavailable)
    missing = (
        {"unavailable_fields": {name: contract.unavailable_reason(name) for name in unavailable}}
        if unavailable
        else {}
    )
    return contract.FeatureManifest.model_validate(
        missing
        | {
            "index_date": index_date.isoformat(),
            "windows_months": list(features.windows_months),
            "polypharmacy_months": features.polypharmacy_months,
            "measurements": list(features.measurements),
            "key": "person_id",
            "split": {
                "column": "split",
                "values": [*contract.SPLITS, *([EXTERNAL_SPLIT] if features.holdout_icb else [])],
                "fractions": dict(zip(contract.SPLITS, features.split_fractions, strict=True)),
                "holdout_icb": features.holdout_icb,
                "seed": seed,
                "method": "seeded FNV-1a 64 of the UTF-8 bytes of person_id + splitmix64 finaliser "
                "-> u in [0, 1); train if u < f_train, validation if u < f_train + f_validation, "
                "else test; people whose home-area ICB is holdout_icb get 'external'",
            },
            "sensitive_columns": list(contract.SENSITIVE_SCHEMA),
            "sensitive_dtypes": {
                name: str(dtype) for name, dtype in contract.SENSITIVE_SCHEMA.items()
            },
            "features": [spec.manifest_entry() for spec in specs],
            "model_inputs": [spec.name for spec in specs if spec.model_input],
            "columns": list(output_schema(features)),
        }
    )


# --- IO ----------------------------------------------------------------------------------------


def check_params_against_data(holdout_icb: str | None, icb_codes: Sequence[str]) -> None:
    """Params that name data (``features.holdout_icb``) must match the data, before any work."""
    known = set(icb_codes)
    if holdout_icb is not None and holdout_icb not in known:
        raise ParamsError(
            f"features.holdout_icb: {holdout_icb!r} is not an ICB in the population's areas "
            f"({len(known)} ICBs, e.g. {', '.join(sorted(icb_codes)[:5])})"
        )


def person_chunks(person_ids: pl.Series, chunk_people: int) -> list[tuple[str, str | None]]:
    """Contiguous ``person_id`` ranges ``[low, next low)`` of about ``chunk_people`` people."""
    ordered = person_ids.sort()
    lows = ordered.gather(list(range(0, len(ordered), chunk_people))).to_list()
    return list(zip(lows, [*lows[1:], None], strict=True))


def in_chunk(low: str, high: str | None) -> pl.Expr:
    """``person_id`` in ``[low, high)`` (``high`` None: no upper bound)."""
    keep = pl.col("person_id") >= low
    return keep if high is None else keep & (pl.col("person_id") < high)


def _sink_sorted(query: pl.LazyFrame, target: Path) -> None:
    # As io.sink_parquet (sorted on person_id, zstd), but (1) without common-subplan
    # elimination: caching the events scan that every branch shares would hold all events in
    # memory (measured at 1M people: 2.3 GB peak with it, 1.0 GB without); (2) with a fixed
    # row-group size: the streaming sink otherwise cuts row groups where morsels happen to end,
    # so the bytes (not the data) would differ from run to run.
    query.sort("person_id").sink_parquet(
        target,
        compression="zstd",
        statistics=True,
        row_group_size=ROW_GROUP_SIZE,
        optimizations=pl.QueryOptFlags(comm_subplan_elim=False),
    )


@dataclass(frozen=True)
class WrittenPart:
    """What a :func:`partition_features` task reports: rows written, lowest and highest
    ``person_id`` (None when the partition has nobody) and the practice partials."""

    rows: int
    low: str | None
    high: str | None
    partials: pl.DataFrame


def partition_features(
    partition: str,
    *,
    folder: str,
    parts: str,
    features: FeatureParams,
    index_date: dt.date,
    seed: int,
    codelists: Codelists,
    unavailable: Sequence[str],
) -> WrittenPart:
    """Write one partition's features but the practice context, sorted, to
    ``parts/<partition>`` (a task): the :func:`build_features_part` query on that partition's
    people and events. Its practice partials are summed from the written rows
    (:func:`sum_per_practice`).

    The partition's events are read and cleaned once, into memory (a partition holds at most
    ``population.chunk_size`` people: about 240 MB of clean events at 164,000 people), and every
    branch of the query reads them there: a lazy clean would be run again by each branch.
    """
    people = contract.scan_input(folder, "people", partition)
    raw = contract.scan_input(folder, "events", partition)
    clean = contract.clean_events(raw, people, index_date=index_date)
    events = clean.collect(engine="streaming").lazy()
    ids = people.select(
        pl.len().alias("n"),
        pl.col("person_id").min().alias("lo"),
        pl.col("person_id").max().alias("hi"),
        pl.col("person_id").str.len_bytes().max().alias("bytes"),
    )
    n, low, high, id_bytes = ids.collect().row(0)
    query = build_features_part(
        people,
        contract.scan_input(folder, "areas"),
        events,
        features=features,
        index_date=index_date,
        seed=seed,
        id_bytes=id_bytes or 0,  # the hash reads each id's own bytes: any bound >= them agrees
        codelists=codelists,
        unavailable=unavailable,
    )
    target = Path(parts) / partition
    target.parent.mkdir(parents=True, exist_ok=True)
    _sink_sorted(query, target)
    return WrittenPart(int(n), low, high, part_partials(target))


def part_partials(part: Path) -> pl.DataFrame:
    """The practice partials of a written :func:`build_features_part` (its rows summed per
    practice, :func:`sum_per_practice`)."""
    return sum_per_practice(pl.scan_parquet(part).select("practice_id", *PRACTICE_SUMMED)).collect()


def context_joiner(
    found: Sequence[pl.DataFrame], *, features: FeatureParams
) -> Callable[[pl.LazyFrame], pl.LazyFrame]:
    """:func:`join_practice_context` with the context of everybody: the parts' practice
    partials (``found``) summed, then divided (:func:`practice_rates`)."""
    summed = sum_practice_partials(found).lazy()
    rates = practice_rates(summed, polypharmacy_months=features.polypharmacy_months).collect()
    return functools.partial(join_practice_context, practices=rates.lazy(), features=features)


def _ascending(ranges: Sequence[tuple[str | None, str | None]]) -> bool:
    """True when the non-empty ranges follow one another without overlap."""
    bounds = [(low, high) for low, high in ranges if low is not None and high is not None]
    return all(a[1] < b[0] for a, b in itertools.pairwise(bounds))


def _combine_parts(
    files: Sequence[Path],
    target: Path,
    *,
    ascending: bool,
    complete: Callable[[pl.LazyFrame], pl.LazyFrame],
) -> None:
    """Parts sorted on person_id as one sorted file: concatenated in order when their ranges
    ascend, otherwise merged on person_id (streaming), then completed row-wise by ``complete``."""
    if ascending:
        combined = pl.scan_parquet(list(files))
    else:
        combined = functools.reduce(
            lambda merged, part: merged.merge_sorted(part, key="person_id"),
            [pl.scan_parquet(file) for file in files],
        )
    complete(combined).sink_parquet(
        target,
        compression="zstd",
        statistics=True,
        row_group_size=ROW_GROUP_SIZE,
        maintain_order=True,
    )


def write_partitioned_features(
    folder: Path,
    target: Path,
    *,
    features: FeatureParams,
    index_date: dt.date,
    seed: int,
    codelists: Codelists,
    unavailable: Sequence[str] = (),
    client: Client | None = None,
) -> int:
    """The features of an ICB-partitioned population (:mod:`pipeline.partitions`): one part per
    partition (tasks on ``client``'s workers, or here one after another), each partition's events
    read and cleaned once, then one file with the practice context joined.

    The practice context is exact: each partition's practice partials (integer sums, from its
    part) summed per practice, then divided (:func:`practice_rates`), as over the whole
    population.

    Returns
    -------
    int
        The number of partitions.
    """
    names = partitions.partitions(folder)
    parts = target.parent / f".{target.name}.parts"
    parts.mkdir()
    try:
        written: list[WrittenPart] = engine.map_partitions(
            partition_features,
            names,
            client=client,
            folder=str(folder.resolve()),
            parts=str(parts.resolve()),
            features=features,
            index_date=index_date,
            seed=seed,
            codelists=codelists,
            unavailable=tuple(unavailable),
        )
        _combine_parts(
            [parts / name for name in names],
            target,
            ascending=_ascending([(part.low, part.high) for part in written]),
            complete=context_joiner([part.partials for part in written], features=features),
        )
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    return len(names)


def write_features(
    folder: Path,
    target: Path,
    *,
    features: FeatureParams,
    index_date: dt.date,
    seed: int,
    chunk_people: int | None = None,
    codelists: Codelists | None = None,
    unavailable: Sequence[str] = (),
    client: Client | None = None,
) -> int:
    """Compute the features of the population in ``folder`` into ``target`` (parquet).

    One lazy query from the scans to the sink; above ``chunk_people`` people (default
    ``features.chunk_people``) it runs once per ``person_id`` range (practice context computed
    once, over everybody) and concatenates the sorted parts, so memory stays flat with
    population size. A population split by ICB runs it once per partition instead
    (:func:`write_partitioned_features`, on ``client``'s workers when given). Conditions,
    medicine groups and measurements come from ``codelists`` (default: the shipped
    ``codelists/``).

    Returns
    -------
    int
        The number of chunks (or partitions) used.
    """
    codelists = load_codelists() if codelists is None else codelists
    if partitions.is_partitioned(folder):
        return write_partitioned_features(
            folder,
            target,
            features=features,
            index_date=index_date,
            seed=seed,
            codelists=codelists,
            unavailable=unavailable,
            client=client,
        )
    people = contract.scan_input(folder, "people")
    person_ids = people.select("person_id").collect()["person_id"]
    id_bytes = person_ids.str.len_bytes().max()
    if not isinstance(id_bytes, int):
        raise ContractError(f"{folder}/people: no people")
    chunks = person_chunks(person_ids, chunk_people or features.chunk_people)
    del person_ids
    options: dict[str, Any] = {
        "areas": contract.scan_input(folder, "areas"),
        "features": features,
        "index_date": index_date,
        "seed": seed,
        "id_bytes": id_bytes,
        "codelists": codelists,
        "unavailable": unavailable,
    }
    if len(chunks) == 1:
        people, events = _chunk_tables(folder, None, index_date=index_date)
        _sink_sorted(build_features(people=people, events=events, **options), target)
        return 1
    part_of = functools.partial(build_features_part, **options)
    _write_chunks(folder, target, chunks, part_of, features=features, index_date=index_date)
    return len(chunks)


def _chunk_tables(
    folder: Path, chunk: tuple[str, str | None] | None, *, index_date: dt.date
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """The people and clean events of one ``person_id`` range (None: everybody). Record-level
    noise (counted by validate) and exact duplicates never reach a feature."""
    people = contract.scan_input(folder, "people")
    events = contract.scan_input(folder, "events")
    if chunk is not None:
        keep = in_chunk(*chunk)
        people, events = people.filter(keep), events.filter(keep)
    return people, contract.clean_events(events, people, index_date=index_date)


def _write_chunks(
    folder: Path,
    target: Path,
    chunks: Sequence[tuple[str, str | None]],
    part_of: Callable[..., pl.LazyFrame],
    *,
    features: FeatureParams,
    index_date: dt.date,
) -> None:
    """The features one ``person_id`` range at a time, each range's events read once
    (``part_of``: :func:`build_features_part`), concatenated with the practice context joined:
    the parts' practice partials summed (exact), so no pass holds every event."""
    parts = target.parent / f".{target.name}.parts"
    parts.mkdir()
    try:
        files = [parts / f"part-{number:05d}.parquet" for number in range(len(chunks))]
        found = []
        with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
            task = progress.add_task("features", total=len(chunks))
            for chunk, file in zip(chunks, files, strict=True):
                people, events = _chunk_tables(folder, chunk, index_date=index_date)
                _sink_sorted(part_of(people=people, events=events), file)
                found.append(part_partials(file))
                progress.advance(task)
        complete = context_joiner(found, features=features)
        _combine_parts(files, target, ascending=True, complete=complete)
    finally:
        shutil.rmtree(parts, ignore_errors=True)


def _icb_codes(folder: Path) -> list[str] | None:
    """ICB codes of the population's areas; None when unreadable (the validator reports it)."""
    try:
        icbs = io.scan_table(folder, "areas").select(pl.col("icb_code").unique()).collect()
    except (FileNotFoundError, pl.exceptions.PolarsError):
        return None
    return icbs["icb_code"].drop_nulls().to_list()


def run(params: Params, paths: io.Paths) -> Path:
    """Build the features of ``data/population/`` and write them with the manifest.

    The contract's structural rules are checked again unless the validate stage's receipt
    (:mod:`pipeline.receipt`) describes this very folder under these params.

    Returns
    -------
    Path
        The ``features/`` folder (written as a whole, atomically).
    """
    folder = paths.population
    if not folder.is_dir():
        raise StageError(f"{folder}: population folder not found (run the synthesize stage)")
    fp, index_date, seed = params.features, params.index_date, params.seed
    icb_codes = _icb_codes(folder)  # params that name data are checked first
    if icb_codes is not None:
        check_params_against_data(fp.holdout_icb, icb_codes)
    lists = paths.root / CODELISTS_DIR  # a root without its own codelists/: the shipped ones
    codelists = load_codelists(lists if lists.is_dir() else None)
    require_concepts(codelists, measurements=fp.measurements)
    with engine.connect_for(params) as client:  # partitions as tasks on engine dask
        checked = receipt.population_receipt(
            folder,
            target_names=tuple(params.targets),
            index_date=index_date,
            extract_end=params.validation.extract_end,
        )
        if not receipt.matches(paths.validated, checked):  # validate did not pass this folder
            contract.validate_population(
                folder,
                target_names=tuple(params.targets),
                index_date=index_date,
                extract_end=params.validation.extract_end,
                checks="structural",  # record-level noise: counted by validate, dropped later
                client=client,
            )
        unavailable = contract.unavailable_fields(folder)
        manifest = build_manifest(fp, index_date=index_date, seed=seed, unavailable=unavailable)
        with io.atomic_dir(paths.features) as tmp:
            write_features(
                folder,
                tmp / FEATURES_FILE,
                features=fp,
                index_date=index_date,
                seed=seed,
                codelists=codelists,
                unavailable=unavailable,
                client=client,
            )
            io.write_json(manifest.document(), tmp / MANIFEST_FILE)
            rows = pl.scan_parquet(tmp / FEATURES_FILE).select(pl.len()).collect().item()
    console.stage_done(
        "features", did=f"{console.count(rows)} people x {len(manifest.features)} features"
    )
    return paths.features
