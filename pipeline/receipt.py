"""The validate stage's receipt: which population folder passed the contract, under which rules.

``validate`` writes ``data/validated.json`` once the contract passes: a BLAKE2b digest of every
file of the folder it checked (names and bytes), the params the rules read (targets, index date,
extract end) and a digest of the contract's code. The ``features`` stage re-checks the structural
rules only when the receipt does not describe the folder it is about to read (a new extract, a
folder changed since, features run by hand before validate), so a ``dvc repro`` reads the
population for the rules once, in ``validate``. Hashing is about 1 s per GB (10M people: 1.1 GB).

The receipt holds no row-level value (digests, dates, target names), but lives under ``data/``
with the data it describes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from pipeline import contract

__all__ = ["RECEIPT_FILE", "folder_digest", "matches", "population_receipt"]

RECEIPT_FILE: Final = "validated.json"
"""``data/validated.json``: written by ``validate``, read by ``features``."""


def folder_digest(folder: Path) -> str:
    """BLAKE2b of every file under ``folder``: relative names and contents, in name order."""
    digest = hashlib.blake2b(digest_size=32)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "blake2b").digest())
    return digest.hexdigest()


def population_receipt(
    folder: Path,
    *,
    target_names: Sequence[str],
    index_date: dt.date,
    extract_end: dt.date | None,
) -> dict[str, Any]:
    """What a pass of the contract on ``folder`` vouches for (JSON-ready, deterministic).

    Parameters
    ----------
    folder
        The population folder (``data/population`` or an extract).
    target_names, index_date, extract_end
        The params the contract's rules read (``targets``, ``index_date``,
        ``validation.extract_end``).
    """
    return {
        "population": folder_digest(folder),
        "contract": hashlib.blake2b(Path(contract.__file__).read_bytes()).hexdigest(),
        "targets": sorted(target_names),
        "index_date": index_date.isoformat(),
        "extract_end": None if extract_end is None else extract_end.isoformat(),
    }


def matches(path: Path, expected: dict[str, Any]) -> bool:
    """Whether the receipt at ``path`` exists and says exactly ``expected``."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(found == expected)
