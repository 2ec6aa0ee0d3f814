"""Two direct runs of the same stage never race (issue 14, item 7): a per-stage lock."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.io import STAGE_LOCKS, TEMP_DIR, StageBusyError, hold_stage_lock
from tests.fixture_params import fixture_raw

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    params = fixture_raw()
    params["population"] |= {"n_people": 20_000, "chunk_size": 2_000}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def _start(root: Path, *, wait: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "synthesize"],
        cwd=root,
        env=os.environ | {"PHM_STAGE_LOCK_WAIT": str(wait)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _is_held(lock: Path) -> bool:
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _wait_until_held(lock: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not _is_held(lock):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_second_run_of_a_stage_stops_with_a_clear_message(root: Path) -> None:
    lock = root / TEMP_DIR / STAGE_LOCKS / "synthesize.lock"
    first = _start(root, wait=5)
    _wait_until_held(lock, first)
    second = _start(root, wait=0.2)
    _, message = second.communicate(timeout=60)
    assert second.returncode == 2
    assert "stage synthesize is already running" in message
    assert f"process {first.pid}" in message
    assert "Traceback" not in message
    _, first_errors = first.communicate(timeout=120)
    assert first.returncode == 0, first_errors
    assert (root / "data" / "population" / "people").is_dir()  # ICB partitions


def test_second_run_waits_for_the_first_then_runs(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    lock = root / TEMP_DIR / STAGE_LOCKS / "synthesize.lock"
    first = _start(root, wait=5)
    _wait_until_held(lock, first)
    second = _start(root, wait=120)
    outcomes = [process.communicate(timeout=180) for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outcomes
    single = tmp_path_factory.mktemp("single")
    (single / "params.yaml").write_text((root / "params.yaml").read_text())
    alone = _start(single, wait=0)
    alone.communicate(timeout=120)
    assert alone.returncode == 0
    for table in ("population", "truth"):
        assert _digest(root / "data" / table) == _digest(single / "data" / table)


def test_lock_is_per_stage_and_released_with_its_holder(tmp_path: Path) -> None:
    held = hold_stage_lock(tmp_path, "train-a", wait=0)
    other = hold_stage_lock(tmp_path, "train-b", wait=0)  # another target runs alongside
    with pytest.raises(StageBusyError, match=r"stage train-a is already running .* waited 0.1 s"):
        hold_stage_lock(tmp_path, "train-a", wait=0.1)
    os.close(held)
    os.close(hold_stage_lock(tmp_path, "train-a", wait=0))
    os.close(other)
