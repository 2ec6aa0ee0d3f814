"""Paths and atomic, deterministic writers shared by every stage.

Writes go to a temporary file beside the target and are renamed into place, so a failed stage
never leaves a half-written output. Parquet is always sorted on a key first: the Polars 2
streaming engine does not keep row order through joins and group-bys.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl


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


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it into place only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; published files get the usual umask-based mode instead.
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; swap it into place only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_current_umask())
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


ROW_GROUP_SIZE = 250_000
"""Fixed row-group size: without it the row groups follow how a frame happens to be chunked, so
the bytes vary from run to run even when the data are identical."""


def write_parquet(frame: pl.DataFrame, target: str | Path, *, sort_by: str | Sequence[str]) -> Path:
    """Sort ``frame`` on ``sort_by`` and write it atomically as zstd parquet."""
    with atomic_path(target) as tmp:
        frame.sort(sort_by).write_parquet(
            tmp, compression="zstd", statistics=True, row_group_size=ROW_GROUP_SIZE
        )
    return Path(target)


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
