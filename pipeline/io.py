"""Paths and atomic, deterministic writers shared by every stage.

Writes go to a private temporary (``.tmp/`` beside the target, mode 0700, ignored by git and
DVC) and are renamed into place, so a failed stage never leaves a half-written output; a killed
one leaves only temporaries that the next stage start sweeps (``sweep_project``).
Parquet is always sorted on a key first: the Polars 2 streaming engine does not keep row order
through joins and group-bys.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import polars as pl

from pipeline.errors import PipelineError

PUBLISHED_DIGITS: Final = 10
"""Published floats keep 10 significant digits: the last bits of a float computation depend on
the machine (SIMD width, BLAS kernel, libm), and a published file must hash the same on every
machine of a kind (``metrics.json``, the audit's tables and ``audit.json``)."""


def significant(value: Any, *, digits: int = PUBLISHED_DIGITS) -> Any:
    """A float rounded to ``digits`` significant digits (anything else unchanged)."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{digits}g}")
    return value


def significant_floats(frame: pl.DataFrame, *, digits: int = PUBLISHED_DIGITS) -> pl.DataFrame:
    """Every Float64 column of ``frame`` rounded to ``digits`` significant digits."""
    return frame.with_columns(pl.col(pl.Float64).round_sig_figs(digits))


@dataclass(frozen=True)
class Paths:
    """Where each stage reads and writes, relative to the project root."""

    root: Path

    @classmethod
    def at(cls, root: str | Path = ".") -> Paths:
        return cls(Path(root).resolve())

    @property
    def population(self) -> Path:
        return self.root / "data" / "population"

    @property
    def truth(self) -> Path:
        return self.root / "data" / "truth"

    @property
    def scores(self) -> Path:
        return self.root / "data" / "scores"

    @property
    def outreach(self) -> Path:
        return self.root / "data" / "outreach"

    @property
    def key_fingerprint(self) -> Path:
        """The pseudonymisation key's fingerprint (stage ``keyfp``; a dependency of outreach)."""
        return self.root / "data" / "keys" / "pseudonym_key.fingerprint"

    @property
    def validated(self) -> Path:
        """The validate stage's receipt (:mod:`pipeline.receipt`; a dependency of features)."""
        return self.root / "data" / "validated.json"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- Temporaries: private, locked, swept after a crash --------------------------------------------

TEMP_DIR: Final = ".tmp"
"""Every temporary lives in a ``.tmp/`` folder (mode 0700) beside its target: same filesystem, so
the final rename is atomic; ignored by git and DVC (``.gitignore``, ``.dvcignore``)."""
LOCK_SUFFIX: Final = ".lock"
STAGE_LOCKS: Final = "stage-locks"
"""Sub-folder of the project's ``.tmp/`` holding the per-stage locks (never swept)."""
_ATTEMPTS: Final = 20
_STAGING: set[str] = set()
"""Staging folders of this process: a write inside one is already temporary, so it goes direct."""


def _inside_staging(target: Path) -> bool:
    return any(os.path.abspath(parent) in _STAGING for parent in target.parents)


def _private_area(parent: Path) -> Path:
    area = parent / TEMP_DIR
    area.mkdir(parents=True, exist_ok=True)
    area.chmod(0o700)  # mkdir's mode is masked by the umask, and the folder may predate us
    return area


def _owner_alive(lock: Path) -> bool:
    """True while another process holds ``lock``; False (and the lock removed) when nobody does."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        lock.unlink(missing_ok=True)
        return False
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_area(area: Path) -> list[Path]:
    """Remove the temporaries of dead writers from one ``.tmp/`` folder.

    An entry is live while its writer holds ``<entry>.lock`` (``fcntl.flock``, released by the
    kernel when the process dies, even by SIGKILL); anything else is stale.

    Returns
    -------
    list of Path
        The entries removed.
    """
    try:
        names = sorted(os.listdir(area))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in names:
        if name == STAGE_LOCKS or name.endswith(LOCK_SUFFIX):
            continue
        if not _owner_alive(area / f"{name}{LOCK_SUFFIX}"):
            _remove(area / name)
            removed.append(area / name)
    for name in names:  # locks whose entry was never made or is already gone
        if name.endswith(LOCK_SUFFIX) and not (area / name.removesuffix(LOCK_SUFFIX)).exists():
            _owner_alive(area / name)
    return removed


def _try_lock_new(lock: Path) -> int | None:
    """A new lock file, created and held; None when the name is taken or was swept meanwhile."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except (FileExistsError, FileNotFoundError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == lock.stat().st_ino:  # not swept between create and flock
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(fd)
    return None


@contextmanager
def _claimed_entry(parent: Path, name: str) -> Iterator[Path]:
    """A private (0700) folder in ``parent/.tmp/``, locked while the block runs, then removed."""
    for _ in range(_ATTEMPTS):
        area = _private_area(parent)
        sweep_area(area)
        entry = area / f"{name}.{secrets.token_hex(8)}"
        lock = area / f"{entry.name}{LOCK_SUFFIX}"
        if (fd := _try_lock_new(lock)) is not None:
            break
    else:
        raise OSError(f"{parent / TEMP_DIR}: could not claim a temporary entry")
    try:
        entry.mkdir(mode=0o700)
        yield entry
    finally:
        _remove(entry)
        lock.unlink(missing_ok=True)
        os.close(fd)
        with suppress(OSError):
            area.rmdir()  # only when empty


@contextmanager
def atomic_path(target: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a private temporary path for ``target``; rename it into place only on success.

    The temporary is ``.tmp/<name>.<random>/<name>`` beside ``target`` (folder 0700, file 0600);
    it is removed on failure, and by the next run's sweep if the process is killed. Inside a
    folder being staged by :func:`atomic_dir` the write goes straight to ``target``. With
    ``replace=False`` an existing ``target`` (say, made meanwhile by another process) is kept and
    the temporary dropped.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if _inside_staging(target):
        yield target
        return
    with _claimed_entry(target.parent, target.name) as entry:
        tmp = entry / target.name
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        yield tmp
        # published files get the usual umask-based mode, not the temporary's 0600
        os.chmod(tmp, 0o666 & ~_current_umask())
        if replace:
            os.replace(tmp, target)
        else:
            # link() never overwrites: the first writer's file wins
            with suppress(FileExistsError):
                os.link(tmp, target)


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a private staging folder for ``target``; swap it into place only on success.

    The previous ``target`` is first moved into the same private entry and removed after the
    swap, so a concurrent or killed run never meets a half-deleted folder.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _claimed_entry(target.parent, target.name) as entry:
        staged = entry / target.name
        staged.mkdir(mode=0o700)
        _STAGING.add(os.path.abspath(staged))
        try:
            yield staged
        finally:
            _STAGING.discard(os.path.abspath(staged))
        os.chmod(staged, 0o777 & ~_current_umask())
        with suppress(FileNotFoundError):
            os.replace(target, entry / "previous")
        os.replace(staged, target)


def _legacy_temporary(name: str, *, prefix: str = ".") -> bool:
    """Temporaries of earlier versions: ``.<name>.<random>.tmp`` beside the output."""
    return name.startswith(prefix) and name.endswith(".tmp") and name != TEMP_DIR


def sweep_project(root: str | Path) -> list[Path]:
    """Remove stale temporaries anywhere in the project's output folders (run at stage start).

    Sweeps every ``.tmp/`` folder under ``data/``, ``features/``, ``models/``, ``reports/`` and
    the root (live writers' entries are kept), and the earlier versions' ``.<name>.*.tmp`` in
    those folders (at the root, only ``.features.*.tmp``).

    Returns
    -------
    list of Path
        What was removed.
    """
    root = Path(root)
    removed = sweep_area(root / TEMP_DIR)
    removed += [
        _removed(root / name)
        for name in os.listdir(root)
        if _legacy_temporary(name, prefix=".features.")  # nothing else of the root's
    ]
    for top in ("data", "features", "models", "reports"):
        for folder, dirs, files in os.walk(root / top):
            here = Path(folder)
            if TEMP_DIR in dirs:
                removed += sweep_area(here / TEMP_DIR)
                with suppress(OSError):
                    (here / TEMP_DIR).rmdir()
            removed += [_removed(here / name) for name in dirs + files if _legacy_temporary(name)]
            dirs[:] = [name for name in dirs if name != TEMP_DIR and not _legacy_temporary(name)]
    return removed


def _removed(path: Path) -> Path:
    _remove(path)
    return path


class StageBusyError(PipelineError):
    """Another run of the same stage holds its lock."""


def hold_stage_lock(root: str | Path, name: str, *, wait: float) -> int:
    """Take the per-stage lock ``.tmp/stage-locks/<name>.lock`` for the rest of the process.

    Parameters
    ----------
    root
        Project root.
    name
        Stage name, with its target for per-target stages (e.g. ``train-emergency_admission``).
    wait
        Seconds to wait for another run to finish before giving up.

    Returns
    -------
    int
        The lock's file descriptor (closing it, or the process ending, releases the lock).

    Raises
    ------
    StageBusyError
        When another run still holds the lock after ``wait`` seconds, naming its process id.
    """
    folder = _private_area(Path(root)) / STAGE_LOCKS
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{name}{LOCK_SUFFIX}"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise StageBusyError(
                    f"stage {name} is already running in {root} (process {holder}; lock "
                    f"{path}); waited {wait:g} s. Let it finish (or stop it), then run again."
                ) from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


ROW_GROUP_SIZE = 250_000
"""Fixed row-group size: without it the row groups follow how a frame happens to be chunked, so
the bytes vary from run to run even when the data are identical."""


def person_range(ids: pl.Series) -> pl.Expr:
    """Rows whose ``person_id`` lies between the lowest and highest of ``ids``: as a scan's
    filter on a file written sorted by ``person_id`` (:func:`write_parquet`), the reader skips
    the row groups outside the range on their statistics."""
    return pl.col("person_id").is_between(pl.lit(ids.min()), pl.lit(ids.max()))


def write_parquet(frame: pl.DataFrame, target: str | Path, *, sort_by: str | Sequence[str]) -> Path:
    """Sort ``frame`` on ``sort_by`` and write it atomically as zstd parquet."""
    with atomic_path(target) as tmp:
        frame.sort(sort_by).write_parquet(
            tmp, compression="zstd", statistics=True, row_group_size=ROW_GROUP_SIZE
        )
    return Path(target)


@contextmanager
def parts_into(target: str | Path) -> Iterator[Path]:
    """Yield a private folder for the parts of ``target``; on success stream them, in name
    order, into ``target`` (zstd parquet, rows in order) atomically.

    Parts are parquet files of one schema whose names sort in row order (``part-<start>``
    zero-padded), written by this process or by tasks on workers that share the project's
    filesystem. Only one row group is held while they are combined, so a table of any length
    is written in the memory of its parts' largest. The folder and the parts are removed
    whatever happens, as every temporary of :func:`atomic_path`.
    """
    with atomic_path(target) as tmp:
        folder = tmp.parent / "parts"
        folder.mkdir(mode=0o700)
        yield folder
        pl.scan_parquet(sorted(folder.glob("*.parquet"))).sink_parquet(
            tmp,
            compression="zstd",
            statistics=True,
            row_group_size=ROW_GROUP_SIZE,
            maintain_order=True,
        )


def part_name(start: int) -> str:
    """The file name of the part whose first row is ``start`` (names sort in row order).

    >>> part_name(250_000)
    'part-000000250000.parquet'
    """
    return f"part-{start:012d}.parquet"


def sink_parquet(frame: pl.LazyFrame, target: str | Path, *, sort_by: str | Sequence[str]) -> Path:
    """Sort a lazy query on ``sort_by`` and stream it atomically to parquet (byte-stable)."""
    with atomic_path(target) as tmp:
        frame.sort(sort_by).sink_parquet(
            tmp, compression="zstd", statistics=True, row_group_size=ROW_GROUP_SIZE
        )
    return Path(target)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def dumps_json(payload: Any) -> str:
    """Deterministic JSON: sorted keys, two-space indent, NaN written as null."""
    return json.dumps(_nan_to_none(payload), indent=2, sort_keys=True, default=_json_default) + "\n"


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):  # NaN is not valid JSON
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(item) for item in value]
    return value


def write_json(payload: Any, target: str | Path) -> Path:
    """Write ``payload`` atomically as deterministic JSON."""
    return write_text(dumps_json(payload), target)


def write_text(text: str, target: str | Path) -> Path:
    """Write text atomically (UTF-8)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def read_json(source: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(source).read_text(encoding="utf-8"))


def scan_table(folder: str | Path, table: str) -> pl.LazyFrame:
    """Lazily scan a contract table stored as ``<table>.parquet`` or a folder ``<table>/``."""
    folder = Path(folder)
    single = folder / f"{table}.parquet"
    if single.exists():
        return pl.scan_parquet(single)
    parts = folder / table
    if parts.is_dir():
        return pl.scan_parquet(parts / "**" / "*.parquet")
    raise FileNotFoundError(f"{folder}: table {table!r} not found (expected {single} or {parts}/)")
