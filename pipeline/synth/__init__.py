"""Stage ``synthesize``: a synthetic England that behaves like a GP + hospital extract.

Writes ``data/population/`` (areas, practices, people, events/part-NNNNN, outcomes: what a real
extract would hold), ``data/truth/`` (people, oracle, practices: what only a simulation knows) and
``reports/synthetic_calibration.json``. With ``population.source: extract`` it validates and copies
a real extract instead and leaves ``data/truth/`` empty.

People are generated in chunks of ``population.chunk_size`` so memory stays flat with size; each
chunk has its own seeded stream, so the same params give byte-identical files. How the world is
built, the planted biases and the sources of every embedded figure: docs/synthetic_world.md.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from rich.progress import Progress

from pipeline import console, seeds
from pipeline.config import Params, PopulationParams, TargetParams
from pipeline.contract import (
    INPUT_TABLES,
    OUTCOMES_SCHEMA,
    PEOPLE_SCHEMA,
    TRUTH_ORACLE_SCHEMA,
    TRUTH_PEOPLE_SCHEMA,
)
from pipeline.disclosure import Rule
from pipeline.io import ROW_GROUP_SIZE, Paths, atomic_dir, write_json
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

__all__ = ["generate_chunk", "run"]

EPOCH = dt.date(1970, 1, 1)


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


class _Appender:
    """Append chunks (already in key order) to one parquet file as row groups."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: pq.ParquetWriter | None = None

    def write(self, frame: pl.DataFrame) -> None:
        table = frame.to_arrow()
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _write_geography(geo: Geography, population_dir: Path, truth_dir: Path) -> None:
    areas_frame(geo).write_parquet(population_dir / "areas.parquet", compression="zstd")
    practices_frame(geo).write_parquet(population_dir / "practices.parquet", compression="zstd")
    practice_quality_frame(geo).write_parquet(truth_dir / "practices.parquet", compression="zstd")


def _write_chunks(
    make_chunk: Callable[..., dict[str, Any]],
    bounds: list[tuple[int, int]],
    population_dir: Path,
    truth_dir: Path,
) -> Tally:
    """Generate and append each chunk ``(start, stop)``; return the calibration tally."""
    (population_dir / "events").mkdir()
    writers = {
        "people": _Appender(population_dir / "people.parquet"),
        "outcomes": _Appender(population_dir / "outcomes.parquet"),
        "truth_people": _Appender(truth_dir / "people.parquet"),
        "oracle": _Appender(truth_dir / "oracle.parquet"),
    }
    tally = Tally()
    try:
        with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
            task = progress.add_task("synthesize", total=len(bounds))
            for chunk, (start, stop) in enumerate(bounds):
                frames = make_chunk(start, stop, chunk=chunk)
                for name, writer in writers.items():
                    writer.write(frames[name])
                frames["events"].write_parquet(
                    population_dir / "events" / f"part-{chunk:05d}.parquet", compression="zstd"
                )
                tally.add(*frames["arrays"])
                progress.advance(task)
    finally:
        for writer in writers.values():
            writer.close()
    return tally


def synthesize(
    population_dir: Path,
    truth_dir: Path,
    *,
    population: PopulationParams,
    targets: Mapping[str, TargetParams],
    seed: int,
    index_date: dt.date,
    rule: Rule,
) -> dict[str, Any]:
    """Write every table into the given (temporary) folders; return the calibration report
    (counts published by ``rule``)."""
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
    _write_geography(geo, population_dir, truth_dir)
    make_chunk = partial(
        generate_chunk,
        geo,
        calibration,
        population=population,
        targets=targets,
        seed=seed,
        index_date=index_date,
    )
    starts = range(0, population.n_people, population.chunk_size)
    bounds = [(start, min(start + population.chunk_size, population.n_people)) for start in starts]
    tally = _write_chunks(make_chunk, bounds, population_dir, truth_dir)
    return calibration_report(tally, bias=population.bias.model_dump(), rule=rule)


def copy_extract(extract_dir: Path, population_dir: Path) -> None:
    """Copy a validated extract, casting each column to the contract's dtype.

    A table stored as one file stays one file; a folder of parts is copied part by part
    (streaming), so an extract of any size fits in memory.
    """
    for table, schema in INPUT_TABLES.items():
        columns = [pl.col(name).cast(dtype) for name, dtype in schema.items()]
        single = extract_dir / f"{table}.parquet"
        if single.exists():
            pl.scan_parquet(single).select(columns).sink_parquet(
                population_dir / single.name, compression="zstd", row_group_size=ROW_GROUP_SIZE
            )
            continue
        (population_dir / table).mkdir()
        for k, part in enumerate(sorted((extract_dir / table).rglob("*.parquet"))):
            pl.scan_parquet(part).select(columns).sink_parquet(
                population_dir / table / f"part-{k:05d}.parquet",
                compression="zstd",
                row_group_size=ROW_GROUP_SIZE,
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
            )
    write_json(report, paths.reports / "synthetic_calibration.json")
    console.stage_done("synthesize", did=_did(params, paths))


def _did(params: Params, paths: Paths) -> str:
    """What the stage did, for its console line (people written)."""
    people = pl.scan_parquet(paths.population / "people.parquet").select(pl.len()).collect().item()
    return f"{console.count(people)} people ({params.population.source})"
