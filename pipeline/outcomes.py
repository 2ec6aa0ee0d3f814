"""Outcomes: each target's eligible cohort and its 0/1 outcome, supplied or derived from events.

A synthetic world (or a linked registry) supplies the ``outcomes`` table; a real extract has
none, so the outcome is found in the events after the index date by the target's definition
in params (``targets.<name>``):

- the cohort: everyone in ``people`` (the population registered at the index date) aged
  ``min_age``-``max_age`` at the index date, without an event on or before the index date whose
  code is in one of the ``exclude_prior`` registry concepts;
- the outcome: 1 when the person has an event of one of ``derive.event_types`` whose code is in
  one of ``derive.concepts`` (any code when none are given), dated after the index date and on or
  before the end of the follow-up (``index_date`` + ``follow_up_months``), else 0.

Events are the cleaned events (:func:`pipeline.contract.clean_events`), so record-level noise
never makes an outcome. The derived table has the supplied table's schema
(:data:`pipeline.contract.OUTCOMES_SCHEMA`). Matching codes to concepts is
:func:`pipeline.codelists.concept_match` (ICD-10 by prefix, SNOMED CT exactly).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

import polars as pl

from pipeline import contract
from pipeline.codelists import Codelists, concept_match, load_codelists
from pipeline.errors import ContractError

if TYPE_CHECKING:
    from pipeline.config import TargetParams

OutcomesSource: TypeAlias = Literal["supplied", "derived"]
"""Where a target's outcomes come from: the extract's ``outcomes`` table, or its events."""
SUPPLIED: Final = "supplied"
DERIVED: Final = "derived"
CODELISTS_DIR: Final = "codelists"
"""The project's codelist folder (``<root>/codelists``)."""


def project_codelists(root: Path) -> Codelists:
    """The project's codelists (``<root>/codelists``), or the shipped ones when the root has
    none (a test's temporary project)."""
    lists = root / CODELISTS_DIR
    return load_codelists(lists if lists.is_dir() else None)


def has_outcomes_table(folder: Path) -> bool:
    """True when the population folder holds an ``outcomes`` table (file or folder of parts)."""
    return (folder / "outcomes.parquet").is_file() or (folder / "outcomes").is_dir()


def supplied_targets(folder: Path) -> frozenset[str]:
    """Targets with at least one row in the folder's ``outcomes`` table (none without one)."""
    if not has_outcomes_table(folder):
        return frozenset()
    names = contract.scan_input(folder, "outcomes").select(pl.col("target").unique()).collect()
    return frozenset(names["target"].drop_nulls().to_list())


def outcomes_source(name: str, target: TargetParams, *, supplied: frozenset[str]) -> OutcomesSource:
    """``supplied`` when the outcomes table has rows for the target, else ``derived``.

    Raises
    ------
    ContractError
        When neither is possible: no rows supplied and no ``derive`` definition in params.
    """
    if name in supplied:
        return SUPPLIED
    if target.derive is None:
        raise ContractError(
            f"outcomes: no rows for target {name!r} and params targets.{name}.derive is not "
            "set, so its outcome can be neither read nor derived from events"
        )
    return DERIVED


def follow_up_end(index_date: dt.date, months: int) -> dt.date:
    """The last day of a follow-up of ``months`` calendar months after the index date."""
    end = pl.select(pl.lit(index_date).dt.offset_by(f"{months}mo")).item()
    assert isinstance(end, dt.date)
    return end


def check_follow_up(
    name: str, end: dt.date, *, extract_end: dt.date | None, last_event: dt.date | None
) -> None:
    """The extract must cover the whole follow-up window of a derived outcome.

    Raises
    ------
    ContractError
        Naming the target, its follow-up end and the extract's end (``extract_end``, or the last
        event date when the extract end is not known).
    """
    if extract_end is not None:
        if extract_end < end:
            raise ContractError(
                f"targets.{name}: its follow-up runs to {end} but the extract ends on "
                f"{extract_end} (validation.extract_end): the outcome would be undercounted"
            )
        return
    if last_event is None or last_event < end:
        raise ContractError(
            f"targets.{name}: its follow-up runs to {end} but the last event in the extract is "
            f"dated {last_event}; shorten follow_up_months, move index_date, or set "
            "validation.extract_end if the extract does run to the end of the follow-up"
        )


def concept_codes(codelists: Codelists, concepts: Sequence[str], *, key: str) -> pl.DataFrame:
    """``system``, ``code`` of the union of registry ``concepts``.

    Raises
    ------
    ContractError
        Naming the params ``key`` and every concept the registry does not define.
    """
    unknown = [name for name in concepts if name not in codelists.registry.concepts]
    if unknown:
        known = ", ".join(sorted(codelists.registry.concepts))
        raise ContractError(
            f"params {key}: concept(s) not in codelists/registry.yaml: {', '.join(unknown)} "
            f"(concepts: {known})"
        )
    frames = [codelists.codes_of(name) for name in concepts]
    return pl.concat(frames).unique().sort("system", "code")


def _in_codes(codes: pl.DataFrame) -> pl.Expr:
    """True where an event's code is in ``codes`` (by its own or its event_type's system)."""
    return concept_match(pl.col("code"), contract.event_code_system_expr(), codes)


def prior_records(
    events: pl.LazyFrame, codes: pl.DataFrame, *, index_date: dt.date
) -> pl.LazyFrame:
    """``person_id`` of everyone with an event in ``codes`` on or before the index date."""
    on_or_before = pl.col("date") <= pl.lit(index_date)
    return (
        contract.with_code_system(events)
        .filter(on_or_before & _in_codes(codes))
        .select("person_id")
        .unique()
    )


def outcome_people(
    events: pl.LazyFrame,
    *,
    event_types: Sequence[str],
    codes: pl.DataFrame | None,
    index_date: dt.date,
    end: dt.date,
) -> pl.LazyFrame:
    """``person_id`` of everyone with an outcome event in ``(index_date, end]``: of one of
    ``event_types`` and, when ``codes`` is given, with a code in it."""
    window = (pl.col("date") > pl.lit(index_date)) & (pl.col("date") <= pl.lit(end))
    keep = window & pl.col("event_type").is_in(list(event_types))
    if codes is not None:
        keep = keep & _in_codes(codes)
    return contract.with_code_system(events).filter(keep).select("person_id").unique()


def derive_target(
    name: str,
    target: TargetParams,
    people: pl.LazyFrame,
    events: pl.LazyFrame,
    *,
    index_date: dt.date,
    codelists: Codelists,
) -> pl.LazyFrame:
    """One target's derived outcomes (:data:`pipeline.contract.OUTCOMES_SCHEMA`), by person_id.

    Parameters
    ----------
    name, target
        The target's name and params (``derive`` must be set).
    people, events
        Contract tables; ``events`` cleaned (:func:`pipeline.contract.clean_events`).
    index_date
        Cohort rules look on or before it; outcomes after it.
    codelists
        The codelist registry.
    """
    if target.derive is None:
        raise ContractError(f"params targets.{name}.derive: not set")
    definition = target.derive
    cohort = people.filter(
        pl.col("age").cast(pl.Int64).is_between(target.min_age, target.max_age)
    ).select("person_id")
    if target.exclude_prior:
        codes = concept_codes(codelists, target.exclude_prior, key=f"targets.{name}.exclude_prior")
        cohort = cohort.join(
            prior_records(events, codes, index_date=index_date), on="person_id", how="anti"
        )
    outcome_codes = (
        concept_codes(codelists, definition.concepts, key=f"targets.{name}.derive.concepts")
        if definition.concepts
        else None
    )
    cases = outcome_people(
        events,
        event_types=definition.event_types,
        codes=outcome_codes,
        index_date=index_date,
        end=follow_up_end(index_date, target.follow_up_months),
    ).with_columns(pl.lit(1, dtype=pl.Int8).alias("value"))
    return (
        cohort.join(cases, on="person_id", how="left")
        .select(
            pl.col("person_id").cast(pl.String),
            pl.lit(name, dtype=pl.String).alias("target"),
            pl.col("value").fill_null(0).cast(pl.Int8),
        )
        .sort("person_id")
    )


def last_event_date(events: pl.LazyFrame) -> dt.date | None:
    """The latest event date of the extract (``None`` without events)."""
    last = events.select(pl.col("date").max()).collect().item()
    return last if isinstance(last, dt.date) else None


def target_outcomes(
    folder: Path,
    name: str,
    target: TargetParams,
    *,
    index_date: dt.date,
    extract_end: dt.date | None,
    codelists: Codelists,
) -> tuple[pl.LazyFrame, OutcomesSource]:
    """A target's outcomes (:data:`pipeline.contract.OUTCOMES_SCHEMA`) and where they came from:
    the folder's ``outcomes`` rows for it when there are any, else derived from its events.

    Raises
    ------
    ContractError
        When the outcome can be neither read nor derived, a concept is not in the registry, or
        the extract does not cover the follow-up.
    """
    source = outcomes_source(name, target, supplied=supplied_targets(folder))
    if source == SUPPLIED:
        supplied = contract.scan_input(folder, "outcomes").filter(pl.col("target") == name)
        return supplied.select(
            pl.col(column).cast(dtype) for column, dtype in contract.OUTCOMES_SCHEMA.items()
        ), source
    people = contract.scan_input(folder, "people")
    raw = contract.scan_input(folder, "events")
    check_follow_up(
        name,
        follow_up_end(index_date, target.follow_up_months),
        extract_end=extract_end,
        last_event=None if extract_end is not None else last_event_date(raw),
    )
    events = contract.clean_events(raw, people, index_date=index_date)
    derived = derive_target(
        name, target, people, events, index_date=index_date, codelists=codelists
    )
    return derived, source


def outcome_counts(outcomes: pl.LazyFrame) -> tuple[int, int]:
    """The cohort size and the number of people with the outcome (raw counts)."""
    row = outcomes.select(pl.len().alias("n"), pl.col("value").cast(pl.Int64).sum()).collect()
    return int(row["n"][0]), int(row["value"][0] or 0)


def describe(name: str, target: TargetParams, source: OutcomesSource) -> str:
    """One line saying how a target's outcomes were obtained (for the data-quality report)."""
    if source == SUPPLIED or target.derive is None:
        return f"{name}: the extract's outcomes table"
    definition = target.derive
    codes = f"codes in {', '.join(definition.concepts)}" if definition.concepts else "any code"
    excluded = (
        f"; excluding people with prior {', '.join(target.exclude_prior)}"
        if target.exclude_prior
        else ""
    )
    return (
        f"{name}: derived from events - {' or '.join(definition.event_types)} with {codes}, "
        f"within {target.follow_up_months} months after the index date; ages "
        f"{target.min_age}-{target.max_age}{excluded}"
    )


def all_target_outcomes(
    folder: Path,
    targets: Mapping[str, TargetParams],
    *,
    index_date: dt.date,
    extract_end: dt.date | None,
    codelists: Codelists,
) -> dict[str, tuple[pl.LazyFrame, OutcomesSource]]:
    """:func:`target_outcomes` of every target, by name."""
    return {
        name: target_outcomes(
            folder,
            name,
            target,
            index_date=index_date,
            extract_end=extract_end,
            codelists=codelists,
        )
        for name, target in targets.items()
    }
