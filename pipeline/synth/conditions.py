"""Risk factors, true conditions and what the GP record shows of them (under-recording bias).

Each true condition is a logistic model of age, sex, ethnicity, risk factors and earlier
conditions, plus a deprivation-decile and a region offset fitted by raking (calibration.py) so
that the *recorded* prevalence matches QOF 2019/20 by IMD decile and by region
(docs/synthetic_world.md#conditions).
"""

from __future__ import annotations

from typing import Final

import numpy as np

CONDITION_ORDER: Final = (
    "obesity",
    "hypertension",
    "diabetes",
    "copd",
    "asthma",
    "depression",
    "severe_mental_illness",
    "chd",
    "stroke",
    "ckd",
    "atrial_fibrillation",
    "heart_failure",
)
"""Generation order: a condition may depend on those before it (e.g. CHD on diabetes)."""

AGE_KNOTS: Final = (0, 17, 18, 30, 45, 60, 75, 90)
# Log-odds shape by age (level is set by calibration offsets).
AGE_CURVES: Final = {
    "obesity": (-12, -12, -1.0, -0.6, -0.3, -0.2, -0.4, -1.0),
    "hypertension": (-12, -9, -5.5, -4.0, -2.3, -1.0, 0.0, 0.5),
    "diabetes": (-6.5, -6, -5.0, -4.2, -2.9, -2.0, -1.5, -1.6),
    "copd": (-14, -14, -12, -7, -4.8, -3.3, -2.4, -2.2),
    "asthma": (-2.5, -2.4, -2.5, -2.6, -2.7, -2.7, -2.6, -2.7),
    "depression": (-6, -3.5, -2.2, -1.8, -1.7, -1.9, -2.2, -2.3),
    "severe_mental_illness": (-14, -7, -5.3, -4.7, -4.5, -4.6, -4.8, -5.0),
    "chd": (-14, -14, -11, -7.5, -4.8, -3.2, -2.1, -1.6),
    "stroke": (-12, -10, -9, -7.5, -5.5, -4.0, -2.8, -2.0),
    "ckd": (-14, -14, -8, -6.5, -5.0, -3.2, -1.8, -0.8),
    "atrial_fibrillation": (-14, -12, -11, -8.5, -6.3, -4.3, -2.8, -1.9),
    "heart_failure": (-14, -14, -12, -9.5, -7.0, -5.0, -3.4, -2.3),
}
MALE_LOG_ODDS: Final = {
    "obesity": 0.0,
    "hypertension": 0.15,
    "diabetes": 0.3,
    "copd": 0.1,
    "asthma": -0.2,
    "depression": -0.6,
    "severe_mental_illness": 0.1,
    "chd": 0.65,
    "stroke": 0.2,
    "ckd": -0.25,
    "atrial_fibrillation": 0.4,
    "heart_failure": 0.35,
}
# Log-odds by true broad ethnic group: White, Mixed, Asian, Black, Other.
ETHNIC_LOG_ODDS: Final = {
    "obesity": (0, 0.1, -0.3, 0.4, -0.2),
    "hypertension": (0, 0.1, 0.15, 0.45, 0.0),
    "diabetes": (0, 0.35, 0.85, 0.75, 0.4),  # ~2x prevalence in South Asian and Black groups
    "copd": (0, -0.4, -0.7, -0.9, -0.6),
    "asthma": (0, 0.1, -0.1, -0.1, -0.1),
    "depression": (0, 0.1, -0.4, -0.5, -0.2),
    "severe_mental_illness": (0, 0.5, 0.1, 0.9, 0.4),
    "chd": (0, 0.0, 0.45, -0.3, 0.1),
    "stroke": (0, 0.1, 0.2, 0.4, 0.1),
    "ckd": (0, 0.1, 0.25, 0.35, 0.1),
    "atrial_fibrillation": (0, -0.3, -0.6, -0.6, -0.4),
    "heart_failure": (0, 0.0, 0.1, 0.2, 0.0),
}
# Log-odds of risk factors and earlier conditions.
DRIVERS: Final = {
    "hypertension": {"obesity": 0.9},
    "diabetes": {"obesity": 1.1, "smoker": 0.2},
    "copd": {"smoker": 1.8},
    "asthma": {"obesity": 0.2},
    "depression": {"smoker": 0.25, "obesity": 0.2},
    "severe_mental_illness": {"smoker": 0.5},
    "chd": {"smoker": 0.6, "hypertension": 0.5, "diabetes": 0.6},
    "stroke": {"smoker": 0.5, "hypertension": 0.7, "diabetes": 0.4},
    "ckd": {"hypertension": 0.8, "diabetes": 0.9},
    "atrial_fibrillation": {"hypertension": 0.4, "obesity": 0.3},
    "heart_failure": {
        "chd": 1.3,
        "hypertension": 0.6,
        "diabetes": 0.5,
        "atrial_fibrillation": 0.5,
        "copd": 0.4,
    },
}

# Recording completeness with no planted bias (share of true cases coded in the GP record).
BASE_RECORDING: Final = {
    "obesity": 0.55,
    "hypertension": 0.80,
    "diabetes": 0.92,
    "copd": 0.80,
    "asthma": 0.92,
    "depression": 0.88,
    "severe_mental_illness": 0.95,
    "chd": 0.93,
    "stroke": 0.95,
    "ckd": 0.70,
    "atrial_fibrillation": 0.82,
    "heart_failure": 0.85,
}
SMOKING_RECORDING: Final = 0.90
SMOKING_CODE: Final = "F17"
"""ICD-10 F17 (tobacco use) recorded as a diagnosis event for recorded current smokers."""

# Planted under-recording: log-odds of recording fall by strength x (sum of these terms)
# (docs/synthetic_world.md#under-recording).
UNDER_RECORDING_DEPRIVATION: Final = 0.6  # x (10 - imd_decile) / 9: 0.6 in decile 1, 0 in 10
UNDER_RECORDING_ETHNIC: Final = (0.0, 0.3, 0.5, 0.6, 0.5)  # White, Mixed, Asian, Black, Other
UNDER_RECORDING_PRACTICE: Final = 0.5  # x Q: practice quality high 0, medium 0.5, low 1

INTERSECTION_RECORDING: Final = "intersection_recording"
INTERSECTION_ACCESS: Final = "intersection_access"
"""Keys of the per-person intersectional shifts in the people arrays (absent: no such bias)."""

REFERENCE_BIAS: Final = 1.0
"""Calibration assumes this bias strength: QOF is what the real (biased) record shows."""


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


def expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def deprivation_score(decile: np.ndarray) -> np.ndarray:
    """IMD decile -> 1 in the most deprived decile, 0 in the least (linear)."""
    return (10 - decile) / 9.0


def draw_smoking(people: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Current smoking: 23.8% in decile 1 to 6.8% in decile 10 (adults), peak at 25-44."""
    from pipeline.synth.reference import SMOKING_D1, SMOKING_D10

    age = people["age"]
    d = deprivation_score(people["decile"])
    base = logit(SMOKING_D10) + d * (logit(SMOKING_D1) - logit(SMOKING_D10))
    age_term = np.select([age < 16, age < 25, age < 45, age < 65], [-20.0, -0.2, 0.25, 0.05], -0.7)
    return rng.random(len(age)) < expit(base + age_term + 0.2 * (people["sex"] == 1))


def condition_logit(
    condition: str, people: dict[str, np.ndarray], state: dict[str, np.ndarray]
) -> np.ndarray:
    """Log-odds of a true condition before the decile and region offsets."""
    eta = np.interp(people["age"], AGE_KNOTS, AGE_CURVES[condition])
    eta = eta + MALE_LOG_ODDS[condition] * (people["sex"] == 1)
    eta = eta + np.asarray(ETHNIC_LOG_ODDS[condition])[people["group"]]
    for driver, weight in DRIVERS.get(condition, {}).items():
        eta = eta + weight * state[driver]
    return eta


def recording_logit_shift(people: dict[str, np.ndarray], strength: float) -> np.ndarray:
    """Planted under-recording: how far the log-odds of recording fall for each person."""
    from pipeline.synth.geography import RECORDING_QUALITY_GAP

    shift = strength * (
        UNDER_RECORDING_DEPRIVATION * deprivation_score(people["decile"])
        + np.asarray(UNDER_RECORDING_ETHNIC)[people["group"]]
        + UNDER_RECORDING_PRACTICE * np.asarray(RECORDING_QUALITY_GAP)[people["quality"]]
    )
    if INTERSECTION_RECORDING in people:  # the planted intersectional bias (its own strength)
        shift = shift + people[INTERSECTION_RECORDING]
    return shift


def intersection_shifts(
    people: dict[str, np.ndarray],
    *,
    ethnic_group: int,
    imd_quintile: int,
    recording: float,
    access: float,
) -> dict[str, np.ndarray]:
    """The planted intersectional bias: extra recording and access shifts (log-odds / log
    rate) for people of true broad ethnic group ``ethnic_group`` (index into
    ``reference.ETHNIC_GROUPS``) living in IMD quintile ``imd_quintile``, 0 elsewhere.

    >>> people = {"group": np.array([3, 3, 0]), "decile": np.array([1, 3, 1])}
    >>> shifts = intersection_shifts(
    ...     people, ethnic_group=3, imd_quintile=1, recording=0.8, access=0.5
    ... )
    >>> shifts["intersection_recording"], shifts["intersection_access"]
    (array([0.8, 0. , 0. ]), array([0.5, 0. , 0. ]))
    """
    inside = (people["group"] == ethnic_group) & ((people["decile"] + 1) // 2 == imd_quintile)
    return {
        INTERSECTION_RECORDING: np.where(inside, recording, 0.0),
        INTERSECTION_ACCESS: np.where(inside, access, 0.0),
    }


def recording_probability(condition: str, shift: np.ndarray) -> np.ndarray:
    """P(a true case is coded) given each person's under-recording shift."""
    return expit(logit(BASE_RECORDING[condition]) - shift)


def _draw_true_conditions(
    people: dict[str, np.ndarray],
    rng: np.random.Generator,
    *,
    offsets: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Smoking, then each true condition in generation order (later ones depend on earlier)."""
    n = len(people["age"])
    state: dict[str, np.ndarray] = {"smoker": draw_smoking(people, rng)}
    for condition in CONDITION_ORDER:
        dec_offset, reg_offset = offsets[condition]
        eta = condition_logit(condition, people, state)
        eta = eta + dec_offset[people["decile"] - 1] + reg_offset[people["region"]]
        state[condition] = rng.random(n) < expit(eta)
    return state


def _draw_risk_factors(
    people: dict[str, np.ndarray], state: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """True BMI, systolic blood pressure, HbA1c and cholesterol, clipped to plausible ranges."""
    n = len(people["age"])
    age = people["age"].astype(np.float64)
    male = people["sex"] == 1
    adult = age >= 18
    obese = state["obesity"]
    bmi_adult = np.where(
        obese,
        30.0 + rng.gamma(2.0, 2.3, n),
        18.5 + 11.4 * rng.beta(3.5, 2.2, n),
    )
    bmi_child = 15.0 + 0.25 * age + rng.normal(0.0, 1.8, n)
    bmi = np.where(adult, bmi_adult, bmi_child)
    sbp = np.where(
        adult,
        112.0
        + 0.4 * (age - 18)
        + 4.0 * male
        + 0.5 * (bmi - 26)
        + 20.0 * state["hypertension"]
        + rng.normal(0.0, 11.0, n),
        100.0 + rng.normal(0.0, 8.0, n),
    )
    hba1c = np.where(
        state["diabetes"],
        48.0 + rng.gamma(2.0, 7.0, n),
        34.0 + 0.06 * np.maximum(age - 18, 0) + 0.15 * (bmi - 26) + rng.normal(0.0, 3.0, n),
    )
    cholesterol = 4.4 + 0.018 * np.clip(age - 18, 0, 50) + rng.normal(0.0, 0.9, n)
    return {
        "bmi": np.clip(bmi, 12.0, 75.0),
        "sbp": np.clip(sbp, 80.0, 240.0),
        "hba1c": np.clip(hba1c, 20.0, 180.0),
        "cholesterol": np.clip(cholesterol, 2.0, 12.0),
    }


def draw_conditions(
    people: dict[str, np.ndarray],
    rng: np.random.Generator,
    *,
    offsets: dict[str, tuple[np.ndarray, np.ndarray]],
    under_recording: float,
) -> dict[str, np.ndarray]:
    """Risk factors, true conditions and recorded conditions for a chunk of people.

    Parameters
    ----------
    people
        Output of :func:`pipeline.synth.people.draw_people`.
    offsets
        Condition -> (offset by IMD decile [10], offset by region [7]) from calibration.
    under_recording
        Strength of the planted under-recording bias (0 = only the base incompleteness).

    Returns
    -------
    dict
        ``smoker``, ``bmi``, ``sbp``, ``hba1c``, ``cholesterol``, ``true_<c>`` and ``rec_<c>``
        for every condition, ``rec_smoker``.
    """
    n = len(people["age"])
    state = _draw_true_conditions(people, rng, offsets=offsets)
    risk_factors = _draw_risk_factors(people, state, rng)
    shift = recording_logit_shift(people, under_recording)
    out: dict[str, np.ndarray] = {"smoker": state["smoker"], **risk_factors}
    for condition in CONDITION_ORDER:
        true = state[condition]
        out[f"true_{condition}"] = true
        out[f"rec_{condition}"] = true & (rng.random(n) < recording_probability(condition, shift))
    out["rec_smoker"] = state["smoker"] & (rng.random(n) < expit(logit(SMOKING_RECORDING) - shift))
    return out
