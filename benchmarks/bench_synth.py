"""Benchmark: synthetic population generation speed and peak memory, on either engine.

Runs the ``synthesize`` stage (``python -m pipeline synthesize --root DIR``) in a child process on
a temporary project with the repository's params.yaml, ``population.n_people`` (and ``engine``)
overridden. Peak memory is that of the whole process tree (the stage and, on the ``dask`` engine,
its LocalCluster's workers and nannies), sampled as ``bench_scale.py`` samples it; the largest
single process (``ru_maxrss``) is printed beside it.

    python benchmarks/bench_synth.py                          # 1M people, local engine
    python benchmarks/bench_synth.py --people 10000000 --engines local,dask
    python benchmarks/bench_synth.py --validate               # also the contract check

Peer: Synthea (the best-known open synthetic patient generator) is reported at ~440 patients per
minute on 8 vCPUs (published figure; Synthea is a Java application and is not run here).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import run_stage

from pipeline import io
from pipeline.contract import validate_population

ROOT = Path(__file__).resolve().parents[1]
SYNTHEA_PATIENTS_PER_MINUTE = 440  # published figure, 8 vCPUs


def bench(n_people: int, *, engine: str, validate: bool, interval: float) -> dict[str, float]:
    """Generate ``n_people`` on ``engine`` in a child process; return wall time, counts, peaks."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["population"]["n_people"] = n_people
    params["population"]["source"] = "synthetic"
    params["engine"] = engine
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params))
        env = {key: value for key, value in os.environ.items() if key != "DASK_SCHEDULER_ADDRESS"}
        measured = run_stage(
            [sys.executable, "-m", "pipeline", "synthesize", "--root", tmp],
            cwd=ROOT,
            env=env,
            interval=interval,
        )
        population = Path(tmp) / "data" / "population"
        events = io.scan_table(population, "events").select(pl.len()).collect().item()
        parts = len(list((population / "people").rglob("*.parquet")))
        validate_seconds = float("nan")
        if validate:  # the contract check on the same folder (streaming; in this process)
            start = time.perf_counter()
            validate_population(
                population,
                target_names=tuple(params["targets"]),
                index_date=dt.date.fromisoformat(str(params["index_date"])),
            )
            validate_seconds = time.perf_counter() - start
    return {
        "people": n_people,
        "events": events,
        "partitions": parts,
        "seconds": measured.seconds,
        "validate_seconds": validate_seconds,
        "tree_peak_gb": measured.tree_peak / 1024**3,
        "largest_gb": measured.largest / 1024**3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--engines", default="local", help="comma-separated: local,dask")
    parser.add_argument("--validate", action="store_true", help="also time the contract check")
    parser.add_argument("--interval", type=float, default=0.2, help="RSS sampling (seconds)")
    args = parser.parse_args()
    print(
        f"{'engine':>6} {'people':>12} {'events':>13} {'parts':>5} {'seconds':>8} "
        f"{'people/s':>10} {'tree peak':>10} {'largest':>9}"
    )
    synthea_per_second = SYNTHEA_PATIENTS_PER_MINUTE / 60
    for n in args.people:
        for engine in args.engines.split(","):
            r = bench(n, engine=engine, validate=args.validate, interval=args.interval)
            rate = r["people"] / r["seconds"]
            print(
                f"{engine:>6} {r['people']:>12,} {r['events']:>13,} {r['partitions']:>5} "
                f"{r['seconds']:>8.1f} {rate:>10,.0f} {r['tree_peak_gb']:>7.2f} GB "
                f"{r['largest_gb']:>6.2f} GB  ({rate / synthea_per_second:,.0f}x Synthea's rate)",
                flush=True,
            )
            if args.validate:
                print(f"{'':>19} validate (contract check): {r['validate_seconds']:.1f} s")
    print(
        f"peer: Synthea ~{SYNTHEA_PATIENTS_PER_MINUTE} patients/min on 8 vCPUs "
        f"= {synthea_per_second:.1f} patients/s (published figure, not run here)"
    )


if __name__ == "__main__":
    main()
