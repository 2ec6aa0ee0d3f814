"""Stage ``synthesize``: a synthetic England that behaves like a GP + hospital extract.

Writes ``data/population/`` (areas, practices, people, events/part-NNNNN, outcomes: what a real
extract would hold), ``data/truth/`` (people, oracle, practices: what only a simulation knows) and
``reports/synthetic_calibration.json``. With ``population.source: extract`` it validates and copies
a real extract instead and leaves ``data/truth/`` empty.

People are generated in chunks of ``population.chunk_size`` so memory stays flat with size; each
chunk has its own seeded stream, so the same params give byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from rich.progress import Progress

from pipeline import seeds
from pipeline.config import Params
from pipeline.contract import (
    INPUT_TABLES,
    OUTCOMES_SCHEMA,
    PEOPLE_SCHEMA,
    TRUTH_ORACLE_SCHEMA,
    TRUTH_PEOPLE_SCHEMA,
)
from pipeline.io import ROW_GROUP_SIZE, Paths, atomic_dir, write_json
from pipeline.synth.calibration import Calibration, Tally, calibration_report, fit_calibration
from pipeline.synth.conditions import CONDITION_ORDER, draw_conditions
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
from pipeline.synth.outcomes import cohort_and_logit, history_summary, oracle_risk, true_need
from pipeline.synth.people import SEX_CODES, draw_people

__all__ = ["generate_chunk", "run"]

EPOCH = dt.date(1970, 1, 1)


def person_ids(index: np.ndarray) -> pl.Series:
    """Person index -> ``"P0000000001"`` (zero-padded so string order = numeric order)."""
    return ("P" + pl.Series("person_id", index + 1).cast(pl.String).str.zfill(10)).alias(
        "person_id"
    )


def generate_chunk(
    params: Params,
    geo: Geography,
    calibration: Calibration,
    start: int,
    stop: int,
    *,
    chunk: int,
) -> dict[str, Any]:
    """Generate people ``start..stop-1``: all their tables, as frames, plus raw arrays.

    Returns
    -------
    dict
        ``people``, ``events``, ``outcomes``, ``truth_people``, ``oracle`` (Polars frames, each in
        its write order) and ``arrays`` (people and conditions, for the calibration tally).
    """
    pop = params.population
    rng = seeds.rng("synthesize", "chunk", chunk, root=params.seed)
    index = np.arange(start, stop)
    people = draw_people(geo, index, rng, not_recorded_share=pop.bias.ethnicity_not_recorded)
    cond = draw_conditions(
        people, rng, offsets=calibration.offsets, under_recording=pop.bias.under_recording
    )
    frailty = rng.gamma(3.0, 1.0 / 3.0, len(index))
    counts = draw_counts(
        care_rates(people, cond, frailty, access=pop.bias.access),
        rng,
        history_years=pop.history_years,
    )
    history = history_summary(counts)
    ids = person_ids(index)

    outcome_frames, oracle_frames = [], []
    for name in sorted(params.targets):
        target = params.targets[name]
        cohort, eta = cohort_and_logit(
            target, people, cond, history, rng.standard_normal(len(index)), access=pop.bias.access
        )
        risk = oracle_risk(
            calibration.intercepts[name], eta, follow_up_months=target.follow_up_months
        )
        value = rng.random(len(index)) < risk
        members = np.flatnonzero(cohort)
        outcome_frames.append(
            pl.DataFrame(
                {"person_id": ids.gather(members), "target": name, "value": value[members]},
                schema=OUTCOMES_SCHEMA,
            )
        )
        oracle_frames.append(
            pl.DataFrame(
                {"person_id": ids.gather(members), "target": name, "oracle_risk": risk[members]},
                schema=TRUTH_ORACLE_SCHEMA,
            )
        )

    events = expand_events(
        people, cond, counts, rng, history_years=pop.history_years, access=pop.bias.access
    )
    index_day = (params.index_date - EPOCH).days
    people_frame = pl.DataFrame(
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
    true_columns = {f"true_{c}": cond[f"true_{c}"] for c in CONDITION_ORDER}
    n_true = np.sum([cond[f"true_{c}"] for c in CONDITION_ORDER], axis=0).astype(np.int8)
    truth_people = pl.DataFrame(
        {
            "person_id": ids,
            "smoker": cond["smoker"],
            "bmi": np.round(cond["bmi"], 2),
            "sbp": np.round(cond["sbp"], 1),
            "hba1c": np.round(cond["hba1c"], 1),
            **true_columns,
            "n_true_conditions": n_true,
            "true_need": true_need(people, cond),
        },
    ).select(pl.col(name).cast(dtype) for name, dtype in TRUTH_PEOPLE_SCHEMA.items())
    return {
        "people": people_frame,
        "events": events_frame(events, ids, index_day=index_day),
        "outcomes": pl.concat(outcome_frames).sort("person_id", "target"),
        "oracle": pl.concat(oracle_frames).sort("person_id", "target"),
        "truth_people": truth_people,
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


def synthesize(params: Params, population_dir: Path, truth_dir: Path) -> dict[str, Any]:
    """Write every table into the given (temporary) folders; return the calibration report."""
    pop = params.population
    calibration = fit_calibration(
        seed=params.seed,
        area_size=pop.area_size,
        practice_size=pop.practice_size,
        history_years=pop.history_years,
        not_recorded_share=pop.bias.ethnicity_not_recorded,
        targets=dict(params.targets),
    )
    geo = build_geography(
        pop.n_people,
        area_size=pop.area_size,
        practice_size=pop.practice_size,
        rng=seeds.rng("synthesize", "geography", root=params.seed),
    )
    areas_frame(geo).write_parquet(population_dir / "areas.parquet", compression="zstd")
    practices_frame(geo).write_parquet(population_dir / "practices.parquet", compression="zstd")
    practice_quality_frame(geo).write_parquet(truth_dir / "practices.parquet", compression="zstd")
    (population_dir / "events").mkdir()
    writers = {
        "people": _Appender(population_dir / "people.parquet"),
        "outcomes": _Appender(population_dir / "outcomes.parquet"),
        "truth_people": _Appender(truth_dir / "people.parquet"),
        "oracle": _Appender(truth_dir / "oracle.parquet"),
    }
    tally = Tally()
    starts = list(range(0, pop.n_people, pop.chunk_size))
    try:
        with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
            task = progress.add_task("synthesize", total=len(starts))
            for chunk, start in enumerate(starts):
                stop = min(start + pop.chunk_size, pop.n_people)
                frames = generate_chunk(params, geo, calibration, start, stop, chunk=chunk)
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
    return calibration_report(tally, bias=pop.bias.model_dump())


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


def run(params: Params, paths: Paths) -> None:
    """Generate (or import) the population, its truth and the calibration report."""
    pop = params.population
    if pop.source == "extract":
        from pipeline.contract import validate_population

        extract_dir = Path(pop.extract_dir or "")
        if not extract_dir.is_absolute():
            extract_dir = paths.root / extract_dir
        validate_population(
            extract_dir, target_names=tuple(params.targets), index_date=params.index_date
        )
        with atomic_dir(paths.population) as population_dir, atomic_dir(paths.truth) as truth_dir:
            for folder in (population_dir, truth_dir):
                folder.chmod(0o755)
            copy_extract(extract_dir, population_dir)
        write_json(
            {"source": "extract", "note": "real extract: no synthetic calibration, no truth"},
            paths.reports / "synthetic_calibration.json",
        )
        return
    with atomic_dir(paths.population) as population_dir, atomic_dir(paths.truth) as truth_dir:
        for folder in (population_dir, truth_dir):
            folder.chmod(0o755)  # mkdtemp makes 0700; the data folders are shared
        report = synthesize(params, population_dir, truth_dir)
    write_json(report, paths.reports / "synthetic_calibration.json")
