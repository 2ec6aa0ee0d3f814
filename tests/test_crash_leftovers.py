"""A stage killed (SIGKILL) at random points leaves no row-level data behind (issue 14, item 1).

Each case runs a real stage as ``python -m pipeline <stage>`` on a 20,000-person world: once
uninterrupted (the reference hashes), then killed three times after seeded random delays. After
each kill, every file is either an input, in a declared output (or the MLflow store) or in a
private (0700) ``.tmp/`` folder, and ``git status`` shows nothing untracked under data/,
features/ or models/; the next run sweeps the temporaries and gives the reference hashes.
The later stages (train, audit, outreach) run for one target with lighter settings; after
train's rerun, the runs its killed attempts left RUNNING are FAILED.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.io import STAGE_LOCKS, TEMP_DIR
from tests.fixture_params import fixture_raw

PROJECT = Path(__file__).resolve().parents[1]
TARGET = "emergency_admission_12m"
OUTPUTS = {
    "synthesize": ("data/population", "data/truth", "reports/synthetic_calibration.json"),
    "features": ("features",),
    "train": (
        f"models/{TARGET}",
        f"data/scores/{TARGET}.parquet",
        f"metrics/{TARGET}/train.json",
        f"metrics/{TARGET}/plots",
    ),
    "audit": (
        f"reports/audit/{TARGET}",
        f"reports/metrics/audit_{TARGET}.json",
        f"metrics/{TARGET}/audit.json",
    ),
    "outreach": ("data/outreach", "reports/outreach_summary.json"),
}
# The embedded MLflow store (train logs runs, audit tags them): not row-level, never in git.
MLFLOW_STORE = ("mlflow.db", "mlflow.db-journal", "mlartifacts", "mlruns")
KILLS = 3

pytestmark = pytest.mark.slow


def _write_params(root: Path, **population: object) -> None:
    params = fixture_raw()
    params["population"] |= {"n_people": 20_000, "chunk_size": 2_000, **population}
    params["features"]["chunk_people"] = 10_000
    # One target, fewer rounds and resamples: the later stages' kills stay within a minute.
    params["targets"] = {TARGET: params["targets"][TARGET]}
    params["train"] |= {"n_estimators": 100, "n_bootstrap": 20}
    params["audit"] |= {"n_bootstrap": 20, "n_monte_carlo": 100, "need_model_rounds": 50}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _env() -> dict[str, str]:
    """The stages' environment: the root's own MLflow store and a fixed pseudonymisation key."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return env | {"PHM_PSEUDONYM_KEY": "5eed" * 16}


def _stage(root: Path, *command: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *command],
        cwd=root,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _run(root: Path, *command: str) -> float:
    started = time.perf_counter()
    process = _stage(root, *command)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr.decode()
    return time.perf_counter() - started


def _hashes(root: Path, outputs: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for output in outputs:
        path = root / output
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in (file for file in files if file.name != ".gitignore"):
            found[str(file.relative_to(root))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def _git_repo(root: Path) -> None:
    """A git repository ignoring what the project's .gitignore files (and DVC's) ignore."""
    ignores = subprocess.run(
        ["git", "-C", str(PROJECT), "ls-files", "--", ".gitignore", "data", "features", "models"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    ignores = [name for name in ignores if Path(name).name == ".gitignore"]
    for name in ignores:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT / name, root / name)
    git = ["git", "-C", str(root), "-c", "user.name=test", "-c", "user.email=test@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", *ignores], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "ignores"], check=True)


def _untracked(root: Path) -> list[str]:
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "data", "features", "models"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return status.splitlines()


def _stray_files(root: Path, allowed: tuple[str, ...]) -> list[str]:
    """Files neither in an allowed output nor in a private .tmp/ folder (0700 all the way)."""
    stray = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if relative.parts[0] in {".git", ".gitignore", "params.yaml"} or path.is_dir():
            continue
        if TEMP_DIR in relative.parts:
            area = root.joinpath(*relative.parts[: relative.parts.index(TEMP_DIR) + 1])
            assert stat.S_IMODE(area.stat().st_mode) == 0o700, area
            continue
        if relative.name == ".gitignore" or any(
            relative == Path(out) or Path(out) in relative.parents for out in allowed
        ):
            continue
        stray.append(str(relative))
    return stray


def _leftover_temporaries(root: Path) -> list[str]:
    return [
        str(path.relative_to(root))
        for area in root.rglob(TEMP_DIR)
        for path in area.iterdir()
        if path.name != STAGE_LOCKS
    ]


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted synthetic population (the features stage's input and the extract)."""
    root = tmp_path_factory.mktemp("population")
    _write_params(root)
    _run(root, "synthesize")
    return root


# The later stages' world: smaller, so their kills stay within a minute.
LATER_WORLD = {"n_people": 10_000}
# What the later stages read, besides the population and the features.
UPSTREAM = ("reports/data_quality.json", f"data/scores/need/{TARGET}.parquet")
INPUTS = OUTPUTS["synthesize"] + OUTPUTS["features"] + UPSTREAM + OUTPUTS["train"]


@pytest.fixture(scope="module")
def modelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller world run through every stage the later stages read (one target)."""
    root = tmp_path_factory.mktemp("modelled")
    _write_params(root, **LATER_WORLD)
    for command in (
        ("synthesize",),
        ("validate",),
        ("features",),
        ("train", "--target", TARGET),
        ("need", "--target", TARGET),
        ("keyfp",),
    ):
        _run(root, *command)
    return root


def _copy_inputs(source: Path, root: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if (source / name).exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            copy = shutil.copytree if (source / name).is_dir() else shutil.copy
            copy(source / name, root / name)


def _runs(root: Path) -> list[tuple[str, bool]]:
    """Status of each MLflow run in the root's store, oldest first, and whether it is tagged
    orphaned (marked FAILED by a later train start)."""
    with sqlite3.connect(root / "mlflow.db") as store:
        return store.execute(
            "SELECT status, EXISTS (SELECT 1 FROM tags WHERE tags.run_uuid = runs.run_uuid "
            "AND key = 'phm.orphaned') FROM runs ORDER BY start_time"
        ).fetchall()


CASES = {
    "synthesize": (("synthesize",), {}),
    "synthesize-extract": (("synthesize",), {"source": "extract"}),
    "features": (("features",), {}),
    "train": (("train", "--target", TARGET), LATER_WORLD),
    "audit": (("audit", "--target", TARGET), LATER_WORLD),
    "outreach": (("outreach",), LATER_WORLD),
}


def _prepare(case: str, root: Path, request: pytest.FixtureRequest) -> tuple[str, ...]:
    """Write the case's params and inputs under ``root``; returns the inputs' paths."""
    (command, *_), overrides = CASES[case]
    population: Path = request.getfixturevalue("population")
    if overrides.get("source") == "extract":
        overrides = overrides | {"extract_dir": str(root.parent / "extract")}
    root.mkdir()
    _write_params(root, **overrides)
    if command == "features":
        _copy_inputs(population, root, ("data/population", "data/truth"))
    if command in {"train", "audit", "outreach"}:
        # Audit tags the trained run in a copy of the store; train starts with no store (killed
        # while MLflow builds it, it must leave none rather than a broken one).
        store = MLFLOW_STORE if command == "audit" else ()
        inputs = tuple(name for name in INPUTS if name not in OUTPUTS[command])
        _copy_inputs(request.getfixturevalue("modelled"), root, (*inputs, *store, "data/keys"))
        return (*INPUTS, "data/keys", *MLFLOW_STORE)
    return OUTPUTS["synthesize"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_stage_leaves_nothing_and_rerun_matches(
    case: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    command, overrides = CASES[case]
    stage = command[0]
    if overrides.get("source") == "extract":
        population: Path = request.getfixturevalue("population")
        shutil.copytree(population / "data" / "population", tmp_path / "extract")
    roots = {name: tmp_path / name for name in ("reference", "killed")}
    inputs = {name: _prepare(case, root, request) for name, root in roots.items()}
    allowed = (*inputs["killed"], *OUTPUTS[stage])
    duration = _run(roots["reference"], *command)
    reference = _hashes(roots["reference"], OUTPUTS[stage])
    killed = roots["killed"]
    _git_repo(killed)
    rng = random.Random(f"kill {case}")
    for _ in range(KILLS):
        process = _stage(killed, *command)
        time.sleep(rng.uniform(0.3, 1.0) * duration)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        assert _stray_files(killed, allowed) == []
        assert _untracked(killed) == []
    _run(killed, *command)
    assert _leftover_temporaries(killed) == []
    assert _untracked(killed) == []
    assert _hashes(killed, OUTPUTS[stage]) == reference
    if stage == "train":
        # Killed attempts' runs: FAILED and tagged orphaned, or FINISHED when the kill came after
        # train had logged everything (its outputs are written before it logs); none RUNNING.
        *interrupted, last = _runs(killed)
        assert last[0] == "FINISHED"
        assert [run for run in interrupted if run not in {("FAILED", 1), ("FINISHED", 0)}] == []


def test_next_start_sweeps_a_dead_writers_temporaries(population: Path, tmp_path: Path) -> None:
    """Temporaries of a killed writer (its lock released) go at the next start; a live writer's
    stay."""
    root = tmp_path / "root"
    shutil.copytree(population, root)
    dead = root / "data" / TEMP_DIR / "population.0123456789abcdef"
    (dead / "population").mkdir(parents=True)
    (dead / "population" / "people.parquet").write_bytes(b"rows")
    (root / "models" / "t" / ".model.txt.abc123.tmp").parent.mkdir(parents=True)
    (root / "models" / "t" / ".model.txt.abc123.tmp").write_text("legacy")
    live = root / "reports" / TEMP_DIR / "x.json.fedcba9876543210"
    live.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
            f"{live}.lock",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        _run(root, "validate")
        assert not dead.exists()
        assert not (root / "models" / "t" / ".model.txt.abc123.tmp").exists()
        assert live.exists()
    finally:
        holder.kill()
        holder.communicate()
