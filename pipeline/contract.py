"""The data contract: tables, columns, codes and ranges, and the schemas passed between stages.

This is the one module that knows the column names of the inputs. A real extract that follows
the contract can replace the synthetic population; ``python -m pipeline validate DIR`` checks it.
"""

from __future__ import annotations

from typing import Final

import polars as pl

from pipeline.errors import ContractError

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
OUTCOMES_SCHEMA: Final = {"person_id": pl.String, "target": pl.String, "value": pl.Int8}

INPUT_TABLES: Final = {
    "areas": AREAS_SCHEMA,
    "practices": PRACTICES_SCHEMA,
    "people": PEOPLE_SCHEMA,
    "events": EVENTS_SCHEMA,
    "outcomes": OUTCOMES_SCHEMA,
}
"""Each table is ``<name>.parquet`` or a folder ``<name>/`` of parquet parts."""

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

EVENT_TYPES: Final = (
    "gp_consultation",
    "diagnosis",
    "prescription",
    "measurement",
    "ae_attendance",
    "emergency_admission",
    "elective_admission",
    "outpatient",
)

MEASUREMENT_CODES: Final = {
    # code: (unit, plausible low, plausible high)
    "sbp": ("mmHg", 60.0, 260.0),
    "dbp": ("mmHg", 30.0, 160.0),
    "bmi": ("kg/m2", 10.0, 80.0),
    "hba1c": ("mmol/mol", 15.0, 200.0),
    "cholesterol": ("mmol/L", 1.0, 20.0),
}

# Conditions: name -> ICD-10 code prefixes (a diagnosis code matches if it starts with one).
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

# BNF sections for prescriptions.
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
}
"""``data/truth/oracle.parquet``: the true probability of each target outcome per eligible
person."""


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
"""``data/scores/need/<target>.parquet``: the audit's need-based ranking (person_id, need_score),
read by the outreach policy ``need_adjusted``."""
