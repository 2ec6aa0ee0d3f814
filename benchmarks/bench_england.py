"""Benchmark: England (~57M people, 42 ICBs) on paper, from real-size ICB partitions measured here.

Runs the whole pipeline (``bench_scale.py``'s runner: one process per stage, tree peak RSS) on
only a few ICBs of a 57M-person world, each at its real size (``population.only_icbs``), on the
Dask engine with a LocalCluster of 1 worker and then of 2 workers. From those runs it prints, per
stage:

- seconds per million people with 1 and 2 workers, and the measured speed-up;
- the parallel fraction ``p`` that speed-up implies (Amdahl: ``s = 1 / ((1 - p) + p / 2)``);
- the tree peak RSS (memory is bounded by the partition size, not by the population);

and then the projection for all 42 ICBs: time on this machine (2 workers), and on a cluster of
``k`` such workers (``t_k = t_1 * ((1 - p) + p / k)`` per stage), peak memory, and disk.

Each process runs Polars on one thread (``POLARS_MAX_THREADS``, ``--polars-threads``, default
1), so a worker is one core: otherwise one worker's Polars already uses both cores of this
machine, the 1 -> 2 worker speed-up measures nothing, and the projection to ``k`` workers would
not hold. This makes the stages' own serial parts slower than in a normal run, so the projection
for this machine is conservative (LightGBM keeps ``train.num_threads``).

The projection is linear in people per stage. That is conservative for ``train``, whose fit
uses a sample capped at ``train.max_train_rows`` (only its scoring grows with the population), and
for the fixed costs (process start-up, the report).

Usage: ``nice .venv/bin/python benchmarks/bench_england.py [--icbs QOC,QT1] [--keep DIR]
[--workers 1,2] [--cluster 4,8,16,42] [--polars-threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale  # a sibling script, not a package

ENGLAND = 57_000_000
"""People registered with a GP practice in England (rounded; DOMAIN.md)."""
DEFAULT_ICBS = "QOC,QT1"
"""Shropshire, Telford and Wrekin (the smallest ICB) and Nottingham and Nottinghamshire (the
median): 0.48M + 1.15M people in a 57M world."""


def parallel_fraction(speed_up: float, *, workers: int = 2) -> float:
    """Amdahl's parallel fraction implied by a measured speed-up on ``workers`` workers.

    Examples
    --------
    >>> round(parallel_fraction(2.0), 3)
    1.0
    >>> round(parallel_fraction(1.0), 3)
    0.0
    """
    fraction = (1 - 1 / speed_up) / (1 - 1 / workers)
    return min(1.0, max(0.0, fraction))


def on_cluster(seconds_one: float, fraction: float, *, workers: int) -> float:
    """Amdahl: a stage's time on ``workers`` workers from its one-worker time.

    Examples
    --------
    >>> on_cluster(100.0, 0.5, workers=2)
    75.0
    """
    return seconds_one * ((1 - fraction) + fraction / workers)


def stage_totals(measured: list[bench_scale.Measured]) -> dict[str, tuple[float, int]]:
    """Per stage name (targets summed): seconds and the largest tree peak."""
    totals: dict[str, tuple[float, int]] = {}
    for run in measured:
        seconds, peak = totals.get(run.stage, (0.0, 0))
        totals[run.stage] = (seconds + run.seconds, max(peak, run.tree_peak))
    return totals


def project(
    one: list[bench_scale.Measured],
    two: list[bench_scale.Measured],
    *,
    n_people: int,
    disk: int,
    cluster: list[int],
) -> None:
    """Print the per-stage table and the England projection."""
    scale = ENGLAND / n_people
    first, second = stage_totals(one), stage_totals(two)
    print(f"\nper stage ({n_people:,} people measured; England = x{scale:.1f}):")
    print(f"{'stage':<12} {'s/M 1w':>8} {'s/M 2w':>8} {'speed-up':>8} {'p':>5} {'peak GB':>8}")
    totals = {k: 0.0 for k in (1, 2, *cluster)}
    for stage, (seconds_one, peak_one) in first.items():
        seconds_two, peak_two = second[stage]
        speed_up = seconds_one / seconds_two
        fraction = parallel_fraction(speed_up)
        per_million = 1e6 / n_people
        print(
            f"{stage:<12} {seconds_one * per_million:8.1f} {seconds_two * per_million:8.1f} "
            f"{speed_up:8.2f} {fraction:5.2f} {max(peak_one, peak_two) / 1e9:8.2f}"
        )
        for workers in totals:
            totals[workers] += on_cluster(seconds_one * scale, fraction, workers=workers)
    peak = max(peak for _, peak in (*first.values(), *second.values()))
    print(f"\nEngland ({ENGLAND:,} people, 42 ICBs), projected from these measurements:")
    print(f"  this machine, 1 worker : {totals[1] / 3600:6.2f} h")
    print(f"  this machine, 2 workers: {totals[2] / 3600:6.2f} h  (goal <= 2 h)")
    for workers in cluster:
        print(f"  cluster of {workers:>3} workers : {totals[workers] / 3600:6.2f} h")
    print(f"  peak memory per stage (tree, measured): {peak / 1e9:.2f} GB")
    print(f"  disk: {disk * scale / 1e9:.0f} GB ({disk / n_people:.0f} bytes per person)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--icbs", default=DEFAULT_ICBS, help="ICB codes, comma-separated")
    parser.add_argument("--workers", default="1,2", help="the two LocalCluster sizes compared")
    parser.add_argument("--cluster", default="4,8,16,42", help="cluster sizes to project")
    parser.add_argument("--keep", type=Path, help="keep the runs under this folder")
    parser.add_argument("--polars-threads", default="1", help="POLARS_MAX_THREADS of every process")
    args = parser.parse_args()
    small, large = (int(k) for k in args.workers.split(","))
    os.environ["POLARS_MAX_THREADS"] = args.polars_threads  # inherited by stages and workers
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench_england_"))
    base.mkdir(parents=True, exist_ok=True)
    icbs = args.icbs.split(",")
    print(
        f"bench_england: ICBs {icbs} of a {ENGLAND:,}-person world, workers {small} then {large},"
        f" POLARS_MAX_THREADS={args.polars_threads}"
    )
    measured, n_people, disk = {}, 0, 0
    for workers in (small, large):
        folder = base / f"dask-{workers}w"
        measured[workers] = bench_scale.run_project(
            folder,
            n_people=ENGLAND,
            engine="dask",
            workers=workers,
            only_icbs=icbs,
            label=f"dask-{workers}w",
        )
        n_people = people_written(folder)
        disk = bench_scale.disk_bytes(folder)
    print(f"{n_people:,} people in ICBs {icbs}")
    cluster = [int(k) for k in args.cluster.split(",")]
    project(measured[small], measured[large], n_people=n_people, disk=disk, cluster=cluster)
    differing = bench_scale.differing_files(base / f"dask-{small}w", base / f"dask-{large}w")
    print(f"outputs of {small} vs {large} workers: {len(differing)} files differ {differing[:8]}")
    if args.keep is None:
        shutil.rmtree(base)


def people_written(folder: Path) -> int:
    """People in a run's population (the partitions of ``population.only_icbs``)."""
    import polars as pl

    sys.path.insert(0, str(bench_scale.ROOT))
    from pipeline import io

    people = io.scan_table(folder / "data" / "population", "people")
    return int(people.select(pl.len()).collect().item())


if __name__ == "__main__":
    main()
