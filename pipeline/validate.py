"""Stage ``validate``: check a population folder against the data contract.

Every violation is collected (file, column, rule, rows) before failing with ContractError, so one
run shows everything that is wrong with an extract. On success it writes
``reports/data_quality.json`` (:class:`pipeline.contract.DataQuality`): aggregates only, counts
disclosure-controlled.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pipeline import console, engine, outcomes, receipt
from pipeline.config import Params
from pipeline.contract import DataQuality, validate_population, write_summary
from pipeline.disclosure import Rule
from pipeline.io import Paths, write_json

__all__ = ["data_quality_report", "run"]


def data_quality_report(
    facts: dict[str, Any], *, folder: str, index_date: dt.date, rule: Rule
) -> dict[str, Any]:
    """Turn :func:`pipeline.contract.validate_population` facts into a publishable summary.

    Counts are rounded / suppressed by ``rule``; shares and rates are of the published counts
    (:meth:`pipeline.disclosure.Rule.share`), ``"*"`` when either is suppressed.
    """
    rows = facts["rows"]
    n_people = facts["n_people"]
    _rate = rule.share

    return {
        "folder": folder,
        "index_date": index_date,
        "valid": True,
        "excluded": [
            {
                "table": "events",
                "column": problem["column"],
                "rule": problem["rule"],
                "rows": rule.count(problem["rows"]),
                "examples": list(problem["examples"]),
            }
            for problem in facts["excluded"]
        ],
        "tables": {
            table: {
                "n_rows": rule.count(count),
                "null_share": {
                    column: _rate(nulls, count) for column, nulls in facts["nulls"][table].items()
                },
            }
            for table, count in rows.items()
        },
        "n_people": rule.count(n_people),
        "ethnicity_recorded_share": _rate(facts["ethnicity_recorded"], n_people),
        "events_per_person_year_last_12_months": {
            event_type: _rate(count, n_people)
            for event_type, count in sorted(facts["events_last_year"].items())
        },
        "date_range": {"first": facts["date_min"], "last": facts["date_max"]},
        "outcomes": {
            name: {
                "source": found["source"],
                "definition": found["definition"],
                "n": rule.count(found["n"]),
                "n_events": rule.count(found["n_events"]),
            }
            for name, found in facts.get("outcomes", {}).items()
        },
    }


def outcome_facts(folder: Path, params: Params, *, root: Path) -> dict[str, dict[str, Any]]:
    """Per target: where its outcomes come from (the extract's table or derived from its
    events, :mod:`pipeline.outcomes`), how, and its raw cohort and event counts.

    Raises
    ------
    ContractError
        When a target's outcome can be neither read nor derived.
    """
    found = outcomes.all_target_outcomes(
        folder,
        params.targets,
        index_date=params.index_date,
        extract_end=params.validation.extract_end,
        codelists=outcomes.project_codelists(root),
    )
    facts = {}
    for name, (table, source) in found.items():
        n, n_events = outcomes.outcome_counts(table)
        facts[name] = {
            "source": source,
            "definition": outcomes.describe(name, params.targets[name], source),
            "n": n,
            "n_events": n_events,
        }
    return facts


def run(params: Params, paths: Paths, *, extract: Path | None = None) -> None:
    """Validate ``extract`` (default ``data/population``); write the data-quality report and the
    receipt of the pass (``data/validated.json``, :mod:`pipeline.receipt`)."""
    folder = Path(extract) if extract is not None else paths.population
    with engine.connect_for(params) as client:  # partitions as tasks on engine dask
        facts = validate_population(
            folder,
            target_names=tuple(params.targets),
            index_date=params.index_date,
            extract_end=params.validation.extract_end,
            record_problems=params.validation.record_problems,
            client=client,
        )
    facts["outcomes"] = outcome_facts(folder, params, root=paths.root)
    passed = receipt.population_receipt(
        folder,
        target_names=tuple(params.targets),
        index_date=params.index_date,
        extract_end=params.validation.extract_end,
    )
    # Relative to the project when inside it, so the report is the same in every clone.
    shown = folder.resolve()
    if shown.is_relative_to(paths.root):
        shown = shown.relative_to(paths.root)
    report = data_quality_report(
        facts, folder=shown.as_posix(), index_date=params.index_date, rule=params.disclosure
    )
    write_summary(DataQuality.model_validate(report), paths.reports / "data_quality.json")
    write_json(passed, paths.validated)
    sources = ", ".join(f"{name} {found['source']}" for name, found in facts["outcomes"].items())
    console.stage_done(
        "validate",
        did=f"{shown.as_posix()} meets the contract ({console.count(report['n_people'])} people;"
        f" outcomes: {sources})",
    )
