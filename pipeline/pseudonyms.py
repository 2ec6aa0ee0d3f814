"""Keyed pseudonyms: ``HMAC-SHA256(secret, person_id)`` as 64 lower-case hex characters.

The standard library's ``hmac`` and ``hashlib`` do the work (one C call per id; only the people
selected for a list are pseudonymised, so a comprehension over their ids is fast enough). The
secret comes from an environment variable or else a key file kept outside git; the same secret
gives the same pseudonyms across runs and clones. See ``docs/outreach.md``.

DVC cannot see the key, so its fingerprint stands in for it: ``HMAC-SHA256(key, label)`` of a
fixed label (never the key, nor a plain hash of it), written by the ``keyfp`` stage to
``data/keys/pseudonym_key.fingerprint``, a dependency of ``outreach``. Lists made under one key
are then never restored (run-cache) or kept (``dvc status``) under another, and outreach refuses
to run with a key other than the recorded one.

Examples
--------
>>> import polars as pl
>>> pseudonymise(pl.Series("person_id", ["Hi There"]), b"\\x0b" * 20).item()[:16]
'b0344c61d8db3853'
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import polars as pl

from pipeline.errors import ContractError, StageError
from pipeline.io import write_text

__all__ = [
    "check_key_fingerprint",
    "key_fingerprint",
    "pseudonymise",
    "read_secret",
    "write_key_fingerprint",
]

FINGERPRINT_LABEL: Final = b"phm-equity-pipeline pseudonym key fingerprint v1"
"""The fixed message whose HMAC under the key is the key's fingerprint."""
SHOWN_DIGITS: Final = 12


def pseudonymise(person_ids: pl.Series, key: bytes) -> pl.Series:
    """HMAC-SHA256 of each UTF-8 id, as 64 lower-case hex characters.

    Parameters
    ----------
    person_ids
        String series (e.g. ``person_id``); nulls are not allowed.
    key
        The secret key (see :func:`read_secret`).

    Returns
    -------
    pl.Series
        String series named ``pseudonym``, same length and order as ``person_ids``.

    Raises
    ------
    ContractError
        When an id is null (it would have no pseudonym).
    """
    if person_ids.null_count():
        raise ContractError(
            f"{person_ids.name}: {person_ids.null_count()} null values cannot be pseudonymised"
        )
    digests = [
        hmac.new(key, person_id.encode("utf-8"), hashlib.sha256).hexdigest()
        for person_id in person_ids.cast(pl.String).to_list()
    ]
    return pl.Series("pseudonym", digests, dtype=pl.String)


def read_secret(
    *, secret_env: str, secret_file: str, environ: Mapping[str, str] | None = None
) -> bytes:
    """The pseudonymisation key: environment variable first, then the key file.

    Parameters
    ----------
    secret_env
        Name of the environment variable (``params.outreach.secret_env``).
    secret_file
        Path of the key file (``params.outreach.secret_file``; ``~`` is expanded).
    environ
        The environment to read (default ``os.environ``).

    Returns
    -------
    bytes
        The secret as UTF-8 bytes (surrounding whitespace stripped).

    Raises
    ------
    StageError
        When neither holds a secret, saying how to set one.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(secret_env, "").strip()
    if value:
        return value.encode("utf-8")
    path = Path(secret_file).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8").strip()
        if text:
            return text.encode("utf-8")
    raise StageError(
        "outreach: no pseudonymisation secret. Set the environment variable "
        f"{secret_env} (e.g. export {secret_env}=$(python3 -c "
        "'import secrets; print(secrets.token_hex(32))')) or create the key file "
        f"{path} outside git (`make run` creates it; keep it private: chmod 600). "
        "The same secret gives the same pseudonyms."
    )


def key_fingerprint(key: bytes) -> str:
    """The key's fingerprint: ``HMAC-SHA256(key, FINGERPRINT_LABEL)`` as 64 hex characters.

    Identifies a key without revealing it (unlike a plain hash, it cannot be checked against
    guessed keys without the HMAC construction, and it is never a pseudonym of any id).

    Examples
    --------
    >>> key_fingerprint(b"a") == key_fingerprint(b"a") != key_fingerprint(b"b")
    True
    """
    return hmac.new(key, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()


def write_key_fingerprint(key: bytes, target: Path) -> Path:
    """Write the key's fingerprint (one line) atomically to ``target``."""
    return write_text(key_fingerprint(key) + "\n", target)


def check_key_fingerprint(key: bytes, recorded: Path) -> None:
    """Refuse a key other than the one whose fingerprint ``recorded`` holds (when it exists).

    Raises
    ------
    StageError
        When the fingerprints differ, saying how to record the new key.
    """
    if not recorded.exists():
        return
    expected = recorded.read_text(encoding="utf-8").strip()
    actual = key_fingerprint(key)
    if expected != actual:
        raise StageError(
            f"outreach: the pseudonymisation key (fingerprint {actual[:SHOWN_DIGITS]}...) is not "
            f"the one recorded in {recorded} ({expected[:SHOWN_DIGITS]}...), which DVC tracks "
            "for the outreach lists. After changing the key, record it with "
            "`python -m pipeline keyfp` (`make run` does), then run `dvc repro`."
        )
