"""Care use (with the planted access bias) and its expansion into the long ``events`` table.

Counts are drawn per person and per history year first (so outcomes can depend on exactly the
history a model will see), then expanded to dated events with ``np.repeat``: no loop over people.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import numpy as np
import polars as pl

from pipeline.contract import EVENT_TYPES, EVENTS_OPTIONAL_SCHEMA, EVENTS_SCHEMA, MEASUREMENT_CODES
from pipeline.synth.coding import Coding
from pipeline.synth.conditions import CONDITION_ORDER, INTERSECTION_ACCESS, deprivation_score

CONDITION_BURDEN: Final = {
    "obesity": 0.15,
    "hypertension": 0.3,
    "diabetes": 0.5,
    "copd": 0.9,
    "asthma": 0.3,
    "depression": 0.4,
    "severe_mental_illness": 0.7,
    "chd": 0.6,
    "stroke": 0.6,
    "ckd": 0.6,
    "atrial_fibrillation": 0.5,
    "heart_failure": 1.1,
}
"""Log rate-ratio of care use (and log-odds of need) per true condition."""

# Planted access bias: care use falls by exp(-strength x A x k_type) for the same need, with
# A = 0.5 x deprivation + ethnic term + 0.4 x practice gap (docs/synthetic_world.md#access).
ACCESS_DEPRIVATION: Final = 0.5
ACCESS_ETHNIC: Final = (0.0, 0.25, 0.35, 0.45, 0.35)  # White, Mixed, Asian, Black, Other
ACCESS_PRACTICE: Final = 0.4
ACCESS_BY_TYPE: Final = {
    "gp_consultation": 0.5,
    "outpatient": 0.6,
    "elective_admission": 0.6,
    "emergency_admission": 0.5,
    "ae_attendance": 0.0,  # A&E is the fallback when other care is hard to reach
    "prescription": 0.3,
    "measurement": 0.5,
}

EPISODE_CONDITION_SHARE: Final = {
    "ae_attendance": 0.15,
    "emergency_admission": 0.45,
    "elective_admission": 0.1,
    "outpatient": 0.5,
}
"""Share of a hospital contact's primary diagnoses that are the person's main condition's."""
DRUGS: Final = {
    "hypertension": (("antihypertensives", 0.8), ("nitrates_ccbs", 0.4), ("diuretics", 0.25)),
    "diabetes": (("diabetes_drugs", 0.9), ("lipid_regulating", 0.7)),
    "copd": (("bronchodilators", 0.95), ("inhaled_corticosteroids", 0.6)),
    "asthma": (("inhaled_corticosteroids", 0.85), ("bronchodilators", 0.7)),
    "chd": (("lipid_regulating", 0.85), ("nitrates_ccbs", 0.4)),
    "ckd": (("antihypertensives", 0.4),),
    "heart_failure": (("diuretics", 0.9), ("antihypertensives", 0.6)),
    "atrial_fibrillation": (("anticoagulants", 0.8),),
    "depression": (("antidepressants", 0.6),),
    "severe_mental_illness": (("antipsychotics", 0.85),),
    "stroke": (("lipid_regulating", 0.8), ("anticoagulants", 0.3)),
}
"""Condition -> (medicine group of the codelist registry, share of cases on it)."""
OTHER_MEDICINES: Final = (("analgesics", 0.12), ("antacids", 0.08))
"""Medicine groups unrelated to the modelled conditions, with their uptake at age 50."""
ISSUES_PER_YEAR: Final = 4.5  # repeat prescriptions of ~12 weeks' supply, some monthly

COUNTED_TYPES: Final = (
    "gp_consultation",
    "ae_attendance",
    "emergency_admission",
    "elective_admission",
    "outpatient",
)

MEASUREMENT_NOISE: Final = {"sbp": 7.0, "bmi": 0.8, "hba1c": 2.5, "cholesterol": 0.4}

# Record-level noise every real extract has (docs/synthetic_world.md#noise): validate excludes
# and counts the invalid codes, implausible values and exact duplicates.
SYMPTOM_SHARE: Final = 0.15
"""Share of GP consultations that also carry a symptom code in no codelist."""
LEGACY_CODE_SHARE: Final = 0.01
"""Share of condition diagnoses also carried over as a legacy Read code (invalid SNOMED CT)."""
DECIMAL_SLIP_SHARE: Final = 0.0005
"""Share of measurement values entered 10x too high or too low (implausible)."""
DUPLICATE_SHARE: Final = 0.003
"""Share of events recorded twice (exact duplicates)."""

TYPE_ORDER: Final = tuple(sorted(EVENT_TYPES))
_TYPE_INDEX: Final = {name: i for i, name in enumerate(TYPE_ORDER)}


def medicine_groups() -> tuple[str, ...]:
    """Every medicine group (registry concept) the generator prescribes, sorted."""
    groups = {group for drugs in DRUGS.values() for group, _ in drugs}
    return tuple(sorted(groups | {group for group, _ in OTHER_MEDICINES}))


def access_penalty(people: dict[str, np.ndarray]) -> np.ndarray:
    """The access term A of each person (before the strength): 0 for the best-served group."""
    from pipeline.synth.geography import RECORDING_QUALITY_GAP

    return (
        ACCESS_DEPRIVATION * deprivation_score(people["decile"])
        + np.asarray(ACCESS_ETHNIC)[people["group"]]
        + ACCESS_PRACTICE * np.asarray(RECORDING_QUALITY_GAP)[people["quality"]]
    )


def access_shift(people: dict[str, np.ndarray], access: float) -> np.ndarray:
    """How far each person's care use falls (log rate): ``access`` x A plus the planted
    intersectional access shift, when there is one."""
    penalty = access * access_penalty(people)
    if INTERSECTION_ACCESS in people:
        penalty = penalty + people[INTERSECTION_ACCESS]
    return penalty


def burden(cond: dict[str, np.ndarray], prefix: str = "true") -> np.ndarray:
    """Sum of condition weights over a person's true (or recorded) conditions."""
    total = np.zeros(len(cond["smoker"]))
    for condition, weight in CONDITION_BURDEN.items():
        total += weight * cond[f"{prefix}_{condition}"]
    return total


def care_rates(
    people: dict[str, np.ndarray],
    cond: dict[str, np.ndarray],
    frailty: np.ndarray,
    *,
    access: float,
) -> dict[str, np.ndarray]:
    """Annual rate of each counted care type per person."""
    age = people["age"].astype(np.float64)
    load = burden(cond)
    d = deprivation_score(people["decile"])
    penalty = access_shift(people, access)
    female_adult = (people["sex"] == 0) & (age >= 16) & (age < 60)
    young = age < 5

    def reduced(kind: str) -> np.ndarray:
        return np.exp(-penalty * ACCESS_BY_TYPE[kind])

    return {
        "gp_consultation": 3.6
        * np.exp(0.015 * (age - 40))
        * np.where(young, 2.0, 1.0)
        * np.where(female_adult, 1.3, 1.0)
        * np.exp(0.35 * load)
        * frailty
        * reduced("gp_consultation"),
        "ae_attendance": 0.25
        * (1 + 0.6 * young + 0.8 * (age >= 75))
        * np.exp(0.3 * load)
        * frailty**0.7
        * np.exp(0.6 * d),
        "emergency_admission": 0.045
        * np.exp(0.03 * (age - 40))
        * np.where(young, 2.5, 1.0)
        * np.exp(0.6 * load)
        * frailty
        * np.exp(0.45 * d)
        * reduced("emergency_admission"),
        "elective_admission": 0.06
        * np.exp(0.03 * (age - 40))
        * np.exp(0.2 * load)
        * reduced("elective_admission"),
        "outpatient": 1.0
        * np.exp(0.015 * (age - 40))
        * np.exp(0.4 * load)
        * frailty**0.5
        * reduced("outpatient"),
    }


def draw_counts(
    rates: dict[str, np.ndarray], rng: np.random.Generator, *, history_years: int
) -> dict[str, np.ndarray]:
    """Poisson counts per person and history year (column 0 = the 12 months before index)."""
    return {
        kind: rng.poisson(np.repeat(rate[:, None], history_years, axis=1)).astype(np.int32)
        for kind, rate in rates.items()
    }


def _year_dates(year: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Days before the index date (>= 1) uniformly inside history year ``year``."""
    start = np.floor(365.25 * year).astype(np.int32)
    end = np.floor(365.25 * (year + 1)).astype(np.int32)
    return start + 1 + np.floor(rng.random(len(year)) * (end - start)).astype(np.int32)


def _window_dates(size: int, window: np.ndarray | int, rng: np.random.Generator) -> np.ndarray:
    """Days before the index date, uniform in ``1..window``."""
    return 1 + np.floor(rng.random(size) * window).astype(np.int32)


class _Part(NamedTuple):
    """One batch of events as parallel arrays (``value`` None: no value recorded)."""

    person: np.ndarray
    days: np.ndarray
    type: int
    code: np.ndarray
    value: np.ndarray | None = None


def _main_condition(cond: dict[str, np.ndarray]) -> np.ndarray:
    """Each person's heaviest true condition (index into CONDITION_ORDER; -1 when none)."""
    weights = np.stack([CONDITION_BURDEN[c] * cond[f"true_{c}"] for c in CONDITION_ORDER], axis=1)
    return np.where(weights.max(axis=1) > 0, weights.argmax(axis=1), -1)


def _episode_codes(
    kind: str, main: np.ndarray, coding: Coding, rng: np.random.Generator
) -> np.ndarray:
    """HES primary diagnoses of hospital contacts: often the main condition's (an ICD-10 code of
    its lists), otherwise a general code of the contact type."""
    codes = coding.draw(f"general:{kind}", len(main), rng)
    own = (main >= 0) & (rng.random(len(main)) < EPISODE_CONDITION_SHARE[kind])
    for c, condition in enumerate(CONDITION_ORDER):
        mine = own & (main == c)
        codes[mine] = coding.draw(f"episode:{condition}", int(mine.sum()), rng)
    return codes


def _care_events(
    counts: dict[str, np.ndarray],
    age: np.ndarray,
    main: np.ndarray,
    rng: np.random.Generator,
    *,
    history_years: int,
    coding: Coding,
) -> list[_Part]:
    """Dated contacts of the counted care types; episodes often carry the main condition's code."""
    home_visit = coding.pools["consultation"].index[-1]  # CONSULTATION_CODES ends with it
    parts = []
    for kind, per_year in counts.items():
        flat = np.repeat(np.arange(per_year.size), per_year.ravel())
        person = flat // history_years
        days = _year_dates(flat % history_years, rng)
        if kind == "gp_consultation":
            codes = coding.draw("consultation", len(person), rng)
            home = (age[person] >= 80) & (rng.random(len(person)) < 0.1)
            codes = np.where(home, home_visit, codes)
        else:
            codes = _episode_codes(kind, main[person], coding, rng)
        parts.append(_Part(person, days, _TYPE_INDEX[kind], codes.astype(np.int32)))
    return parts


def _issues(
    who: np.ndarray,
    span: np.ndarray,
    rate: np.ndarray,
    pool: str,
    rng: np.random.Generator,
    *,
    coding: Coding,
) -> _Part:
    """Repeat issues of one medicine group: each person keeps one product (a dm+d or BNF code
    of the group) over ``rate x span`` expected issues in their last ``span`` days."""
    product = coding.draw(pool, len(who), rng)
    issues = rng.poisson(rate * span)
    days = _window_dates(int(issues.sum()), np.repeat(span, issues), rng)
    return _Part(
        np.repeat(who, issues), days, _TYPE_INDEX["prescription"], np.repeat(product, issues)
    )


def _diagnosis_events(
    cond: dict[str, np.ndarray],
    age: np.ndarray,
    penalty: np.ndarray,
    rng: np.random.Generator,
    *,
    history_years: int,
    window: int,
    coding: Coding,
) -> list[_Part]:
    """One SNOMED CT diagnosis per recorded condition (often long before the window), and its
    repeat prescriptions from diagnosis (or the window start) to the index date."""
    max_days = np.maximum(np.minimum(age * 365.25, 20 * 365.25), 30.0)
    rx_rate = ISSUES_PER_YEAR * history_years * np.exp(-penalty * ACCESS_BY_TYPE["prescription"])
    parts = []
    for condition in CONDITION_ORDER:
        person = np.flatnonzero(cond[f"rec_{condition}"])
        if len(person) == 0:
            continue
        days = _window_dates(len(person), max_days[person], rng)
        codes = coding.draw(f"diagnosis:{condition}", len(person), rng)
        parts.append(_Part(person, days, _TYPE_INDEX["diagnosis"], codes))
        since = np.minimum(days, window)  # prescriptions start at diagnosis or the window start
        for group, share in DRUGS.get(condition, ()):
            on = rng.random(len(person)) < share
            who = person[on]
            parts.append(
                _issues(
                    who, since[on], rx_rate[who] / window, f"medicine:{group}", rng, coding=coding
                )
            )
    return parts


def _smoking_events(
    cond: dict[str, np.ndarray], rng: np.random.Generator, *, window: int, coding: Coding
) -> list[_Part]:
    """A smoking code, once inside the window, for every recorded current smoker."""
    smokers = np.flatnonzero(cond["rec_smoker"])
    days = _window_dates(len(smokers), window, rng)
    codes = coding.draw("smoking", len(smokers), rng)
    return [_Part(smokers, days, _TYPE_INDEX["diagnosis"], codes)]


def _other_prescription_events(
    age: np.ndarray, rng: np.random.Generator, *, history_years: int, window: int, coding: Coding
) -> list[_Part]:
    """Prescriptions unrelated to the modelled conditions (more common with age, adults only)."""
    parts = []
    for group, base in OTHER_MEDICINES:
        uptake = np.clip(base * np.exp(0.02 * (age - 50)), 0, 0.6) * (age >= 16)
        who = np.flatnonzero(rng.random(len(age)) < uptake)
        span = np.full(len(who), window)
        rate = np.full(len(who), 2.0 * history_years / window)
        parts.append(_issues(who, span, rate, f"medicine:{group}", rng, coding=coding))
    return parts


def _measurement_rates(
    cond: dict[str, np.ndarray], age: np.ndarray, penalty: np.ndarray, *, history_years: int
) -> dict[str, np.ndarray]:
    """Expected readings per person in the history: more with age and recorded conditions."""
    adult = age >= 18
    over40 = age >= 40
    reviewed = cond["rec_hypertension"] | cond["rec_diabetes"] | cond["rec_chd"] | cond["rec_ckd"]
    reviewed = reviewed | cond["rec_stroke"] | cond["rec_heart_failure"]
    measured = np.exp(-penalty * ACCESS_BY_TYPE["measurement"]) * history_years
    return {
        "sbp": (0.25 * adult + 0.35 * over40 + 1.2 * reviewed) * measured,
        "bmi": (0.1 * adult + 0.6 * cond["rec_diabetes"] + 0.3 * cond["rec_obesity"]) * measured,
        "hba1c": (0.08 * over40 + 2.0 * cond["rec_diabetes"]) * measured,
        "cholesterol": (
            0.3 * over40 + 0.8 * (cond["rec_diabetes"] | cond["rec_chd"] | cond["rec_stroke"])
        )
        * measured,
    }


def _measurement_events(
    cond: dict[str, np.ndarray],
    rates: dict[str, np.ndarray],
    rng: np.random.Generator,
    *,
    window: int,
    coding: Coding,
) -> list[_Part]:
    """Noisy readings of the true values under their SNOMED CT codes (with a diastolic reading
    beside each systolic one)."""
    measurement = _TYPE_INDEX["measurement"]
    parts = []
    for name, rate in rates.items():
        k = rng.poisson(rate)
        person = np.repeat(np.arange(len(rate)), k)
        days = _window_dates(len(person), window, rng)
        truth = cond[name][person]
        low, high = MEASUREMENT_CODES[name][1:]
        value = np.round(
            np.clip(truth + rng.normal(0.0, MEASUREMENT_NOISE[name], len(person)), low, high), 1
        )
        codes = coding.draw(f"measurement:{name}", len(person), rng)
        parts.append(_Part(person, days, measurement, codes, value))
        if name == "sbp":  # diastolic taken at the same reading
            dbp = np.round(
                np.clip(0.5 * value + 12 + rng.normal(0.0, 6.0, len(person)), 40, 140), 1
            )
            dbp_codes = coding.draw("measurement:dbp", len(person), rng)
            parts.append(_Part(person, days, measurement, dbp_codes, dbp))
    return parts


def _noise_parts(parts: list[_Part], rng: np.random.Generator, *, coding: Coding) -> list[_Part]:
    """Codes in no codelist: a symptom code beside some GP consultations (valid SNOMED CT), and
    a legacy Read code beside some condition diagnoses (invalid)."""
    diagnosis = _TYPE_INDEX["diagnosis"]
    noise = []
    for part in parts:
        if part.type == _TYPE_INDEX["gp_consultation"]:
            pool, share = "symptom", SYMPTOM_SHARE
        elif part.type == diagnosis:
            pool, share = "legacy_read", LEGACY_CODE_SHARE
        else:
            continue
        chosen = np.flatnonzero(rng.random(len(part.person)) < share)
        codes = coding.draw(pool, len(chosen), rng)
        noise.append(_Part(part.person[chosen], part.days[chosen], diagnosis, codes))
    return noise


def _concatenated(parts: list[_Part]) -> dict[str, np.ndarray]:
    return {
        "person": np.concatenate([p.person for p in parts]).astype(np.int64),
        "days_before": np.concatenate([p.days for p in parts]).astype(np.int32),
        "type": np.concatenate([np.full(len(p.person), p.type, np.int8) for p in parts]),
        "code": np.concatenate([p.code for p in parts]).astype(np.int32),
        "value": np.concatenate(
            [p.value if p.value is not None else np.full(len(p.person), np.nan) for p in parts]
        ),
    }


def _record_noise(events: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Decimal slips in a few measurement values (10x too high or too low: implausible) and a few
    events recorded twice (exact duplicates)."""
    value = events["value"].copy()
    slip = ~np.isnan(value) & (rng.random(len(value)) < DECIMAL_SLIP_SHARE)
    value[slip] = np.round(value[slip] * np.where(rng.random(int(slip.sum())) < 0.5, 10.0, 0.1), 2)
    twice = np.flatnonzero(rng.random(len(value)) < DUPLICATE_SHARE)
    out = events | {"value": value}
    return {name: np.concatenate([column, column[twice]]) for name, column in out.items()}


def _sorted_events(events: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sort by person, date (ascending), type and code (stable: ties keep generation order)."""
    # One packed int64 key (np.lexsort on five keys is ~20x slower): person | 16 bits of days |
    # 6 bits of type | 16 bits of code.
    key = (
        (events["person"] << 38)
        | ((0xFFFF - events["days_before"]).astype(np.int64) << 22)
        | (events["type"].astype(np.int64) << 16)
        | events["code"].astype(np.int64)
    )
    order = np.argsort(key, kind="stable")
    return {name: column[order] for name, column in events.items()}


def expand_events(
    people: dict[str, np.ndarray],
    cond: dict[str, np.ndarray],
    counts: dict[str, np.ndarray],
    rng: np.random.Generator,
    *,
    history_years: int,
    access: float,
    coding: Coding,
) -> dict[str, np.ndarray]:
    """All events of a chunk as parallel arrays (person, days_before, type, code, value; ``code``
    indexes ``coding.codes``).

    The batches are drawn in a fixed order from one stream (care contacts, diagnoses with their
    drugs, smoking, other prescriptions, measurements, then the noise), so the same seed gives
    the same events.
    """
    assert len(coding.codes) < 1 << 16 and len(EVENT_TYPES) < 1 << 6  # packed sort key
    age = people["age"].astype(np.float64)
    window = int(np.floor(365.25 * history_years))
    penalty = access_shift(people, access)
    main = _main_condition(cond)
    parts = _care_events(counts, age, main, rng, history_years=history_years, coding=coding)
    parts += _diagnosis_events(
        cond, age, penalty, rng, history_years=history_years, window=window, coding=coding
    )
    parts += _smoking_events(cond, rng, window=window, coding=coding)
    parts += _other_prescription_events(
        age, rng, history_years=history_years, window=window, coding=coding
    )
    rates = _measurement_rates(cond, age, penalty, history_years=history_years)
    parts += _measurement_events(cond, rates, rng, window=window, coding=coding)
    parts += _noise_parts(parts, rng, coding=coding)
    events = _record_noise(_concatenated(parts), rng)
    return _after_birth(_sorted_events(events), age)


def _after_birth(events: dict[str, np.ndarray], age: np.ndarray) -> dict[str, np.ndarray]:
    """Drop the events of young children dated before their birth (taken as ``age + 0.5``
    years before the index date): the history window is the same for everybody, lives are not.
    No random draws, so everything else in the world is unchanged."""
    born_days_before = np.floor((age + 0.5) * 365.25)
    keep = events["days_before"] <= born_days_before[events["person"]]
    return {name: column[keep] for name, column in events.items()}


def events_frame(
    events: dict[str, np.ndarray], person_ids: pl.Series, *, index_day: int, coding: Coding
) -> pl.DataFrame:
    """Parallel arrays -> the contract's ``events`` frame with each row's ``code_system``
    (already in sort order)."""
    return pl.DataFrame(
        {
            "person_id": person_ids.gather(events["person"]),
            "date": pl.Series(index_day - events["days_before"], dtype=pl.Int32).cast(pl.Date),
            "event_type": pl.Series(TYPE_ORDER).gather(events["type"]),
            "code": pl.Series(coding.codes).gather(events["code"]),
            "value": pl.Series(events["value"]).fill_nan(None),
            "code_system": pl.Series(coding.systems).gather(events["code"]),
        },
        schema={**EVENTS_SCHEMA, **EVENTS_OPTIONAL_SCHEMA},
    )
