"""Areas (LSOA-like), ICBs and GP practices, and the layout of people across them.

People are laid out in geographic order: person ``i`` lives in the area whose cumulative size
first exceeds ``i``, so a chunk of people is just an index range and needs no global table
(docs/synthetic_world.md#geography).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import polars as pl

from pipeline.contract import AREAS_SCHEMA, REGIONS
from pipeline.synth import reference as ref

RECORDING_QUALITY_LEVELS: Final = ("high", "medium", "low")
RECORDING_QUALITY_SHARES: Final = (0.30, 0.45, 0.25)
RECORDING_QUALITY_GAP: Final = (0.0, 0.5, 1.0)
"""Practice recording-quality level -> the ``Q`` term of the planted biases (0 best, 1 worst)."""

# Practice list sizes (docs/synthetic_world.md#practices): log-normal with sigma 0.63, fitted to
# NHS Digital's "Patients Registered at a GP Practice" July 2020 spotlight (2.9% of practices
# under 2,000 patients, 3.9% over 20,000; 6,743 practices), its mean set by
# ``population.practice_size``. Below full scale every practice of an ICB shrinks by the same
# factor, so an ICB keeps at least MIN_PRACTICES_PER_ICB practices.
LIST_SIZE_SIGMA: Final = 0.63
LIST_SIZE_RANGE: Final = (1_000.0, 40_000.0)
MIN_PRACTICES_PER_ICB: Final = 20
MIN_PRACTICE_PEOPLE: Final = 50
"""Fewer practices in an ICB than MIN_PRACTICES_PER_ICB only when they would hold fewer people."""


@dataclass(frozen=True)
class Geography:
    """Areas and practices, with the index ranges of the people living in each."""

    area_end: np.ndarray  # cumulative people per area (exclusive end index)
    area_region: np.ndarray  # region index (contract.REGIONS order)
    area_icb: np.ndarray  # ICB index (icb_codes order)
    area_decile: np.ndarray  # IMD decile 1..10
    area_rural: np.ndarray  # bool
    icb_start: np.ndarray  # first person index of each ICB
    icb_people: np.ndarray  # people per ICB
    icb_practices: np.ndarray  # practices per ICB
    practice_end: np.ndarray  # cumulative people per practice (exclusive end index)
    practice_quality: np.ndarray  # recording-quality level index per practice
    icb_codes: tuple[str, ...]
    icb_names: tuple[str, ...]
    icb_region: np.ndarray

    @property
    def n_people(self) -> int:
        return int(self.area_end[-1])


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` (Hamilton's method)."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    short = total - counts.sum()
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


@dataclass(frozen=True)
class _Icbs:
    codes: tuple[str, ...]
    names: tuple[str, ...]
    region: np.ndarray  # region index (contract.REGIONS order)
    weight: np.ndarray  # share of England's people


def _icb_table() -> _Icbs:
    """The 42 ICBs in code order: region shares follow LSOAs per region, ICB shares approximate
    populations.

    Code order is the order people are numbered in, so the ICB partitions of the population
    (``data/population/people/<icb_code>/``, which sort by code) hold ascending person ids.
    """
    rows: list[tuple[str, str, int, float]] = []
    for region_index, region_name in enumerate(REGIONS):
        region_share = sum(ref.LSOAS_BY_REGION_DECILE[region_name])
        icbs = ref.ICBS[region_name]
        total = sum(pop for _, _, pop in icbs)
        rows += [(code, name, region_index, region_share * pop / total) for code, name, pop in icbs]
    codes, names, region, weight = zip(*sorted(rows), strict=True)
    return _Icbs(codes, names, np.asarray(region, dtype=np.int64), np.asarray(weight))


def _area_sizes(icb_people: np.ndarray, area_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Split each ICB into areas of ~``area_size`` people (at least one per ICB).

    Returns the ICB index and the number of residents of each area.
    """
    icb_areas = np.maximum(1, np.rint(icb_people / area_size).astype(np.int64))
    area_icb = np.repeat(np.arange(len(icb_people)), icb_areas)
    sizes = np.concatenate(
        [
            _largest_remainder(int(n), np.ones(int(k)))
            for n, k in zip(icb_people, icb_areas, strict=True)
        ]
    )
    return area_icb, sizes


def _area_deciles(area_region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """IMD deciles: exact regional quotas (largest remainder), randomly placed within the region."""
    area_decile = np.zeros(len(area_region), dtype=np.int8)
    for region_index, region in enumerate(REGIONS):
        members = np.flatnonzero(area_region == region_index)
        quota = _largest_remainder(
            len(members), np.asarray(ref.LSOAS_BY_REGION_DECILE[region], float)
        )
        deciles = np.repeat(np.arange(1, 11, dtype=np.int8), quota)
        area_decile[members] = rng.permutation(deciles)
    return area_decile


def _area_rural(
    area_region: np.ndarray, area_decile: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Rural areas: the regional share, tilted towards less deprived deciles."""
    tilt = 0.4 + 0.13 * (area_decile - 1)
    rural_share = np.asarray([ref.RURAL_SHARE[r] for r in REGIONS])[area_region]
    region_tilt = np.bincount(area_region, weights=tilt, minlength=len(REGIONS)) / np.maximum(
        np.bincount(area_region, minlength=len(REGIONS)), 1
    )
    p_rural = np.clip(rural_share * tilt / region_tilt[area_region], 0.0, 0.9)
    return rng.random(len(area_region)) < p_rural


def _practice_quality(
    icb_region: np.ndarray, icb_practices: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Recording quality per practice: national shares met within every region (quotas, randomly
    placed), so a region's recorded prevalence is not steered by a handful of practices at small
    sizes."""
    practice_region = np.repeat(icb_region, icb_practices)
    practice_quality = np.zeros(len(practice_region), dtype=np.int8)
    for region_index in range(len(REGIONS)):
        members = np.flatnonzero(practice_region == region_index)
        quota = _largest_remainder(len(members), np.asarray(RECORDING_QUALITY_SHARES))
        levels = np.repeat(np.arange(len(RECORDING_QUALITY_LEVELS), dtype=np.int8), quota)
        practice_quality[members] = rng.permutation(levels)
    return practice_quality


def _starts(sizes: np.ndarray) -> np.ndarray:
    """First index of each run of ``sizes`` consecutive items."""
    return np.concatenate([[0], np.cumsum(sizes)[:-1]])


def practices_per_icb(icb_people: np.ndarray, *, practice_size: int) -> np.ndarray:
    """Practices in each ICB: one per ``practice_size`` people at full scale, at least
    :data:`MIN_PRACTICES_PER_ICB` below it (as long as each keeps :data:`MIN_PRACTICE_PEOPLE`).

    >>> practices_per_icb(np.array([4_000, 400_000, 600]), practice_size=8_000)
    array([20, 50, 12])
    """
    wanted = np.maximum(MIN_PRACTICES_PER_ICB, np.rint(icb_people / practice_size))
    room = np.maximum(1, icb_people // MIN_PRACTICE_PEOPLE)
    return np.minimum(wanted, room).astype(np.int64)


def practice_sizes(
    icb_people: np.ndarray,
    icb_practices: np.ndarray,
    rng: np.random.Generator,
    *,
    practice_size: int,
) -> np.ndarray:
    """People per practice, ICB by ICB: England's list-size distribution (log-normal, mean
    ``practice_size``, clipped to :data:`LIST_SIZE_RANGE`), every list of an ICB scaled by the
    same factor so the ICB's practices hold exactly its people."""
    median = practice_size * np.exp(-(LIST_SIZE_SIGMA**2) / 2)
    drawn = np.clip(
        rng.lognormal(np.log(median), LIST_SIZE_SIGMA, int(icb_practices.sum())), *LIST_SIZE_RANGE
    )
    bounds = np.cumsum(icb_practices)[:-1]
    return np.concatenate(
        [  # one person each first: no practice is empty
            1 + _largest_remainder(int(n) - len(weights), weights)
            for n, weights in zip(icb_people, np.split(drawn, bounds), strict=True)
        ]
    )


def build_geography(
    n_people: int, *, area_size: int, practice_size: int, rng: np.random.Generator
) -> Geography:
    """Allocate people to the 42 ICBs, areas and practices.

    Region shares follow the number of LSOAs per region (reference lookup); ICB shares within a
    region follow approximate ICB populations; each region's IMD decile mix follows its real one.

    Parameters
    ----------
    n_people
        Population size.
    area_size, practice_size
        Target residents per area and registered patients per practice.
    rng
        Seeded generator.
    """
    icbs = _icb_table()
    icb_people = _largest_remainder(n_people, icbs.weight)
    if (icb_people < 1).any():
        raise ValueError("population too small to place at least one person in every ICB")
    area_icb, area_people = _area_sizes(icb_people, area_size)
    area_region = icbs.region[area_icb]
    area_decile = _area_deciles(area_region, rng)
    area_rural = _area_rural(area_region, area_decile, rng)
    icb_practices = practices_per_icb(icb_people, practice_size=practice_size)
    sizes = practice_sizes(icb_people, icb_practices, rng, practice_size=practice_size)
    return Geography(
        area_end=np.cumsum(area_people),
        area_region=area_region,
        area_icb=area_icb,
        area_decile=area_decile,
        area_rural=area_rural,
        icb_start=_starts(icb_people),
        icb_people=icb_people,
        icb_practices=icb_practices,
        practice_end=np.cumsum(sizes),
        practice_quality=_practice_quality(icbs.region, icb_practices, rng),
        icb_codes=icbs.codes,
        icb_names=icbs.names,
        icb_region=icbs.region,
    )


def area_ids(index: np.ndarray) -> pl.Series:
    """Area index -> identifier like ``"A0000001"`` (zero-padded so string order = index order)."""
    digits = pl.Series("area_id", index + 1).cast(pl.String).str.zfill(7)
    return ("A" + digits).alias("area_id")


def practice_ids(index: np.ndarray) -> pl.Series:
    """Practice index -> identifier like ``"GP000001"``."""
    digits = pl.Series("practice_id", index + 1).cast(pl.String).str.zfill(6)
    return ("GP" + digits).alias("practice_id")


def locate(geo: Geography, person_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area and practice index of each person (a practice covers a contiguous run of people of
    one ICB, so its patients live in neighbouring areas)."""
    area = np.searchsorted(geo.area_end, person_index, side="right")
    practice = np.searchsorted(geo.practice_end, person_index, side="right")
    return area, practice


def areas_frame(geo: Geography) -> pl.DataFrame:
    """The ``areas`` table of the data contract."""
    index = np.arange(len(geo.area_icb))
    return pl.DataFrame(
        {
            "area_id": area_ids(index),
            "icb_code": np.asarray(geo.icb_codes)[geo.area_icb],
            "icb_name": np.asarray(geo.icb_names)[geo.area_icb],
            "region": np.asarray(REGIONS)[geo.area_region],
            "imd_decile": geo.area_decile,
            "rural_urban": np.where(geo.area_rural, "rural", "urban"),
        },
        schema=AREAS_SCHEMA,
    )


def practices_frame(geo: Geography) -> pl.DataFrame:
    """The ``practices`` table (contract columns only)."""
    index = np.arange(len(geo.practice_quality))
    icb = np.repeat(np.arange(len(geo.icb_codes)), geo.icb_practices)
    return pl.DataFrame(
        {"practice_id": practice_ids(index), "icb_code": np.asarray(geo.icb_codes)[icb]}
    )


def practice_quality_frame(geo: Geography) -> pl.DataFrame:
    """Truth: each practice's recording-quality level (synthetic data only)."""
    index = np.arange(len(geo.practice_quality))
    return pl.DataFrame(
        {
            "practice_id": practice_ids(index),
            "recording_quality": np.asarray(RECORDING_QUALITY_LEVELS)[geo.practice_quality],
        }
    )
