"""A stage killed (SIGKILL) at random points leaves no row-level data behind (issue 14, item 1).

Each case runs a real stage as ``python -m pipeline <stage>`` on a 20,000-person world: once
uninterrupted (the reference hashes), then killed three times after seeded random delays. After
each kill, every file is either in a declared output or in a private (0700) ``.tmp/`` folder,
and ``git status`` shows nothing untracked under data/, features/ or models/; the next run
sweeps the temporaries and gives the reference hashes.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.io import STAGE_LOCKS, TEMP_DIR

PROJECT = Path(__file__).resolve().parents[1]
OUTPUTS = {
    "synthesize": ("data/population", "data/truth", "reports/synthetic_calibration.json"),
    "features": ("features",),
}
KILLS = 3

pytestmark = pytest.mark.slow


def _write_params(root: Path, **population: object) -> None:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["population"] |= {"n_people": 20_000, "chunk_size": 2_000, **population}
    params["features"]["chunk_people"] = 10_000
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _stage(root: Path, stage: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", stage],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _run(root: Path, stage: str) -> float:
    started = time.perf_counter()
    process = _stage(root, stage)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr.decode()
    return time.perf_counter() - started


def _hashes(root: Path, outputs: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for output in outputs:
        path = root / output
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            found[str(file.relative_to(root))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def _git_repo(root: Path) -> None:
    """A git repository ignoring what the project's .gitignore files (and DVC's) ignore."""
    shutil.copy(PROJECT / ".gitignore", root / ".gitignore")
    (root / "data").mkdir(exist_ok=True)
    shutil.copy(PROJECT / "data" / ".gitignore", root / "data" / ".gitignore")
    git = ["git", "-C", str(root), "-c", "user.name=test", "-c", "user.email=test@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", ".gitignore", "data/.gitignore"], check=True)
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


CASES = {
    "synthesize": ("synthesize", {}),
    "synthesize-extract": ("synthesize", {"source": "extract"}),
    "features": ("features", {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_stage_leaves_nothing_and_rerun_matches(
    case: str, population: Path, tmp_path: Path
) -> None:
    stage, overrides = CASES[case]
    if overrides.get("source") == "extract":
        shutil.copytree(population / "data" / "population", tmp_path / "extract")
        overrides = overrides | {"extract_dir": str(tmp_path / "extract")}
    roots = {name: tmp_path / name for name in ("reference", "killed")}
    for root in roots.values():
        root.mkdir()
        _write_params(root, **overrides)
        if stage == "features":
            for table in ("population", "truth"):
                shutil.copytree(population / "data" / table, root / "data" / table)
    duration = _run(roots["reference"], stage)
    reference = _hashes(roots["reference"], OUTPUTS[stage])
    killed = roots["killed"]
    _git_repo(killed)
    allowed = OUTPUTS["synthesize"] + OUTPUTS[stage]
    rng = random.Random(f"kill {case}")
    for _ in range(KILLS):
        process = _stage(killed, stage)
        time.sleep(rng.uniform(0.3, 1.0) * duration)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        assert _stray_files(killed, allowed) == []
        assert _untracked(killed) == []
    _run(killed, stage)
    assert _leftover_temporaries(killed) == []
    assert _untracked(killed) == []
    assert _hashes(killed, OUTPUTS[stage]) == reference


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
