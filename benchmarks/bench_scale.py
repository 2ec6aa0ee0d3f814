"""Benchmark: the whole pipeline at N people, per stage: wall time, peak RSS of the process tree,
and the disk the outputs take; on the local engine, then on the Dask engine (issue 18).

Copies the project's code and params into a temporary folder, sets ``population.n_people`` to N,
and runs every stage as DVC runs it (``python -m pipeline <stage>``, dvc.yaml order, one process
per stage, each target in turn). While a stage runs, the resident memory of its whole process
tree (the stage and every descendant: Dask's LocalCluster workers and nanny processes too) is
summed from ``/proc/<pid>/statm`` every ``--interval`` seconds; the peak of that sum is the
stage's "tree peak". ``wait4``'s ``ru_maxrss`` (the largest single process) is printed beside it.

The Dask run copies the local run's folder and re-runs the stages that use the engine
(``outreach``, and ``train`` with ``--distributed``), then ``report``; every other stage is the
same code on both engines (it does not use the engine yet), so its figures are the local run's.
The Dask run's lists and outreach summary are compared byte for byte with the local run's.

``--from DIR --stages outreach,report`` skips the upstream stages: it copies DIR's outputs
(a project after ``dvc repro``; N is then DIR's population) and runs only those stages, on both
engines - the quick way to time the engine stages when a whole run is too long.

Usage: ``nice .venv/bin/python benchmarks/bench_scale.py [N] [--engines local,dask]
[--distributed] [--keep DIR] [--from DIR --stages S,...]`` (N defaults to 200000).
"""

from __future__ import annotations

import argparse
import filecmp
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
ENGINE_STAGES = ("outreach",)


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
    """``python -m pipeline ...`` of every stage in dvc.yaml order (each target in turn)."""
    targets = list(params["targets"])
    per_target = ("train", "need", "audit")
    order = ["synthesize", "validate", "features", *per_target, "keyfp", "outreach", "report"]
    commands = []
    for stage in order:
        if only is not None and stage not in only:
            continue
        if stage in per_target:
            commands += [[sys.executable, "-m", "pipeline", stage, "--target", t] for t in targets]
        else:
            commands.append([sys.executable, "-m", "pipeline", stage])
    return commands


def make_project(folder: Path, *, n_people: int) -> dict:
    """The project's code and params at ``n_people`` in ``folder``; returns the params."""
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / name)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["population"]["n_people"] = n_people
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


def set_engine(folder: Path, *, engine: str, distributed: bool) -> None:
    """Write ``engine`` (and ``train.distributed``) into the folder's params.yaml."""
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["engine"] = engine
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
    """Run the stages in ``folder``, printing one line per stage as it ends."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
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


def same_outreach(first: Path, second: Path) -> bool:
    """Whether both runs wrote byte-identical lists and outreach summary."""
    files = [p.relative_to(first) for p in (first / "data" / "outreach").rglob("*") if p.is_file()]
    files.append(Path("reports/outreach_summary.json"))
    return all(filecmp.cmp(first / f, second / f, shallow=False) for f in files)


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


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_people", type=int, nargs="?", default=200_000)
    parser.add_argument("--engines", default="local,dask")
    parser.add_argument("--distributed", action="store_true", help="train.distributed on Dask")
    parser.add_argument("--interval", type=float, default=0.2, help="RSS sampling, seconds")
    parser.add_argument("--keep", type=Path, help="keep the runs under this folder")
    parser.add_argument("--from", dest="source", type=Path, help="reuse this project's outputs")
    parser.add_argument("--stages", help="with --from: the stages to run, comma-separated")
    args = parser.parse_args()
    only = tuple(args.stages.split(",")) if args.stages else None
    engines = args.engines.split(",")
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"bench_scale: {args.n_people:,} people, engines {engines}, in {base}")
    print(f"  machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    local = base / "local"
    params = make_project(local, n_people=args.n_people)
    if args.source:
        copy_outputs(args.source, local)
    set_engine(local, engine="local", distributed=False)
    commands = stage_commands(params, only=only)
    measured = run_engine(local, commands, interval=args.interval, label="local")
    summary("local engine", measured, local)
    if "dask" in engines:
        dask = base / "dask"
        shutil.copytree(local, dask, symlinks=True)
        set_engine(dask, engine="dask", distributed=args.distributed)
        again = (*ENGINE_STAGES, "report", *(("train",) if args.distributed else ()))
        # train re-runs need and audit's inputs: re-run them too when it does
        again += ("need", "audit") if args.distributed else ()
        again = tuple(stage for stage in again if only is None or stage in only)
        rerun = run_engine(
            dask, stage_commands(params, only=again), interval=args.interval, label="dask"
        )
        summary("dask engine (re-run stages)", rerun, dask)
        if not args.distributed:
            print(f"outreach byte-identical to the local engine's: {same_outreach(local, dask)}")
    if args.keep is None:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
