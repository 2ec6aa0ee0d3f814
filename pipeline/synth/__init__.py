"""Stage ``synthesize``: a synthetic England that behaves like a GP + hospital extract.

Writes ``data/population/`` (what a real extract would hold: ``areas.parquet``,
``practices.parquet`` and the ICB-partitioned ``people/``, ``events/``, ``outcomes/`` of
:mod:`pipeline.partitions`), ``data/truth/`` (people, oracle, practices: what only a simulation
knows) and ``reports/synthetic_calibration.json``. With ``population.source: extract`` it validates
and copies a real extract instead and leaves ``data/truth/`` empty.

The units of work are the parts of each ICB (at most ``population.chunk_size`` people each),
one task each on ``params.engine`` (:mod:`pipeline.engine`), so memory stays flat with size;
each unit has its own seeded stream, so the same params give byte-identical files on either
engine. How the world is built, the planted biases and the sources of every embedded figure:
docs/synthetic_world.md.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import polars as pl

from pipeline import console, engine, io, seeds
from pipeline.config import Params, PopulationParams, TargetParams
from pipeline.contract import (
    INPUT_TABLES,
    OUTCOMES_SCHEMA,
    PEOPLE_SCHEMA,
    TRUTH_ORACLE_SCHEMA,
    TRUTH_PEOPLE_SCHEMA,
)
from pipeline.disclosure import Rule
from pipeline.engine import Engine
from pipeline.io import ROW_GROUP_SIZE, Paths, atomic_dir, write_json
from pipeline.partitions import PARTITIONED_TABLES, partition_path
from pipeline.synth.calibration import Calibration, Tally, calibration_report, fit_calibration
from pipeline.synth.coding import Coding, default_coding
from pipeline.synth.conditions import CONDITION_ORDER, draw_conditions, intersection_shifts
from pipeline.synth.events import care_rates, draw_counts, events_frame, expand_events
from pipeline.synth.geography import (
    Geography,
    area_ids,
    areas_frame,
    build_geography,
    practice_ids,
    practice_quality_frame,
    practices_frame,
)
from pipeline.synth.outcomes import (
    cohort_and_logit,
    history_summary,
    oracle_risk,
    target_true_need,
    true_need,
)
from pipeline.synth.people import SEX_CODES, draw_people
from pipeline.synth.reference import ETHNIC_GROUPS

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["Unit", "generate_chunk", "plan_units", "run", "write_unit"]

EPOCH = dt.date(1970, 1, 1)
TRUTH_PARTS: Final = {"truth_people": "people.parquet", "oracle": "oracle.parquet"}
"""Truth tables written per unit, then concatenated into one file each (``data/truth/``)."""
TRUTH_PARTS_DIR: Final = "parts"


def person_ids(index: np.ndarray) -> pl.Series:
    """Person index -> ``"P0000000001"`` (zero-padded so string order = numeric order)."""
    return ("P" + pl.Series("person_id", index + 1).cast(pl.String).str.zfill(10)).alias(
        "person_id"
    )


def _target_outcomes(
    name: str,
    target: TargetParams,
    arrays: tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]],
    ids: pl.Series,
    rng: np.random.Generator,
    *,
    intercept: float,
    access: float,
    gradient: np.ndarray | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One target's recorded outcome and oracle risk for the members of its cohort.

    ``arrays`` are the chunk's people, conditions and history summary; ``gradient`` the
    target's calibrated deprivation terms by age (none: no such term).
    """
    people, cond, history = arrays
    latent = rng.standard_normal(len(ids))
    cohort, eta = cohort_and_logit(
        target, people, cond, history, latent, access=access, gradient=gradient
    )
    risk = oracle_risk(intercept, eta, follow_up_months=target.follow_up_months)
    need = target_true_need(
        target.outcome,
        people,
        cond,
        history,
        latent,
        intercept=intercept,
        follow_up_months=target.follow_up_months,
        gradient=gradient,
    )
    value = rng.random(len(ids)) < risk
    members = np.flatnonzero(cohort)
    outcomes = pl.DataFrame(
        {"person_id": ids.gather(members), "target": name, "value": value[members]},
        schema=OUTCOMES_SCHEMA,
    )
    oracle = pl.DataFrame(
        {
            "person_id": ids.gather(members),
            "target": name,
            "oracle_risk": risk[members],
            "true_need": need[members],
        },
        schema=TRUTH_ORACLE_SCHEMA,
    )
    return outcomes, oracle


def _outcome_frames(
    targets: Mapping[str, TargetParams],
    calibration: Calibration,
    arrays: tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]],
    ids: pl.Series,
    rng: np.random.Generator,
    *,
    access: float,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``outcomes`` and truth ``oracle`` of every target (drawn in target-name order)."""
    frames = [
        _target_outcomes(
            name,
            targets[name],
            arrays,
            ids,
            rng,
            intercept=calibration.intercepts[name],
            access=access,
            gradient=calibration.gradients.get(name),
        )
        for name in sorted(targets)
    ]
    outcomes = pl.concat([outcome for outcome, _ in frames]).sort("person_id", "target")
    oracle = pl.concat([oracle for _, oracle in frames]).sort("person_id", "target")
    return outcomes, oracle


def people_frame(people: dict[str, np.ndarray], ids: pl.Series) -> pl.DataFrame:
    """The contract's ``people`` table of a chunk."""
    return pl.DataFrame(
        {
            "person_id": ids,
            "sex": np.asarray(SEX_CODES)[people["sex"]],
            "age": people["age"],
            "ethnicity": pl.Series(people["recorded_code"], dtype=pl.String).replace("", None),
            "area_id": area_ids(people["area"]),
            "practice_id": practice_ids(people["practice"]),
        },
        schema=PEOPLE_SCHEMA,
    )


def admission_gradient(
    targets: Mapping[str, TargetParams], calibration: Calibration
) -> np.ndarray | None:
    """The calibrated deprivation term by age of the first emergency-admission target (by name),
    or None when no target calibrates one."""
    names = sorted(name for name, t in targets.items() if t.outcome == "emergency_admission")
    return next((calibration.gradients[n] for n in names if n in calibration.gradients), None)


def truth_people_frame(
    people: dict[str, np.ndarray],
    cond: dict[str, np.ndarray],
    ids: pl.Series,
    *,
    gradient: np.ndarray | None = None,
) -> pl.DataFrame:
    """Truth: risk factors, true conditions and true need of each person of a chunk
    (``gradient``: the emergency-admission deprivation term by age, when a target calibrates one;
    so the generic need index is the 12-month emergency-admission need)."""
    true_columns = {f"true_{c}": cond[f"true_{c}"] for c in CONDITION_ORDER}
    n_true = np.sum([cond[f"true_{c}"] for c in CONDITION_ORDER], axis=0).astype(np.int8)
    return pl.DataFrame(
        {
            "person_id": ids,
            "smoker": cond["smoker"],
            "bmi": np.round(cond["bmi"], 2),
            "sbp": np.round(cond["sbp"], 1),
            "hba1c": np.round(cond["hba1c"], 1),
            **true_columns,
            "n_true_conditions": n_true,
            "true_need": true_need(people, cond, gradient=gradient),
        },
    ).select(pl.col(name).cast(dtype) for name, dtype in TRUTH_PEOPLE_SCHEMA.items())


def _draw_health(
    geo: Geography,
    index: np.ndarray,
    rng: np.random.Generator,
    *,
    calibration: Calibration,
    population: PopulationParams,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Demographics, conditions and yearly care-use counts of the people ``index``."""
    bias = population.bias
    people = draw_people(geo, index, rng, not_recorded_share=bias.ethnicity_not_recorded)
    inter = bias.intersectional
    if inter.recording or inter.access:  # no draws: the default world's stream is unchanged
        people |= intersection_shifts(
            people,
            ethnic_group=ETHNIC_GROUPS.index(inter.ethnicity_group),
            imd_quintile=inter.imd_quintile,
            recording=inter.recording,
            access=inter.access,
        )
    cond = draw_conditions(
        people, rng, offsets=calibration.offsets, under_recording=bias.under_recording
    )
    frailty = rng.gamma(3.0, 1.0 / 3.0, len(index))
    counts = draw_counts(
        care_rates(people, cond, frailty, access=bias.access),
        rng,
        history_years=population.history_years,
    )
    return people, cond, counts


def generate_chunk(
    geo: Geography,
    calibration: Calibration,
    start: int,
    stop: int,
    *,
    population: PopulationParams,
    targets: Mapping[str, TargetParams],
    chunk: int,
    seed: int,
    index_date: dt.date,
    coding: Coding | None = None,
) -> dict[str, Any]:
    """Generate people ``start..stop-1``: all their tables, as frames, plus raw arrays.

    Parameters
    ----------
    population, targets
        The ``population`` and ``targets`` sections of the params.
    chunk, seed
        The chunk number and root seed: together they seed the chunk's own stream.
    index_date
        Events are dated back from it.
    coding
        The codes events carry (:mod:`pipeline.synth.coding`); ``None``: the shipped codelists.

    Returns
    -------
    dict
        ``people``, ``events``, ``outcomes``, ``truth_people``, ``oracle`` (Polars frames, each in
        its write order) and ``arrays`` (people and conditions, for the calibration tally).
    """
    access = population.bias.access
    # The draws below share one stream: their order is part of the output.
    rng = seeds.rng("synthesize", "chunk", chunk, root=seed)
    index = np.arange(start, stop)
    people, cond, counts = _draw_health(
        geo, index, rng, calibration=calibration, population=population
    )
    ids = person_ids(index)
    outcomes, oracle = _outcome_frames(
        targets,
        calibration,
        (people, cond, history_summary(counts)),
        ids,
        rng,
        access=access,
    )
    coding = default_coding() if coding is None else coding
    events = expand_events(
        people,
        cond,
        counts,
        rng,
        history_years=population.history_years,
        access=access,
        coding=coding,
    )
    return {
        "people": people_frame(people, ids),
        "events": events_frame(events, ids, index_day=(index_date - EPOCH).days, coding=coding),
        "outcomes": outcomes,
        "oracle": oracle,
        "truth_people": truth_people_frame(
            people, cond, ids, gradient=admission_gradient(targets, calibration)
        ),
        "arrays": (people, cond),
    }


@dataclass(frozen=True)
class Unit:
    """One task of the stage: people ``start..stop-1``, part ``part`` of ICB ``icb_code``.

    ``number`` counts the units of the whole ``n_people`` world in person order and seeds the
    unit's stream, so a unit's files do not depend on the engine, the worker or
    ``population.only_icbs``.
    """

    number: int
    icb_code: str
    part: int
    start: int
    stop: int

    @property
    def partition(self) -> str:
        """Its relative path in each partitioned table (``pipeline.partitions``)."""
        return f"{self.icb_code}/part-{self.part:05d}.parquet"


def part_bounds(start: int, n: int, *, chunk_size: int) -> list[tuple[int, int]]:
    """``n`` people from ``start`` cut into the fewest parts of at most ``chunk_size``, as even
    as possible (the first ones one person larger).

    >>> part_bounds(10, 5, chunk_size=2)
    [(10, 12), (12, 14), (14, 15)]
    """
    k = -(-n // chunk_size)
    sizes = n // k + (np.arange(k) < n % k)
    ends = start + np.cumsum(sizes)
    return [(int(end - size), int(end)) for end, size in zip(ends, sizes, strict=True)]


def plan_units(
    geo: Geography, *, chunk_size: int, only_icbs: Collection[str] | None = None
) -> list[Unit]:
    """The units of work, in person order: each ICB (in code order) cut into parts of at most
    ``chunk_size`` people; only those of ``only_icbs`` when given (numbered as in the whole
    world)."""
    bounds = [
        (code, part_bounds(int(first), int(n), chunk_size=chunk_size))
        for code, first, n in zip(geo.icb_codes, geo.icb_start, geo.icb_people, strict=True)
    ]
    numbered = [
        (code, part, start, stop)
        for code, parts in bounds
        for part, (start, stop) in enumerate(parts)
    ]
    return [
        Unit(number, code, part, start, stop)
        for number, (code, part, start, stop) in enumerate(numbered)
        if only_icbs is None or code in only_icbs
    ]


def write_unit(
    unit: Unit,
    *,
    geo: Geography,
    calibration: Calibration,
    population: PopulationParams,
    targets: Mapping[str, TargetParams],
    seed: int,
    index_date: dt.date,
    population_dir: str,
    truth_parts_dir: str,
) -> Tally:
    """Generate one unit and write its files; return its calibration tally (a Dask task).

    Writes ``population_dir/<people|events|outcomes>/<unit.partition>`` and
    ``truth_parts_dir/<truth_people|oracle>/part-<unit.number>.parquet``.
    """
    frames = generate_chunk(
        geo,
        calibration,
        unit.start,
        unit.stop,
        population=population,
        targets=targets,
        chunk=unit.number,
        seed=seed,
        index_date=index_date,
    )
    for table in PARTITIONED_TABLES:
        path = partition_path(population_dir, table, unit.partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        frames[table].write_parquet(path, compression="zstd")
    for table in TRUTH_PARTS:
        path = Path(truth_parts_dir) / table / f"part-{unit.number:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frames[table].write_parquet(path, compression="zstd")
    tally = Tally()
    tally.add(*frames["arrays"])
    return tally


def _write_geography(
    geo: Geography,
    population_dir: Path,
    truth_dir: Path,
    *,
    only_icbs: Collection[str] | None,
) -> None:
    """The areas and practices (population) and practice quality (truth) tables: of every ICB,
    or only of ``only_icbs`` (so the extract is what those ICBs would hold)."""
    areas, practices = areas_frame(geo), practices_frame(geo)
    if only_icbs is not None:
        areas = areas.filter(pl.col("icb_code").is_in(list(only_icbs)))
        practices = practices.filter(pl.col("icb_code").is_in(list(only_icbs)))
    quality = practice_quality_frame(geo).join(
        practices.select("practice_id"), on="practice_id", how="semi", maintain_order="left"
    )
    areas.write_parquet(population_dir / "areas.parquet", compression="zstd")
    practices.write_parquet(population_dir / "practices.parquet", compression="zstd")
    quality.write_parquet(truth_dir / "practices.parquet", compression="zstd")


def concat_truth(truth_parts_dir: Path, truth_dir: Path) -> None:
    """Each truth table's unit parts, in unit (so person_id) order, streamed into one file
    ``truth_dir/<people|oracle>.parquet``; the parts are removed."""
    for table, name in TRUTH_PARTS.items():
        parts = sorted((truth_parts_dir / table).glob("part-*.parquet"))
        pl.scan_parquet(parts).sink_parquet(
            truth_dir / name,
            compression="zstd",
            row_group_size=ROW_GROUP_SIZE,
            maintain_order=True,
        )
    shutil.rmtree(truth_parts_dir)


def _broadcast(client: Client | None, **objects: object) -> dict[str, object]:
    """Objects every task reads (not collections): on Dask, scattered to every worker once
    rather than sent with each task (the geography of 57M people is ~1 MB)."""
    if client is None:
        return objects
    return {name: client.scatter(value, broadcast=True) for name, value in objects.items()}


def synthesize(
    population_dir: Path,
    truth_dir: Path,
    *,
    population: PopulationParams,
    targets: Mapping[str, TargetParams],
    seed: int,
    index_date: dt.date,
    rule: Rule,
    engine_name: Engine = "local",
    n_workers: int | None = None,
) -> dict[str, Any]:
    """Write every table into the given (temporary) folders, one task per unit on
    ``engine_name`` (a LocalCluster of ``n_workers``); return the calibration report (counts
    published by ``rule``)."""
    calibration = fit_calibration(
        seed=seed,
        area_size=population.area_size,
        practice_size=population.practice_size,
        history_years=population.history_years,
        not_recorded_share=population.bias.ethnicity_not_recorded,
        targets=targets,
    )
    geo = build_geography(
        population.n_people,
        area_size=population.area_size,
        practice_size=population.practice_size,
        rng=seeds.rng("synthesize", "geography", root=seed),
    )
    _write_geography(geo, population_dir, truth_dir, only_icbs=population.only_icbs)
    truth_parts_dir = truth_dir / TRUTH_PARTS_DIR
    with engine.connect(engine_name, n_workers=n_workers) as client:
        tallies = engine.map_partitions(
            write_unit,
            plan_units(geo, chunk_size=population.chunk_size, only_icbs=population.only_icbs),
            client=client,
            **_broadcast(client, geo=geo, calibration=calibration),
            population=population,
            targets=dict(targets),
            seed=seed,
            index_date=index_date,
            population_dir=str(population_dir),
            truth_parts_dir=str(truth_parts_dir),
        )
    concat_truth(truth_parts_dir, truth_dir)
    return calibration_report(Tally.total(tallies), bias=population.bias.model_dump(), rule=rule)


def copy_extract(extract_dir: Path, population_dir: Path) -> None:
    """Copy a validated extract, casting each column to the contract's dtype.

    A table stored as one file stays one file; a folder of parts is copied part by part
    (streaming, so an extract of any size fits in memory), each to the same relative path (an
    ICB-partitioned extract stays partitioned: ``events/<icb>/part-NNNNN.parquet``).
    """
    for table, schema in INPUT_TABLES.items():
        columns = [pl.col(name).cast(dtype) for name, dtype in schema.items()]
        single = extract_dir / f"{table}.parquet"
        if single.exists():
            pl.scan_parquet(single).select(columns).sink_parquet(
                population_dir / single.name, compression="zstd", row_group_size=ROW_GROUP_SIZE
            )
            continue
        for part in sorted((extract_dir / table).rglob("*.parquet")):
            target = population_dir / part.relative_to(extract_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            pl.scan_parquet(part).select(columns).sink_parquet(
                target, compression="zstd", row_group_size=ROW_GROUP_SIZE
            )


@contextmanager
def _output_dirs(paths: Paths) -> Iterator[tuple[Path, Path]]:
    """Fresh population and truth folders, swapped in atomically when the block succeeds."""
    with atomic_dir(paths.population) as population_dir, atomic_dir(paths.truth) as truth_dir:
        for folder in (population_dir, truth_dir):
            folder.chmod(0o755)  # mkdtemp makes 0700; the data folders are shared
        yield population_dir, truth_dir


def _import_extract(
    extract_dir: Path, paths: Paths, *, target_names: tuple[str, ...], index_date: dt.date
) -> dict[str, Any]:
    """Validate and copy a real extract (no truth); return its calibration-report stub."""
    from pipeline.contract import validate_population

    validate_population(extract_dir, target_names=target_names, index_date=index_date)
    with _output_dirs(paths) as (population_dir, _):
        copy_extract(extract_dir, population_dir)
    return {"source": "extract", "note": "real extract: no synthetic calibration, no truth"}


def run(params: Params, paths: Paths) -> None:
    """Generate (or import) the population, its truth and the calibration report."""
    pop = params.population
    if pop.source == "extract":
        extract_dir = Path(pop.extract_dir or "")
        report = _import_extract(
            extract_dir if extract_dir.is_absolute() else paths.root / extract_dir,
            paths,
            target_names=tuple(params.targets),
            index_date=params.index_date,
        )
    elif pop.source == "omop":
        from pipeline.omop import import_omop

        report = import_omop(pop, paths, index_date=params.index_date)
    else:
        with _output_dirs(paths) as (population_dir, truth_dir):
            report = synthesize(
                population_dir,
                truth_dir,
                population=pop,
                targets=params.targets,
                seed=params.seed,
                index_date=params.index_date,
                rule=params.disclosure,
                engine_name=params.engine,
                n_workers=params.dask_workers,
            )
    write_json(report, paths.reports / "synthetic_calibration.json")
    console.stage_done("synthesize", did=_did(params, paths))


def _did(params: Params, paths: Paths) -> str:
    """What the stage did, for its console line (people written)."""
    people = io.scan_table(paths.population, "people").select(pl.len()).collect().item()
    return f"{console.count(people)} people ({params.population.source})"
