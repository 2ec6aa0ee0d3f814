"""Report inputs for the report tests, made by the real audit on a small simulated world.

:func:`audited_world` runs :func:`pipeline.audit.run` once per session on the world of
``tests/simworld.py`` (planted under-recording and lower access for IMD quintile 1 and Black and
Asian people) for every target of ``tests/fixture_params.yaml``; :func:`write_fixture_project`
copies its ``reports/`` into a project and adds the other stages' summaries (model metrics and
plots, outreach summary, data quality), each written through its contract model. So the report
tests read exactly what the audit writes: audit -> report drift fails here. No tests here.
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline import audit, contract, need
from pipeline.config import load_params, parse_params
from pipeline.disclosure import SUPPRESSED, Rule
from pipeline.headline import plots_folder
from pipeline.io import Paths, write_json
from pipeline.validate import data_quality_report
from tests import simworld
from tests.fixture_params import copy_fixture_params, fixture_raw

REPO = Path(__file__).resolve().parents[1]
WORLD_PEOPLE = 20_000
FAST_AUDIT = {
    "n_bootstrap": 50,
    "n_monte_carlo": 100,
    "need_model_rounds": 20,
    "split": "all",
}
"""Fewer resamples than params.yaml: the tables' layout, not their precision, is under test."""


@functools.cache
def audited_world() -> Path:
    """A folder holding the audit's real outputs (``reports/``) for every fixture target
    on a small simulated world; built once per process, removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="phm-audited-world-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    raw = fixture_raw()
    raw["audit"] |= FAST_AUDIT
    params = parse_params(raw)
    targets = tuple(params.targets)
    world = simworld.simulate_world(WORLD_PEOPLE, seed=21, targets=targets)
    simworld.write_world(root, world, targets=targets)
    for target in targets:
        need.run(params, Paths.at(root), target=target)  # the audit reads the need stage's scores
        audit.run(params, Paths.at(root), target=target)
    return root


def _groups(dimension: str) -> list[str]:
    if dimension == "imd_quintile":
        return ["1", "2", "3", "4", "5"]
    if dimension == "region":
        return list(contract.REGIONS)
    if dimension == "icb_code":
        return ["QHM", "QOQ", "QF7", "QWO", "QE1", "QYG", "QOP", "QJ2", "QMJ", "QMF", "QKK", "QT6"]
    if dimension == "ethnicity_group":
        return list(contract.BROAD_ETHNIC_GROUPS)
    if dimension == "sex":
        return ["F", "M"]
    if dimension == "age_band":
        return ["18-34", "35-49", "50-64", "65-74", "75-84", "85+"]
    if dimension == "ethnicity_group_x_imd_quintile":
        return [f"{e}, IMD {q}" for e in contract.BROAD_ETHNIC_GROUPS for q in range(1, 6)]
    return ["All"]


def outreach_summary(targets: list[str], rng: np.random.Generator) -> dict[str, Any]:
    """reports/outreach_summary.json in the outreach note's layout."""
    summaries = {}
    for target in targets:
        make_up = {}
        for dimension in ("imd_quintile", "ethnicity_group", "region"):
            groups = _groups(dimension)
            weights = rng.dirichlet(np.ones(len(groups)) * 6)
            rows = []
            for group, w in zip(groups, weights, strict=True):
                shortfall = 0.75 if group in {"1", "Black"} else 1.05
                rows.append(
                    {
                        "group": group,
                        "n_eligible": Rule().count(int(w * 100000)),
                        "n_selected": Rule().count(int(w * 5000 * shortfall)),
                        "share_of_eligible": round(float(w), 4),
                        "share_of_selected": round(float(w) * shortfall, 4),
                        "selection_rate": 0.05,
                        "test_split": {
                            "n_selected": Rule().count(int(w * 1000)),
                            "n_events": Rule().count(int(w * 2400)),
                            "n_events_reached": Rule().count(int(w * 700)),
                            "n_expected_events_reached": 100,
                            "event_capture_rate": 0.3,
                            "precision": 0.3,
                        },
                        "stable": True,
                        "n_need_list": Rule().count(int(w * 5000)),
                        "share_of_need_list": round(float(w), 4),
                        "share_of_true_need": round(
                            float(w) * (1.25 if shortfall < 1 else 0.97), 4
                        ),
                    }
                )
            make_up[dimension] = rows
        summaries[target] = {
            "n_eligible": 100000,
            "n_selected": 5000,
            "share_selected": 0.05,
            "units_whole_cohort_selected": 0,
            "lists": {"QHM": {"n": 250}, "QT6": {"n": SUPPRESSED}},
            "expected_events": {
                "n_expected_events_reached": 1200,
                "n_expected_events_eligible": 9000,
                "share_of_expected_events_reached": 0.1333,
            },
            "test_split": {
                "n_selected": 1000,
                "n_events": 2400,
                "n_events_reached": 700,
                "n_expected_events_reached": 240,
                "event_capture_rate": 0.2917,
                "precision": 0.7,
            },
            "make_up": make_up,
            "true_need": None,
            "policy_detail": {"policy": "risk"},
        }
    return {
        "policy": "risk",
        "capacity_mode": "share",
        "capacity": 0.05,
        "columns": ["pseudonym"],
        "truth_available": True,
        "targets": summaries,
    }


def model_metrics(target: str) -> dict[str, Any]:
    """models/<target>/metrics.json (flat, train note layout)."""
    doc: dict[str, Any] = {
        "target": target,
        "split": "test",
        "n_test": 40000,
        "n_test_events": 4000,
        "n_selected_at_capacity": 2000,
        "n_selected_events_at_capacity": 1200,
        "best_iteration": 137,
    }
    for name, value in (
        ("auroc", 0.781),
        ("auprc", 0.31),
        ("brier", 0.081),
        ("calibration_intercept", 0.01),
        ("calibration_slope", 0.98),
        ("oe_ratio", 1.01),
        ("ece", 0.004),
        ("sensitivity_at_capacity", 0.3),
        ("ppv_at_capacity", 0.6),
        ("oracle_auroc", 0.789),
    ):
        doc[name] = value
        doc[f"{name}_ci_low"] = round(value * 0.95, 4)
        doc[f"{name}_ci_high"] = round(value * 1.05, 4)
    return doc


def data_quality() -> contract.DataQuality:
    """reports/data_quality.json as the validate stage writes it, for 200,000 people."""
    facts = {
        "rows": {"people": 200_000, "events": 4_000_000},
        "nulls": {"people": {"ethnicity": 3_000}, "events": {"value": 3_400_000}},
        "n_people": 200_000,
        "ethnicity_recorded": 170_000,
        "events_last_year": {"gp_consultation": 800_000},
        "excluded": [
            {"column": "value", "rule": "implausible", "rows": 32, "examples": ("bmi = 6.9",)}
        ],
        "date_min": dt.date(2005, 4, 1),
        "date_max": dt.date(2025, 3, 31),
    }
    report = data_quality_report(
        facts, folder="data/population", index_date=dt.date(2025, 4, 1), rule=Rule()
    )
    return contract.DataQuality.model_validate(report)


def write_fixture_project(root: Path, *, seed: int = 7) -> Paths:
    """Write every report input under ``root`` (a copy of the fixture params included):
    the audit's real outputs plus the other stages' summaries."""
    root.mkdir(parents=True, exist_ok=True)
    copy_fixture_params(root)
    paths = Paths.at(root)
    params = load_params(paths.params)
    rng = np.random.default_rng(seed)
    targets = list(params.targets)
    shutil.copytree(audited_world() / "reports", paths.reports, dirs_exist_ok=True)
    for target in targets:
        model_dir = paths.models / target
        plots = plots_folder(root, target)
        plots.mkdir(parents=True, exist_ok=True)
        write_json(model_metrics(target), model_dir / "metrics.json")
        (model_dir / "model.txt").write_text(f"tree\nversion=v4\n# fixture model {target}\n")
        grid = np.linspace(0.0, 1.0, 21)
        pl.DataFrame({"fpr": grid, "tpr": np.sqrt(grid)}).write_csv(plots / "roc.csv")
        pl.DataFrame({"mean_predicted": grid * 0.4, "observed_rate": grid * 0.41}).write_csv(
            plots / "calibration.csv"
        )
        pl.DataFrame({"share_selected": grid, "share_of_events": np.sqrt(grid)}).write_csv(
            plots / "cumulative_gain.csv"
        )
    contract.write_summary(
        contract.OutreachSummary.model_validate(outreach_summary(targets, rng)),
        paths.reports / "outreach_summary.json",
    )
    contract.write_summary(data_quality(), paths.reports / "data_quality.json")
    return paths


def build_fixture_report(root: Path) -> Path:
    """Write the fixture project and build its report (no MLflow); returns the HTML path."""
    from pipeline.report import run

    paths = write_fixture_project(root)
    return run(load_params(paths.params), paths, log_mlflow=False)
