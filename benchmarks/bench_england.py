"""Benchmark: England (~57M people, 42 ICBs) on paper, from real-size ICB partitions measured here.

Runs the whole pipeline (``bench_scale.py``'s runner: one process per stage, tree peak RSS) on
only some ICBs of a 57M-person world, each at its real size (``population.only_icbs``), on the
Dask engine, four times:

1. ``tiny``: all 42 ICBs of a ``--tiny``-person world (1,000 people each) on a LocalCluster of 1
   worker: per stage, the fixed cost ``a`` (process and cluster start-up, 42 partitions' tasks,
   the report) with next to no per-person work;
2. ``small``: ``--small`` (one ICB at its real size) on 1 worker;
3. ``dask-1w``: ``--icbs`` (that ICB and another of the same size) on 1 worker;
4. ``dask-2w``: ``--icbs`` on 2 workers.

The cost per person is ``b = (t_3 - a) / n``. Runs 3 and 4 differ only in workers, and their two
partitions are the same size, so their speed-up measures how the per-person part parallelises
(Amdahl's ``p`` of ``t - a``: ``s = 1 / ((1 - p) + p / 2)``). Runs 2 and 3 differ only in the
number of people: a stage that works partition by partition has the same memory in both, so the
slope of the tree peak between them is the part that holds every person in one process.

The projection for all 42 ICBs, per stage, is ``a + b * N * ((1 - p) + p / k)`` on ``k`` workers
(``k = 2``: this machine), summed over stages; memory ``slope * N`` plus the partition part
scaled up to the largest ICB. Disk is linear in people.

Train's and need's model fits are not per-person costs: each reads a seeded sample of the
training split capped at ``train.max_train_rows`` (train's early stopping a sample capped at
``train.max_validation_rows``) or ``audit.need_model_max_rows`` (need), so above the cap its cost
stops growing (need's 500,000-row cap is already reached in the two-ICB run). Each fit records its
wall seconds and rows (``pipeline.console.record_timing``, in the run's ``timings.jsonl``; train
also logs ``fit_seconds`` to MLflow); the projection takes the stage's time without its fits as
``a + b * N`` like every other stage, and adds each fit once per target, scaled from the two-ICB
run by training rows (LightGBM's histogram passes are linear in rows) up to the cap:
``fit * min(cap, rows * N / n) / rows``. Early stopping keeps about as many trees with two
median ICBs (~2.3M people) as at 10M (369/245 vs 409/247 trees), so the scaling holds to ~10%.
Outreach's TreeSHAP cost per listed person grows with the trees, so it is measured on the same
model size.

Each process runs Polars on one thread (``POLARS_MAX_THREADS``, ``--polars-threads``, default
1), so a worker is one core: otherwise one worker's Polars already uses both cores of this
machine, the 1 -> 2 worker speed-up measures nothing, and the projection to ``k`` workers would
not hold. This makes the stages' own serial parts slower than in a normal run, so the projection
for this machine is conservative (LightGBM keeps ``train.num_threads``).

Usage: ``nice .venv/bin/python benchmarks/bench_england.py [--tiny 42000] [--small QT1]
[--icbs QT1,QK1] [--keep DIR] [--workers 1,2] [--cluster 4,8,16,42] [--polars-threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale  # a sibling script, not a package

ENGLAND = 57_000_000
"""People registered with a GP practice in England (rounded; DOMAIN.md)."""
DEFAULT_SMALL = "QT1"
DEFAULT_ICBS = "QT1,QK1"
"""Nottingham and Nottinghamshire, and Leicester, Leicestershire and Rutland: two median-sized
ICBs of the same size (1.2M each in the reference list; ~1.15M in a 57M world)."""
LARGEST_ICB_SHARE = 3.1 / 1.2
"""The largest ICB (North East and North Cumbria, 3.1M) over the measured partitions' size: a
stage's partition-bound memory grows by this factor at most."""


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


@dataclass(frozen=True)
class Line:
    """A straight line ``a + b * n`` through two measurements (``b`` clamped at >= 0).

    Examples
    --------
    >>> Line.through((1.0, 10.0), (3.0, 14.0))
    Line(fixed=8.0, per_person=2.0)
    >>> Line.through((1.0, 10.0), (3.0, 9.0))  # noise: no growth, the larger figure kept
    Line(fixed=10.0, per_person=0.0)
    """

    fixed: float
    per_person: float

    @classmethod
    def from_fixed(cls, fixed: float, point: tuple[float, float]) -> Line:
        """The line with intercept ``fixed`` through ``point`` (slope clamped at >= 0).

        Examples
        --------
        >>> Line.from_fixed(10.0, (4.0, 18.0))
        Line(fixed=10.0, per_person=2.0)
        """
        n, y = point
        return cls(fixed, max(0.0, (y - fixed) / n))

    @classmethod
    def through(cls, first: tuple[float, float], second: tuple[float, float]) -> Line:
        (n_1, y_1), (n_2, y_2) = first, second
        slope = max(0.0, (y_2 - y_1) / (n_2 - n_1))
        if slope == 0.0:
            return cls(max(y_1, y_2), 0.0)
        return cls(max(0.0, y_2 - slope * n_2), slope)

    def at(self, n: float) -> float:
        """The line's value at ``n``."""
        return self.fixed + self.per_person * n


def stage_totals(measured: list[bench_scale.Measured]) -> dict[str, tuple[float, int]]:
    """Per stage name (targets summed): seconds and the largest tree peak."""
    totals: dict[str, tuple[float, int]] = {}
    for run in measured:
        seconds, peak = totals.get(run.stage, (0.0, 0))
        totals[run.stage] = (seconds + run.seconds, max(peak, run.tree_peak))
    return totals


@dataclass(frozen=True)
class Fit:
    """One model fit in a run (train's or need's, one target): wall seconds and rows of its
    training sample."""

    seconds: float
    train_rows: int

    def at(self, n_people: float, *, measured_people: int, cap: int) -> float:
        """The fit's seconds at ``n_people``: linear in training rows, capped at ``cap`` rows.

        Examples
        --------
        >>> Fit(60.0, 1_000_000).at(4e6, measured_people=2_000_000, cap=1_500_000)
        90.0
        """
        rows = min(cap, self.train_rows * n_people / measured_people)
        return self.seconds * rows / self.train_rows


FITTED: Final = ("train", "need")
"""The stages whose model fit reads a capped sample (train: ``train.max_train_rows``; need:
``audit.need_model_max_rows``): each records the fit's seconds and rows
(``pipeline.console.record_timing``, in the run's ``bench_scale.TIMINGS`` file)."""


def fits(folder: Path) -> dict[tuple[str, str], Fit]:
    """Each (stage, target)'s fit in a finished run, from the stages' timing records."""
    return {
        (record["stage"], record["target"]): Fit(float(record["seconds"]), int(record["rows"]))
        for record in bench_scale.timings(folder)
        if record["stage"] in FITTED and record["step"] == "fit"
    }


@dataclass(frozen=True)
class Runs:
    """The four runs: a tiny all-ICB world, one ICB, two ICBs on 1 worker, then on 2 workers;
    the model fits in each (:func:`fits`) and each fitting stage's sample cap."""

    tiny: list[bench_scale.Measured]
    small: list[bench_scale.Measured]
    one: list[bench_scale.Measured]
    two: list[bench_scale.Measured]
    n_small: int
    n_people: int
    fits: dict[str, dict[tuple[str, str], Fit]]
    caps: dict[str, int]

    def without_fit(self, label: str) -> dict[str, tuple[float, int]]:
        """:func:`stage_totals` of a run, train's and need's seconds less their fits."""
        totals = stage_totals(getattr(self, label))
        for stage in FITTED:
            seconds, peak = totals[stage]
            fits = self.fits[label].items()
            fitted = sum(fit.seconds for (name, _), fit in fits if name == stage)
            totals[stage] = (max(seconds - fitted, 0.0), peak)
        return totals


def project(runs: Runs, *, disk: int, cluster: list[int]) -> None:
    """Print the per-stage table and the England projection."""
    tiny, small, one, two = (runs.without_fit(r) for r in ("tiny", "small", "one", "two"))
    n_small, n_people = runs.n_small, runs.n_people
    print(
        f"\nper stage (fixed: the tiny run; per person: {n_people:,} people; memory slope:"
        f" {n_small:,} -> {n_people:,}; England {ENGLAND:,}):"
    )
    print(
        f"{'stage':<12} {'fixed s':>8} {'s/M 1w':>8} {'s/M 2w':>8} {'p':>5} "
        f"{'peak GB':>8} {'GB/M':>6}"
    )
    totals = {k: 0.0 for k in (1, 2, *cluster)}
    peak_england = 0.0
    for stage, (seconds_one, peak_one) in one.items():
        _, peak_small = small[stage]
        seconds_two, peak_two = two[stage]
        time = Line.from_fixed(min(tiny[stage][0], seconds_one), (n_people, seconds_one))
        marginal_one = max(seconds_one - time.fixed, 1e-9)
        marginal_two = max(seconds_two - time.fixed, 1e-9)
        fraction = parallel_fraction(marginal_one / marginal_two)
        memory = Line.through((n_small, peak_small), (n_people, peak_one))
        partition_part = max(peak_two - memory.per_person * n_people, 0.0)
        peak_stage = partition_part * LARGEST_ICB_SHARE + memory.per_person * ENGLAND
        peak_england = max(peak_england, peak_stage)
        print(
            f"{stage:<12} {time.fixed:8.1f} {time.per_person * 1e6:8.1f} "
            f"{on_cluster(time.per_person, fraction, workers=2) * 1e6:8.1f} {fraction:5.2f} "
            f"{peak_two / 1e9:8.2f} {memory.per_person * 1e6 / 1e9:6.3f}"
        )
        for workers in totals:
            totals[workers] += time.fixed + on_cluster(
                time.per_person * ENGLAND, fraction, workers=workers
            )
    fit_england = 0.0
    for (stage, target), fit in runs.fits["one"].items():
        seconds = fit.at(ENGLAND, measured_people=n_people, cap=runs.caps[stage])
        fit_england += seconds
        print(
            f"{stage} fit {target}: {fit.seconds:.1f} s on {fit.train_rows:,} rows (1 worker;"
            f" 2 workers {runs.fits['two'][(stage, target)].seconds:.1f} s) -> {seconds:.1f} s"
            f" for England (sample capped at {runs.caps[stage]:,} rows)"
        )
    for workers in totals:
        totals[workers] += fit_england  # the fits run in the stage's process, not on workers
    print(f"\nEngland ({ENGLAND:,} people, 42 ICBs), projected from these measurements:")
    print(f"  this machine, 1 worker : {totals[1] / 3600:6.2f} h")
    print(f"  this machine, 2 workers: {totals[2] / 3600:6.2f} h  (goal <= 2 h)")
    for workers in cluster:
        print(f"  cluster of {workers:>3} workers : {totals[workers] / 3600:6.2f} h")
    measured_peak = max(peak for _, peak in two.values())
    print(f"  peak memory per stage: {measured_peak / 1e9:.2f} GB measured (2 workers),")
    print(
        f"    {peak_england / 1e9:.1f} GB projected for England (growth per person, partitions "
        f"x{LARGEST_ICB_SHARE:.1f} for the largest ICB): an upper bound, since the samples "
        "that grow here stop at their caps (train.max_*_rows, audit.max_*_rows; docs/scale.md)"
    )
    per_person = disk / n_people
    print(f"  disk: {per_person * ENGLAND / 1e9:.0f} GB ({per_person:.0f} bytes per person)")


WARM_UP: Final = (
    "import pipeline.cli, polars, lightgbm, sklearn, mlflow, fairlearn, statsmodels.api, "
    "distributed, jinja2"
)
"""Imported once before the timed runs (page cache warm-up)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", type=int, default=42_000, help="people of the all-ICB run")
    parser.add_argument("--small", default=DEFAULT_SMALL, help="the one-ICB run's ICB")
    parser.add_argument("--icbs", default=DEFAULT_ICBS, help="ICB codes, comma-separated")
    parser.add_argument("--workers", default="1,2", help="the two LocalCluster sizes compared")
    parser.add_argument("--cluster", default="4,8,16,42", help="cluster sizes to project")
    parser.add_argument("--keep", type=Path, help="keep the runs under this folder")
    parser.add_argument("--polars-threads", default="1", help="POLARS_MAX_THREADS of every process")
    args = parser.parse_args()
    few, many = (int(k) for k in args.workers.split(","))
    os.environ["POLARS_MAX_THREADS"] = args.polars_threads  # inherited by stages and workers
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench_england_"))
    base.mkdir(parents=True, exist_ok=True)
    icbs = args.icbs.split(",")
    print(
        f"bench_england: all ICBs of a {args.tiny:,}-person world, then ICB {args.small}, then"
        f" ICBs {icbs} of a {ENGLAND:,}-person world, workers {few} then {many},"
        f" POLARS_MAX_THREADS={args.polars_threads}"
    )
    plan = {
        "tiny": (args.tiny, None, few),
        "small": (ENGLAND, [args.small], few),
        f"dask-{few}w": (ENGLAND, icbs, few),
        f"dask-{many}w": (ENGLAND, icbs, many),
    }
    # The first process to import these after a quiet spell reads them from disk (10-30 s on
    # this VM, once): the tiny run's fixed costs are the steady state's, not that.
    subprocess.run([sys.executable, "-c", WARM_UP], check=True, cwd=bench_scale.ROOT)
    measured, people = {}, {}
    for label, (world, chosen, workers) in plan.items():
        folder = base / label
        measured[label] = bench_scale.run_project(
            folder,
            n_people=world,
            engine="dask",
            workers=workers,
            only_icbs=chosen,
            label=label,
        )
        people[label] = people_written(folder)
    disk = bench_scale.disk_bytes(base / f"dask-{many}w")
    print(f"{people['small']:,} people in {args.small}; {people[f'dask-{few}w']:,} in {icbs}")
    cluster = [int(k) for k in args.cluster.split(",")]
    runs = Runs(
        tiny=measured["tiny"],
        small=measured["small"],
        one=measured[f"dask-{few}w"],
        two=measured[f"dask-{many}w"],
        n_small=people["small"],
        n_people=people[f"dask-{few}w"],
        fits={
            key: fits(base / label)
            for key, label in (
                ("tiny", "tiny"),
                ("small", "small"),
                ("one", f"dask-{few}w"),
                ("two", f"dask-{many}w"),
            )
        },
        caps=fit_caps(bench_scale.yaml.safe_load((bench_scale.ROOT / "params.yaml").read_text())),
    )
    project(runs, disk=disk, cluster=cluster)
    differing = bench_scale.differing_files(base / f"dask-{few}w", base / f"dask-{many}w")
    print(f"outputs of {few} vs {many} workers: {len(differing)} files differ {differing[:8]}")
    if args.keep is None:
        shutil.rmtree(base)


def fit_caps(params: dict) -> dict[str, int]:
    """The training-sample cap of each fitting stage (:data:`FITTED`) in ``params``."""
    return {
        "train": int(params["train"]["max_train_rows"]),
        "need": int(params["audit"]["need_model_max_rows"]),
    }


def people_written(folder: Path) -> int:
    """People in a run's population (the partitions of ``population.only_icbs``)."""
    import polars as pl

    sys.path.insert(0, str(bench_scale.ROOT))
    from pipeline import io

    people = io.scan_table(folder / "data" / "population", "people")
    return int(people.select(pl.len()).collect().item())


if __name__ == "__main__":
    main()
