"""Demographics: sex, age (mix by region and deprivation) and ethnicity (true and recorded).

See docs/synthetic_world.md#people.
"""

from __future__ import annotations

from functools import cache
from typing import Final

import numpy as np

from pipeline.contract import REGIONS
from pipeline.synth import reference as ref
from pipeline.synth.geography import Geography, locate

SEX_CODES: Final = ("F", "M", "U")
SEX_SHARES: Final = (0.5065, 0.4930, 0.0005)
DECILE_AGE_TILT: Final = 0.12
"""Deprived areas are younger: log-weight of band age per 40 years, from decile 10 to 1."""
DECILE_ETHNIC_TILT: Final = 0.45
"""Ethnic minority groups live more often in deprived areas: log-odds from decile 10 to 1."""

# Relative chance of "ethnicity not recorded" (OpenSAFELY: recording is patchier in Mixed and
# Other groups, younger adults, men and poorly recording practices).
NOT_RECORDED_BY_GROUP: Final = (0.85, 1.6, 1.0, 1.25, 1.9)  # White, Mixed, Asian, Black, Other
NOT_RECORDED_BY_QUALITY: Final = (0.75, 1.0, 1.45)  # practice high, medium, low
NOT_RECORDED_CODES_OR_EMPTY: Final = ("Z", "99", "")
"""Z not stated, 99 not known, "" no code at all (written as null)."""
NOT_RECORDED_CODE_SHARES: Final = (0.45, 0.45, 0.10)

_BAND_MID = np.asarray(ref.AGE_BAND_STARTS, float) + 2.5
_BAND_SHARES = np.asarray(ref.AGE_BAND_SHARES) / sum(ref.AGE_BAND_SHARES)


def _band_weights(tilt: float) -> np.ndarray:
    weights = _BAND_SHARES * np.exp(tilt * (_BAND_MID - 40.0) / 40.0)
    return weights / weights.sum()


@cache
def age_band_table() -> np.ndarray:
    """P(age band | region, decile): England's bands tilted to each region's 65+ share.

    The regional tilt is solved (bisection) with the region's own decile mix, so the deprived-
    areas-are-younger tilt does not move the regional 65+ share off its census value.
    """
    table = np.zeros((len(REGIONS), 10, len(_BAND_MID)))
    deprivation = (np.arange(1, 11) - 5.5) / 4.5  # -1 most deprived .. +1 least
    old = _BAND_MID > 65
    for r, region in enumerate(REGIONS):
        target = ref.AGE_65_PLUS_BY_REGION[region] / 100.0
        mix = np.asarray(ref.LSOAS_BY_REGION_DECILE[region], float)
        mix /= mix.sum()
        low, high = -3.0, 3.0
        for _ in range(60):  # bisection on one scalar per region
            beta = (low + high) / 2
            share = sum(
                mix[d] * _band_weights(beta + DECILE_AGE_TILT * deprivation[d])[old].sum()
                for d in range(10)
            )
            low, high = (beta, high) if share < target else (low, beta)
        for d in range(10):
            table[r, d] = _band_weights((low + high) / 2 + DECILE_AGE_TILT * deprivation[d])
    return table


@cache
def ethnicity_table() -> np.ndarray:
    """P(broad group | region, decile): Census 2021 regional mix, minorities tilted to deprived."""
    table = np.zeros((len(REGIONS), 10, len(ref.ETHNIC_GROUPS)))
    multiplier = np.exp(DECILE_ETHNIC_TILT * (5.5 - np.arange(1, 11)) / 4.5)
    for r, region in enumerate(REGIONS):
        shares = np.asarray(ref.ETHNICITY_BY_REGION[region]) / sum(ref.ETHNICITY_BY_REGION[region])
        deciles = np.asarray(ref.LSOAS_BY_REGION_DECILE[region], float)
        mean_multiplier = (deciles * multiplier).sum() / deciles.sum()
        for d in range(10):
            minority = shares[1:] * multiplier[d] / mean_multiplier
            minority *= min(1.0, 0.98 / minority.sum())
            table[r, d] = np.concatenate([[1.0 - minority.sum()], minority])
    return table


def _draw_categorical(cumulative: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of a (n, k) cumulative probability matrix."""
    u = rng.random((cumulative.shape[0], 1))
    return np.minimum((u > cumulative).sum(axis=1), cumulative.shape[1] - 1)


def _draw_age(cell: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Age in years: a band from the (region, decile) cell's mix, then a year within it."""
    bands = _draw_categorical(np.cumsum(age_band_table().reshape(-1, len(_BAND_MID)), 1)[cell], rng)
    starts = np.asarray(ref.AGE_BAND_STARTS)[bands]
    width = np.where(starts >= 90, 15, 5)
    return (
        starts + np.floor(rng.random(len(cell)) ** np.where(starts >= 90, 1.8, 1.0) * width)
    ).astype(np.int16)


@cache
def _ethnic_code_table() -> tuple[np.ndarray, np.ndarray]:
    """P(NHS ethnic code | broad group) and the codes, one row per broad group."""
    code_table = np.zeros((5, 5))
    code_names = np.full((5, 5), "", dtype="<U2")
    for g, name in enumerate(ref.ETHNIC_GROUPS):
        for k, (code, share) in enumerate(ref.ETHNIC_CODES[name]):
            code_table[g, k] = share
            code_names[g, k] = code
    code_table /= code_table.sum(axis=1, keepdims=True)
    return code_table, code_names


def _draw_ethnic_code(group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The true NHS ethnic category code within each person's broad group."""
    code_table, code_names = _ethnic_code_table()
    sub = _draw_categorical(np.cumsum(code_table, 1)[group], rng)
    return code_names[group, sub]


def _draw_not_recorded(
    group: np.ndarray,
    quality: np.ndarray,
    age: np.ndarray,
    sex: np.ndarray,
    rng: np.random.Generator,
    *,
    not_recorded_share: float,
) -> np.ndarray:
    """Whether a person's ethnicity is missing from the record (patchier in some groups)."""
    relative = (
        np.asarray(NOT_RECORDED_BY_GROUP)[group]
        * np.asarray(NOT_RECORDED_BY_QUALITY)[quality]
        * np.select([age < 18, age < 40, age < 65], [1.3, 1.25, 0.95], 0.7)
        * np.where(sex == 1, 1.15, 1.0)
    )
    # The relative chances above average ~1.0 over England (checked: 13.6-15.3% at share 0.15).
    mean_relative = 1.0
    return rng.random(len(group)) < np.clip(not_recorded_share * relative / mean_relative, 0, 0.95)


def draw_people(
    geo: Geography,
    person_index: np.ndarray,
    rng: np.random.Generator,
    *,
    not_recorded_share: float,
) -> dict[str, np.ndarray]:
    """Demographics for a range of people.

    Returns
    -------
    dict
        person_index, area, practice, region, icb, decile, rural, quality (practice recording
        level), sex (index into SEX_CODES), age, group (true broad group index), ethnic_code
        (true NHS code), recorded_code (NHS code as recorded; "" = null, no code at all).
    """
    n = len(person_index)
    area, practice = locate(geo, person_index)
    region = geo.area_region[area]
    decile = geo.area_decile[area].astype(np.int64)
    cell = region * 10 + (decile - 1)
    quality = geo.practice_quality[practice]

    sex = rng.choice(len(SEX_CODES), size=n, p=SEX_SHARES).astype(np.int8)
    age = _draw_age(cell, rng)
    group = _draw_categorical(np.cumsum(ethnicity_table().reshape(-1, 5), 1)[cell], rng)
    ethnic_code = _draw_ethnic_code(group, rng)
    not_recorded = _draw_not_recorded(
        group, quality, age, sex, rng, not_recorded_share=not_recorded_share
    )
    which = rng.choice(3, size=n, p=NOT_RECORDED_CODE_SHARES)
    recorded = ethnic_code.copy()
    # Fixed-width strings, never object arrays ("" stands for null until the frame is built).
    recorded[not_recorded] = np.asarray(NOT_RECORDED_CODES_OR_EMPTY)[which[not_recorded]]
    return {
        "person_index": person_index,
        "area": area,
        "practice": practice,
        "region": region,
        "icb": geo.area_icb[area],
        "decile": decile,
        "rural": geo.area_rural[area],
        "quality": quality,
        "sex": sex,
        "age": age,
        "group": group,
        "ethnic_code": ethnic_code,
        "recorded_code": recorded,
        "not_recorded": not_recorded,
    }
