"""Benchmark: the whole pipeline at N people, per stage: wall time, peak RSS of the process tree,
and the disk the outputs take; on the local engine and on the Dask engine (issue 18).

Copies the project's code and params into a temporary folder per run, sets
``population.n_people`` to N, and runs every stage as DVC runs it (``python -m pipeline
<stage>``, dvc.yaml order, one process per stage, each target in turn). While a stage runs, the
resident memory of its whole process tree (the stage and every descendant: Dask's LocalCluster
workers and nanny processes too) is summed from ``/proc/<pid>/statm`` every ``--interval``
seconds; the peak of that sum is the stage's "tree peak". ``wait4``'s ``ru_maxrss`` (the largest
single process) is printed beside it.

Each engine runs the whole pipeline from scratch in its own folder; ``--workers 1,2`` runs the
Dask engine once per LocalCluster size (``dask_workers``). Afterwards every run's outputs
(``COMPARED``: data, features, scores, lists, reports, metrics) are compared byte for byte with
the first run's, and the files that differ are named.

``--only-icbs A,B`` generates only those ICBs of an N-people world, at their sizes in it: with
N = 57,000,000 these are real-size English ICB partitions (``bench_england.py`` projects England
from them).

``--from DIR --stages outreach,report`` skips the upstream stages: it copies DIR's outputs
(a project after ``dvc repro``; N is then DIR's population) and runs only those stages.

Usage: ``nice .venv/bin/python benchmarks/bench_scale.py [N] [--engines local,dask]
[--workers 1,2] [--distributed] [--only-icbs A,B] [--set SECTION.KEY=VALUE] [--keep DIR]
[--from DIR --stages S,...]`` (N defaults to 200000).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("pipeline", "codelists", "params.yaml", "dvc.yaml", "pyproject.toml")
OUTPUTS = ("data", "features", "models", "reports", "metrics", "mlflow.db", "mlartifacts")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Measured:
    """One stage run: wall seconds, peak tree RSS and largest single process (bytes)."""

    stage: str
    seconds: float
    tree_peak: int
    largest: int


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from ``/proc/<pid>/stat`` (field 4)."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants now (``/proc/<pid>/statm``)."""
    tree, total, todo = _children(), 0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError):
            pass
        todo += tree.get(current, [])
    return total


def run_stage(command: list[str], *, cwd: Path, env: dict[str, str], interval: float) -> Measured:
    """Run one stage, sampling its tree's RSS; stop the benchmark if it fails."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env)
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(process.pid))
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:  # Ctrl-C or SIGTERM (main): stop the stage too
        process.terminate()
        process.wait()
        raise
    finally:
        done.set()
        sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed (exit {process.returncode})")
    largest = usage.ru_maxrss * 1024
    return Measured(command[3], time.perf_counter() - start, max(peak, largest), largest)


def stage_commands(params: dict, *, only: tuple[str, ...] | None = None) -> list[list[str]]:
    """``python -m pipeline ...`` of every stage in dvc.yaml order (a ``foreach`` stage once per
    target, in turn), read from the project's dvc.yaml so the benchmark follows the pipeline."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    commands = []
    for stage, body in stages.items():
        if only is not None and stage not in only:
            continue
        if "foreach" in body:
            commands += [
                [sys.executable, "-m", "pipeline", stage, "--target", t] for t in params["targets"]
            ]
        else:
            commands.append([sys.executable, "-m", "pipeline", stage])
    return commands


def make_project(
    folder: Path,
    *,
    n_people: int,
    only_icbs: list[str] | None = None,
    chunk_size: int | None = None,
    overrides: dict[str, object] | None = None,
) -> dict:
    """The project's code and params at ``n_people`` in ``folder``; returns the params.

    ``only_icbs``: generate only those ICBs of an ``n_people`` world, at their sizes in it
    (``population.only_icbs``: the England projection's real-size partitions).
    ``overrides``: ``section.key`` -> value, as ``dvc exp run -S`` sets them (``--set``).
    """
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / name)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["population"]["n_people"] = n_people
    if only_icbs:
        params["population"]["only_icbs"] = only_icbs
    if chunk_size:
        params["population"]["chunk_size"] = chunk_size
    for dotted, value in (overrides or {}).items():
        *sections, key = dotted.split(".")
        node = params
        for section in sections:
            node = node[section]
        node[key] = value
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def copy_outputs(source: Path, folder: Path) -> None:
    """Copy a finished project's outputs (``OUTPUTS``) into ``folder`` (for ``--from``)."""
    for name in OUTPUTS:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, folder / name, symlinks=True, dirs_exist_ok=True)
        elif path.exists():
            shutil.copy2(path, folder / name)


def set_engine(folder: Path, *, engine: str, distributed: bool, workers: int | None) -> None:
    """Write ``engine``, ``dask_workers`` and ``train.distributed`` into the folder's params."""
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["engine"] = engine
    params["dask_workers"] = workers
    params["train"]["distributed"] = distributed
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def disk_bytes(folder: Path) -> int:
    """Bytes of every output file (everything but the copied code)."""
    skip = {folder / name for name in COPIED}
    return sum(
        path.stat().st_size
        for path in folder.rglob("*")
        if path.is_file() and not any(part in skip for part in (path, *path.parents))
    )


def run_engine(
    folder: Path, commands: list[list[str]], *, interval: float, label: str
) -> list[Measured]:
    """Run the stages in ``folder``, printing one line per stage as it ends; the stages'
    timings of capped steps (their model fits) go to ``folder/TIMINGS`` (:func:`timings`)."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "PHM_TIMINGS": str(folder / TIMINGS),  # pipeline.console.TIMINGS_ENV
    }
    measured = []
    for command in commands:
        result = run_stage(command, cwd=folder, env=env, interval=interval)
        name = " ".join(command[3:])
        print(
            f"  [{label}] {name:<42} {result.seconds:8.1f} s  tree peak "
            f"{result.tree_peak / 1e9:6.2f} GB  largest process {result.largest / 1e9:6.2f} GB",
            flush=True,
        )
        measured.append(result)
    return measured


TIMINGS = "timings.jsonl"
"""The file in a run's folder where its stages record their capped steps' wall seconds."""


def timings(folder: Path) -> list[dict]:
    """The records of ``folder/TIMINGS`` (``pipeline.console.record_timing``: stage, target,
    step, seconds, rows), in the order the stages wrote them."""
    path = folder / TIMINGS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


COMPARED = ("data", "features", "reports", "metrics")
"""Outputs compared byte for byte between engines (row-level data, features, scores, lists;
everything published: the audit's tables, the outreach summary, the equity report, metrics)."""


def differing_files(first: Path, second: Path) -> list[str]:
    """Output files (``COMPARED``) whose bytes differ between two runs, or exist in one only."""
    names: set[Path] = set()
    for run in (first, second):
        for name in COMPARED:
            path = run / name
            found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            names |= {p.relative_to(run) for p in found}
    return sorted(
        str(name)
        for name in names
        if not (first / name).exists()
        or not (second / name).exists()
        or not filecmp.cmp(first / name, second / name, shallow=False)
    )


def summary(label: str, measured: list[Measured], folder: Path) -> None:
    """Totals: wall time, the largest tree peak of any stage, disk used."""
    total = sum(m.seconds for m in measured)
    peak = max(m.tree_peak for m in measured)
    print(
        f"{label}: {len(measured)} stage runs, {total:.1f} s, peak tree RSS {peak / 1e9:.2f} GB,"
        f" disk {disk_bytes(folder) / 1e9:.2f} GB"
    )


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(f"bench_scale: stopped by signal {signum}")


def run_project(
    folder: Path,
    *,
    n_people: int,
    engine: str,
    workers: int | None,
    distributed: bool = False,
    only_icbs: list[str] | None = None,
    chunk_size: int | None = None,
    overrides: dict[str, object] | None = None,
    source: Path | None = None,
    only: tuple[str, ...] | None = None,
    interval: float = 0.2,
    label: str,
) -> list[Measured]:
    """Make a project in ``folder`` (optionally on ``source``'s outputs), run its stages on one
    engine, print the per-stage lines and the totals; return the measurements."""
    params = make_project(
        folder, n_people=n_people, only_icbs=only_icbs, chunk_size=chunk_size, overrides=overrides
    )
    if source:
        copy_outputs(source, folder)
    set_engine(folder, engine=engine, distributed=distributed, workers=workers)
    measured = run_engine(folder, stage_commands(params, only=only), interval=interval, label=label)
    summary(f"{label} engine", measured, folder)
    return measured


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_people", type=int, nargs="?", default=200_000)
    parser.add_argument("--engines", default="local,dask")
    parser.add_argument("--workers", help="dask_workers per Dask run, comma-separated (e.g. 1,2)")
    parser.add_argument("--distributed", action="store_true", help="train.distributed on Dask")
    parser.add_argument("--only-icbs", help="population.only_icbs, comma-separated ICB codes")
    parser.add_argument("--chunk-size", type=int, help="population.chunk_size")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a param, as dvc exp run -S (repeatable; the value parsed as YAML)",
    )
    parser.add_argument("--interval", type=float, default=0.2, help="RSS sampling, seconds")
    parser.add_argument("--keep", type=Path, help="keep the runs under this folder")
    parser.add_argument("--from", dest="source", type=Path, help="reuse this project's outputs")
    parser.add_argument("--stages", help="with --from: the stages to run, comma-separated")
    return parser.parse_args()


def _override(item: str) -> tuple[str, object]:
    """``section.key=value`` as a key and its YAML value."""
    key, _, value = item.partition("=")
    return key, yaml.safe_load(value)


def _runs(engines: list[str], workers: str | None) -> list[tuple[str, str, int | None]]:
    """(label, engine, dask_workers) of every run asked for."""
    runs: list[tuple[str, str, int | None]] = []
    for engine in engines:
        if engine == "dask" and workers:
            runs += [(f"dask-{k}w", "dask", int(k)) for k in workers.split(",")]
        else:
            runs.append((engine, engine, None))
    return runs


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    args = _arguments()
    only = tuple(args.stages.split(",")) if args.stages else None
    only_icbs = args.only_icbs.split(",") if args.only_icbs else None
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    base.mkdir(parents=True, exist_ok=True)
    runs = _runs(args.engines.split(","), args.workers)
    print(
        f"bench_scale: {args.n_people:,} people, runs {[label for label, _, _ in runs]}, in {base}"
    )
    if only_icbs:
        print(f"  only ICBs {only_icbs} of that world (population.only_icbs)")
    print(f"  machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    measured: dict[str, list[Measured]] = {}
    for label, engine, workers in runs:
        measured[label] = run_project(
            base / label,
            n_people=args.n_people,
            engine=engine,
            workers=workers,
            distributed=args.distributed,
            only_icbs=only_icbs,
            chunk_size=args.chunk_size,
            overrides=dict(_override(item) for item in args.overrides),
            source=args.source,
            only=only,
            interval=args.interval,
            label=label,
        )
    first = base / runs[0][0]
    for label, _, _ in runs[1:]:
        differing = differing_files(first, base / label)
        print(f"{label} vs {runs[0][0]}: {len(differing)} output files differ {differing[:8]}")
    if args.keep is None:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
