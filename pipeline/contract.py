"""The data contract: tables, columns, codes and ranges, and the schemas passed between stages.

This is the one module that knows the column names of the inputs, and (section "Stage outputs:
audit -> report") of every table and JSON summary the report reads (docs/audit_tables.md). A
real extract that follows the contract can replace the synthetic population;
``python -m pipeline validate DIR`` checks it.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, TypeVar, get_args

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, model_validator

from pipeline import engine, partitions
from pipeline.codelists import CODE_SYSTEMS, CodeSystem, code_valid_expr, normalise_code
from pipeline.config import EventType
from pipeline.errors import ContractError
from pipeline.io import write_json

if TYPE_CHECKING:
    from distributed import Client
    from polars._typing import PolarsDataType

__all__ = ["ContractError"]


# --- Input tables (a real extract must provide these) -------------------------------------------

AREAS_SCHEMA: Final = {
    "area_id": pl.String,
    "icb_code": pl.String,
    "icb_name": pl.String,
    "region": pl.String,
    "imd_decile": pl.Int8,
    "rural_urban": pl.String,
}
PRACTICES_SCHEMA: Final = {"practice_id": pl.String, "icb_code": pl.String}
PEOPLE_SCHEMA: Final = {
    "person_id": pl.String,
    "sex": pl.String,
    "age": pl.Int16,
    "ethnicity": pl.String,
    "area_id": pl.String,
    "practice_id": pl.String,
}
EVENTS_SCHEMA: Final = {
    "person_id": pl.String,
    "date": pl.Date,
    "event_type": pl.String,
    "code": pl.String,
    "value": pl.Float64,
}
EVENTS_OPTIONAL_SCHEMA: Final = {"code_system": pl.String}
"""Optional events columns: ``code_system`` overrides, row by row, the code system its
event_type declares (:data:`EVENT_CODE_SYSTEMS`); null means the declared one."""
OUTCOMES_SCHEMA: Final = {"person_id": pl.String, "target": pl.String, "value": pl.Int8}

INPUT_TABLES: Final[dict[str, dict[str, Any]]] = {
    "areas": AREAS_SCHEMA,
    "practices": PRACTICES_SCHEMA,
    "people": PEOPLE_SCHEMA,
    "events": EVENTS_SCHEMA,
    "outcomes": OUTCOMES_SCHEMA,
}
"""Each table is ``<name>.parquet`` or a folder ``<name>/`` of parquet parts."""
OPTIONAL_TABLES: Final = frozenset({"outcomes", "practices"})
"""Tables an extract may leave out: without ``outcomes``, each target's outcome is derived from
the events after the index date (``pipeline.outcomes``, params ``targets.<name>.derive``);
``practices`` only names each practice's ICB."""
EQUITY_FIELDS: Final = {
    # column: (table, what it is)
    "imd_decile": ("areas", "IMD decile of the home area"),
    "ethnicity": ("people", "ethnic category"),
    "practice_id": ("people", "GP practice"),
    "area_id": ("people", "home area (so no IMD, ICB, region or rural-urban class)"),
}
"""Columns an extract may leave out (or leave entirely null): the run goes on without them, the
features they feed are no model inputs, and the audit names the dimensions it could not audit
(:func:`unavailable_reason`). Read as all-null columns by :func:`scan_input`. ``people.area_id``
may also be null for some people only: a null area_id means "no home area recorded" (their IMD,
ICB, region and rural-urban class are unknown); a non-null one must name an area."""
SENSITIVE_SOURCES: Final = {
    "imd_decile": "imd_decile",
    "imd_quintile": "imd_decile",
    "ethnicity_group": "ethnicity",
    "practice_id": "practice_id",
    "region": "area_id",
    "icb_code": "area_id",
    "rural_urban": "area_id",
}
"""Sensitive column (:data:`SENSITIVE_SCHEMA`) -> the equity field it comes from."""


def unavailable_reason(field: str) -> str:
    """Why a dimension fed by an equity field could not be audited, in words."""
    table, label = EQUITY_FIELDS[field]
    return f"the extract has no {label} ({table}.{field} absent or empty)"


OPTIONAL_COLUMNS: Final[dict[str, dict[str, Any]]] = {"events": EVENTS_OPTIONAL_SCHEMA}
"""Columns a table may carry beyond its schema (checked for type when present)."""

# --- Codes -------------------------------------------------------------------------------------

REGIONS: Final = (
    "North East and Yorkshire",
    "North West",
    "Midlands",
    "East of England",
    "London",
    "South East",
    "South West",
)

SEXES: Final = ("F", "M", "U")
RURAL_URBAN: Final = ("urban", "rural")
AGE_RANGE: Final = (0, 110)

# NHS Data Dictionary "Ethnic Category" (2001-census based) -> broad group.
ETHNICITY_GROUPS: Final = {
    "A": "White",
    "B": "White",
    "C": "White",
    "D": "Mixed",
    "E": "Mixed",
    "F": "Mixed",
    "G": "Mixed",
    "H": "Asian",
    "J": "Asian",
    "K": "Asian",
    "L": "Asian",
    "R": "Asian",
    "M": "Black",
    "N": "Black",
    "P": "Black",
    "S": "Other",
    "Z": "Not recorded",
    "99": "Not recorded",
}
ETHNICITY_LABELS: Final = {
    "A": "White British",
    "B": "White Irish",
    "C": "Any other White background",
    "D": "White and Black Caribbean",
    "E": "White and Black African",
    "F": "White and Asian",
    "G": "Any other Mixed background",
    "H": "Indian",
    "J": "Pakistani",
    "K": "Bangladeshi",
    "L": "Any other Asian background",
    "M": "Caribbean",
    "N": "African",
    "P": "Any other Black background",
    "R": "Chinese",
    "S": "Any other ethnic group",
    "Z": "Not stated",
    "99": "Not known",
}
BROAD_ETHNIC_GROUPS: Final = ("White", "Mixed", "Asian", "Black", "Other", "Not recorded")

EVENT_TYPES: Final = get_args(EventType)
"""The contract's event types, in the order of ``pipeline.config.EventType`` (params name them)."""

MEASUREMENT_CODES: Final = {
    # local code: (unit, plausible low, plausible high)
    "sbp": ("mmHg", 60.0, 260.0),
    "dbp": ("mmHg", 30.0, 160.0),
    "bmi": ("kg/m2", 10.0, 80.0),
    "hba1c": ("mmol/mol", 15.0, 200.0),
    "cholesterol": ("mmol/L", 1.0, 20.0),
}
MEASUREMENT_OBSERVABLES: Final = {
    # SNOMED CT code of a measurement in the shipped codelists -> its local code (same unit)
    "271649006": "sbp",
    "271650006": "dbp",
    "60621009": "bmi",
    "846931000000101": "bmi",
    "999791000000106": "hba1c",
    "1005671000000105": "cholesterol",
    "1017161000000104": "cholesterol",
    "850981000000101": "cholesterol",
}
"""SNOMED CT-coded measurements whose values the plausible-range rule judges (as their local
code). A measurement list added to ``codelists/`` in another unit needs its range here."""

# Conditions: name -> the ICD-10 categories the synthetic world codes them with. Features match
# conditions through the codelist registry (codelists/registry.yaml), whose ICD-10 lists cover
# these categories; this table is the synthetic world's vocabulary, not the definition.
CONDITION_CODES: Final = {
    "hypertension": ("I10",),
    "diabetes": ("E10", "E11"),
    "copd": ("J44",),
    "asthma": ("J45",),
    "chd": ("I20", "I21", "I22", "I23", "I24", "I25"),
    "ckd": ("N18",),
    "heart_failure": ("I50",),
    "atrial_fibrillation": ("I48",),
    "depression": ("F32", "F33"),
    "severe_mental_illness": ("F20", "F21", "F22", "F23", "F24", "F25", "F28", "F29", "F30", "F31"),
    "stroke": ("I63", "I64"),
    "obesity": ("E66",),
}
CONDITIONS: Final = tuple(CONDITION_CODES)
CVD_EVENT_CODES: Final = ("I21", "I22", "I63", "I64")

# BNF sections (the registry's medicine groups, codelists/local-bnf-*.csv).
BNF_SECTIONS: Final = {
    "0205": "antihypertensives",
    "0206": "nitrates and calcium-channel blockers",
    "0212": "lipid-regulating drugs",
    "0601": "diabetes drugs",
    "0301": "bronchodilators",
    "0302": "inhaled corticosteroids",
    "0403": "antidepressants",
    "0402": "antipsychotics",
    "0208": "anticoagulants",
    "0202": "diuretics",
    "0407": "analgesics",
    "0101": "antacids",
}

# --- Stage outputs (read by later stages) --------------------------------------------------------

AGE_BANDS: Final = ((0, 17), (18, 34), (35, 49), (50, 64), (65, 74), (75, 84), (85, 110))
SPLITS: Final = ("train", "validation", "test")

SENSITIVE_SCHEMA: Final = {
    "sex": pl.String,
    "age": pl.Int16,
    "age_band": pl.String,
    "imd_decile": pl.Int8,
    "imd_quintile": pl.Int8,
    "region": pl.String,
    "icb_code": pl.String,
    "practice_id": pl.String,
    "ethnicity_group": pl.String,
    "rural_urban": pl.String,
}
"""Columns of ``features/features.parquet`` that the audit reads as sensitive attributes."""

FEATURES_KEY_SCHEMA: Final = {"person_id": pl.String, "split": pl.String}
"""``features/features.parquet``: key, split, sensitive attributes, then the manifest's features."""

SCORES_SCHEMA: Final = {
    "person_id": pl.String,
    "split": pl.String,
    "outcome": pl.Int8,
    "risk_score": pl.Float64,
    "risk_rank": pl.Int64,
    "risk_decile": pl.Int8,
    "risk_tier": pl.String,
}
"""``data/scores/<target>.parquet``: one row per eligible person; risk_rank 1 = highest risk,
risk_decile 10 = highest risk."""

EXPLAINED_FEATURES: Final = 8
"""How many of each person's largest feature contributions ``pipeline.explain`` keeps (more than
the lists' three reasons: context such as age and sex is kept out of the reasons)."""
EXPLANATIONS_SCHEMA: Final = {
    "person_id": pl.String,
    "position": pl.Int8,
    "feature": pl.String,
    "contribution": pl.Float64,
}
"""``pipeline.explain.explain_cohort``'s frame (in memory, never a file): for each person the
outreach stage selects, the ``EXPLAINED_FEATURES`` largest LightGBM ``pred_contrib`` values
(log-odds, may be <= 0) in ``position`` 1 = largest, ties in model feature order; a feature
never named on a list (ethnicity) is never among them (``docs/outreach.md``)."""

TRUTH_PEOPLE_SCHEMA: Final = {
    "person_id": pl.String,
    "smoker": pl.Boolean,
    "bmi": pl.Float64,
    "sbp": pl.Float64,
    "hba1c": pl.Float64,
    **{f"true_{condition}": pl.Boolean for condition in CONDITIONS},
    "n_true_conditions": pl.Int8,
    "true_need": pl.Float64,
}
"""``data/truth/people.parquet`` (synthetic data only)."""

TRUTH_ORACLE_SCHEMA: Final = {
    "person_id": pl.String,
    "target": pl.String,
    "oracle_risk": pl.Float64,
    "true_need": pl.Float64,
}
"""``data/truth/oracle.parquet``: per eligible person and target, ``oracle_risk`` (the true
probability of the *recorded* outcome, the one the model learns) and ``true_need`` (the target's
own true need: the true risk of its outcome without the planted recording and access biases, e.g.
the true 5-year CVD risk as if everything were recorded; docs/synthetic_world.md)."""


# --- Stage outputs: features -> train, audit, outreach ------------------------------------------

FeatureKind = Literal[
    "age", "decile", "flag", "category", "count", "days", "measurement", "share", "rate", "numeric"
]
"""How a feature's value reads in words (outreach phrases its reasons by kind and unit)."""
FeatureSource = Literal["events", "people", "areas", "people+events"]
"""Which input table a feature comes from."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureEntry(_Record):
    """One feature column of ``features/features.parquet`` as the manifest describes it."""

    name: str
    description: str
    dtype: str
    source_events: tuple[str, ...] = ()
    source_table: FeatureSource
    window_months: int | None = None
    model_input: bool
    categorical: bool
    kind: FeatureKind
    unit: str | None = None
    categories: dict[str, str] | None = None
    """Integer code (as a string) -> label, for categorical features."""


class SplitRule(_Record):
    """How people are split into train / validation / test (and ``external``)."""

    column: str
    values: tuple[str, ...]
    fractions: dict[str, float]
    holdout_icb: str | None
    seed: int
    method: str


class FeatureManifest(_Record):
    """``features/manifest.json``, written by ``features`` and read by train, audit and outreach
    through this one model (no forgiving parsers: a manifest that does not fit is an error)."""

    index_date: dt.date
    windows_months: tuple[int, ...]
    polypharmacy_months: int
    measurements: tuple[str, ...]
    key: str
    split: SplitRule
    sensitive_columns: tuple[str, ...]
    sensitive_dtypes: dict[str, str]
    features: tuple[FeatureEntry, ...]
    model_inputs: tuple[str, ...]
    columns: tuple[str, ...]
    unavailable_fields: dict[str, str] = Field(default_factory=dict)
    """Equity fields (:data:`EQUITY_FIELDS`) the extract lacks -> why; the features they feed
    are no model inputs and the audit dimensions they define are not audited."""

    @model_validator(mode="after")
    def _inputs_agree(self) -> FeatureManifest:
        flagged = [entry.name for entry in self.features if entry.model_input]
        if not flagged:
            raise ValueError("no feature is flagged model_input")
        if sorted(flagged) != sorted(self.model_inputs):
            raise ValueError("'model_inputs' disagrees with the features' model_input flags")
        return self

    def document(self) -> dict[str, Any]:
        """The JSON document as written (fields never set, e.g. ``categories`` of a numeric
        feature, stay out)."""
        return self.model_dump(mode="json", exclude_unset=True)

    @property
    def entries(self) -> dict[str, FeatureEntry]:
        """Feature name -> entry."""
        return {entry.name: entry for entry in self.features}

    def inputs(self, *, exclude: tuple[str, ...] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Model inputs in manifest order and their categorical subset (minus ``exclude``)."""
        chosen = [e for e in self.features if e.model_input and e.name not in exclude]
        return tuple(e.name for e in chosen), tuple(e.name for e in chosen if e.categorical)


def read_manifest(path: Path) -> FeatureManifest:
    """Read ``features/manifest.json`` through :class:`FeatureManifest`.

    Raises
    ------
    ContractError
        The file is missing, not JSON, or does not fit the model (the first problems named).
    """
    if not path.exists():
        raise ContractError(f"{path}: missing - run the features stage first")
    try:
        return FeatureManifest.model_validate_json(path.read_bytes())
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'file'}: {item['msg']}"
            for item in error.errors()[:5]
        )
        raise ContractError(f"{path}: not a valid feature manifest ({problems})") from None


def age_band_expr(age: pl.Expr) -> pl.Expr:
    """Age in years -> the audit's age band label (e.g. ``"50-64"``, ``"85+"``)."""
    expr = pl.lit(None, dtype=pl.String)
    for low, high in reversed(AGE_BANDS):
        label = f"{low}+" if high >= AGE_RANGE[1] else f"{low}-{high}"
        expr = pl.when(age.is_between(low, high)).then(pl.lit(label)).otherwise(expr)
    return expr


def imd_quintile_expr(imd_decile: pl.Expr) -> pl.Expr:
    """IMD decile (1 = most deprived) -> quintile (1 = most deprived, Core20)."""
    return ((imd_decile.cast(pl.Int8) + 1) // 2).cast(pl.Int8)


def ethnicity_group_expr(ethnicity: pl.Expr) -> pl.Expr:
    """Ethnic category code -> broad group; null or unknown -> "Not recorded"."""
    return ethnicity.replace_strict(
        ETHNICITY_GROUPS, default="Not recorded", return_dtype=pl.String
    ).fill_null("Not recorded")


RISK_TIERS: Final = (("very high", 0.05), ("high", 0.20), ("moderate", 0.50), ("low", 1.0))
"""Risk tiers by rank within the eligible cohort (Kaiser pyramid): top 5% very high, next 15%
high, next 30% moderate, the rest low."""

RECORDED_MULTIMORBIDITY: Final = "n_recorded_conditions"
"""Feature column: number of distinct recorded conditions (the audit's recorded-need measure)."""

NEED_SCORES_DIR: Final = "need"
"""``data/scores/need/<target>.parquet`` (:data:`NEED_SCORES_SCHEMA`), written by the ``need``
stage, read by the audit and the outreach policy ``need_adjusted``."""
NEED_SCORES_SCHEMA: Final = {"person_id": pl.String, "need_score": pl.Float64}
"""A need-based ranking of the whole eligible cohort: higher ``need_score`` = more need."""


# --- Validation of a population folder (synthetic or a real extract) ----------------------------

CONSULTATION_CODES: Final = ("face_to_face", "telephone", "online", "home_visit")
"""Codes of ``gp_consultation`` events (the consultation mode)."""
ICD10_EVENT_TYPES: Final = (
    "diagnosis",
    "ae_attendance",
    "emergency_admission",
    "elective_admission",
    "outpatient",
)
"""Event types whose code is an ICD-10 (primary) diagnosis."""
ICD10_PATTERN: Final = r"^[A-Z][0-9]{2}(\.?[0-9A-Z]{1,4})?$"
"""An ICD-10 code as written: with or without a dot, X-padded or not (``I10X``, ``I25.1``)."""

EVENT_CODE_SYSTEMS: Final[dict[str, CodeSystem]] = {
    "gp_consultation": "local",
    "diagnosis": "icd10",
    "prescription": "bnf",
    "measurement": "local",
    **dict.fromkeys(ICD10_EVENT_TYPES[1:], "icd10"),
}
"""The code system each event type declares (an optional ``events.code_system`` overrides it per
row): SNOMED CT (``snomed_ct``), dm+d (``dmd``), BNF (``bnf``), ICD-10 (``icd10``), OPCS-4
(``opcs4``) or ``local`` (consultation modes, measurement codes of :data:`MEASUREMENT_CODES`)."""
LOCAL_CODES: Final = {
    "gp_consultation": CONSULTATION_CODES,
    "measurement": tuple(MEASUREMENT_CODES),
}
"""Event types with a local vocabulary: a ``local`` code of another event type is invalid."""
EARLIEST_EVENT_DATE: Final = "1900-01-01"

ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""Identifiers (``person_id``, ``practice_id``, ``area_id``): 1-64 ASCII letters, digits, ``.``,
``_`` or ``-``, starting with a letter or digit. Nothing a spreadsheet reads as a formula
(``= + - @``), no spaces, quotes or control characters."""
ICB_CODE_PATTERN: Final = r"^[A-Z0-9]{3}$"
"""ICB codes: the 3-character ODS code (e.g. ``QHM``), as params ``features.holdout_icb``."""
IDENTIFIER_RULES: Final = {
    "person_id": (f"identifier outside {ID_PATTERN}", ID_PATTERN),
    "practice_id": (f"identifier outside {ID_PATTERN}", ID_PATTERN),
    "area_id": (f"identifier outside {ID_PATTERN}", ID_PATTERN),
    "icb_code": (f"ICB code outside {ICB_CODE_PATTERN}", ICB_CODE_PATTERN),
}
"""Column -> (rule, pattern)."""
IDENTIFIER_COLUMNS: Final = {
    "areas": ("area_id", "icb_code"),
    "practices": ("practice_id", "icb_code"),
    "people": ("person_id",),
}
"""Where each identifier is defined; elsewhere it must match a defined one (``_REFERENCES``), so
the rule is checked once per id, not once per event."""
EXAMPLES_SHOWN: Final = 5

REQUIRED_NON_NULL: Final = {
    "areas": tuple(column for column in AREAS_SCHEMA if column not in EQUITY_FIELDS),
    "practices": tuple(PRACTICES_SCHEMA),
    "people": ("person_id", "sex", "age"),
    "events": ("person_id", "date", "event_type", "code"),
    "outcomes": tuple(OUTCOMES_SCHEMA),
}
"""Columns that may not be null (the :data:`EQUITY_FIELDS` and events.value may)."""
UNIQUE_KEYS: Final = {
    "areas": ("area_id",),
    "practices": ("practice_id",),
    "people": ("person_id",),
    "outcomes": ("person_id", "target"),
}


def _dtype_family(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Categorical | pl.Enum):
        return "string"
    if dtype.is_integer():
        return "integer"
    if dtype.is_float():
        return "float"
    if dtype == pl.String:
        return "string"
    if dtype == pl.Date:
        return "date"
    if dtype == pl.Boolean:
        return "boolean"
    return str(dtype)


def _accepts(expected: pl.DataType, actual: pl.DataType) -> bool:
    """Integer widths may differ and a float column may hold integers; otherwise types match."""
    want, got = _dtype_family(expected), _dtype_family(actual)
    return want == got or (want == "float" and got == "integer")


def _table_location(folder: Path, table: str, partition: str = partitions.WHOLE) -> str:
    if partition and table in partitions.PARTITIONED_TABLES:
        return f"{table}/{partition}"
    single = folder / f"{table}.parquet"
    return single.name if single.exists() else f"{table}/"


def event_code_system_expr() -> pl.Expr:
    """Each event's code system: its ``code_system`` or else its event_type's
    (:data:`EVENT_CODE_SYSTEMS`); null for an unknown event_type without one."""
    declared = pl.col("event_type").replace_strict(
        EVENT_CODE_SYSTEMS, default=None, return_dtype=pl.String
    )
    return pl.coalesce(pl.col("code_system"), declared)


def with_code_system(events: pl.LazyFrame) -> pl.LazyFrame:
    """``events`` with a ``code_system`` column (all null when the extract has none)."""
    if "code_system" in events.collect_schema().names():
        return events
    return events.with_columns(pl.lit(None, dtype=pl.String).alias("code_system"))


def event_code_valid_expr() -> pl.Expr:
    """True where an event's code is a valid code of its code system
    (:func:`event_code_system_expr`; needs the ``code_system`` column): any syntactically valid code
    (SNOMED CT and dm+d with a Verhoeff check digit; ICD-10 with or without a dot and X padding;
    OPCS-4; BNF), and for ``local`` codes one of the event type's :data:`LOCAL_CODES`. Unknown
    event types and code systems are not judged here (structural rules refuse them)."""
    event_type, code, system = pl.col("event_type"), pl.col("code"), event_code_system_expr()
    local = pl.lit(False)
    for name, codes in LOCAL_CODES.items():
        local = local | ((event_type == name) & normalise_code(code, "local").is_in(codes))
    return (
        pl.when(system == "local")
        .then(local)
        .otherwise(code_valid_expr(code, system))
        .fill_null(True)  # null codes are reported by the null rule
    )


def measurement_code_expr() -> pl.Expr:
    """The local measurement code of a measurement event (SNOMED CT observables mapped through
    :data:`MEASUREMENT_OBSERVABLES`); null for any other code."""
    code = pl.col("code").str.strip_chars()
    return (
        pl.when(event_code_system_expr() == "snomed_ct")
        .then(code.replace_strict(MEASUREMENT_OBSERVABLES, default=None, return_dtype=pl.String))
        .otherwise(normalise_code(code, "local"))
    )


PLAUSIBLE_LOW: Final = "_plausible_low"
PLAUSIBLE_HIGH: Final = "_plausible_high"
"""Columns :func:`events_with_age` adds: the plausible range of a measurement of a known code
(null for every other event)."""


def plausible_range_exprs() -> tuple[pl.Expr, pl.Expr]:
    """The plausible low and high value of each measurement of a known code (as its local code,
    :data:`MEASUREMENT_CODES`); null for any other event."""
    local = measurement_code_expr()
    is_measurement = pl.col("event_type") == "measurement"
    low, high = (
        pl.when(is_measurement).then(
            local.replace_strict(
                {code: spec[bound] for code, spec in MEASUREMENT_CODES.items()},
                default=None,
                return_dtype=pl.Float64,
            )
        )
        for bound in (1, 2)
    )
    return low.alias(PLAUSIBLE_LOW), high.alias(PLAUSIBLE_HIGH)


def measurement_out_of_range_expr() -> pl.Expr:
    """True for a measurement of a known code whose value is null or outside its plausible range
    (needs the :data:`PLAUSIBLE_LOW` / :data:`PLAUSIBLE_HIGH` columns, :func:`events_with_age`)."""
    low, high = pl.col(PLAUSIBLE_LOW), pl.col(PLAUSIBLE_HIGH)
    value = pl.col("value").cast(pl.Float64)
    return (
        low.is_not_null() & (value.is_null() | value.is_nan() | (value < low) | (value > high))
    ).fill_null(False)


def _count(frame: pl.LazyFrame, exprs: dict[str, pl.Expr]) -> dict[str, int]:
    """Evaluate named row-count expressions in one streaming pass."""
    if not exprs:
        return {}
    row = frame.select(
        [expr.cast(pl.Int64).sum().alias(name) for name, expr in exprs.items()]
    ).collect()
    return {name: int(row[name][0] or 0) for name in exprs}


def _violation(
    file: str, column: str, rule: str, rows: int, examples: tuple[str, ...] = ()
) -> dict[str, Any]:
    return {"file": file, "column": column, "rule": rule, "rows": rows, "examples": examples}


def _identifier_rules(table: str, columns: set[str]) -> dict[tuple[str, str], pl.Expr]:
    """(column, rule) -> 'row breaks the identifier rule', for the ids ``table`` defines."""
    return {
        (column, IDENTIFIER_RULES[column][0]): ~pl.col(column).str.contains(
            IDENTIFIER_RULES[column][1]
        )
        for column in IDENTIFIER_COLUMNS.get(table, ())
        if column in columns
    }


def _examples(frame: pl.LazyFrame, column: str, breaks: pl.Expr) -> tuple[str, ...]:
    """The most frequent offending values (ties in value order; shown with repr so control
    characters show)."""
    values = (
        frame.filter(breaks)
        .group_by(pl.col(column).cast(pl.String).alias("shown"))
        .agg(pl.len())
        .sort(["len", "shown"], descending=[True, False])
        .head(EXAMPLES_SHOWN)
        .collect()
    )
    return tuple(repr(value)[:80] for value in values["shown"].to_list())


def _area_rules() -> dict[str, tuple[str, pl.Expr]]:
    return {
        "region": (
            f"unknown region (expected one of {len(REGIONS)} NHS regions)",
            ~pl.col("region").is_in(REGIONS),
        ),
        "imd_decile": ("imd_decile out of range 1-10", ~pl.col("imd_decile").is_between(1, 10)),
        "rural_urban": (
            "unknown rural_urban (expected urban/rural)",
            ~pl.col("rural_urban").is_in(RURAL_URBAN),
        ),
    }


def _people_rules() -> dict[str, tuple[str, pl.Expr]]:
    return {
        "sex": ("unknown sex (expected F/M/U)", ~pl.col("sex").is_in(SEXES)),
        "age": (
            f"age out of range {AGE_RANGE[0]}-{AGE_RANGE[1]}",
            ~pl.col("age").is_between(*AGE_RANGE),
        ),
        "ethnicity": (
            "unknown ethnic category code",
            pl.col("ethnicity").is_not_null() & ~pl.col("ethnicity").is_in(tuple(ETHNICITY_GROUPS)),
        ),
    }


def _event_rules(extract_end: dt.date | None) -> dict[str, tuple[str, pl.Expr]]:
    """Structural rules of ``events``. Events after the index date are follow-up (outcomes are
    derived from them; features never read them); only events after ``extract_end`` (when it is
    known) are impossible."""
    after_end = pl.lit(False) if extract_end is None else pl.col("date") > extract_end
    return {
        "event_type": ("unknown event_type", ~pl.col("event_type").is_in(EVENT_TYPES)),
        "date": (f"date after the extract end {extract_end}", after_end),
        "code_system": (
            f"unknown code_system (expected one of {', '.join(CODE_SYSTEMS)})",
            pl.col("code_system").is_not_null() & ~pl.col("code_system").is_in(CODE_SYSTEMS),
        ),
    }


# --- Record-level problems: excluded and counted, not fatal ---------------------------------------

RecordProblems: TypeAlias = Literal["exclude", "refuse"]
"""params ``validation.record_problems``: exclude (and count) noisy records, or refuse."""
DUPLICATE_RULE: Final = ("*", "exact duplicate of another event")
EXAMPLES_PER_RULE: Final = 5


def _born_after_expr(index_date: dt.date) -> pl.Expr:
    """True for an event dated before its person could have been born (``age`` at the index date;
    366-day years keep the bound on the safe side, so only impossible dates are caught)."""
    days = (pl.col("age").cast(pl.Int64) + 1) * 366
    return pl.col("date") < pl.lit(index_date) - pl.duration(days=days)


def record_rules(index_date: dt.date) -> dict[tuple[str, str], pl.Expr]:
    """Record-level noise in ``events`` that every real extract has: (column, rule) -> the row has
    it. A row breaking several rules is counted under the first. Needs ``age``, ``code_system`` and
    :data:`CODE_VALID` (:func:`events_with_age`); exact duplicates are the separate
    :data:`DUPLICATE_RULE`."""
    earliest = dt.date.fromisoformat(EARLIEST_EVENT_DATE)
    rules = {
        ("date", f"date before {EARLIEST_EVENT_DATE}"): pl.col("date") < earliest,
        ("date", "event before the person's birth"): _born_after_expr(index_date),
        ("code", "invalid code for its code system"): ~pl.col(CODE_VALID),
        ("value", "measurement value missing or out of plausible range"): (
            measurement_out_of_range_expr()
        ),
    }
    return {key: expr.fill_null(False) for key, expr in rules.items()}


RECORD_EXAMPLE_EXPRS: Final = {
    "date": pl.col("date").cast(pl.String),
    "code": pl.concat_str(
        "event_type", pl.lit(" ("), event_code_system_expr().fill_null("?"), pl.lit("): "), "code"
    ),
    "value": pl.concat_str(
        "code", pl.lit(" = "), pl.col("value").cast(pl.String), ignore_nulls=True
    ),
}
"""How an offending record is shown in an example, by the column its rule judges."""

NOISE_KEYS: Final = ("date", "code_system", "code", "value")
"""The columns :data:`RECORD_EXAMPLE_EXPRS` show an offending record by."""


CODE_VALID: Final = "_code_valid"
"""Column :func:`events_with_age` adds: the event's code is valid in its code system."""
_CODE_KEYS: Final = ["event_type", "code_system", "code"]


def code_facts(events: pl.LazyFrame) -> pl.DataFrame:
    """What the record rules need to know of each distinct (event_type, code_system, code) of
    ``events``: whether the code is valid in its code system (:data:`CODE_VALID`,
    :func:`event_code_valid_expr`) and, for a measurement, its plausible range
    (:func:`plausible_range_exprs`). Judged once per distinct code, not once per event (the
    codes are normalised with regular expressions); one streaming pass."""
    keys = with_code_system(events).select(_CODE_KEYS).unique().collect()
    # in memory: the few thousand distinct codes are small, and the streaming engine runs the
    # normalising regular expressions 10-20x slower (1.4 s against 0.09 s per partition)
    return (
        keys.lazy()
        .with_columns(event_code_valid_expr().alias(CODE_VALID), *plausible_range_exprs())
        .collect(engine="in-memory")
    )


def events_with_age(
    events: pl.LazyFrame, people: pl.LazyFrame, *, facts: pl.DataFrame | None = None
) -> pl.LazyFrame:
    """Events with their person's ``age`` at the index date, a ``code_system`` column (null when
    the extract has none), :data:`CODE_VALID` and the plausible range of measurements, for
    :func:`record_rules` (``facts``: :func:`code_facts` of these events, computed when not
    given)."""
    events = with_code_system(events)
    facts = code_facts(events) if facts is None else facts
    joined = events.join(people.select("person_id", "age"), on="person_id", how="left")
    return joined.join(facts.lazy(), on=_CODE_KEYS, how="left", nulls_equal=True)


_ROW_HASH: Final = "_row_hash"


def clean_events(
    events: pl.LazyFrame,
    people: pl.LazyFrame,
    *,
    index_date: dt.date,
    facts: pl.DataFrame | None = None,
) -> pl.LazyFrame:
    """The events every stage uses: without rows that break a record rule, one copy of each
    exact duplicate (``validate`` counts what this drops, in ``reports/data_quality.json``).
    ``facts``: :func:`code_facts` of ``events`` when already computed.

    Exact duplicates are found without holding every event: one streaming pass (run here)
    finds the 64-bit row hashes seen more than once; only the rows with such a hash (the
    duplicates, and the rare row colliding with one) go through an exact ``unique()``, the
    others pass through. Memory: a set of hashes, not of rows (the ``unique()`` of every event
    held 5.5 GB at 1M people).
    """
    problem = pl.any_horizontal(list(record_rules(index_date).values()))
    columns = with_code_system(events).collect_schema().names()
    joined = events_with_age(events, people, facts=facts)
    kept = (
        joined.filter(~problem)
        .select(columns)
        .with_columns(pl.struct(columns).hash(seed=0).alias(_ROW_HASH))
    )
    repeated = (
        kept.group_by(_ROW_HASH).agg(pl.len()).filter(pl.col("len") > 1).select(_ROW_HASH).collect()
    ).lazy()
    single = kept.join(repeated, on=_ROW_HASH, how="anti")
    several = kept.join(repeated, on=_ROW_HASH, how="semi").unique()
    return pl.concat([single, several]).drop(_ROW_HASH)


def _outcome_rules(target_names: tuple[str, ...]) -> dict[str, tuple[str, pl.Expr]]:
    return {
        "target": (
            f"unknown target (params targets: {', '.join(target_names)})",
            ~pl.col("target").is_in(target_names),
        ),
        "value": ("value not 0/1", ~pl.col("value").is_in((0, 1))),
    }


def _check_values(
    table: str,
    columns: set[str],
    *,
    target_names: tuple[str, ...],
    extract_end: dt.date | None,
) -> dict[tuple[str, str], pl.Expr]:
    """Row-level rules of one table: (column, rule) -> boolean 'row breaks the rule'.

    Only rules on usable ``columns`` (present, of the right type) are kept; null rules first.
    """
    match table:
        case "areas":
            table_rules = _area_rules()
        case "people":
            table_rules = _people_rules()
        case "events":
            table_rules = _event_rules(extract_end)
        case "outcomes":
            table_rules = _outcome_rules(target_names)
        case _:
            table_rules = {}
    rules: dict[tuple[str, str], pl.Expr] = {
        (column, "null value"): pl.col(column).is_null()
        for column in REQUIRED_NON_NULL[table]
        if column in columns
    }
    for column, (rule, expr) in table_rules.items():
        if column in columns:
            rules[(column, rule)] = expr.fill_null(False)
    for key, expr in _identifier_rules(table, columns).items():
        rules[key] = expr.fill_null(False)
    return rules


def scan_input(folder: str | Path, table: str, partition: str = partitions.WHOLE) -> pl.LazyFrame:
    """Scan an input table with compatible dtypes read as the contract's (categorical and enum
    strings as ``String``; integer widths are left as they are and widen in arithmetic); an
    :data:`EQUITY_FIELDS` column the table lacks is read as all null. ``partition``: only that
    partition of a person-level table (:func:`pipeline.partitions.scan_partition`; an empty
    frame when it has no file of ``table``)."""
    frame = partitions.scan_partition(folder, table, partition, schema=INPUT_TABLES[table])
    schema = frame.collect_schema()
    absent = [
        pl.lit(None, dtype=INPUT_TABLES[table][column]).alias(column)
        for column, (home, _) in EQUITY_FIELDS.items()
        if home == table and column not in schema
    ]
    return frame.with_columns(
        pl.col(column).cast(pl.String)
        for column, dtype in schema.items()
        if isinstance(dtype, pl.Categorical | pl.Enum)
    ).with_columns(absent)


def unaudited_dimensions(features: pl.LazyFrame, dimensions: tuple[str, ...]) -> dict[str, str]:
    """Audit dimensions that cannot be audited, with why: those whose column (either column of
    an intersection ``a_x_b``) is absent from ``features`` or entirely null - the extract lacks
    the equity field behind it (:data:`EQUITY_FIELDS`; IMD's is the home area when nobody has
    one)."""
    wanted = {column for dimension in dimensions for column in dimension.split("_x_")}
    present = set(features.collect_schema().names())
    area = {c for c, field in SENSITIVE_SOURCES.items() if field == "area_id"} & present
    columns = sorted((wanted & present) | area)
    empty = features.select(pl.col(column).is_null().all() for column in columns).collect()
    missing = (wanted - present) | {column for column in columns if empty[column][0]}
    no_area = bool(area) and area <= missing  # no home area, so no IMD either
    reasons = {}
    for dimension in dimensions:
        gone = [
            column for column in dimension.split("_x_") if column in missing and column in wanted
        ]
        if gone:
            field = SENSITIVE_SOURCES.get(gone[0])
            field = "area_id" if no_area and field == "imd_decile" else field
            reasons[dimension] = (
                unavailable_reason(field) if field else f"features have no {gone[0]} values"
            )
    return reasons


def unavailable_fields(folder: str | Path) -> tuple[str, ...]:
    """The :data:`EQUITY_FIELDS` of the population in ``folder`` that are absent or entirely
    null (in field order); without any ``people.area_id``, ``imd_decile`` too."""
    missing = []
    for column, (table, _) in EQUITY_FIELDS.items():
        frame = scan_input(folder, table)
        if frame.select(pl.col(column).is_null().all()).collect().item():
            missing.append(column)
    if "area_id" in missing and "imd_decile" not in missing:
        missing.insert(0, "imd_decile")  # IMD is the home area's: nobody has one
    return tuple(missing)


class _Scanned:
    """A readable input table: its scan (usable columns only) and where it was found."""

    def __init__(self, frame: pl.LazyFrame, columns: set[str], location: str) -> None:
        self.frame = frame
        self.columns = columns
        self.location = location


def _scan_checked(
    folder: Path,
    table: str,
    schema: dict[str, Any],
    violations: list[dict[str, Any]],
    *,
    partition: str = partitions.WHOLE,
) -> _Scanned | None:
    """Scan one table and check its columns against the schema (appending to ``violations``).

    Returns None when the table is missing or unreadable; otherwise the scan restricted to the
    columns present with an acceptable type.
    """
    try:
        frame = scan_input(folder, table, partition)
        actual = frame.collect_schema()
    except FileNotFoundError:
        if table not in OPTIONAL_TABLES:
            violations.append(_violation(f"{table}.parquet", "*", "missing table", 0))
        return None
    except (pl.exceptions.PolarsError, OSError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        violations.append(_violation(f"{table}", "*", f"unreadable: {first}", 0))
        return None
    location = _table_location(folder, table, partition)
    optional = OPTIONAL_COLUMNS.get(table, {})
    good: set[str] = set()
    for column, dtype in {**schema, **optional}.items():
        if column not in actual:
            if column not in optional:
                violations.append(_violation(location, column, "missing column", 0))
        elif not _accepts(dtype, actual[column]):
            rule = f"wrong type: expected {dtype}, got {actual[column]}"
            violations.append(_violation(location, column, rule, 0))
        else:
            good.add(column)
    return _Scanned(frame.select([c for c in {**schema, **optional} if c in good]), good, location)


def _table_facts(
    table: str,
    scanned: _Scanned,
    violations: list[dict[str, Any]],
    *,
    target_names: tuple[str, ...],
    extract_end: dt.date | None,
) -> tuple[int, dict[str, int]]:
    """Check one table's values and unique key (appending to ``violations``).

    Returns its row count and null count per usable column, from one streaming pass.
    """
    frame, columns, location = scanned.frame, scanned.columns, scanned.location
    rules = _check_values(table, columns, target_names=target_names, extract_end=extract_end)
    exprs = {f"rule{i}": expr for i, expr in enumerate(rules.values())}
    exprs["__rows"] = pl.int_range(pl.len()) >= 0  # one True per row
    for column in columns:
        exprs[f"null:{column}"] = pl.col(column).is_null()
    counts = _count(frame, exprs)
    for i, ((column, rule), breaks) in enumerate(rules.items()):
        if counts[f"rule{i}"]:
            shown = () if rule == "null value" else _examples(frame, column, breaks)
            violations.append(_violation(location, column, rule, counts[f"rule{i}"], shown))
    key = UNIQUE_KEYS.get(table)
    if key and set(key) <= columns:
        distinct = frame.select(key).unique().select(pl.len()).collect().item()
        duplicates = counts["__rows"] - int(distinct)
        if duplicates:
            violations.append(_violation(location, "+".join(key), "duplicate id", duplicates))
    return counts["__rows"], {column: counts[f"null:{column}"] for column in sorted(columns)}


_REFERENCES: Final = (
    ("people", "area_id", "areas", "area_id", "unknown area_id"),
    ("people", "practice_id", "practices", "practice_id", "unknown practice_id"),
    ("practices", "icb_code", "areas", "icb_code", "unknown icb_code"),
    ("events", "person_id", "people", "person_id", "events for unknown people"),
    ("outcomes", "person_id", "people", "person_id", "outcomes for unknown people"),
)
"""Foreign keys: (child table, column, parent table, parent column, rule)."""


def _reference_violations(
    scanned: dict[str, _Scanned], *, children: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Rows of the ``children`` tables whose foreign key has no match in the parent table
    (nulls are the null rule's)."""
    violations = []
    for child, column, parent, parent_column, rule in _REFERENCES:
        if child not in children or child not in scanned or parent not in scanned:
            continue
        if column not in scanned[child].columns or parent_column not in scanned[parent].columns:
            continue
        keys = scanned[parent].frame.select(pl.col(parent_column).alias(column)).unique()
        orphans = (
            scanned[child]
            .frame.select(column)
            .drop_nulls()
            .join(keys, on=column, how="anti")
            .select(pl.len())
            .collect()
            .item()
        )
        if orphans:
            violations.append(_violation(scanned[child].location, column, rule, orphans))
    return violations


def _contract_error(folder: Path, violations: list[dict[str, Any]]) -> ContractError:
    lines = [
        f"  {v['file']} / {v['column']}: {v['rule']}"
        + (f" ({v['rows']} rows)" if v["rows"] else "")
        + (f", e.g. {', '.join(v['examples'])}" if v.get("examples") else "")
        for v in violations
    ]
    return ContractError(
        f"{folder}: {len(violations)} data contract violation(s):\n" + "\n".join(lines)
    )


Problems: TypeAlias = dict[tuple[str, str], tuple[int, tuple[tuple[str, int], ...]]]
"""(column, rule) -> (rows, each offending value as shown with its count)."""


def _offending_counts(noise: pl.DataFrame, rule: int, column: str) -> tuple[tuple[str, int], ...]:
    """Every offending value of one record rule with its count, from :func:`event_facts`'
    groups of offending rows (one per distinct shown record, so small; partitions' counts add
    up exactly)."""
    shown = (
        noise.lazy()
        .filter(pl.col("rule") == rule)
        .rename({f"_noise_{name}": name for name in NOISE_KEYS})
        .group_by(RECORD_EXAMPLE_EXPRS[column].cast(pl.String).fill_null("None").alias("shown"))
        .agg(pl.col("rows").sum())
        .collect()
    )
    return tuple(zip(shown["shown"].to_list(), shown["rows"].to_list(), strict=True))


def _most_frequent(counts: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    """The :data:`EXAMPLES_PER_RULE` most frequent values (ties in value order), shortened."""
    ranked = sorted(counts, key=lambda item: (-item[1], item[0]))
    return tuple(str(value)[:80] for value, _ in ranked[:EXAMPLES_PER_RULE])


def event_facts(
    events: pl.LazyFrame,
    people: pl.LazyFrame,
    *,
    index_date: dt.date,
    facts: pl.DataFrame | None = None,
) -> dict[str, Any]:
    """Record-level problems (with every offending value's count) and the clean events' facts,
    from one streaming pass over ``events``.

    The clean events are those :func:`clean_events` keeps; exact duplicates are told apart by a
    64-bit hash of the whole row (a set of 8-byte hashes, not of the rows: the exact
    ``unique()`` of every event held them all in memory, 5.5 GB at 1M people).

    Parameters
    ----------
    events, people
        One partition's (or the whole population's) tables.
    index_date
        The index date (record rules; the last year ends on it).
    facts
        :func:`code_facts` of ``events`` when already computed.

    Returns
    -------
    dict
        ``problems`` (:data:`Problems`, rule order, duplicates last), ``events_last_year``
        (event type -> distinct clean events in the 365 days up to the index date; types with
        none left out), ``date_min`` / ``date_max`` of the clean events.
    """
    rules = record_rules(index_date)
    first_rule = pl.lit(None, dtype=pl.Int8)
    for i, expr in reversed(list(enumerate(rules.values()))):
        first_rule = pl.when(expr).then(pl.lit(i, dtype=pl.Int8)).otherwise(first_rule)
    row = pl.struct(with_code_system(events).collect_schema().names()).hash(seed=0)
    in_last_year = pl.col("date").is_between(
        pl.lit(index_date) - pl.duration(days=364), pl.lit(index_date)
    )
    joined = events_with_age(events, people, facts=facts).with_columns(first_rule.alias("rule"))
    noisy = pl.col("rule").is_not_null()
    # One streaming group_by (a few rows per rule x event type x year): identical rows share
    # their group, so distinct rows add up over the groups. An offending row's shown columns
    # are keys too (null for clean rows), so its examples come from this pass (the rare noise
    # adds a group per distinct record), not from another pass per rule.
    groups = (
        joined.group_by(
            "rule",
            "event_type",
            in_last_year.alias("last"),
            *[pl.when(noisy).then(pl.col(name)).alias(f"_noise_{name}") for name in NOISE_KEYS],
        )
        .agg(
            pl.len().alias("rows"),
            row.n_unique().alias("distinct"),
            pl.col("date").min().alias("lo"),
            pl.col("date").max().alias("hi"),
        )
        .collect()
    )
    clean, noise = groups.filter(pl.col("rule").is_null()), groups.filter(noisy)
    counted = dict(noise.group_by("rule").agg(pl.col("rows").sum()).iter_rows())
    problems: Problems = {
        key: (int(counted[i]), _offending_counts(noise, i, key[0]))
        for i, key in enumerate(rules)
        if counted.get(i)
    }
    if duplicates := int(clean["rows"].sum()) - int(clean["distinct"].sum()):
        problems[DUPLICATE_RULE] = (duplicates, ())
    last_year = clean.filter("last").group_by("event_type").agg(pl.col("distinct").sum())
    return {
        "problems": problems,
        "events_last_year": dict(sorted(last_year.iter_rows())),
        "date_min": clean["lo"].min(),
        "date_max": clean["hi"].max(),
    }


def combine_problems(found: list[Problems]) -> Problems:
    """Partitions' record problems as one: rows and each offending value's count summed."""
    keys = [*record_rules(dt.date(2000, 1, 1)), DUPLICATE_RULE]  # rule order (names only)
    combined: Problems = {}
    for key in keys:
        hits = [problems[key] for problems in found if key in problems]
        if not hits:
            continue
        counts: dict[str, int] = {}
        for _, examples in hits:
            for value, count in examples:
                counts[value] = counts.get(value, 0) + count
        combined[key] = (sum(rows for rows, _ in hits), tuple(counts.items()))
    return combined


def _problem_violations(location: str, problems: Problems) -> list[dict[str, Any]]:
    return [
        _violation(location, column, rule, rows, _most_frequent(counts))
        for (column, rule), (rows, counts) in problems.items()
    ]


Checks: TypeAlias = Literal["all", "structural"]
REFERENCE_TABLES: Final = ("areas", "practices")
"""The small tables every partition refers to (always whole)."""


def _scan_partition_tables(
    folder: Path, partition: str, violations: list[dict[str, Any]]
) -> dict[str, _Scanned]:
    """The partition's person-level tables (checked against their schemas, appending to
    ``violations``) and the reference tables (whole; their own problems are the global checks')."""
    scanned = {
        table: found
        for table in REFERENCE_TABLES
        if (found := _scan_checked(folder, table, INPUT_TABLES[table], [])) is not None
    }
    for table in partitions.PARTITIONED_TABLES:
        if partition and table in OPTIONAL_TABLES and not (folder / table).is_dir():
            continue  # a partitioned extract without this optional table
        found = _scan_checked(folder, table, INPUT_TABLES[table], violations, partition=partition)
        if found is not None:
            scanned[table] = found
    return scanned


def check_partition(
    partition: str,
    *,
    folder: str,
    target_names: tuple[str, ...],
    index_date: dt.date,
    extract_end: dt.date | None,
    checks: Checks,
) -> dict[str, Any]:
    """Check one partition's people, events and outcomes (a task of :func:`validate_population`).

    Parameters
    ----------
    partition
        A partition of ``folder`` (:func:`pipeline.partitions.partitions`; ``""`` = the whole
        population of a folder that is not split).
    folder
        The population folder (absolute: the task may run on another process).
    target_names, index_date, extract_end, checks
        As :func:`validate_population`.

    Returns
    -------
    dict
        Raw facts: ``violations`` (naming the partition's files), ``rows`` and ``nulls`` per
        table, ``id_range`` (lowest and highest person_id); unless ``checks`` is structural or
        there are violations, also ``problems``, ``events_last_year``, ``date_min``,
        ``date_max`` (:func:`event_facts`) and ``ethnicity_recorded``.
    """
    root = Path(folder)
    violations: list[dict[str, Any]] = []
    scanned = _scan_partition_tables(root, partition, violations)
    rows, nulls = {}, {}
    for table in partitions.PARTITIONED_TABLES:
        if table in scanned:
            rows[table], nulls[table] = _table_facts(
                table,
                scanned[table],
                violations,
                target_names=target_names,
                extract_end=extract_end,
            )
    violations += _reference_violations(scanned, children=partitions.PARTITIONED_TABLES)
    found: dict[str, Any] = {"violations": violations, "rows": rows, "nulls": nulls}
    if "people" in scanned:
        found["id_range"] = _id_range(scanned["people"])
    if violations or checks == "structural":
        return found
    people, events = scanned["people"].frame, scanned["events"].frame
    found |= event_facts(events, people, index_date=index_date, facts=code_facts(events))
    recorded = people.select(ethnicity_group_expr(pl.col("ethnicity")).ne("Not recorded").sum())
    found["ethnicity_recorded"] = int(recorded.collect().item())
    return found


def _id_range(people: _Scanned) -> tuple[str | None, str | None]:
    """The lowest and highest person_id of a people table (None, None when empty or unusable)."""
    if "person_id" not in people.columns:
        return (None, None)
    ids = people.frame.select(pl.col("person_id").min(), pl.col("person_id").max().alias("hi"))
    low, high = ids.collect().row(0)
    return (low, high)


def _global_checks(
    folder: Path, violations: list[dict[str, Any]], *, target_names: tuple[str, ...]
) -> dict[str, tuple[int, dict[str, int]]]:
    """The reference tables' checks and the layout's (orphan parts, no events at all); returns
    the reference tables' rows and nulls."""
    scanned = {
        table: found
        for table in REFERENCE_TABLES
        if (found := _scan_checked(folder, table, INPUT_TABLES[table], violations)) is not None
    }
    facts = {
        table: _table_facts(table, found, violations, target_names=target_names, extract_end=None)
        for table, found in scanned.items()
    }
    violations += _reference_violations(scanned, children=REFERENCE_TABLES)
    if partitions.is_partitioned(folder):
        if not (folder / "events").is_dir() and not (folder / "events.parquet").exists():
            violations.append(_violation("events.parquet", "*", "missing table", 0))
        for table, names in partitions.orphan_partitions(folder).items():
            rule = "part with no people part of the same name (orphan partition)"
            violations += [_violation(f"{table}/{name}", "*", rule, 0) for name in names]
    return facts


def _ids_in_several_partitions(
    folder: Path, parts: list[str], ranges: list[tuple[str | None, str | None]]
) -> list[dict[str, Any]]:
    """People in more than one partition. Partitions whose person_id ranges ascend without
    overlap (the synthetic world's) cannot share anyone; otherwise every id is checked."""
    bounds = [(lo, hi) for lo, hi in ranges if lo is not None and hi is not None]
    if len(parts) < 2 or all(a[1] < b[0] for a, b in itertools.pairwise(bounds)):
        return []
    files = [str(partitions.partition_path(folder, "people", part)) for part in parts]
    shared = (
        pl.scan_parquet(files, include_file_paths="_file")
        .group_by("person_id")
        .agg(pl.col("_file").n_unique().alias("n"))
        .filter(pl.col("n") > 1)
        .select("person_id")
        .sort("person_id")
        .collect()
    )
    if shared.is_empty():
        return []
    examples = tuple(repr(value) for value in shared["person_id"].head(EXAMPLES_SHOWN))
    rule = "person in more than one partition"
    return [_violation("people/", "person_id", rule, shared.height, examples)]


def _sum_facts(found: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Per table: rows summed (``rows``) or nulls summed per column (``nulls``)."""
    totals: dict[str, Any] = {}
    for part in found:
        for table, value in part[key].items():
            if isinstance(value, dict):
                mine = totals.setdefault(table, {})
                for column, count in value.items():
                    mine[column] = mine.get(column, 0) + count
            else:
                totals[table] = totals.get(table, 0) + value
    return totals


def _clean_facts(found: list[dict[str, Any]]) -> dict[str, Any]:
    """The partitions' clean-event facts combined (sum, min, max)."""
    last_year: dict[str, int] = {}
    for part in found:
        for name, count in part["events_last_year"].items():
            last_year[name] = last_year.get(name, 0) + count
    lows = [part["date_min"] for part in found if part["date_min"] is not None]
    highs = [part["date_max"] for part in found if part["date_max"] is not None]
    return {
        "ethnicity_recorded": sum(part["ethnicity_recorded"] for part in found),
        "events_last_year": last_year,
        "date_min": min(lows, default=None),
        "date_max": max(highs, default=None),
    }


def validate_population(
    folder: str | Path,
    *,
    target_names: tuple[str, ...] | list[str],
    index_date: dt.date,
    extract_end: dt.date | None = None,
    record_problems: RecordProblems = "exclude",
    checks: Checks = "all",
    client: Client | None = None,
) -> dict[str, Any]:
    """Check a population folder against the data contract, streaming every table.

    A partitioned folder (:mod:`pipeline.partitions`) is checked one partition at a time
    (:func:`check_partition`, on ``client``'s workers when given): the per-person rules,
    duplicates, record-level noise and references of its events and outcomes to its people.
    The global checks run once: the reference tables, orphan parts, people in two partitions.
    The facts are the partitions' summed (minimum, maximum for the dates), so they equal those
    of the same data in single files.

    Parameters
    ----------
    folder
        Folder holding ``areas``, ``practices``, ``people``, ``events`` and ``outcomes``, each as
        ``<table>.parquet`` or a folder ``<table>/`` of parquet parts, or split by ICB.
    target_names
        Targets named in params; any other ``outcomes.target`` is a violation.
    index_date
        Features use the events on or before it; events after it are follow-up (outcomes).
    extract_end
        The date the extract was taken (params ``validation.extract_end``): an event after it
        is a violation. ``None``: not known, so not checked.
    record_problems
        ``exclude``: record-level noise (:func:`record_rules`, exact duplicates) is counted and
        left for :func:`clean_events` to drop; ``refuse``: it is a violation like the rest.
    checks
        ``all``; ``structural``: only the structural rules (a stage re-checking an extract the
        validate stage passed; record-level noise is dropped by :func:`clean_events` anyway),
        returning ``rows`` and ``nulls`` only.
    client
        A Dask client (:func:`pipeline.engine.connect`); None checks the partitions here.

    Returns
    -------
    dict
        Raw (not disclosure-controlled) facts for the data-quality report: ``rows`` per table,
        ``nulls`` per table and column, ``excluded`` records per rule, ``ethnicity_recorded``
        people, ``events_last_year`` by type (clean events), ``date_min`` / ``date_max`` and
        ``n_people``.

    Raises
    ------
    ContractError
        Listing every violation as file, column, rule, number of rows and the most frequent
        offending values.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ContractError(f"{folder}: population folder not found")
    violations: list[dict[str, Any]] = []
    reference = _global_checks(folder, violations, target_names=tuple(target_names))
    parts = partitions.partitions(folder)
    found = engine.map_partitions(
        check_partition,
        parts,
        client=client,
        folder=str(folder.resolve()),
        target_names=tuple(target_names),
        index_date=index_date,
        extract_end=extract_end,
        checks=checks,
    )
    violations += [violation for part in found for violation in part["violations"]]
    ranges = [part.get("id_range", (None, None)) for part in found]
    violations += _ids_in_several_partitions(folder, parts, ranges)
    if violations:
        raise _contract_error(folder, violations)
    facts: dict[str, Any] = {
        "rows": {table: rows for table, (rows, _) in reference.items()} | _sum_facts(found, "rows"),
        "nulls": {table: nulls for table, (_, nulls) in reference.items()}
        | _sum_facts(found, "nulls"),
    }
    if checks == "structural":
        return facts
    if record_problems == "refuse" and (
        refused := [
            violation
            for part, name in zip(found, parts, strict=True)
            for violation in _problem_violations(
                _table_location(folder, "events", name), part["problems"]
            )
        ]
    ):
        raise _contract_error(folder, refused)
    location = _table_location(folder, "events") if parts == [partitions.WHOLE] else "events/"
    facts["excluded"] = _problem_violations(
        location, combine_problems([part["problems"] for part in found])
    )
    facts["n_people"] = facts["rows"]["people"]
    return facts | _clean_facts(found)


MODEL_METRICS: Final = (
    "auroc",
    "auprc",
    "brier",
    "calibration_intercept",
    "calibration_slope",
    "oe_ratio",
    "ece",
    "sensitivity_at_capacity",
    "ppv_at_capacity",
)
"""``models/<target>/metrics.json``: test-split metrics, each with ``<name>_ci_low`` /
``<name>_ci_high``; with truth also ``oracle_auroc`` and ``oracle_gap`` (ORACLE_METRICS)."""
ORACLE_METRICS: Final = ("oracle_auroc", "oracle_gap")
MODEL_CURVES: Final[dict[str, TableSchema]] = {
    "roc": {"fpr": pl.Float64, "tpr": pl.Float64},
    "precision_recall": {"recall": pl.Float64, "precision": pl.Float64},
    "calibration": {"mean_predicted": pl.Float64, "observed_rate": pl.Float64},
    "cumulative_gain": {"share_selected": pl.Float64, "share_of_events": pl.Float64},
}
"""``metrics/<target>/plots/<curve>.csv`` (test split, aggregate; in git): written by train, read
by the report, MLflow's chart images and ``dvc plots``."""


# === Stage outputs: audit -> report ==============================================================
# Every file a stage writes for the report, typed once here (layouts and how the report reads
# them: docs/audit_tables.md). Tables are tidy parquet, already disclosure-controlled when
# written; small JSON summaries are pydantic models, written and read through the same model.

TableSchema: TypeAlias = "Mapping[str, PolarsDataType]"
"""Columns in order with their dtypes: a dtype class (``pl.String``) or instance
(``pl.Datetime("us")``), as polars itself accepts them (its ``SchemaDict``)."""

PUBLISHED_COUNT: Final = pl.String
"""dtype of a published count column: ``"*"`` (1-7) or the rounded count as digits."""

NOT_PEOPLE_COUNTS: Final = frozenset(
    {
        "n_bootstrap",
        "n_monte_carlo",
        "n_estimators",
        "n_features",
        "n_resamples",
        "n_bins",
        "n_groups",
        "n_dimensions",
        "n_comparisons",
        "n_flagged",
        "n_iterations",
        "n_targets",
        "n_icbs",
        "n_regions",
        "n_deciles",
        "n_conditions",
        "n_windows",
        "n_splits",
        "n_checks",
        "n_rules",
        "n_areas_per_icb",
    }
)
"""``n_*`` names that count things other than people or events (resamples, features, groups):
not disclosure-controlled."""

METRIC_COUNTS: Final = {
    # metric: the counts whose suppression suppresses it (its numerator and denominator)
    "base_rate": ("n_events", "n"),
    "outcome_rate": ("n_events", "n"),
    "selection_rate": ("n_selected", "n"),
    "tpr": ("n_true_positives", "n_events"),
    "fnr": ("n_false_negatives", "n_events"),
    "fpr": ("n_false_positives", "n_non_events"),
    "ppv": ("n_true_positives", "n_selected"),
    "auroc": ("n_events", "n_non_events"),
    "brier": ("n_events", "n"),
    "oe_ratio": ("n_events", "n"),
    "calibration_slope": ("n_events", "n_non_events"),
}
"""Which counts each group metric is computed from (the audit's definitions)."""


def is_count_name(name: str) -> bool:
    """True for names the disclosure convention reserves for counts of people or events:
    ``n``, ``n_*`` or ``*_count``, except :data:`NOT_PEOPLE_COUNTS`."""
    key = name.lower()
    if key in NOT_PEOPLE_COUNTS:
        return False
    return key == "n" or key.startswith("n_") or key.endswith("_count")


@dataclass(frozen=True)
class PublishedTable:
    """One disclosure-controlled parquet table a stage writes under ``reports/``.

    Attributes
    ----------
    file
        File name inside the stage's folder.
    schema
        Columns in order with their dtypes (every column is always present; may be null).
    sort_by
        The key the table is sorted on before it is written (byte-stable files).
    counts
        Columns holding published counts (:data:`PUBLISHED_COUNT`: ``"*"`` or rounded). Every
        other column derived from a count is null where that count is suppressed (the table's
        ``suppressed`` flag columns say which rows).
    """

    file: str
    schema: TableSchema
    sort_by: tuple[str, ...]
    counts: tuple[str, ...] = ()

    def conform(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with exactly :attr:`schema` (missing optional columns become nulls)."""
        extra = set(frame.columns) - set(self.schema)
        if extra:
            raise ContractError(f"{self.file}: columns not in the contract: {sorted(extra)}")
        return frame.select(
            pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
            for name, dtype in self.schema.items()
        )


GROUP_COUNTS: Final = (  # the audit's raw counts per group (audit/cells.py computes them)
    "n",
    "n_events",
    "n_non_events",
    "n_selected",
    "n_true_positives",
    "n_false_positives",
    "n_false_negatives",
)
GROUP_COUNTS_SCHEMA: Final[TableSchema] = {
    "dimension": pl.String,
    "group": pl.String,
    **dict.fromkeys(GROUP_COUNTS, PUBLISHED_COUNT),
    "stable": pl.Boolean,
    "note": pl.String,
}
"""``groups.parquet``: one row per dimension x group (``dimension = "overall"``: everyone)."""

GROUP_METRICS_SCHEMA: Final[TableSchema] = {
    "dimension": pl.String,
    "group": pl.String,
    "reference_group": pl.String,
    "is_reference": pl.Boolean,
    "metric": pl.String,
    "value": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "ci_method": pl.String,
    "n": PUBLISHED_COUNT,
    "n_events": PUBLISHED_COUNT,
    "n_selected": PUBLISHED_COUNT,
    "n_numerator": PUBLISHED_COUNT,
    "n_denominator": PUBLISHED_COUNT,
    "difference": pl.Float64,
    "difference_ci_low": pl.Float64,
    "difference_ci_high": pl.Float64,
    "ratio": pl.Float64,
    "ratio_ci_low": pl.Float64,
    "ratio_ci_high": pl.Float64,
    "outside_fair_range": pl.Boolean,
    "significant": pl.Boolean,
    "flag": pl.Boolean,
    "flagged": pl.Boolean,
    "stable": pl.Boolean,
    "suppressed": pl.Boolean,
    "comparison_suppressed": pl.Boolean,
    "comparator": pl.String,  # reference group | 1 (calibration) | population (funnel) | null
    "p_value": pl.Float64,
    "q_value": pl.Float64,  # Benjamini-Hochberg within the dimension
    "flag_reason": pl.String,  # e.g. under-prediction, fewer cases reached (flagged rows)
}
"""``group_metrics.parquet``: long, one row per dimension x group x metric (METRIC_COUNTS).
Only ``tpr`` and ``oe_ratio`` can be flagged (docs/audit_tables.md, *Comparators and flags*); in
the funnel dimensions (geographies) their comparison is with the population value
(``funnel.parquet``): ``reference_group`` is null and ``ratio`` is the standardised ratio.
``suppressed``: value and CI null (a count behind them is 1-7); ``comparison_suppressed``:
difference, ratio and flags null (the group's or the reference's counts); ``flagged``: the
comparison is shown and flagged (``flag`` true), never null."""

FUNNEL_SCHEMA: Final[TableSchema] = {
    "dimension": pl.String,  # a geography (audit.funnel_dimensions)
    "group": pl.String,
    "metric": pl.String,  # selection_rate, base_rate, tpr, oe_ratio
    "n_observed": PUBLISHED_COUNT,  # the group's published count (groups.parquet)
    "expected": pl.Float64,  # age/sex indirectly standardised expectation (O/E: predicted risk)
    "ratio": pl.Float64,  # published observed / expected
    "z_score": pl.Float64,  # over-dispersion adjusted
    "limit_95_low": pl.Float64,
    "limit_95_high": pl.Float64,
    "limit_998_low": pl.Float64,
    "limit_998_high": pl.Float64,
    "variance_per_expected": pl.Float64,  # k: null variance of the ratio is k / expected
    "phi": pl.Float64,
    "tau2": pl.Float64,
    "overdispersed": pl.Boolean,
    "p_value": pl.Float64,
    "q_value": pl.Float64,
    "flagged": pl.Boolean,
    "flag_reason": pl.String,
    "suppressed": pl.Boolean,
}
"""``funnel.parquet``: each area against the population value (Spiegelhalter 2005), one row
per geography x group x metric; a point whose count is suppressed has null ratio and z."""

GRADIENTS_SCHEMA: Final[TableSchema] = {
    "dimension": pl.String,  # imd_decile or imd_quintile
    "indicator": pl.String,  # outcome_rate, mean_predicted_risk, selection_rate, need_reached
    "measure": pl.String,  # sii, rii
    "value": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "n_groups": pl.Int64,  # groups in the regression (not people)
}
"""``gradients.parquet``: SII = least minus most deprived end (Fingertips); RII = least / most
deprived end."""

HEAT_SCHEMA: Final[TableSchema] = {
    "dimension": pl.String,
    "indicator": pl.String,
    "measure": pl.String,
    "value": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "best_group": pl.String,
    "direction": pl.String,  # favourable | adverse: which end is "best"
}
"""``heat.parquet``: WHO HEAT summaries of each unordered dimension."""

NEED_BY_SCORE_SCHEMA: Final[TableSchema] = {
    "dimension": pl.String,
    "need_measure": pl.String,  # recorded_need, true_need
    "group": pl.String,
    "score_percentile": pl.Int32,  # band 1..label_choice_bins
    "n": PUBLISHED_COUNT,
    "mean_need": pl.Float64,
    "sd_need": pl.Float64,
    "suppressed": pl.Boolean,
}
"""``need_by_score.parquet``: mean need per group and risk-score percentile band."""

NEED_GAPS_SCHEMA: Final[TableSchema] = {
    "dimension": pl.String,
    "need_measure": pl.String,
    "group": pl.String,
    "reference_group": pl.String,
    "is_reference": pl.Boolean,
    "n": PUBLISHED_COUNT,
    "n_selected": PUBLISHED_COUNT,
    "stable": pl.Boolean,
    "mean_need": pl.Float64,
    "need_gap": pl.Float64,  # mean need minus the reference's at the same score
    "need_gap_ci_low": pl.Float64,
    "need_gap_ci_high": pl.Float64,
    "need_ratio": pl.Float64,
    "need_ratio_ci_low": pl.Float64,
    "need_ratio_ci_high": pl.Float64,
    "disadvantaged": pl.Boolean,  # need reached flag: CI above 1, material, q below audit.fdr
    "significant": pl.Boolean,
    "q_value": pl.Float64,  # Benjamini-Hochberg within dimension x need measure
    "mean_need_selected": pl.Float64,
    "cutoff_gap": pl.Float64,  # among the selected: mean need minus the reference's
    "cutoff_gap_ci_low": pl.Float64,
    "cutoff_gap_ci_high": pl.Float64,
    "suppressed": pl.Boolean,  # n or the reference's n is 1-7: need values null
    "cutoff_suppressed": pl.Boolean,  # n_selected or the reference's is 1-7: cut-off values null
}
"""``need_gaps.parquet``: label choice (Obermeyer), one row per dimension x need x group."""

SELECTION_RANKINGS: Final = ("risk_score", "true_need", "oracle_risk")
SELECTION_SHARES_SCHEMA: Final[TableSchema] = {
    "dimension": pl.String,
    "group": pl.String,
    **{f"n_selected_by_{ranking}": PUBLISHED_COUNT for ranking in SELECTION_RANKINGS},
    **{f"share_by_{ranking}": pl.Float64 for ranking in SELECTION_RANKINGS},
    "suppressed": pl.Boolean,
}
"""``selection_shares.parquet``: each group's share of the list when the same number of people
is ranked by risk score, by true need and by oracle risk (null without truth / oracle)."""

POLICY_TRADEOFFS_SCHEMA: Final[TableSchema] = {
    "policy": pl.String,  # risk, equal_opportunity, core20plus5, need_based
    "n_selected": PUBLISHED_COUNT,
    "n_events": PUBLISHED_COUNT,
    "n_events_reached": PUBLISHED_COUNT,
    "share_of_events_reached": pl.Float64,
    "n_cases": PUBLISHED_COUNT,
    "n_cases_reached": PUBLISHED_COUNT,
    "share_of_cases_reached": pl.Float64,
    "n_expected_true_events": PUBLISHED_COUNT,  # from the oracle risk (null without it)
    "n_expected_true_events_reached": PUBLISHED_COUNT,
    "share_of_true_events_reached": pl.Float64,
    "gap_dimension": pl.String,
    "tpr_gap": pl.Float64,  # recorded-outcome TPR, best - worst stable group
    "case_tpr_gap": pl.Float64,  # cases reached (true-need cases with truth), best - worst
}
"""``mitigation.parquet``: one row per selection policy; shares are null where a count behind
them is 1-7."""

POLICY_GROUPS_SCHEMA: Final[TableSchema] = {
    "policy": pl.String,
    "dimension": pl.String,
    "group": pl.String,
    "n": PUBLISHED_COUNT,
    "n_selected": PUBLISHED_COUNT,
    "n_events": PUBLISHED_COUNT,
    "n_events_reached": PUBLISHED_COUNT,
    "n_cases": PUBLISHED_COUNT,
    "n_cases_reached": PUBLISHED_COUNT,
    "selection_share": pl.Float64,
    "tpr": pl.Float64,
    "case_tpr": pl.Float64,
    "suppressed": pl.Boolean,
}
"""``mitigation_by_group.parquet``: policy x dimension x group; every rate null on a row where
any of its counts (or events / cases missed) is 1-7."""


IMPACT_SCHEMA: Final[TableSchema] = {
    "policy": pl.String,
    "dimension": pl.String,  # overall, imd_quintile, ethnicity_group
    "group": pl.String,
    "n": PUBLISHED_COUNT,
    "n_selected": PUBLISHED_COUNT,
    "n_expected_events": PUBLISHED_COUNT,  # without contact, from the risk basis
    "n_events_averted": PUBLISHED_COUNT,  # expected, published like a count
    "n_events_averted_ci_low": PUBLISHED_COUNT,
    "n_events_averted_ci_high": PUBLISHED_COUNT,
    "rate_before": pl.Float64,  # expected events per 1,000, of the published counts
    "rate_after": pl.Float64,
    "suppressed": pl.Boolean,
}
"""``impact.parquet`` (:mod:`pipeline.impact`): per policy x dimension x group, expected events
with and without the policy's contacts (uptake x relative risk reduction on the risk basis)."""

IMPACT_GRADIENT_SCHEMA: Final[TableSchema] = {
    "policy": pl.String,
    "risk_basis": pl.String,  # true risk | calibrated predicted risk
    "sii_before": pl.Float64,  # SII of the rate per 1,000 across IMD quintiles (Fingertips)
    "sii_before_ci_low": pl.Float64,
    "sii_before_ci_high": pl.Float64,
    "sii_after": pl.Float64,
    "sii_after_ci_low": pl.Float64,
    "sii_after_ci_high": pl.Float64,
    "gap_change": pl.Float64,  # |SII after| - |SII before|: negative = the gap narrows
    "gap_change_ci_low": pl.Float64,
    "gap_change_ci_high": pl.Float64,
    "narrows": pl.Boolean,
    "widens": pl.Boolean,
    "suppressed": pl.Boolean,
}
"""``impact_gradient.parquet``: one row per policy, the outcome-rate gap across IMD quintiles
before and after its contacts, with people-bootstrap intervals."""


def _table(file: str, schema: TableSchema, *sort_by: str) -> PublishedTable:
    counts = tuple(name for name, dtype in schema.items() if is_count_name(name))
    assert all(schema[name] == PUBLISHED_COUNT for name in counts), file
    return PublishedTable(file, schema, sort_by, counts)


AUDIT_TABLES: Final = {
    "groups": _table("groups.parquet", GROUP_COUNTS_SCHEMA, "dimension", "group"),
    "group_metrics": _table(
        "group_metrics.parquet", GROUP_METRICS_SCHEMA, "dimension", "group", "metric"
    ),
    "gradients": _table("gradients.parquet", GRADIENTS_SCHEMA, "dimension", "indicator", "measure"),
    "heat": _table("heat.parquet", HEAT_SCHEMA, "dimension", "indicator", "measure"),
    "need_by_score": _table(
        "need_by_score.parquet",
        NEED_BY_SCORE_SCHEMA,
        "dimension",
        "need_measure",
        "group",
        "score_percentile",
    ),
    "need_gaps": _table(
        "need_gaps.parquet", NEED_GAPS_SCHEMA, "dimension", "need_measure", "group"
    ),
    "selection_shares": _table(
        "selection_shares.parquet", SELECTION_SHARES_SCHEMA, "dimension", "group"
    ),
    "mitigation": _table("mitigation.parquet", POLICY_TRADEOFFS_SCHEMA, "policy"),
    "mitigation_by_group": _table(
        "mitigation_by_group.parquet", POLICY_GROUPS_SCHEMA, "policy", "dimension", "group"
    ),
    "funnel": _table("funnel.parquet", FUNNEL_SCHEMA, "dimension", "metric", "group"),
    "impact": _table("impact.parquet", IMPACT_SCHEMA, "policy", "dimension", "group"),
    "impact_gradient": _table("impact_gradient.parquet", IMPACT_GRADIENT_SCHEMA, "policy"),
}
"""``reports/audit/<target>/<file>``: every table the audit publishes, by name."""


# --- small JSON summaries -----------------------------------------------------------------------

PublishedCountValue = int | Literal["*"] | None
"""A count in JSON: 0, a multiple of the rounding base, ``"*"`` (1-7) or null."""
PublishedRateValue = float | int | Literal["*"] | None
"""A rate in JSON: ``"*"`` when a count behind it is suppressed (ints stay ints)."""

SummaryT = TypeVar("SummaryT", bound=BaseModel)


class Summary(BaseModel):
    """Base of the JSON summaries: frozen, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class OpenSummary(BaseModel):
    """A summary block whose further keys are passed through (the report does not read them)."""

    model_config = ConfigDict(frozen=True, extra="allow")


def write_summary(summary: BaseModel, target: str | Path) -> Path:
    """Write a summary model as deterministic JSON (keys the writer did not set are left out)."""
    return write_json(summary.model_dump(mode="json", exclude_unset=True), target)


def read_summary(model: type[SummaryT], source: str | Path) -> SummaryT:
    """Read and validate a summary written by :func:`write_summary`.

    Raises
    ------
    pydantic.ValidationError
        When the file does not follow ``model``.
    """
    return model.model_validate_json(Path(source).read_bytes())


class OperatingPointSummary(Summary):
    capacity_mode: Literal["share", "per_icb", "per_practice"]
    capacity: float
    selection: str


class AuditSettings(Summary):
    confidence: float
    fair_ratio_low: float
    fair_ratio_high: float
    n_bootstrap: int
    n_monte_carlo: int
    min_group_size: int
    min_group_events: int
    score_bins: int
    bootstrap_score_bins: int
    need_case_share: float
    need_case_definition: str
    fdr: float = 0.05
    oe_material: float = 1.1
    funnel_dimensions: tuple[str, ...] = ()
    max_audited_rows: int | None = None
    audited_rows_sampled: bool = False
    """Whether the audited split was larger than ``max_audited_rows`` (tables of a sample)."""
    max_cohort_rows: int | None = None
    cohort_rows_sampled: bool = False
    """Whether the eligible cohort was larger than ``max_cohort_rows`` (the fit, policies and
    impact on a sample)."""


class DisadvantagedGroup(Summary):
    dimension: str
    group: str
    reference_group: str
    need_ratio: float | None
    need_ratio_ci_low: float | None
    need_ratio_ci_high: float | None
    need_gap: float | None


class PlantedBiasCheck(Summary):
    """Groups the audit names as disadvantaged (true need at the same score); needs truth."""

    available: bool
    reason: str | None = None
    measure: str | None = None
    rule: str | None = None
    comparisons: int | None = None
    significant_comparisons: int | None = None
    disadvantaged_groups: list[DisadvantagedGroup] = Field(default_factory=list)


class MitigationSummary(Summary):
    case_definition: str
    true_events_source: str
    equal_opportunity_thresholds: dict[str, float] | None


class AuditSummary(Summary):
    """``reports/audit/<target>/audit.json``: what was audited and how (the numbers are in the
    tables of :data:`AUDIT_TABLES`)."""

    target: str
    split: str
    n: PublishedCountValue
    truth_available: bool
    score_resolution: str
    operating_point: OperatingPointSummary
    settings: AuditSettings
    flagged_comparisons: int
    planted_bias_check: PlantedBiasCheck
    mitigation: MitigationSummary
    unaudited_dimensions: dict[str, str] = Field(default_factory=dict)
    """Dimensions in params ``audit`` that could not be audited -> why (the extract lacks the
    equity field behind them: :func:`unaudited_dimensions`)."""


AUDIT_SUMMARY_FILE: Final = "audit.json"


class AuditHeadline(RootModel[dict[str, float | int]]):
    """``reports/metrics/audit_<target>.json``: flat headline figures (DVC metrics, MLflow);
    a figure whose counts are suppressed is left out."""

    model_config = ConfigDict(frozen=True)


class TableQuality(Summary):
    n_rows: PublishedCountValue
    null_share: dict[str, PublishedRateValue]


class DateRange(Summary):
    first: dt.date | None
    last: dt.date | None


class ExcludedRecords(Summary):
    """Records of one table left out under one record rule (``validation.record_problems``)."""

    table: str
    column: str
    rule: str
    rows: PublishedCountValue
    examples: list[str]


class TargetOutcomes(Summary):
    """How one target's outcomes were obtained (``pipeline.outcomes``): the extract's
    ``outcomes`` table, or derived from its events by the target's definition."""

    source: Literal["supplied", "derived"]
    definition: str
    n: PublishedCountValue
    n_events: PublishedCountValue


class DataQuality(Summary):
    """``reports/data_quality.json`` (stage validate)."""

    folder: str
    index_date: dt.date
    valid: bool
    tables: dict[str, TableQuality]
    excluded: list[ExcludedRecords]
    n_people: PublishedCountValue
    ethnicity_recorded_share: PublishedRateValue
    events_per_person_year_last_12_months: dict[str, PublishedRateValue]
    date_range: DateRange
    outcomes: dict[str, TargetOutcomes] = Field(default_factory=dict)
    """Per target: its outcomes' source, cohort size and events."""


class DecilePrevalence(Summary):
    imd_decile: int
    n: PublishedCountValue
    recorded_prevalence: PublishedRateValue
    true_prevalence: PublishedRateValue
    reference_prevalence: float


class RegionPrevalence(Summary):
    region: str
    n: PublishedCountValue
    recorded_prevalence: PublishedRateValue
    true_prevalence: PublishedRateValue
    reference_prevalence: float


class ConditionCalibration(Summary):
    qof_register: str
    min_age: int
    recorded_prevalence: PublishedRateValue
    true_prevalence: PublishedRateValue
    reference_prevalence: float
    by_imd_decile: list[DecilePrevalence]
    by_region: list[RegionPrevalence]


class SyntheticCalibration(Summary):
    """``reports/synthetic_calibration.json`` (stage synthesize): the synthetic world against
    its references; for a real extract only ``source`` and ``note``. Only ``conditions`` is
    typed in depth (the report reads it); the mixes pass through."""

    source: Literal["synthetic", "extract"]
    note: str | None = None
    bias: dict[str, Any] | None = None  # strengths, and the intersectional bias's settings
    reference: str | None = None
    conditions: dict[str, ConditionCalibration] = Field(default_factory=dict)
    ethnicity_by_region: list[dict[str, Any]] = Field(default_factory=list)
    age_by_region: list[dict[str, Any]] = Field(default_factory=list)
    true_diabetes_ratio_to_white_17_plus: dict[str, float | None] = Field(default_factory=dict)


class MakeUpGroup(OpenSummary):
    group: str
    n_selected: PublishedCountValue = None
    share_of_eligible: PublishedRateValue = None
    share_of_selected: PublishedRateValue = None
    share_of_true_need: PublishedRateValue = None
    test_split: dict[str, Any] | None = None


class OutreachTarget(OpenSummary):
    n_eligible: PublishedCountValue = None
    make_up: dict[str, list[MakeUpGroup]] = Field(default_factory=dict)


class OutreachSummary(Summary):
    """``reports/outreach_summary.json`` (stage outreach): the lists' make-up per target."""

    policy: str
    capacity_mode: str
    capacity: float | int
    columns: list[str]
    truth_available: bool
    targets: dict[str, OutreachTarget]
