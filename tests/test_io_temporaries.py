"""Private, locked temporaries of the atomic writers (issue 14, items 1 and 7)."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

import pytest

from pipeline.io import (
    LOCK_SUFFIX,
    TEMP_DIR,
    atomic_dir,
    atomic_path,
    sweep_area,
    sweep_project,
    write_json,
    write_text,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_temporary_is_private_and_gone_after_the_write(tmp_path: Path) -> None:
    target = tmp_path / "models" / "t" / "model.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent.parent == target.parent / TEMP_DIR
        assert (_mode(tmp.parent.parent), _mode(tmp.parent), _mode(tmp)) == (0o700, 0o700, 0o600)
        tmp.write_text("rows")
    assert target.read_text() == "rows"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.txt"]
    assert _mode(target) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failed_write_leaves_no_temporary(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "lists") as staged:
        (staged / "a.csv").write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writes_inside_a_staged_folder_go_direct(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "features") as staged:
        write_json({"a": 1}, staged / "manifest.json")
        write_text("x", staged / "sub" / "note.txt")
        assert not (staged / TEMP_DIR).exists()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "features",
        "features/manifest.json",
        "features/sub",
        "features/sub/note.txt",
    ]


def test_dir_swap_replaces_the_previous_output(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.csv").write_text("old")
    with atomic_dir(tmp_path / "out") as staged:
        (staged / "new.csv").write_text("new")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new.csv"]
    assert not (tmp_path / TEMP_DIR).exists()


def test_sweep_removes_dead_entries_and_keeps_held_ones(tmp_path: Path) -> None:
    area = tmp_path / TEMP_DIR
    area.mkdir()
    for name in ("dead.1", "held.2", "orphan.3"):
        (area / name).mkdir()
    (area / f"dead.1{LOCK_SUFFIX}").touch()  # its process is gone: nobody holds the lock
    (area / f"stray.4{LOCK_SUFFIX}").touch()
    held = os.open(area / f"held.2{LOCK_SUFFIX}", os.O_CREAT | os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # another open file description: as another process
    try:
        removed = sweep_area(area)
        assert sorted(p.name for p in removed) == ["dead.1", "orphan.3"]
        assert sorted(p.name for p in area.iterdir()) == ["held.2", f"held.2{LOCK_SUFFIX}"]
    finally:
        os.close(held)
    sweep_area(area)
    assert list(area.iterdir()) == []


def test_sweep_project_finds_every_area_and_legacy_temporaries(tmp_path: Path) -> None:
    leftovers = [
        tmp_path / TEMP_DIR / "features.ab",
        tmp_path / "data" / TEMP_DIR / "population.cd",
        tmp_path / "models" / "t" / TEMP_DIR / "model.txt.ef",
        tmp_path / "models" / "t" / ".model.txt.x1y2.tmp",
        tmp_path / "data" / ".population.z9.tmp",
        tmp_path / ".features.k3.tmp",
    ]
    for path in leftovers:
        path.mkdir(parents=True)
    (tmp_path / ".notes.tmp").touch()  # not ours: kept
    (tmp_path / "models" / "t" / "model.txt").touch()
    assert sorted(sweep_project(tmp_path)) == sorted(leftovers)
    assert (tmp_path / ".notes.tmp").exists() and (tmp_path / "models" / "t" / "model.txt").exists()
    assert not (tmp_path / "data" / TEMP_DIR).exists()
