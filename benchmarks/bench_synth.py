"""Benchmark: synthetic population generation speed and peak memory.

Runs ``pipeline.synth.run`` in a child process (so its peak RSS is measured on its own) on a
temporary project with the repository's params.yaml, ``population.n_people`` overridden.

    python benchmarks/bench_synth.py                 # 1M people
    python benchmarks/bench_synth.py --ten-million   # also 10M people (~5-10 min, ~40 GB disk-free)
    python benchmarks/bench_synth.py --people 200000

Peer: Synthea (the best-known open synthetic patient generator) is reported at ~440 patients per
minute on 8 vCPUs (published figure; Synthea is a Java application and is not run here).
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml

from pipeline.contract import validate_population

ROOT = Path(__file__).resolve().parents[1]
SYNTHEA_PATIENTS_PER_MINUTE = 440  # published figure, 8 vCPUs

CHILD = """
import sys
from pipeline.config import load_params
from pipeline.io import Paths
from pipeline.synth import run
root = sys.argv[1]
run(load_params(root + "/params.yaml"), Paths.at(root))
"""


def bench(n_people: int) -> dict[str, float]:
    """Generate ``n_people`` in a child process; return wall time, counts and peak RSS."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["population"]["n_people"] = n_people
    params["population"]["source"] = "synthetic"
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params))
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", CHILD, tmp], check=True, cwd=ROOT)
        seconds = time.perf_counter() - start
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        events = (
            pl.scan_parquet(Path(tmp) / "data" / "population" / "events" / "*.parquet")
            .select(pl.len())
            .collect()
            .item()
        )
        # The contract check on the same folder (streaming; run in this process).
        start = time.perf_counter()
        validate_population(
            Path(tmp) / "data" / "population",
            target_names=tuple(params["targets"]),
            index_date=dt.date.fromisoformat(str(params["index_date"])),
        )
        validate_seconds = time.perf_counter() - start
    return {
        "people": n_people,
        "events": events,
        "seconds": seconds,
        "validate_seconds": validate_seconds,
        # ru_maxrss of children is the max over all children so far; report it only if it grew.
        "peak_rss_gb": max(peak_kb, before) / 1024**2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--ten-million", action="store_true", help="also run 10M people")
    args = parser.parse_args()
    sizes = [args.people] + ([10_000_000] if args.ten_million else [])
    print(
        f"{'people':>12} {'events':>13} {'seconds':>8} {'people/s':>10} {'events/s':>11} "
        f"{'peak RSS':>10}"
    )
    synthea_per_second = SYNTHEA_PATIENTS_PER_MINUTE / 60
    for n in sizes:
        r = bench(n)
        rate = r["people"] / r["seconds"]
        print(
            f"{r['people']:>12,} {r['events']:>13,} {r['seconds']:>8.1f} "
            f"{rate:>10,.0f} {r['events'] / r['seconds']:>11,.0f} "
            f"{r['peak_rss_gb']:>7.2f} GB   ({rate / synthea_per_second:,.0f}x Synthea's rate)"
        )
        print(f"{'':>12} validate (contract check, same folder): {r['validate_seconds']:.1f} s")
    print(
        f"peer: Synthea ~{SYNTHEA_PATIENTS_PER_MINUTE} patients/min on 8 vCPUs "
        f"= {synthea_per_second:.1f} patients/s (published figure, not run here)"
    )


if __name__ == "__main__":
    main()
