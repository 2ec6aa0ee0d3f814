"""Stage ``outreach``: capacity-limited, pseudonymised outreach lists per ICB, with reasons.

For every target the eligible cohort (``data/scores/<target>.parquet``) is ranked by a policy,
cut at the outreach capacity and written as one CSV per ICB (``data/outreach/<target>/<icb>.csv``)
plus one parquet per target. Each row carries a keyed pseudonym (never the person_id), the
practice and ICB, the rank within the ICB list, the risk score and tier, the top three reasons in
plain words (from LightGBM ``pred_contrib``, computed only for the people selected) and a
suggested action from the Core20PLUS5 clinical areas. ``reports/outreach_summary.json`` describes
the lists in aggregate, disclosure-controlled numbers only.

Policies (``params.outreach.policy``)
-------------------------------------
``risk``
    Rank by the calibrated risk score.
``core20plus5``
    Rank by ``risk_score * core20_uplift`` for IMD quintile 1 (Core20: the most deprived 20%
    nationally) and ``* plus_uplift`` for the PLUS ethnic groups (``plus_groups``); both uplifts
    multiply when both apply. The uplift only re-orders people: nobody's score is changed.
``equal_opportunity``
    Group thresholds over IMD quintiles from fairlearn's ``ThresholdOptimizer``
    (``true_positive_rate_parity``) fitted on the validation split and matched to the list's
    cut-off score (``pipeline.fairness``, the rule the audit compares). Its randomised rule
    (two thresholds mixed with probabilities ``p0``/``p1`` per group) is made deterministic by
    taking the probability-weighted threshold of the two. People are ranked by
    ``risk_score / threshold`` of their quintile, so the capacity cut is the same multiple of
    every group's threshold.
``need_adjusted``
    Rank by the audit's ``need_score`` (``data/scores/need/<target>.parquet``).

Ties are broken by pseudonym, so the same inputs and secret give byte-identical files.

Pseudonyms
----------
``HMAC-SHA256(secret, person_id)`` as 64 hex characters. The secret comes from the environment
variable ``params.outreach.secret_env`` or else the file ``params.outreach.secret_file`` (its text,
stripped). The HMAC is computed by a vectorised SHA-256 over numpy arrays (:func:`hmac_sha256_hex`):
the two key blocks are compressed once (the HMAC "midstates"), then every person_id costs two
compressions done column-wise for all people at once - no Python loop over people.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline import contract, disclosure, fairness, seeds, selection
from pipeline.config import OutreachParams, Params
from pipeline.errors import ContractError, ParamsError, StageError
from pipeline.io import Paths, atomic_dir, read_json, write_parquet
from pipeline.selection import CapacityMode

__all__ = [
    "OUTREACH_COLUMNS",
    "Policy",
    "attach_reasons",
    "equal_opportunity_thresholds",
    "explain_selected",
    "hmac_sha256_hex",
    "policy_priority",
    "read_secret",
    "run",
    "select_outreach",
    "summarise_target",
]

Policy = Literal["risk", "core20plus5", "equal_opportunity", "need_adjusted"]

OUTREACH_COLUMNS: Final = (
    "pseudonym",
    "practice_id",
    "icb_code",
    "rank",
    "risk_score",
    "risk_tier",
    "reason_1",
    "reason_2",
    "reason_3",
    "suggested_action",
)
"""The columns of every outreach CSV and parquet, in order. Nothing else leaves the stage."""

COHORT_COLUMNS: Final = ("practice_id", "icb_code", "imd_quintile", "ethnicity_group", "region")
"""Sensitive attributes read from ``features/features.parquet`` (for units, policies, summary)."""

MAKE_UP_DIMENSIONS: Final = ("imd_quintile", "ethnicity_group", "region")
N_REASONS: Final = 3
RISK_SCORE_DECIMALS: Final = 4
SUMMARY_FILE: Final = "outreach_summary.json"
CACHE_DIR: Final = Path("data") / ".cache" / "outreach"
"""Top contributions of people listed before, per target and (model, features) fingerprint."""
_SAFE_FILE_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# --- Vectorised HMAC-SHA256 ---

_SHA256_K: Final = np.array(
    [
        0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4,
        0xAB1C5ED5, 0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE,
        0x9BDC06A7, 0xC19BF174, 0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F,
        0x4A7484AA, 0x5CB0A9DC, 0x76F988DA, 0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7,
        0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967, 0x27B70A85, 0x2E1B2138, 0x4D2C6DFC,
        0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85, 0xA2BFE8A1, 0xA81A664B,
        0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070, 0x19A4C116,
        0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
        0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7,
        0xC67178F2,
    ],
    dtype=np.uint32,
)  # fmt: skip
_SHA256_H0: Final = np.array(
    [
        0x6A09E667,
        0xBB67AE85,
        0x3C6EF372,
        0xA54FF53A,
        0x510E527F,
        0x9B05688C,
        0x1F83D9AB,
        0x5BE0CD19,
    ],
    dtype=np.uint32,
)
_BLOCK: Final = 64
_HMAC_CHUNK: Final = 1 << 13  # rows per vectorised pass: cache-sized arrays run fastest
_HEX_DIGITS: Final = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _rotr(x: np.ndarray, n: int) -> np.ndarray:
    return (x >> np.uint32(n)) | (x << np.uint32(32 - n))


def _sha256_compress(state: np.ndarray, words: np.ndarray) -> np.ndarray:
    """One SHA-256 compression for many messages at once.

    ``state`` is (8, rows) and ``words`` (16, rows), both uint32; uint32 arithmetic on arrays
    wraps modulo 2**32 as SHA-256 requires.
    """
    schedule = np.empty((64, words.shape[1]), dtype=np.uint32)
    schedule[:16] = words
    for t in range(16, 64):
        w15, w2 = schedule[t - 15], schedule[t - 2]
        s0 = _rotr(w15, 7) ^ _rotr(w15, 18) ^ (w15 >> np.uint32(3))
        s1 = _rotr(w2, 17) ^ _rotr(w2, 19) ^ (w2 >> np.uint32(10))
        schedule[t] = schedule[t - 16] + s0 + schedule[t - 7] + s1
    a, b, c, d, e, f, g, h = (state[i].copy() for i in range(8))
    for t in range(64):
        big_s1 = _rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)
        choose = (e & f) ^ (~e & g)
        temp1 = h + big_s1 + choose + _SHA256_K[t] + schedule[t]
        big_s0 = _rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)
        majority = (a & b) ^ (a & c) ^ (b & c)
        temp2 = big_s0 + majority
        a, b, c, d, e, f, g, h = temp1 + temp2, a, b, c, d + temp1, e, f, g
    return state + np.stack([a, b, c, d, e, f, g, h])


def _key_midstates(key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """SHA-256 states after the HMAC inner (key ^ ipad) and outer (key ^ opad) blocks."""
    if len(key) > _BLOCK:
        import hashlib

        key = hashlib.sha256(key).digest()
    padded = np.frombuffer(key.ljust(_BLOCK, b"\0"), dtype=np.uint8)
    states = []
    for pad in (0x36, 0x5C):
        words = (padded ^ np.uint8(pad)).view(">u4").astype(np.uint32).reshape(16, 1)
        states.append(_sha256_compress(_SHA256_H0.reshape(8, 1), words))
    return states[0], states[1]


def _padded_messages(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """SHA-256 padding of many byte strings that follow a 64-byte key block.

    Returns (blocks * 16, rows) big-endian words; every row here has the same number of blocks.
    """
    rows = len(lengths)
    n_blocks = int((lengths.max() + 9 + _BLOCK - 1) // _BLOCK)
    width = n_blocks * _BLOCK
    matrix = np.zeros((rows, width), dtype=np.uint8)
    flat = matrix.reshape(-1)
    total = int(lengths.sum())
    # Scatter every byte to row * width + position-in-string, without a loop over rows.
    row_of_byte = np.repeat(np.arange(rows, dtype=np.int64), lengths)
    offset_in_string = np.arange(total, dtype=np.int64) - np.repeat(
        np.cumsum(lengths) - lengths, lengths
    )
    flat[row_of_byte * width + offset_in_string] = data[
        np.repeat(starts, lengths) + offset_in_string
    ]
    flat[np.arange(rows, dtype=np.int64) * width + lengths] = 0x80
    bit_length = ((lengths + _BLOCK) * 8).astype(">u8").view(np.uint8).reshape(rows, 8)
    matrix[:, width - 8 :] = bit_length
    return matrix.view(">u4").astype(np.uint32).T.copy()


def hmac_sha256_hex(values: pl.Series, key: bytes) -> pl.Series:
    """Keyed pseudonyms: HMAC-SHA256 of each UTF-8 string, as 64 lower-case hex characters.

    Vectorised over all rows (SHA-256 on uint32 columns), identical to
    ``hmac.new(key, value.encode(), "sha256").hexdigest()``.

    Parameters
    ----------
    values
        String series (e.g. person_id); nulls are not allowed.
    key
        The secret key.

    Returns
    -------
    pl.Series
        String series named ``pseudonym``, same length and order as ``values``.
    """
    if values.null_count():
        raise ContractError(
            f"{values.name}: {values.null_count()} null values cannot be pseudonymised"
        )
    if values.len() == 0:
        return pl.Series("pseudonym", [], dtype=pl.String)
    inner_state, outer_state = _key_midstates(key)
    binary = values.cast(pl.String).cast(pl.Binary).to_arrow()
    if isinstance(binary, pa.ChunkedArray):
        binary = binary.combine_chunks()
    binary = binary.cast(pa.large_binary())
    _, offsets_buffer, data_buffer = binary.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[
        binary.offset : binary.offset + len(binary) + 1
    ]
    data = (
        np.frombuffer(data_buffer, dtype=np.uint8)
        if data_buffer is not None
        else np.zeros(0, dtype=np.uint8)
    )
    starts, lengths = offsets[:-1], np.diff(offsets)
    digests = np.empty((8, len(lengths)), dtype=np.uint32)
    n_blocks = (lengths + 9 + _BLOCK - 1) // _BLOCK
    # A handful of message lengths (in 64-byte blocks): one vectorised pass per length and chunk.
    for blocks in np.unique(n_blocks):
        rows = np.flatnonzero(n_blocks == blocks)
        for begin in range(0, len(rows), _HMAC_CHUNK):
            part = rows[begin : begin + _HMAC_CHUNK]
            words = _padded_messages(data, starts[part], lengths[part])
            state = np.repeat(inner_state, len(part), axis=1)
            for block in range(int(blocks)):
                state = _sha256_compress(state, words[block * 16 : (block + 1) * 16])
            outer_words = np.zeros((16, len(part)), dtype=np.uint32)
            outer_words[:8] = state
            outer_words[8] = 0x80000000
            outer_words[15] = (_BLOCK + 32) * 8
            digests[:, part] = _sha256_compress(
                np.repeat(outer_state, len(part), axis=1), outer_words
            )
    digest_bytes = np.ascontiguousarray(digests.T).astype(">u4").view(np.uint8).reshape(-1, 32)
    hex_bytes = np.empty((digest_bytes.shape[0], 64), dtype=np.uint8)
    hex_bytes[:, 0::2] = _HEX_DIGITS[digest_bytes >> 4]
    hex_bytes[:, 1::2] = _HEX_DIGITS[digest_bytes & 0x0F]
    hex_offsets = np.arange(0, hex_bytes.size + 1, 64, dtype=np.int64)
    hex_array = pa.Array.from_buffers(
        pa.large_string(),
        len(hex_offsets) - 1,
        [None, pa.py_buffer(hex_offsets), pa.py_buffer(hex_bytes.reshape(-1))],
    )
    return pl.Series("pseudonym", hex_array, dtype=pl.String)


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


# --- Capacity ---


# --- Policies ---


def equal_opportunity_thresholds(
    validation: pl.DataFrame,
    *,
    group: str = "imd_quintile",
    cut_score: float | None = None,
    rng: np.random.Generator,
) -> dict[str, float]:
    """Per-group score thresholds with equal true positive rates, fitted on the validation split.

    The same rule the audit compares (:func:`pipeline.fairness.equal_opportunity_thresholds`):
    fairlearn ThresholdOptimizer with ``true_positive_rate_parity``, matched to the list's cut-off
    score and derandomised, so the thresholds are reproducible.

    Parameters
    ----------
    validation
        Validation-split rows with ``risk_score``, ``outcome`` and ``group``.
    group
        The grouping column (IMD quintile).
    cut_score
        The risk score at the capacity cut-off (None: fairlearn's own optimum).
    rng
        Draws the subsample of negatives that matches the optimiser to the cut-off (the audit
        uses the same stream, :func:`pipeline.seeds.rng` ``("equal_opportunity", target)``).

    Returns
    -------
    dict[str, float]
        Threshold per group label.
    """
    frame = validation.filter(pl.col(group).is_not_null())
    try:
        return fairness.equal_opportunity_thresholds(
            frame["risk_score"].to_numpy(),
            frame["outcome"].to_numpy(),
            frame[group].to_numpy(),
            cut_score=cut_score,
            rng=rng,
        )
    except StageError as error:
        raise StageError(f"outreach: {error} (validation split, {group})") from None


def policy_priority(
    cohort: pl.LazyFrame,
    *,
    policy: Policy,
    outreach: OutreachParams,
    thresholds: Mapping[str, float] | None = None,
    need: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Add ``priority`` (higher = contact first) to the cohort according to the policy.

    Parameters
    ----------
    cohort
        Scores joined with ``imd_quintile`` and ``ethnicity_group``.
    policy
        See the module docstring.
    outreach
        The outreach params (uplifts and PLUS groups).
    thresholds
        Group thresholds for ``equal_opportunity`` (see :func:`equal_opportunity_thresholds`).
    need
        ``person_id``, ``need_score`` for ``need_adjusted``.

    Returns
    -------
    pl.LazyFrame
        The cohort with a Float64 ``priority``.
    """
    score = pl.col("risk_score")
    if policy == "risk":
        return cohort.with_columns(score.alias("priority"))
    if policy == "core20plus5":
        priority = fairness.core20plus5_priority(
            core20_uplift=outreach.core20_uplift,
            plus_uplift=outreach.plus_uplift,
            plus_groups=outreach.plus_groups,
        )
        return cohort.with_columns(priority.alias("priority"))
    if policy == "equal_opportunity":
        if not thresholds:
            raise StageError("outreach: equal_opportunity needs fitted group thresholds")
        # People in a quintile the optimiser never saw (e.g. missing IMD) get the mean threshold.
        return cohort.with_columns(
            fairness.equal_opportunity_priority(thresholds).alias("priority")
        )
    if policy == "need_adjusted":
        if need is None:
            raise StageError("outreach: need_adjusted needs the audit's need scores")
        return cohort.join(
            need.select("person_id", pl.col("need_score").cast(pl.Float64)),
            on="person_id",
            how="left",
        ).with_columns(pl.col("need_score").fill_null(-math.inf).alias("priority"))
    raise ParamsError(f"outreach.policy: unknown policy {policy!r}")


# --- Selection ---


def select_outreach(
    cohort: pl.LazyFrame,
    capacity: pl.DataFrame,
    *,
    capacity_mode: CapacityMode,
    key: bytes,
) -> pl.DataFrame:
    """The people to contact: the top of each capacity unit by priority, ties by pseudonym.

    Only people who can make the cut (priority rank, ties counted at their lowest rank, within
    the unit's capacity) are pseudonymised: the HMAC runs on about ``capacity`` rows, not the
    cohort.

    Parameters
    ----------
    cohort
        With ``person_id``, ``priority``, ``icb_code``, ``practice_id`` and the scores.
    capacity
        From :func:`pipeline.selection.list_sizes`.
    capacity_mode
        Which unit the capacity applies to.
    key
        The pseudonymisation secret.

    Returns
    -------
    pl.DataFrame
        The selected rows with ``pseudonym`` and ``rank`` (1 = contact first within the ICB list),
        sorted by ``icb_code``, ``rank``.
    """
    candidates = (
        cohort.with_columns(selection.unit_expr(capacity_mode))
        .join(capacity.lazy().select("unit", "list_size"), on="unit", how="left")
        .filter(pl.col("priority").rank("min", descending=True).over("unit") <= pl.col("list_size"))
        .collect()
    )
    candidates = candidates.with_columns(hmac_sha256_hex(candidates["person_id"], key))
    # Eager from here: sorts and cumulative counts rely on row order.
    selected = (
        candidates.sort(["unit", "priority", "pseudonym"], descending=[False, True, False])
        .filter(pl.int_range(pl.len()).over("unit") < pl.col("list_size"))
        .sort(["icb_code", "priority", "pseudonym"], descending=[False, True, False])
        .with_columns((pl.int_range(pl.len()).over("icb_code") + 1).cast(pl.Int64).alias("rank"))
        .drop("unit", "list_size")
    )
    return selected


# --- Reasons ---

# Core20PLUS5 adult clinical areas (and the routine reviews they lead to), by feature keyword.
# The first matching rule names the action; practice-level context never names one.
_ACTION_RULES: Final = (
    (("severe_mental", "antipsychotic"), "SMI annual physical health check"),
    (("copd", "asthma", "bronchodilator", "respiratory"), "COPD / chronic respiratory review"),
    (("hba1c", "diabetes"), "diabetes review"),
    (("sbp", "dbp", "hypertension", "ckd", "blood_pressure"),
     "blood pressure check (hypertension case-finding)"),
    (("cholesterol", "lipid", "chd", "stroke", "atrial", "heart_failure", "cvd"),
     "cardiovascular risk review (lipid optimisation)"),
    (("smok",), "smoking cessation support"),
    (("cancer",), "early cancer diagnosis: check screening uptake"),
    (("emergency_admission", "ae_attendance"),
     "proactive care review (multidisciplinary case management)"),
)  # fmt: skip
_DEFAULT_ACTION: Final = {
    "emergency_admission": "proactive care review (multidisciplinary case management)",
    "ae_attendance": "proactive care review (multidisciplinary case management)",
    "cvd_event": "blood pressure check (hypertension case-finding)",
    "diabetes_onset": "diabetes prevention review (NHS Diabetes Prevention Programme)",
}
_NEVER_A_REASON: Final = ("ethnic",)
"""Features that may be model inputs but must never appear on a list (no ethnicity on rows)."""
_FLAG_OPPOSITES: Final = {
    "rural": "lives in an urban area",
    "sex_female": "recorded sex is not female",
}


def action_for_feature(feature: str) -> str | None:
    """The Core20PLUS5 action suggested by a person-level feature name, or None."""
    name = feature.lower()
    if name.startswith("practice_"):
        return None
    for keywords, action in _ACTION_RULES:
        if any(word in name for word in keywords):
            return action
    return None


def feature_glossary(manifest: Any, feature_names: Sequence[str]) -> pl.DataFrame:
    """One row per model feature: how to say it in plain words.

    Reads ``features/manifest.json`` (``{"features": [{"name", "description", "dtype",
    "categorical", "categories", ...}]}``; a plain ``{name: description}`` mapping also works).
    The manifest's descriptions are words that follow a value ("emergency admissions in the last
    12 months"); the kind of phrase is chosen from the feature's name and dtype.

    Returns
    -------
    pl.DataFrame
        ``feature``, ``kind`` (age, decile, measurement, days, count, share, rate, flag,
        category, numeric), ``description``, ``singular`` (a count's words after "1"),
        ``label`` (what a measurement or a missing value is called), ``unit``, ``negation``
        (a flag's words when it is 0), ``action`` (Core20PLUS5 area or null) and
        ``reportable`` (False for ethnicity, which never appears on a list).
    """
    entries = _manifest_entries(manifest)
    rows = []
    for name in feature_names:
        entry = entries.get(name, {})
        raw = str(entry.get("description") or name.replace("_", " "))
        description = re.sub(r"\s*\(empty when none recorded\)", "", raw).strip().rstrip(".")
        kind = str(entry.get("kind") or _infer_kind(name, entry))
        label, unit = description, entry.get("unit")
        if kind == "measurement":
            match = re.match(r"^(?:latest\s+)?(.*?)\s*(?:\(([^)]*)\))?$", description)
            label = match.group(1) if match else description
            unit = unit or (match.group(2) if match else None) or _infer_unit(name)
        elif kind == "days":
            label = re.sub(r"^days since the (?:last|latest) ", "", description)
        elif kind == "share":
            description = re.sub(r"^share of ", "", description)
        rows.append(
            {
                "feature": name,
                "kind": kind,
                "description": description,
                "singular": _singular(description) if kind == "count" else description,
                "label": label,
                "unit": unit,
                "negation": _negation(name, description),
                "action": action_for_feature(name),
                "reportable": not any(word in name.lower() for word in _NEVER_A_REASON),
            }
        )
    schema = {
        "feature": pl.String,
        "kind": pl.String,
        "description": pl.String,
        "singular": pl.String,
        "label": pl.String,
        "unit": pl.String,
        "negation": pl.String,
        "action": pl.String,
        "reportable": pl.Boolean,
    }
    return pl.DataFrame(rows, schema=schema)


def _manifest_entries(manifest: Any) -> dict[str, dict[str, Any]]:
    features = manifest.get("features", manifest) if isinstance(manifest, dict) else manifest
    entries: dict[str, dict[str, Any]] = {}
    if isinstance(features, dict):
        for name, value in features.items():
            entries[str(name)] = value if isinstance(value, dict) else {"description": value}
    elif isinstance(features, list):
        for item in features:
            if isinstance(item, dict) and "name" in item:
                entries[str(item["name"])] = item
    return entries


def _infer_kind(name: str, entry: Mapping[str, Any]) -> str:
    lowered = name.lower()
    if entry.get("categorical"):
        return "category"
    if lowered in {"age", "age_years"}:
        return "age"
    if lowered.startswith("imd_decile"):
        return "decile"
    if lowered.startswith("latest_"):
        return "measurement"
    if lowered.startswith("days_since_"):
        return "days"
    if lowered.startswith(("n_", "count_")):
        return "count"
    if lowered.startswith(("practice_prevalence_", "share_")):
        return "share"
    if "_rate" in lowered:
        return "rate"
    flag_names = lowered.startswith(("has_", "is_", "no_prior_")) or lowered.endswith("_missing")
    if flag_names or lowered in _FLAG_OPPOSITES or entry.get("dtype") == "Boolean":
        return "flag"
    return "numeric"


def _infer_unit(name: str) -> str | None:
    for code, (unit, _, _) in contract.MEASUREMENT_CODES.items():
        if code in name.lower():
            return unit
    return None


def _singular(description: str) -> str:
    """The phrase after the number 1: "emergency admissions in ..." -> "emergency admission in"."""
    words = description.split(" ")
    for index, word in enumerate(words):
        if word == "diagnoses":
            words[index] = "diagnosis"
            break
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            words[index] = word[:-1]
            break
    return " ".join(words)


def _negation(name: str, description: str) -> str:
    """What a flag says when it is 0 ("no diabetes recorded", "HbA1c recorded")."""
    if name in _FLAG_OPPOSITES:
        return _FLAG_OPPOSITES[name]
    if description.startswith("no "):
        return description[3:]
    if description.endswith(" recorded"):
        return "no " + description
    return description + ": no"


def _number_text(value: pl.Expr, decimals: int = 1) -> pl.Expr:
    whole = value.round(0)
    return (
        pl.when(value == whole)
        .then(whole.cast(pl.Int64).cast(pl.String))
        .otherwise(value.round(decimals).cast(pl.String))
    )


def _reason_text(value: pl.Expr) -> pl.Expr:
    """Plain words for one (feature, value) pair, by the feature's kind."""
    kind, description, label = pl.col("kind"), pl.col("description"), pl.col("label")
    unit_suffix = pl.when(pl.col("unit").is_null()).then(pl.lit("")).otherwise(" " + pl.col("unit"))
    number = _number_text(value)
    missing = value.is_null() | value.is_nan()
    return (
        pl.when(missing & kind.is_in(["measurement", "days"]))
        .then("no " + label + " recorded")
        .when(missing)
        .then(description + ": not recorded")
        .when(kind == "flag")
        .then(pl.when(value > 0).then(description).otherwise(pl.col("negation")))
        .when(kind == "age")
        .then("age " + number)
        .when(kind == "decile")
        .then("home area in IMD decile " + number + " (1 = most deprived)")
        .when(kind == "measurement")
        .then(label + " " + number + unit_suffix)
        .when(kind == "share")
        .then((value * 100).round(0).cast(pl.Int64).cast(pl.String) + "% of " + description)
        .when(kind == "rate")
        .then(_number_text(value, 2) + " " + description)
        .when(kind == "category")
        .then(description + " (code " + number + ")")
        .when((kind == "count") & (value == 1))
        .then("1 " + pl.col("singular"))
        .otherwise(number + " " + description)  # descriptions follow a value and name the unit
    )


def top_contributions(
    person_ids: pl.Series, contributions: np.ndarray, glossary: pl.DataFrame
) -> pl.DataFrame:
    """The three largest feature contributions per person (long: one row per position).

    Parameters
    ----------
    person_ids
        The people, in the row order of ``contributions``.
    contributions
        ``Booster.predict(X, pred_contrib=True)`` (last column: the bias, ignored).
    glossary
        From :func:`feature_glossary`; features not ``reportable`` (ethnicity) are never picked.

    Returns
    -------
    pl.DataFrame
        ``person_id``, ``position`` (1-3), ``feature_index`` (into the glossary),
        ``contribution`` (may be <= 0: only positive ones become reasons).
    """
    names = glossary["feature"].to_list()
    contrib = np.array(contributions, dtype=np.float64).reshape(len(person_ids), -1)
    contrib = contrib[:, : len(names)]
    contrib[:, ~glossary["reportable"].to_numpy()] = -np.inf  # never name ethnicity on a list
    top = min(N_REASONS, len(names))
    # Stable sort of the negated contributions: equal contributions keep the feature order.
    order = np.argsort(-contrib, axis=1, kind="stable")[:, :top]
    return pl.DataFrame(
        {
            "person_id": np.repeat(person_ids.to_numpy(), top),
            "position": np.tile(np.arange(1, top + 1, dtype=np.int8), len(person_ids)),
            "feature_index": order.reshape(-1).astype(np.int32),
            "contribution": np.take_along_axis(contrib, order, axis=1).reshape(-1),
        },
        schema=_TOP_SCHEMA,
    )


_TOP_SCHEMA: Final = {
    "person_id": pl.String,
    "position": pl.Int8,
    "feature_index": pl.Int32,
    "contribution": pl.Float64,
}


def render_reasons(
    top: pl.DataFrame, features: pl.DataFrame, glossary: pl.DataFrame, *, default_action: str
) -> pl.DataFrame:
    """Plain-words ``reason_1..3`` and ``suggested_action`` from :func:`top_contributions`.

    Parameters
    ----------
    top
        From :func:`top_contributions` (or the cache of earlier runs).
    features
        ``person_id`` and the model inputs named in the glossary, one row per person.
    glossary
        From :func:`feature_glossary`.
    default_action
        Action when no reason points to a clinical area (from the target's outcome).

    Returns
    -------
    pl.DataFrame
        ``person_id``, ``reason_1``, ``reason_2``, ``reason_3``, ``suggested_action``, in the
        row order of ``features``.
    """
    names = glossary["feature"].to_list()
    numeric = features.select(
        [pl.col(name).cast(pl.Float64, strict=False) for name in names]
    ).to_numpy()
    rows = features.select("person_id").with_row_index("row")
    positive = top.filter(pl.col("contribution") > 0).join(rows, on="person_id", how="inner")
    values = numeric[positive["row"].to_numpy(), positive["feature_index"].to_numpy()]
    words = (
        positive.with_columns(pl.Series("value", values, dtype=pl.Float64))
        .join(
            glossary.with_row_index("feature_index").with_columns(
                pl.col("feature_index").cast(pl.Int32)
            ),
            on="feature_index",
            how="left",
        )
        .with_columns(_reason_text(pl.col("value")).alias("reason"))
    )
    reasons = words.group_by("person_id").agg(
        *[
            pl.col("reason").filter(pl.col("position") == k).first().alias(f"reason_{k}")
            for k in range(1, N_REASONS + 1)
        ],
        pl.col("action").sort_by("position").drop_nulls().first().alias("suggested_action"),
    )
    return (
        rows.join(reasons, on="person_id", how="left")
        .sort("row")
        .with_columns(
            *[pl.col(f"reason_{k}").cast(pl.String) for k in range(1, N_REASONS + 1)],
            pl.col("suggested_action").fill_null(default_action),
        )
        .select("person_id", *[f"reason_{k}" for k in range(1, N_REASONS + 1)], "suggested_action")
    )


def explain_selected(
    features: pl.DataFrame,
    contributions: np.ndarray,
    glossary: pl.DataFrame,
    *,
    default_action: str,
) -> pl.DataFrame:
    """Top positive contributions -> ``reason_1..3`` and ``suggested_action`` per person.

    Parameters
    ----------
    features
        The selected people's model inputs (the glossary's features) with ``person_id``.
    contributions
        ``Booster.predict(X, pred_contrib=True)`` for the same rows (last column: the bias).
    glossary
        From :func:`feature_glossary`.
    default_action
        Action when no reason points to a clinical area (from the target's outcome).

    Returns
    -------
    pl.DataFrame
        ``person_id``, ``reason_1``, ``reason_2``, ``reason_3``, ``suggested_action``.
    """
    top = top_contributions(features["person_id"], contributions, glossary)
    return render_reasons(top, features, glossary, default_action=default_action)


def attach_reasons(
    selected: pl.DataFrame,
    features: pl.LazyFrame,
    booster: Any,
    glossary: pl.DataFrame,
    *,
    default_action: str,
    cached: pl.DataFrame | None = None,
    chunk_rows: int = 5_000,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Compute ``pred_contrib`` for the selected people only and add their reasons.

    TreeSHAP costs about a millisecond per person for a few hundred trees, so contributions
    already known from an earlier run with the same model and features (``cached``) are reused:
    a new capacity or policy then only explains the people new to the list.

    Parameters
    ----------
    selected
        From :func:`select_outreach`.
    features
        ``features/features.parquet`` (lazy).
    booster
        The target's ``lightgbm.Booster``.
    glossary
        From :func:`feature_glossary` for the booster's feature names.
    default_action
        See :func:`render_reasons`.
    cached
        :func:`top_contributions` rows from earlier runs (same model and features), or None.
    chunk_rows
        People per ``pred_contrib`` call (progress is shown per chunk).

    Returns
    -------
    tuple[pl.DataFrame, pl.DataFrame]
        ``selected`` with ``reason_1..3`` and ``suggested_action`` (same row order), and the
        top contributions of every selected person (to refresh the cache).
    """
    names = glossary["feature"].to_list()
    wanted = selected.select("person_id")
    inputs = (
        features.select("person_id", *names)
        .join(wanted.lazy(), on="person_id", how="semi")
        .collect()
    )
    if inputs.height != selected.height or inputs["person_id"].n_unique() != inputs.height:
        raise ContractError(
            f"features/features.parquet: {selected.height} people selected but {inputs.height} "
            "feature rows match them (every scored person needs exactly one row)"
        )
    inputs = wanted.join(inputs, on="person_id", how="left", maintain_order="left")
    known = (
        cached.join(wanted, on="person_id", how="semi")
        if cached is not None
        else pl.DataFrame(schema=_TOP_SCHEMA)
    )
    todo = inputs.join(known.select("person_id").unique(), on="person_id", how="anti")
    fresh = [known.cast(_TOP_SCHEMA)]
    if todo.height:
        matrix = _model_matrix(todo.select(names), booster)
        with _progress() as progress:
            task = progress.add_task("outreach reasons (pred_contrib)", total=todo.height)
            for begin in range(0, todo.height, chunk_rows):
                part = matrix.iloc[begin : begin + chunk_rows]
                contributions = booster.predict(part, pred_contrib=True)
                ids = todo["person_id"].slice(begin, chunk_rows)
                fresh.append(top_contributions(ids, contributions, glossary))
                progress.advance(task, len(part))
    top = pl.concat(fresh)
    reasons = render_reasons(top, inputs, glossary, default_action=default_action)
    return selected.with_columns(reasons.drop("person_id")), top


def _model_matrix(frame: pl.DataFrame, booster: Any) -> Any:
    """Model inputs as pandas; text columns become categories LightGBM maps to its codes."""
    matrix = frame.to_pandas()
    text_columns = [
        column
        for column, dtype in zip(frame.columns, frame.dtypes, strict=True)
        if dtype in (pl.String, pl.Categorical, pl.Enum)
    ]
    if text_columns and not getattr(booster, "pandas_categorical", None):
        raise ContractError(
            f"features/features.parquet: column {text_columns[0]!r} is text but the model "
            "stores no categorical mapping"
        )
    for column in text_columns:
        matrix[column] = matrix[column].astype("category")
    return matrix


def _progress() -> Any:
    from rich.progress import Progress

    return Progress(transient=True, disable=not sys.stderr.isatty())


# --- Summary ---


def _count(value: float | int | None) -> int | str | None:
    return disclosure.round_count(None if value is None else round(value))


def _share(numerator: int, denominator: int, value: float | None = None) -> float | str | None:
    rate = (numerator / denominator if denominator else None) if value is None else value
    return disclosure.publish_rate(numerator, denominator, None if rate is None else round(rate, 4))


def summarise_target(
    cohort: pl.DataFrame,
    *,
    capacity: pl.DataFrame,
    truth_need: pl.DataFrame | None,
    capacity_mode: CapacityMode,
    min_group_size: int,
) -> dict[str, Any]:
    """Aggregate, disclosure-controlled description of one target's outreach lists.

    Parameters
    ----------
    cohort
        Every eligible person with ``selected`` (bool), ``risk_score``, ``split``, ``outcome``,
        ``icb_code``, ``practice_id`` and the make-up dimensions.
    capacity
        From :func:`pipeline.selection.list_sizes`.
    truth_need
        ``person_id``, ``true_need`` (synthetic data only) or None.
    capacity_mode
        To build the same-size "need list" (top true need per capacity unit) for comparison.
    min_group_size
        Groups with fewer selected people are marked ``"stable": false``.

    Returns
    -------
    dict
        See ``/work/notes/outreach_outputs.md`` for the layout.
    """
    frame = cohort
    has_truth = truth_need is not None
    if has_truth:
        frame = (
            frame.join(truth_need.select("person_id", "true_need"), on="person_id", how="left")
            .with_columns(selection.unit_expr(capacity_mode))
            .join(capacity.select("unit", "list_size"), on="unit", how="left")
            .with_columns(
                (
                    pl.struct(pl.col("true_need").fill_null(-math.inf), pl.col("person_id"))
                    .rank("ordinal", descending=True)
                    .over("unit")
                    <= pl.col("list_size")
                ).alias("need_list")
            )
        )
    test = pl.col("split") == "test"
    event = pl.col("outcome") == 1
    chosen = pl.col("selected")
    aggregates = [
        pl.len().alias("n_eligible"),
        chosen.sum().alias("n_selected"),
        pl.col("risk_score").filter(chosen).sum().alias("expected_selected"),
        pl.col("risk_score").sum().alias("expected_eligible"),
        (test & chosen).sum().alias("test_selected"),
        (test & event).sum().alias("test_events"),
        (test & event & chosen).sum().alias("test_events_reached"),
        pl.col("risk_score").filter(test & chosen).sum().alias("test_expected_reached"),
    ]
    if has_truth:
        aggregates += [
            pl.col("need_list").sum().alias("n_need_list"),
            (pl.col("need_list") & chosen).sum().alias("n_overlap"),
            pl.col("true_need").sum().alias("true_need_total"),
            pl.col("true_need").filter(chosen).mean().alias("mean_need_selected"),
            pl.col("true_need").mean().alias("mean_need_eligible"),
        ]
    overall = frame.select(aggregates).row(0, named=True)
    n_eligible, n_selected = int(overall["n_eligible"]), int(overall["n_selected"])
    lists = (
        frame.group_by("icb_code")
        .agg(chosen.sum().alias("n"))
        .sort("icb_code")
        .iter_rows(named=True)
    )
    summary: dict[str, Any] = {
        "n_eligible": _count(n_eligible),
        "n_selected": _count(n_selected),
        "share_selected": _share(n_selected, n_eligible),
        "units_whole_cohort_selected": int(
            capacity.filter(pl.col("list_size") >= pl.col("n_eligible")).height
        )
        if capacity_mode != "share"
        else 0,
        "lists": {row["icb_code"]: {"n": _count(row["n"])} for row in lists},
        "expected_events": {
            "n_expected_events_reached": _count(overall["expected_selected"]),
            "n_expected_events_eligible": _count(overall["expected_eligible"]),
            "share_of_expected_events_reached": _share(
                round(overall["expected_selected"]),
                round(overall["expected_eligible"]),
                overall["expected_selected"] / overall["expected_eligible"]
                if overall["expected_eligible"]
                else None,
            ),
        },
        "test_split": _test_block(overall),
        "make_up": {},
        "true_need": None,
    }
    if has_truth:
        summary["true_need"] = {
            "n_need_list": _count(overall["n_need_list"]),
            "n_overlap": _count(overall["n_overlap"]),
            "overlap_share": _share(int(overall["n_overlap"]), int(overall["n_need_list"])),
            "mean_true_need_selected": _rounded_mean(overall["mean_need_selected"], n_selected),
            "mean_true_need_eligible": _rounded_mean(overall["mean_need_eligible"], n_eligible),
        }
    for dimension in MAKE_UP_DIMENSIONS:
        rows = (
            frame.group_by(pl.col(dimension).cast(pl.String).fill_null("missing").alias("group"))
            .agg(aggregates)
            .sort("group")
        )
        summary["make_up"][dimension] = [
            _group_block(row, overall, has_truth=has_truth, min_group_size=min_group_size)
            for row in rows.iter_rows(named=True)
        ]
    return summary


def _rounded_mean(value: float | None, count: int) -> float | str | None:
    if value is None:
        return None
    return disclosure.publish_rate(count, count, round(float(value), 4))


def _test_block(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "n_selected": _count(row["test_selected"]),
        "n_events": _count(row["test_events"]),
        "n_events_reached": _count(row["test_events_reached"]),
        "n_expected_events_reached": _count(row["test_expected_reached"]),
        "event_capture_rate": _share(int(row["test_events_reached"]), int(row["test_events"])),
        "precision": _share(int(row["test_events_reached"]), int(row["test_selected"])),
    }


def _group_block(
    row: Mapping[str, Any], overall: Mapping[str, Any], *, has_truth: bool, min_group_size: int
) -> dict[str, Any]:
    n_eligible, n_selected = int(row["n_eligible"]), int(row["n_selected"])
    block: dict[str, Any] = {
        "group": row["group"],
        "n_eligible": _count(n_eligible),
        "n_selected": _count(n_selected),
        "share_of_eligible": _share(n_eligible, int(overall["n_eligible"])),
        "share_of_selected": _share(n_selected, int(overall["n_selected"])),
        "selection_rate": _share(n_selected, n_eligible),
        "test_split": _test_block(row),
        "stable": n_selected >= min_group_size,
    }
    if not block["stable"]:
        block["note"] = "small group"
    if has_truth:
        need_total = float(overall["true_need_total"] or 0.0)
        block["n_need_list"] = _count(row["n_need_list"])
        block["share_of_need_list"] = _share(int(row["n_need_list"]), int(overall["n_need_list"]))
        block["share_of_true_need"] = _share(
            n_eligible,
            n_eligible,
            float(row["true_need_total"] or 0.0) / need_total if need_total else None,
        )
    return block


# --- Stage ---


@dataclass(frozen=True)
class _TargetInputs:
    name: str
    scores: Path
    model: Path
    need: Path | None


def _outreach_targets(params: Params) -> tuple[str, ...]:
    chosen = params.outreach.targets
    if chosen is None:
        return tuple(params.targets)
    unknown = [name for name in chosen if name not in params.targets]
    if unknown:
        known = ", ".join(sorted(params.targets))
        raise ParamsError(
            f"outreach.targets: unknown target {unknown[0]!r} (params.yaml targets: {known})"
        )
    if not chosen:
        raise ParamsError("outreach.targets: name at least one target (or leave it null for all)")
    return tuple(chosen)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise StageError(f"outreach: {what} not found at {path}; run the upstream stage first")
    return path


def _check_columns(frame: pl.LazyFrame, columns: Sequence[str], source: Path) -> None:
    present = frame.collect_schema().names()
    missing = [column for column in columns if column not in present]
    if missing:
        raise ContractError(f"{source}: missing column(s) {', '.join(missing)}")


def _cohort(scores_path: Path, features_path: Path) -> pl.LazyFrame:
    scores = pl.scan_parquet(scores_path)
    _check_columns(scores, list(contract.SCORES_SCHEMA), scores_path)
    sensitive = pl.scan_parquet(features_path)
    _check_columns(sensitive, ["person_id", *COHORT_COLUMNS], features_path)
    return scores.select(list(contract.SCORES_SCHEMA)).join(
        sensitive.select("person_id", *COHORT_COLUMNS), on="person_id", how="left"
    )


def run(params: Params, paths: Paths) -> None:
    """Build every target's outreach lists and the summary (all IO lives here).

    Order: params and secret and inputs are checked, capacities are checked against each cohort,
    then lists are built in memory, then written (lists folder swapped in atomically, then the
    summary).
    """
    outreach = params.outreach
    targets = _outreach_targets(params)
    key = read_secret(secret_env=outreach.secret_env, secret_file=outreach.secret_file)
    features_path = _require(paths.features / "features.parquet", "features table")
    manifest = read_json(_require(paths.features / "manifest.json", "feature manifest"))
    inputs = [
        _TargetInputs(
            name=name,
            scores=_require(paths.scores / f"{name}.parquet", f"scores of {name}"),
            model=_require(paths.models / name / "model.txt", f"model of {name}"),
            need=_require(
                paths.scores / contract.NEED_SCORES_DIR / f"{name}.parquet",
                f"need scores of {name}",
            )
            if outreach.policy == "need_adjusted"
            else None,
        )
        for name in targets
    ]
    boosters = {item.name: _LazyBooster(item.model) for item in inputs}
    glossaries = {
        name: feature_glossary(manifest, booster.feature_names())
        for name, booster in boosters.items()
    }
    features = pl.scan_parquet(features_path)
    for glossary in glossaries.values():
        _check_columns(features, glossary["feature"].to_list(), features_path)
    # Each cohort is read once: the capacity check and every step of its list reuse it.
    cohorts = {item.name: _cohort(item.scores, features_path).collect() for item in inputs}
    capacities = {
        name: selection.list_sizes(
            cohort,
            capacity_mode=outreach.capacity_mode,
            capacity=outreach.capacity,
            key="outreach.capacity",
        )
        for name, cohort in cohorts.items()
    }
    truth_path = paths.truth / "people.parquet"
    truth_need = (
        pl.read_parquet(truth_path, columns=["person_id", "true_need"])
        if truth_path.exists()
        else None
    )
    lists: dict[str, pl.DataFrame] = {}
    summaries: dict[str, Any] = {}
    icbs: dict[str, list[str]] = {}
    caches: dict[Path, pl.DataFrame] = {}
    features_digest = _file_sha256(features_path)  # hashed once, shared by every target's cache
    for item in inputs:
        cohort = cohorts[item.name].lazy()
        unmatched = cohort.filter(pl.col("icb_code").is_null()).select(pl.len()).collect().item()
        if unmatched:
            raise ContractError(
                f"{features_path}: {unmatched} scored people of {item.name} have no row "
                "(or no icb_code) in the features table"
            )
        thresholds = None
        if outreach.policy == "equal_opportunity":
            validation = (
                cohort.filter(pl.col("split") == "validation")
                .select("risk_score", "outcome", "imd_quintile")
                .collect()
            )
            # Match the optimiser to this list's cut-off score (the risk ranking's lowest pick).
            cut_score = selection.cut_score(
                cohorts[item.name],
                capacity_mode=outreach.capacity_mode,
                capacity=outreach.capacity,
            )
            thresholds = equal_opportunity_thresholds(
                validation,
                cut_score=cut_score,
                rng=seeds.rng("equal_opportunity", item.name, root=params.seed),
            )
        need = None
        if item.need is not None:
            need = pl.scan_parquet(item.need)
            _check_columns(need, ["person_id", "need_score"], item.need)
            lacking = cohort.join(need, on="person_id", how="anti").select(pl.len()).collect()
            if lacking.item():
                raise ContractError(
                    f"{item.need}: no need_score for {lacking.item()} eligible people of "
                    f"{item.name} (column person_id, rule: one row per scored person)"
                )
        prioritised = policy_priority(
            cohort,
            policy=outreach.policy,
            outreach=outreach,
            thresholds=thresholds,
            need=need,
        )
        selected = select_outreach(
            prioritised, capacities[item.name], capacity_mode=outreach.capacity_mode, key=key
        )
        outcome = params.targets[item.name].outcome
        fingerprint = _fingerprint(_file_sha256(item.model), features_digest)
        cache_file = _cache_file(paths, item.name, fingerprint)
        cached = pl.read_parquet(cache_file) if cache_file.exists() else None
        explained, top = attach_reasons(
            selected,
            features,
            boosters[item.name],
            glossaries[item.name],
            default_action=_DEFAULT_ACTION[outcome],
            cached=cached,
        )
        caches[cache_file] = top if cached is None else pl.concat([cached, top]).unique()
        lists[item.name] = explained.with_columns(
            pl.col("risk_score").round(RISK_SCORE_DECIMALS)
        ).select(OUTREACH_COLUMNS)
        flagged = cohort.join(
            selected.lazy().select("person_id", pl.lit(True).alias("selected")),
            on="person_id",
            how="left",
        ).with_columns(pl.col("selected").fill_null(False))
        summary = summarise_target(
            flagged.collect(),
            capacity=capacities[item.name],
            truth_need=truth_need,
            capacity_mode=outreach.capacity_mode,
            min_group_size=outreach.min_group_size,
        )
        summary["policy_detail"] = _policy_detail(outreach, thresholds)
        summaries[item.name] = summary
        icbs[item.name] = (
            cohort.select(pl.col("icb_code").unique().sort()).collect()["icb_code"].to_list()
        )
    _write_outputs(paths, lists, icbs, summaries, params, truth_available=truth_need is not None)
    for cache_file, top in caches.items():
        _write_cache(cache_file, top)


class _LazyBooster:
    """A LightGBM text model loaded only when someone new needs explaining.

    Importing lightgbm (with pandas, scipy and scikit-learn) takes longer than the rest of a
    re-run whose reasons all come from the cache; feature names are read from the model text.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._booster: Any = None

    def feature_names(self) -> list[str]:
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("feature_names="):
                    return line.strip().split("=", 1)[1].split(" ")
                if line.startswith("Tree="):
                    break
        raise ContractError(f"{self.path}: not a LightGBM text model (no feature_names line)")

    @property
    def booster(self) -> Any:
        if self._booster is None:
            import lightgbm as lgb

            self._booster = lgb.Booster(model_file=str(self.path))
        return self._booster

    @property
    def pandas_categorical(self) -> Any:
        return self.booster.pandas_categorical

    def predict(self, data: Any, **options: Any) -> np.ndarray:
        return self.booster.predict(data, **options)


def _file_sha256(path: Path) -> bytes:
    """SHA-256 of one file's bytes (streamed: the features table can be large)."""
    import hashlib

    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").digest()


def _fingerprint(*digests: bytes) -> str:
    """SHA-256 over the files' SHA-256 digests: the contributions cache is valid for exactly
    these inputs."""
    import hashlib

    return hashlib.sha256(b"".join(digests)).hexdigest()


def _cache_file(paths: Paths, target: str, fingerprint: str) -> Path:
    return paths.root / CACHE_DIR / f"{target}.{fingerprint[:24]}.parquet"


def _write_cache(cache_file: Path, top: pl.DataFrame) -> None:
    """Keep one contributions cache per target (row-level, so under data/, git-ignored)."""
    folder = cache_file.parent
    folder.mkdir(parents=True, exist_ok=True)
    ignore = folder / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# row-level cache of the outreach stage; never commit\n*\n")
    target = cache_file.name.split(".")[0]
    for stale in folder.glob(f"{target}.*.parquet"):
        if stale != cache_file:
            stale.unlink()
    write_parquet(top, cache_file, sort_by=["person_id", "position"])


def _policy_detail(
    outreach: OutreachParams, thresholds: Mapping[str, float] | None
) -> dict[str, Any]:
    detail: dict[str, Any] = {"policy": outreach.policy}
    if outreach.policy == "core20plus5":
        detail |= {
            "core20_uplift": outreach.core20_uplift,
            "plus_groups": list(outreach.plus_groups),
            "plus_uplift": outreach.plus_uplift,
        }
    if thresholds is not None:
        detail["imd_quintile_thresholds"] = {
            str(group): round(value, 6) for group, value in sorted(thresholds.items())
        }
    return detail


def _write_outputs(
    paths: Paths,
    lists: Mapping[str, pl.DataFrame],
    icbs: Mapping[str, list[str]],
    summaries: Mapping[str, Any],
    params: Params,
    *,
    truth_available: bool,
) -> None:
    outreach = params.outreach
    for target, codes in icbs.items():
        bad = [code for code in codes if not _SAFE_FILE_NAME.match(code)]
        if bad:
            raise ContractError(
                f"features/features.parquet: icb_code {bad[0]!r} cannot name a file ({target})"
            )
    with atomic_dir(paths.outreach) as folder:
        for target, frame in lists.items():
            write_parquet(frame, folder / f"{target}.parquet", sort_by=["icb_code", "rank"])
            (folder / target).mkdir()
            for code in icbs[target]:
                frame.filter(pl.col("icb_code") == code).sort("rank").write_csv(
                    folder / target / f"{code}.csv",
                    float_precision=RISK_SCORE_DECIMALS,
                    null_value="",
                )
    summary = contract.OutreachSummary.model_validate(
        {
            "policy": outreach.policy,
            "capacity_mode": outreach.capacity_mode,
            "capacity": outreach.capacity,
            "columns": list(OUTREACH_COLUMNS),
            "truth_available": truth_available,
            "targets": dict(summaries),
        }
    )
    contract.write_summary(summary, paths.reports / SUMMARY_FILE)
