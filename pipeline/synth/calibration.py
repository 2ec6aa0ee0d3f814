"""Calibration: fit offsets on a pilot population, then compare the result with the reference.

The pilot (``PILOT_PEOPLE`` people, its own seed) is drawn with the same functions as the real
population. Condition offsets by IMD decile and by region are raked (iterative proportional
fitting on the log scale) so that the expected *recorded* prevalence at the reference bias
strength matches QOF 2019/20; outcome intercepts are set so each target's mean annual risk in
its cohort matches ``outcomes.ANNUAL_RATE``. The pilot never depends on ``n_people``, so the
same seed gives the same world at any scale. What the report compares:
docs/synthetic_world.md#calibration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from pipeline import seeds
from pipeline.contract import REGIONS, SyntheticCalibration
from pipeline.disclosure import Rule
from pipeline.synth import reference as ref
from pipeline.synth.conditions import (
    CONDITION_ORDER,
    REFERENCE_BIAS,
    condition_logit,
    draw_conditions,
    draw_smoking,
    expit,
    recording_logit_shift,
    recording_probability,
)
from pipeline.synth.events import care_rates, draw_counts
from pipeline.synth.geography import RECORDING_QUALITY_SHARES, build_geography
from pipeline.synth.outcomes import (
    ANNUAL_RATE,
    GRADIENT_BANDS,
    GRADIENT_OUTCOMES,
    age_deprivation_term,
    cohort_and_logit,
    history_summary,
)
from pipeline.synth.people import draw_people

if TYPE_CHECKING:
    from pipeline.config import TargetParams

PILOT_PEOPLE: Final = 120_000
RAKING_ROUNDS: Final = 12


@dataclass(frozen=True)
class Calibration:
    """Fitted offsets: condition -> (by decile [10], by region [7]); target -> intercept."""

    offsets: dict[str, tuple[np.ndarray, np.ndarray]]
    intercepts: dict[str, float] = field(default_factory=dict)
    gradients: dict[str, np.ndarray] = field(default_factory=dict)
    """Target -> deprivation log-odds by age band (outcomes.GRADIENT_OUTCOMES only)."""


def _rake(
    eta: np.ndarray,
    *,
    recorded_share: np.ndarray,
    decile: np.ndarray,
    region: np.ndarray,
    denominator: np.ndarray,
    register: str,
) -> tuple[np.ndarray, np.ndarray]:
    target_dec = np.asarray(ref.QOF_PREVALENCE_BY_DECILE[register])
    target_reg = np.asarray(ref.QOF_PREVALENCE_BY_REGION[register])
    weight = denominator.astype(np.float64)
    n_dec = np.bincount(decile - 1, weights=weight, minlength=10)
    n_reg = np.bincount(region, weights=weight, minlength=len(REGIONS))
    u_dec = np.zeros(10)
    u_reg = np.zeros(len(REGIONS))
    for _ in range(RAKING_ROUNDS):
        expected = expit(eta + u_dec[decile - 1] + u_reg[region]) * recorded_share * weight
        observed = np.bincount(decile - 1, weights=expected, minlength=10) / n_dec
        u_dec += np.log(target_dec / observed)
        expected = expit(eta + u_dec[decile - 1] + u_reg[region]) * recorded_share * weight
        observed = np.bincount(region, weights=expected, minlength=len(REGIONS)) / n_reg
        u_reg += np.log(target_reg / observed)
    return u_dec, u_reg


def _recording_share_mixture(people: dict[str, np.ndarray]) -> list[tuple[float, np.ndarray]]:
    """(share, under-recording shift) per practice quality level at the reference bias.

    Practice quality is averaged out (a few practices per region would otherwise steer the
    regional offsets): each person's recording share is the mixture over quality levels.
    """
    return [
        (
            share,
            recording_logit_shift(
                {**people, "quality": np.full_like(people["quality"], q)}, REFERENCE_BIAS
            ),
        )
        for q, share in enumerate(RECORDING_QUALITY_SHARES)
    ]


def _fit_condition_offsets(
    people: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Rake each condition's decile and region offsets in generation order (later conditions
    depend on the earlier ones drawn with their fitted offsets)."""
    shifts = _recording_share_mixture(people)
    state: dict[str, np.ndarray] = {"smoker": draw_smoking(people, rng)}
    offsets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for condition in CONDITION_ORDER:
        register = ref.CONDITION_REGISTER[condition]
        eta = condition_logit(condition, people, state)
        u_dec, u_reg = _rake(
            eta,
            recorded_share=np.sum(
                [share * recording_probability(condition, shift) for share, shift in shifts], axis=0
            ),
            decile=people["decile"],
            region=people["region"],
            denominator=people["age"] >= ref.QOF_MIN_AGE[register],
            register=register,
        )
        offsets[condition] = (u_dec, u_reg)
        state[condition] = rng.random(len(eta)) < expit(
            eta + u_dec[people["decile"] - 1] + u_reg[people["region"]]
        )
    return offsets


def _intercept_for_rate(eta: np.ndarray, rate: float) -> float:
    """The intercept whose mean annual risk ``expit(intercept + eta)`` equals ``rate``."""
    low, high = -15.0, 5.0
    for _ in range(60):  # bisection
        mid = (low + high) / 2
        low, high = (mid, high) if expit(mid + eta).mean() < rate else (low, mid)
    return (low + high) / 2


GRADIENT_ROUNDS: Final = 8
MOST_LEAST_SPREAD: Final = 8 / 9
"""Deprivation score difference between IMD quintile 1 (deciles 1-2) and 5 (deciles 9-10)."""


def deprivation_ratios(risk: np.ndarray, age: np.ndarray, decile: np.ndarray) -> np.ndarray:
    """Mean risk in the most deprived IMD quintile / the least deprived, per GRADIENT_BANDS."""
    quintile = (decile + 1) // 2
    ratios = []
    for first, last in GRADIENT_BANDS:
        band = (age >= first) & (age <= last)
        most, least = risk[band & (quintile == 1)], risk[band & (quintile == 5)]
        ratios.append(most.mean() / least.mean() if len(most) and len(least) else np.nan)
    return np.asarray(ratios)


def _fit_gradient(
    eta: np.ndarray, people: dict[str, np.ndarray], *, rate: float
) -> tuple[np.ndarray, float]:
    """Deprivation terms by age band and intercept: each band's most / least deprived risk ratio
    matches ``reference.EMERGENCY_ADMISSION_RATIO_BY_AGE`` and the mean annual risk ``rate``
    (fixed-point rounds; a band's ratio moves ~exp(step x 8/9))."""
    target = np.asarray([ref.EMERGENCY_ADMISSION_RATIO_BY_AGE[band] for band in GRADIENT_BANDS])
    gradient = np.zeros(len(GRADIENT_BANDS))
    intercept = _intercept_for_rate(eta, rate)
    for _ in range(GRADIENT_ROUNDS):
        shifted = eta + age_deprivation_term(people, gradient)
        intercept = _intercept_for_rate(shifted, rate)
        ratios = deprivation_ratios(expit(intercept + shifted), people["age"], people["decile"])
        gradient += np.nan_to_num(np.log(target / ratios)) / MOST_LEAST_SPREAD
    shifted = eta + age_deprivation_term(people, gradient)
    return gradient, _intercept_for_rate(shifted, rate)


def _fit_intercepts(
    people: dict[str, np.ndarray],
    offsets: dict[str, tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    *,
    history_years: int,
    targets: Mapping[str, TargetParams],
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Outcome intercepts: each target's mean annual risk in its cohort = the reference rate;
    for GRADIENT_OUTCOMES also the deprivation terms by age (:func:`_fit_gradient`)."""
    n = len(people["age"])
    cond = draw_conditions(people, rng, offsets=offsets, under_recording=REFERENCE_BIAS)
    frailty = rng.gamma(3.0, 1.0 / 3.0, n)
    counts = draw_counts(
        care_rates(people, cond, frailty, access=REFERENCE_BIAS), rng, history_years=history_years
    )
    history = history_summary(counts)
    intercepts: dict[str, float] = {}
    gradients: dict[str, np.ndarray] = {}
    for name, target in targets.items():
        cohort, eta = cohort_and_logit(
            target, people, cond, history, rng.standard_normal(n), access=REFERENCE_BIAS
        )
        rate = ANNUAL_RATE[target.outcome]
        if target.outcome in GRADIENT_OUTCOMES:
            members = {key: people[key][cohort] for key in ("age", "decile")}
            gradients[name], intercepts[name] = _fit_gradient(eta[cohort], members, rate=rate)
        else:
            intercepts[name] = _intercept_for_rate(eta[cohort], rate)
    return intercepts, gradients


def fit_calibration(
    *,
    seed: int,
    area_size: int,
    practice_size: int,
    history_years: int,
    not_recorded_share: float,
    targets: Mapping[str, TargetParams],
) -> Calibration:
    """Fit condition offsets and outcome intercepts on a seeded pilot population.

    Parameters
    ----------
    seed
        ``params.seed``; the pilot uses its own sub-stream.
    area_size, practice_size, history_years, not_recorded_share
        From ``params.population``.
    targets
        ``params.targets``.
    """
    rng = seeds.rng("synthesize", "calibration_pilot", root=seed)
    geo = build_geography(PILOT_PEOPLE, area_size=area_size, practice_size=practice_size, rng=rng)
    people = draw_people(geo, np.arange(PILOT_PEOPLE), rng, not_recorded_share=not_recorded_share)
    offsets = _fit_condition_offsets(people, rng)
    intercepts, gradients = _fit_intercepts(
        people, offsets, rng, history_years=history_years, targets=targets
    )
    return Calibration(offsets=offsets, intercepts=intercepts, gradients=gradients)


# --- Report: synthetic vs reference ------------------------------------------------------------


class Tally:
    """Running sums over units for ``reports/synthetic_calibration.json`` (additive:
    :meth:`total`; picklable, so a Dask task can return it)."""

    def __init__(self) -> None:
        registers = len(ref.QOF_REGISTERS)
        self.by_decile = np.zeros((registers, 3, 10))  # denominator, recorded, true
        self.by_region = np.zeros((registers, 3, len(REGIONS)))
        self.ethnicity = np.zeros((len(REGIONS), 6))  # recorded broad group incl. not recorded
        self.true_ethnicity = np.zeros((len(REGIONS), 5))
        self.ages = np.zeros((len(REGIONS), 4))  # 0-14, 15-64, 65+, total
        self.diabetes_by_group = np.zeros((2, 5))  # adults 17+: denominator, true cases

    @classmethod
    def total(cls, tallies: Iterable[Tally]) -> Tally:
        """The sum of tallies (of disjoint sets of people), added in the order given."""
        total = cls()
        for tally in tallies:
            for name, value in vars(tally).items():
                setattr(total, name, getattr(total, name) + value)
        return total

    def add(self, people: dict[str, np.ndarray], cond: dict[str, np.ndarray]) -> None:
        decile = people["decile"] - 1
        region = people["region"]
        for k, register in enumerate(ref.QOF_REGISTERS):
            condition = next(c for c, r in ref.CONDITION_REGISTER.items() if r == register)
            denominator = (people["age"] >= ref.QOF_MIN_AGE[register]).astype(np.float64)
            for j, values in enumerate(
                (
                    denominator,
                    denominator * cond[f"rec_{condition}"],
                    denominator * cond[f"true_{condition}"],
                )
            ):
                self.by_decile[k, j] += np.bincount(decile, weights=values, minlength=10)
                self.by_region[k, j] += np.bincount(region, weights=values, minlength=len(REGIONS))
        shown = np.where(people["not_recorded"], 5, people["group"])
        np.add.at(self.ethnicity, (region, shown), 1)
        np.add.at(self.true_ethnicity, (region, people["group"]), 1)
        band = np.select([people["age"] < 15, people["age"] < 65], [0, 1], 2)
        np.add.at(self.ages, (region, band), 1)
        # numpy's stubs reject a tuple index mixing ints and arrays, which np.add.at accepts
        np.add.at(self.ages, (region, 3), 1)  # type: ignore[arg-type]
        adult = people["age"] >= 17
        np.add.at(self.diabetes_by_group, (0, people["group"][adult]), 1)  # type: ignore[arg-type]
        np.add.at(self.diabetes_by_group, (1, people["group"][adult]), cond["true_diabetes"][adult])  # type: ignore[arg-type]


def _share(numerator: float, denominator: float, rule: Rule) -> float | str | None:
    """A share published beside its counts: of their published (rounded) values."""
    return rule.share(int(numerator), int(denominator))


def _prevalence_row(
    counts: np.ndarray, reference: float, rule: Rule, **key: int | str
) -> dict[str, int | str | float | None]:
    """One breakdown row from the (denominator, recorded, true) counts of a cell."""
    n, rec, true = counts
    return {
        **key,
        "n": rule.count(int(n)),
        "recorded_prevalence": _share(rec, n, rule),
        "true_prevalence": _share(true, n, rule),
        "reference_prevalence": reference,
    }


def _condition_summary(tally: Tally, k: int, register: str, rule: Rule) -> dict[str, Any]:
    """Recorded and true prevalence of QOF register ``k`` overall, by decile and by region."""
    n, rec, true = tally.by_decile[k].sum(axis=1)
    return {
        "qof_register": register,
        "min_age": ref.QOF_MIN_AGE[register],
        "recorded_prevalence": _share(rec, n, rule),
        "true_prevalence": _share(true, n, rule),
        "reference_prevalence": ref.QOF_PREVALENCE_ENGLAND[register],
        "by_imd_decile": [
            _prevalence_row(
                tally.by_decile[k, :, d],
                ref.QOF_PREVALENCE_BY_DECILE[register][d],
                rule,
                imd_decile=d + 1,
            )
            for d in range(10)
        ],
        "by_region": [
            _prevalence_row(
                tally.by_region[k, :, r],
                ref.QOF_PREVALENCE_BY_REGION[register][r],
                rule,
                region=region,
            )
            for r, region in enumerate(REGIONS)
        ],
    }


def _ethnicity_by_region(tally: Tally, rule: Rule) -> list[dict[str, Any]]:
    """Recorded (incl. not recorded) and true broad ethnic mix per region vs Census 2021."""
    groups = (*ref.ETHNIC_GROUPS, "Not recorded")
    rows = []
    for r, region in enumerate(REGIONS):
        total = tally.ethnicity[r].sum()
        rows.append(
            {
                "region": region,
                "n": rule.count(int(total)),
                "recorded_share": {
                    g: _share(tally.ethnicity[r, i], total, rule) for i, g in enumerate(groups)
                },
                "true_share": {
                    g: _share(tally.true_ethnicity[r, i], total, rule)
                    for i, g in enumerate(ref.ETHNIC_GROUPS)
                },
                "reference_share": {
                    g: round(v / 100, 4)
                    for g, v in zip(ref.ETHNIC_GROUPS, ref.ETHNICITY_BY_REGION[region], strict=True)
                },
            }
        )
    return rows


def _age_by_region(tally: Tally, rule: Rule) -> list[dict[str, Any]]:
    """Age-band shares per region, with the Census 65+ share beside them."""
    rows = []
    for r, region in enumerate(REGIONS):
        total = tally.ages[r, 3]
        rows.append(
            {
                "region": region,
                "n": rule.count(int(total)),
                "share_0_14": _share(tally.ages[r, 0], total, rule),
                "share_15_64": _share(tally.ages[r, 1], total, rule),
                "share_65_plus": _share(tally.ages[r, 2], total, rule),
                "reference_share_65_plus": ref.AGE_65_PLUS_BY_REGION[region] / 100,
            }
        )
    return rows


def _diabetes_ratio(tally: Tally) -> dict[str, float | None]:
    """True diabetes prevalence (adults 17+) of each broad group relative to the White group
    (None where a group has no adults, or the White group no cases: a small ``only_icbs``)."""
    dm = tally.diabetes_by_group
    if not dm[1, 0]:
        return dict.fromkeys(ref.ETHNIC_GROUPS)
    return {
        g: (round(float(dm[1, i] / dm[0, i]) / float(dm[1, 0] / dm[0, 0]), 3) if dm[0, i] else None)
        for i, g in enumerate(ref.ETHNIC_GROUPS)
    }


def calibration_report(tally: Tally, *, bias: dict[str, float], rule: Rule) -> dict[str, Any]:
    """Synthetic vs QOF prevalence by decile and region, ethnicity and age mix by region."""
    conditions = {
        next(c for c, r in ref.CONDITION_REGISTER.items() if r == register): _condition_summary(
            tally, k, register, rule
        )
        for k, register in enumerate(ref.QOF_REGISTERS)
    }
    report = {
        "source": "synthetic",
        "bias": bias,
        "reference": "QOF 2019/20 via House of Commons Library (Open Parliament Licence v3.0); "
        "Census 2021 (ONS)",
        "conditions": conditions,
        "ethnicity_by_region": _ethnicity_by_region(tally, rule),
        "age_by_region": _age_by_region(tally, rule),
        "true_diabetes_ratio_to_white_17_plus": _diabetes_ratio(tally),
    }
    # checked against the contract model the report reads it through
    checked = SyntheticCalibration.model_validate(report)
    return checked.model_dump(mode="json", exclude_unset=True)
