"""Outcome processes, oracle risks, eligibility and true need.

Each outcome has an annual log-odds built mostly from what the record shows (recorded
conditions, prior admissions / A&E / GP contacts in the history, age, sex, deprivation,
measured risk factors), plus a small latent part (unrecorded true conditions, a person-level
noise term, and the access bias in groups a model does not see). ``oracle_risk`` is exactly the
probability used to draw the recorded outcome: ``1 - (1 - expit(alpha + eta)) ** (months / 12)``
(docs/synthetic_world.md#outcomes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np

from pipeline.synth.conditions import CONDITION_ORDER, deprivation_score, expit
from pipeline.synth.events import access_shift, burden

if TYPE_CHECKING:
    from pipeline.config import TargetParams

LATENT_SD: Final = {
    "emergency_admission": 0.1,
    "cvd_event": 0.1,
    "ae_attendance": 0.1,
    "diabetes_onset": 0.1,
}
UNRECORDED_WEIGHT: Final = 0.15
"""Share of a true-but-unrecorded condition's effect on the outcome (the hidden part)."""
ACCESS_ON_OUTCOME: Final = {
    "emergency_admission": 0.5,
    "cvd_event": 0.3,
    "ae_attendance": 0.0,
    "diabetes_onset": 0.5,
}
"""Recorded outcome log-odds fall by strength x A x this (access bias on recorded outcomes)."""
ANNUAL_RATE: Final = {
    "emergency_admission": 0.10,
    "cvd_event": 0.009,
    "ae_attendance": 0.22,
    "diabetes_onset": 0.007,
}
"""Mean annual probability in the eligible cohort at the reference bias (sets the intercept)."""
NEED_INTERCEPT: Final = -3.4

SOUTH_ASIAN_CVD: Final = 0.35

GRADIENT_BANDS: Final = ((20, 37), (38, 52), (53, 66), (67, 110))
"""Adult age bands of the published emergency-admission deprivation gradient
(``reference.EMERGENCY_ADMISSION_RATIO_BY_AGE``) the calibration matches."""
GRADIENT_KNOTS: Final = (28.0, 45.0, 60.0, 77.0)
"""Ages the fitted band terms sit at (interpolated between, flat beyond)."""
GRADIENT_OUTCOMES: Final = ("emergency_admission",)
"""Outcomes whose deprivation gradient by age is calibrated to published figures."""


def age_deprivation_term(people: dict[str, np.ndarray], gradient: np.ndarray | None) -> np.ndarray:
    """Extra log-odds ``g(age) x deprivation``: ``g`` interpolated between the fitted band terms
    (:data:`GRADIENT_KNOTS`); 0 without a fitted gradient."""
    if gradient is None:
        return np.zeros(len(people["age"]))
    slope = np.interp(people["age"].astype(np.float64), GRADIENT_KNOTS, gradient)
    return slope * deprivation_score(people["decile"])


def history_summary(counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The history counts that drive outcomes (all visible in the events table)."""
    ea = counts["emergency_admission"]
    return {
        "ea_12m": ea[:, 0],
        "ea_13_24m": ea[:, 1] if ea.shape[1] > 1 else np.zeros(len(ea), np.int32),
        "ae_12m": counts["ae_attendance"][:, 0],
        "gp_12m": counts["gp_consultation"][:, 0],
        "op_12m": counts["outpatient"][:, 0],
    }


def _utilisation_logit(
    outcome: str,
    people: dict[str, np.ndarray],
    cond: dict[str, np.ndarray],
    history: dict[str, np.ndarray],
    *,
    hidden: np.ndarray,
    recorded: np.ndarray,
) -> np.ndarray:
    """Emergency admission / A&E attendance: burden, deprivation and prior use drive them."""
    age = people["age"].astype(np.float64)
    male = (people["sex"] == 1).astype(np.float64)
    d = deprivation_score(people["decile"])
    eta = (
        0.03 * (age - 40)
        + 0.1 * male
        + 0.9 * recorded
        + 0.9 * UNRECORDED_WEIGHT * hidden
        + 0.45 * d
        + 0.15 * cond["rec_smoker"]
        + 0.05 * cond["smoker"]
        + 0.45 * np.minimum(history["ea_12m"], 3)
        + 0.3 * np.minimum(history["ea_13_24m"], 3)
        + 0.2 * np.minimum(history["ae_12m"], 4)
        + 0.25 * np.log1p(history["gp_12m"])
    )
    if outcome == "ae_attendance":
        eta = eta - 0.02 * (age - 40) + 0.25 * np.minimum(history["ae_12m"], 4)
    return eta


def _cvd_logit(people: dict[str, np.ndarray], cond: dict[str, np.ndarray]) -> np.ndarray:
    """First MI or stroke: QRISK-like risk factors, recorded conditions and ethnicity."""
    age = people["age"].astype(np.float64)
    male = (people["sex"] == 1).astype(np.float64)
    d = deprivation_score(people["decile"])
    south_asian = np.isin(people["ethnic_code"], ("H", "J", "K", "L"))
    ethnic = (
        SOUTH_ASIAN_CVD * south_asian
        - 0.15 * (people["group"] == 3)
        - 0.3 * (people["ethnic_code"] == "R")
    )
    return (
        0.07 * (age - 55)
        + 0.5 * male
        + 0.018 * (cond["sbp"] - 130)
        + 0.18 * (cond["cholesterol"] - 5.2)
        + 0.45 * cond["rec_smoker"]
        + 0.1 * cond["smoker"]
        + 0.5 * cond["rec_diabetes"]
        + 0.15 * cond["true_diabetes"]
        + 0.35 * cond["rec_ckd"]
        + 0.5 * cond["rec_atrial_fibrillation"]
        + 0.25 * cond["rec_hypertension"]
        + 0.3 * cond["rec_severe_mental_illness"]
        + 0.2 * d
        + ethnic
    )


def _diabetes_onset_logit(people: dict[str, np.ndarray], cond: dict[str, np.ndarray]) -> np.ndarray:
    """New type 2 diabetes: BMI, HbA1c, South Asian and Black groups, deprivation."""
    age = people["age"].astype(np.float64)
    male = (people["sex"] == 1).astype(np.float64)
    return (
        0.025 * (age - 50)
        + 0.2 * male
        + 0.12 * (cond["bmi"] - 27)
        + 0.15 * (cond["hba1c"] - 38)
        + 0.6 * np.isin(people["group"], (2, 3))
        + 0.3 * deprivation_score(people["decile"])
        + 0.3 * cond["rec_hypertension"]
    )


def outcome_logit(
    outcome: str,
    people: dict[str, np.ndarray],
    cond: dict[str, np.ndarray],
    history: dict[str, np.ndarray],
    latent: np.ndarray,
    *,
    access: float,
) -> np.ndarray:
    """Annual log-odds of an outcome, before the calibrated intercept."""
    penalty = access_shift(people, access) * ACCESS_ON_OUTCOME[outcome]
    latent = LATENT_SD[outcome] * latent
    if outcome in ("emergency_admission", "ae_attendance"):
        recorded = burden(cond, "rec")
        hidden = burden(cond, "true") - recorded
        eta = _utilisation_logit(outcome, people, cond, history, hidden=hidden, recorded=recorded)
    elif outcome == "cvd_event":
        eta = _cvd_logit(people, cond)
    else:  # diabetes_onset
        eta = _diabetes_onset_logit(people, cond)
    return eta + latent - penalty


def oracle_risk(alpha: float, eta: np.ndarray, *, follow_up_months: int) -> np.ndarray:
    """Probability of the recorded outcome within the follow-up window."""
    annual = expit(alpha + eta)
    return 1.0 - (1.0 - annual) ** (follow_up_months / 12.0)


def eligible(
    people: dict[str, np.ndarray],
    cond: dict[str, np.ndarray],
    *,
    min_age: int,
    max_age: int,
    exclude_prior: tuple[str, ...],
) -> np.ndarray:
    """Target cohort: age window at index; ``cvd`` excludes true prior CHD or stroke."""
    keep = (people["age"] >= min_age) & (people["age"] <= max_age)
    if "cvd" in exclude_prior:
        keep &= ~(cond["true_chd"] | cond["true_stroke"])
    if "diabetes" in exclude_prior:
        keep &= ~cond["true_diabetes"]
    return keep


def cohort_and_logit(
    target: TargetParams,
    people: dict[str, np.ndarray],
    cond: dict[str, np.ndarray],
    history: dict[str, np.ndarray],
    latent: np.ndarray,
    *,
    access: float,
    gradient: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A target's eligible cohort (mask) and its outcome's annual log-odds for everyone
    (``gradient``: the calibrated deprivation term by age, :func:`age_deprivation_term`)."""
    cohort = eligible(
        people,
        cond,
        min_age=target.min_age,
        max_age=target.max_age,
        exclude_prior=tuple(target.exclude_prior),
    )
    eta = outcome_logit(target.outcome, people, cond, history, latent, access=access)
    return cohort, eta + age_deprivation_term(people, gradient)


def true_need(
    people: dict[str, np.ndarray],
    cond: dict[str, np.ndarray],
    *,
    gradient: np.ndarray | None = None,
) -> np.ndarray:
    """Unbiased 12-month chance of an emergency admission from true health alone.

    ``expit(-3.4 + 0.03 (age - 40) + 0.1 male + 0.9 x sum(burden_c x true_c) + 0.45 x
    deprivation + 0.2 smoker + g(age) x deprivation)``: no recording or access bias, no
    utilisation history. ``gradient`` is the emergency-admission target's calibrated deprivation
    term by age (:func:`age_deprivation_term`): the published gradient it matches is read as
    health need (deprived areas' excess admissions follow their excess illness), so that with
    every planted bias at 0 the outcome and its true need rank deprived people alike.
    """
    age = people["age"].astype(np.float64)
    eta = (
        NEED_INTERCEPT
        + 0.03 * (age - 40)
        + 0.1 * (people["sex"] == 1)
        + 0.9 * burden(cond, "true")
        + 0.45 * deprivation_score(people["decile"])
        + 0.2 * cond["smoker"]
        + age_deprivation_term(people, gradient)
    )
    return expit(eta)


def as_if_recorded(cond: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The conditions with every true condition (and smoking) recorded."""
    recorded = {f"rec_{c}": cond[f"true_{c}"] for c in CONDITION_ORDER if f"rec_{c}" in cond}
    return cond | recorded | {"rec_smoker": cond["smoker"]}


def target_true_need(
    outcome: str,
    people: dict[str, np.ndarray],
    cond: dict[str, np.ndarray],
    history: dict[str, np.ndarray],
    latent: np.ndarray,
    *,
    intercept: float,
    follow_up_months: int,
    gradient: np.ndarray | None = None,
) -> np.ndarray:
    """A target's true need: the true risk of its outcome over its follow-up, without the
    planted recording and access biases (``gradient``: the target's calibrated deprivation term
    by age, part of the need as of the outcome).

    ``emergency_admission``: :func:`true_need` (true health alone, no utilisation history)
    over the follow-up. Other outcomes: the outcome's own model with every true condition
    recorded (:func:`as_if_recorded`), no access penalty, the same person-level latent term and
    calibrated intercept (for ``cvd_event``: the true 5-year CVD risk as if everything were
    recorded).
    """
    if outcome == "emergency_admission":
        need = true_need(people, cond, gradient=gradient)
        return 1.0 - (1.0 - need) ** (follow_up_months / 12.0)
    everything = as_if_recorded(cond)
    if outcome == "ae_attendance":
        true_burden = burden(cond, "true")
        eta = _utilisation_logit(
            outcome,
            people,
            everything,
            history,
            hidden=np.zeros_like(true_burden),
            recorded=true_burden,
        )
    elif outcome == "cvd_event":
        eta = _cvd_logit(people, everything)
    else:  # diabetes_onset
        eta = _diabetes_onset_logit(people, everything)
    eta = eta + LATENT_SD[outcome] * latent + age_deprivation_term(people, gradient)
    return oracle_risk(intercept, eta, follow_up_months=follow_up_months)
