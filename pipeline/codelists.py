"""Codelists as data: ``codelists/registry.yaml`` maps each concept to its published lists.

A concept is a condition, medicine group, measurement, risk factor or outcome; each has one or
more lists, one CSV per code system in OpenCodelists' format (the code column is named per list,
as OpenCodelists and ehrQL do: ``code``, ``dmd_id`` ...). A user swaps or adds a list by editing
the registry and the CSVs, never the code (docs/codelists.md).

Codes are compared in one normal form per code system (:func:`normalise_code`): ICD-10 and OPCS-4
without dots, dashes, spaces or X padding (``I10X``, ``I10.X`` and ``I10`` are one code), upper
case. ICD-10, OPCS-4 and BNF are hierarchical: a list entry covers every code it is a prefix of
(``I25`` covers ``I251``; BNF section ``0205`` covers its chemicals), as ehrQL matches ICD-10.
SNOMED CT, dm+d and local codes match exactly.

This module knows no event table: the contract (:mod:`pipeline.contract`) says which code system
each event carries, and features (:mod:`pipeline.features`) matches events to concepts.
"""

from __future__ import annotations

from functools import reduce
from pathlib import Path
from typing import Final, Literal, TypeAlias

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ContractError

CodeSystem: TypeAlias = Literal["snomed_ct", "dmd", "bnf", "icd10", "opcs4", "local"]
"""Code systems an event (``events.code_system``) or a codelist may carry."""
CODE_SYSTEMS: Final[tuple[CodeSystem, ...]] = ("snomed_ct", "dmd", "bnf", "icd10", "opcs4", "local")
HIERARCHICAL: Final = frozenset({"icd10", "opcs4", "bnf"})
"""Code systems whose list entries cover every code they are a prefix of."""
ConceptKind: TypeAlias = Literal["condition", "medicine", "measurement", "risk_factor", "outcome"]

REGISTRY_FILE: Final = "registry.yaml"
DEFAULT_FOLDER: Final = Path(__file__).resolve().parents[1] / "codelists"
"""The shipped codelists (the project's ``codelists/`` folder)."""

SCTID_PATTERN: Final = r"^[1-9][0-9]{5,17}$"
"""SNOMED CT and dm+d identifiers: 6-18 digits, no leading zero (plus a Verhoeff check digit)."""
CODE_PATTERNS: Final[dict[str, str]] = {
    "snomed_ct": SCTID_PATTERN,
    "dmd": SCTID_PATTERN,
    "icd10": r"^[A-Z][0-9]{2}[0-9A-Z]{0,4}$",
    "opcs4": r"^[A-Z][0-9]{2}[0-9]{0,2}$",
    "bnf": r"^(0[1-9]|1[0-5]|1[89]|2[0-3])[0-9]{2}[0-9A-Z]{0,11}$",
    "local": r"^[a-z][a-z0-9_]{0,31}$",
}
"""Syntax of a normalised code of each system (:func:`normalise_code`)."""

# Verhoeff's tables (as used by SNOMED CT identifiers), built from their definitions: d is the
# multiplication table of the dihedral group D5, p the powers of the permutation p1.


def _dihedral(j: int, k: int) -> int:
    if j < 5:
        return (j + k) % 5 + (5 if k >= 5 else 0)
    return (j - k) % 5 + (0 if k >= 5 else 5)


def _powers(p1: tuple[int, ...], n: int) -> tuple[tuple[int, ...], ...]:
    rows = [tuple(range(10))]
    for _ in range(n - 1):
        rows.append(tuple(p1[x] for x in rows[-1]))
    return tuple(rows)


_VERHOEFF_D: Final = tuple(tuple(_dihedral(j, k) for k in range(10)) for j in range(10))
_VERHOEFF_P: Final = _powers((1, 5, 7, 6, 2, 8, 3, 0, 9, 4), 8)
_MAX_SCTID: Final = 18


def verhoeff_valid_expr(code: pl.Expr) -> pl.Expr:
    """True where ``code`` (a string of at most 18 digits) ends in a valid Verhoeff check digit.

    Vectorised over the digits from the right: ``c = d[c][p[i mod 8][digit]]``, valid when ``c``
    ends at 0. Past a code's first digit the step is the identity (``b = 10`` below), so each
    step refers to the previous one once. Non-digit strings give null.
    """
    reversed_code = code.str.reverse()
    table = {a * 11 + b: _VERHOEFF_D[a][b] for a in range(10) for b in range(10)}
    table |= {a * 11 + 10: a for a in range(10)}
    check = pl.lit(0, dtype=pl.Int32)
    for i in range(_MAX_SCTID):
        digit = reversed_code.str.slice(i, 1).cast(pl.Int32, strict=False)
        permuted = digit.replace_strict(
            dict(enumerate(_VERHOEFF_P[i % 8])), default=None, return_dtype=pl.Int32
        )
        present = reversed_code.str.len_chars() > i
        permuted = pl.when(present).then(permuted).otherwise(pl.lit(10, dtype=pl.Int32))
        check = (check * 11 + permuted).replace_strict(table, return_dtype=pl.Int32)
    return (check == 0) & (code.str.len_chars() <= _MAX_SCTID)


def normalise_code(code: pl.Expr, system: pl.Expr | str) -> pl.Expr:
    """A code in its system's normal form (``system`` an expression or one system's name).

    ICD-10 / OPCS-4: upper case without dots, dashes or spaces, and without the X padding of a
    3-character category (``I10X`` -> ``I10``); others: trimmed (local codes lower case).
    """
    system = pl.lit(system) if isinstance(system, str) else system
    trimmed = code.str.strip_chars()
    classified = trimmed.str.to_uppercase().str.replace_all(r"[.\-\s]", "")
    unpadded = classified.str.replace(r"^([A-Z][0-9]{2})X+$", "${1}")
    return (
        pl.when(system.is_in(["icd10", "opcs4"]))
        .then(unpadded)
        .when(system == "local")
        .then(trimmed.str.to_lowercase())
        .otherwise(trimmed)
    )


def code_valid_expr(code: pl.Expr, system: pl.Expr) -> pl.Expr:
    """True where ``code`` is a syntactically valid code of ``system`` (null system: null).

    SNOMED CT and dm+d identifiers also need a valid Verhoeff check digit.
    """
    normal = normalise_code(code, system)
    expr = pl.lit(None, dtype=pl.Boolean)
    for name in CODE_SYSTEMS:
        valid = normal.str.contains(CODE_PATTERNS[name])
        if name in ("snomed_ct", "dmd"):
            valid = valid & verhoeff_valid_expr(normal).fill_null(False)
        expr = pl.when(system == name).then(valid).otherwise(expr)
    return expr


# --- The registry --------------------------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListEntry(_Record):
    """One CSV of a concept: its file (under the codelists folder), code system, code column."""

    file: str
    system: CodeSystem
    column: str = "code"
    source: str
    """Where it was published (URL and version), or ``local`` with how it was made."""


class Concept(_Record):
    """A condition, medicine group, measurement, risk factor or outcome and its lists."""

    kind: ConceptKind
    label: str
    lists: tuple[ListEntry, ...] = Field(min_length=1)


class Registry(_Record):
    """``codelists/registry.yaml``."""

    concepts: dict[str, Concept]

    @model_validator(mode="after")
    def _names_are_columns(self) -> Registry:
        bad = [name for name in self.concepts if not name.isidentifier() or name != name.lower()]
        if bad:
            raise ValueError(f"concept names must be lower-case identifiers: {bad}")
        return self

    def of_kind(self, kind: ConceptKind) -> tuple[str, ...]:
        """Concept names of one kind, in registry order."""
        return tuple(name for name, concept in self.concepts.items() if concept.kind == kind)


def read_registry(folder: Path) -> Registry:
    """Read and validate ``<folder>/registry.yaml`` (every listed file must exist).

    Raises
    ------
    ContractError
        Missing or malformed registry, or a listed file that is missing.
    """
    path = folder / REGISTRY_FILE
    if not path.is_file():
        raise ContractError(f"{path}: codelist registry not found")
    try:
        registry = Registry.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, ValidationError) as error:
        first = str(error).splitlines()
        raise ContractError(
            f"{path}: not a valid codelist registry ({'; '.join(first[:4])})"
        ) from None
    missing = [
        entry.file
        for concept in registry.concepts.values()
        for entry in concept.lists
        if not (folder / entry.file).is_file()
    ]
    if missing:
        raise ContractError(f"{path}: {len(missing)} listed file(s) missing: {missing[:5]}")
    return registry


def read_list(folder: Path, entry: ListEntry) -> pl.DataFrame:
    """One list's distinct normalised codes (``code``), sorted.

    Raises
    ------
    ContractError
        The CSV has no column ``entry.column`` or no codes.
    """
    path = folder / entry.file
    frame = pl.read_csv(path, infer_schema=False)
    if entry.column not in frame.columns:
        raise ContractError(
            f"{path}: no code column {entry.column!r} (columns: {', '.join(frame.columns)})"
        )
    codes = (
        frame.select(normalise_code(pl.col(entry.column), entry.system).alias("code"))
        .filter(pl.col("code").is_not_null() & (pl.col("code") != ""))
        .unique()
        .sort("code")
    )
    if codes.is_empty():
        raise ContractError(f"{path}: column {entry.column!r} holds no codes")
    return codes


CODES_SCHEMA: Final = {
    "concept": pl.String,
    "kind": pl.String,
    "system": pl.String,
    "file": pl.String,
    "code": pl.String,
}


class Codelists:
    """The registry with every list read: one long table of (concept, system, code)."""

    def __init__(self, registry: Registry, codes: pl.DataFrame) -> None:
        self.registry = registry
        self.codes = codes

    def concepts(self, kind: ConceptKind) -> tuple[str, ...]:
        """Concept names of one kind, in registry order."""
        return self.registry.of_kind(kind)

    def codes_of(self, concept: str) -> pl.DataFrame:
        """``system``, ``code`` of one concept (distinct)."""
        if concept not in self.registry.concepts:
            raise ContractError(f"codelists: no concept {concept!r} in the registry")
        return (
            self.codes.filter(pl.col("concept") == concept)
            .select("system", "code")
            .unique()
            .sort("system", "code")
        )


def load_codelists(folder: Path | None = None) -> Codelists:
    """Read the registry and all its lists (default: the shipped ``codelists/``)."""
    folder = DEFAULT_FOLDER if folder is None else folder
    registry = read_registry(folder)
    frames = [
        read_list(folder, entry).select(
            pl.lit(name).alias("concept"),
            pl.lit(concept.kind).alias("kind"),
            pl.lit(entry.system).alias("system"),
            pl.lit(entry.file).alias("file"),
            "code",
        )
        for name, concept in registry.concepts.items()
        for entry in concept.lists
    ]
    return Codelists(registry, pl.concat(frames).cast(CODES_SCHEMA))  # type: ignore[arg-type]


def concept_match(
    code: pl.Expr, system: pl.Expr, codes: pl.DataFrame, *, normalised: bool = False
) -> pl.Expr:
    """True where an event's code (of ``system``) is in ``codes`` (``system``, ``code``).

    Hierarchical systems (:data:`HIERARCHICAL`) match when a list entry is a prefix of the
    event's code; the others match exactly. Pure ``is_in`` on normalised codes, one per system
    and entry length.
    """
    normal = code if normalised else normalise_code(code, system)
    tests = [pl.lit(False)]
    for (name,), part in codes.partition_by("system", as_dict=True, maintain_order=True).items():
        entries = part["code"]
        if name in HIERARCHICAL:
            lengths = sorted(set(entries.str.len_chars().to_list()))
            hits = [
                normal.str.slice(0, n).is_in(entries.filter(entries.str.len_chars() == n).to_list())
                for n in lengths
            ]
            hit = reduce(lambda a, b: a | b, hits)
        else:
            hit = normal.is_in(entries.to_list())
        tests.append((system == name) & hit)
    return pl.any_horizontal(tests).fill_null(False)


def summary(codelists: Codelists) -> pl.DataFrame:
    """One row per list: concept, kind, file, system, codes and codes of invalid syntax."""
    valid = code_valid_expr(pl.col("code"), pl.col("system"))
    return (
        codelists.codes.group_by("concept", "kind", "file", "system", maintain_order=True)
        .agg(pl.len().alias("codes"), (~valid).sum().alias("invalid"))
        .with_columns(pl.col("codes", "invalid").cast(pl.Int64))
    )
