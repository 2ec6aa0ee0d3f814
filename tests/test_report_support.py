"""Fixture inputs for the report tests, in the upstream layouts of /work/notes/*_outputs.md.

Writes a small project (params.yaml, reports/audit/<target>/audit.json + need_by_score.parquet,
reports/metrics/audit_<target>.json, reports/outreach_summary.json, reports/data_quality.json,
models/<target>/metrics.json + plots) whose numbers are all disclosure-controlled, with a
planted pattern: IMD quintile 1 and the Black group are reached less often. No tests here.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline import contract
from pipeline.config import load_params
from pipeline.disclosure import SUPPRESSED, round_count
from pipeline.io import Paths, write_json

REPO = Path(__file__).resolve().parents[1]
METRICS = (
    "base_rate",
    "selection_rate",
    "tpr",
    "fnr",
    "fpr",
    "ppv",
    "auroc",
    "brier",
    "oe_ratio",
    "calibration_slope",
)


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


def _reach(dimension: str, group: str) -> float:
    """Planted: quintile 1 and Black people are reached less often (TPR multiplier)."""
    factor = 1.0
    if group == "1" or group.endswith("IMD 1"):
        factor *= 0.7
    if group.startswith("Black"):
        factor *= 0.72
    return factor


def audit_json(target: str, rng: np.random.Generator) -> dict[str, Any]:
    """A small audit.json following pipeline/audit (dimensions, gradients, heat, label choice,
    mitigation, headline), every count published."""
    dims = [
        "overall",
        "imd_quintile",
        "region",
        "icb_code",
        "ethnicity_group",
        "sex",
        "age_band",
        "ethnicity_group_x_imd_quintile",
    ]
    dimensions: dict[str, Any] = {}
    for dimension in dims:
        groups = _groups(dimension)
        reference = {
            "imd_quintile": "5",
            "ethnicity_group": "White",
            "region": "Midlands",
            "icb_code": "QOP",
            "sex": "F",
            "age_band": "50-64",
        }.get(dimension, groups[0])
        if dimension == "ethnicity_group_x_imd_quintile":
            reference = "White, IMD 5"
        entries = []
        base_tpr = 0.3
        for index, group in enumerate(groups):
            n = int(rng.integers(150, 4000)) if dimension != "overall" else 40000
            if group in {"Other, IMD 5", "Mixed, IMD 4"}:
                n = 6  # planted small cells: suppressed
            if group == "QT6":
                n = 60
            events = max(int(n * rng.uniform(0.08, 0.14)), 0)
            if group == "Mixed, IMD 5":
                events = 5
            selected = int(n * rng.uniform(0.03, 0.07))
            tpr = min(base_tpr * _reach(dimension, group) * rng.uniform(0.93, 1.07), 0.95)
            tp = min(int(events * tpr), selected)
            counts = {
                "n": n,
                "n_events": events,
                "n_non_events": n - events,
                "n_selected": selected,
                "n_true_positives": tp,
                "n_false_positives": selected - tp,
                "n_false_negatives": events - tp,
            }
            hidden = {name for name, value in counts.items() if 0 < value < 8}
            metrics = {}
            for metric in METRICS:
                value = {
                    "base_rate": events / n,
                    "selection_rate": selected / n,
                    "tpr": tpr,
                    "fnr": 1 - tpr,
                    "fpr": (selected - tp) / max(n - events, 1),
                    "ppv": tp / max(selected, 1),
                    "auroc": rng.uniform(0.72, 0.8),
                    "brier": rng.uniform(0.07, 0.1),
                    "oe_ratio": rng.uniform(0.85, 1.15),
                    "calibration_slope": rng.uniform(0.85, 1.1),
                }[metric]
                depends = {
                    "base_rate": ("n_events", "n"),
                    "selection_rate": ("n_selected", "n"),
                    "tpr": ("n_true_positives", "n_events"),
                    "fnr": ("n_false_negatives", "n_events"),
                    "fpr": ("n_false_positives", "n_non_events"),
                    "ppv": ("n_true_positives", "n_selected"),
                }.get(metric, ("n_events", "n"))
                suppressed = bool(hidden.intersection(depends))
                spread = 0.25 * value if metric != "auroc" else 0.03
                entry: dict[str, Any] = {
                    "value": SUPPRESSED if suppressed else round(value, 4),
                    "ci_low": SUPPRESSED if suppressed else round(max(value - spread, 0.0), 4),
                    "ci_high": SUPPRESSED if suppressed else round(value + spread, 4),
                    "ci_method": "wilson",
                }
                if group != reference:
                    ratio = (
                        _reach(dimension, group) * rng.uniform(0.95, 1.05)
                        if metric == "tpr"
                        else rng.uniform(0.85, 1.2)
                    )
                    low, high = ratio * 0.85, ratio * 1.15
                    flag = (high < 1 or low > 1) and not 0.8 <= ratio <= 1.25
                    for key, number in (
                        ("ratio", ratio),
                        ("ratio_ci_low", low),
                        ("ratio_ci_high", high),
                        ("difference", ratio - 1),
                        ("difference_ci_low", low - 1),
                        ("difference_ci_high", high - 1),
                    ):
                        entry[key] = SUPPRESSED if suppressed else round(number, 4)
                    for key, flag_value in (
                        ("outside_fair_range", not 0.8 <= ratio <= 1.25),
                        ("significant", high < 1 or low > 1),
                        ("flag", flag),
                    ):
                        entry[key] = SUPPRESSED if suppressed else flag_value
                metrics[metric] = entry
            entries.append(
                {
                    "group": group,
                    "stable": n >= 100 and events >= 10,
                    "note": None if n >= 100 and events >= 10 else "small group",
                    "is_reference": group == reference,
                    "metrics": metrics,
                }
                | {name: round_count(value) for name, value in counts.items()}
            )
            del index
        dimensions[dimension] = {
            "reference_group": reference,
            "groups": entries,
            "flagged_comparisons": 0,
        }
    indicators = {
        "outcome_rate": -0.04,
        "mean_predicted_risk": -0.03,
        "selection_rate": -0.01,
        "need_reached": 0.09,
    }
    gradients = {
        dimension: {
            indicator: {
                "sii": {"value": sii, "ci_low": sii - 0.02, "ci_high": sii + 0.02},
                "rii": {
                    "value": 1 + sii * 3,
                    "ci_low": 1 + sii * 3 - 0.1,
                    "ci_high": 1 + sii * 3 + 0.1,
                },
            }
            for indicator, sii in indicators.items()
        }
        for dimension in ("imd_decile", "imd_quintile")
    }
    heat = {
        dimension: {
            indicator: {"best_group": _groups(dimension)[0], "direction": "favourable"}
            | {
                measure: {"value": value, "ci_low": value * 0.8, "ci_high": value * 1.2}
                for measure, value in (
                    ("between_group_variance", 0.0004),
                    ("mean_difference_from_best", 0.03),
                    ("theil_index", 0.002),
                    ("population_attributable_fraction", 0.08),
                )
            }
            for indicator in indicators
        }
        for dimension in ("region", "icb_code", "ethnicity_group", "sex", "age_band")
    }
    need_gaps: dict[str, Any] = {}
    shares: dict[str, Any] = {}
    for dimension, reference in (("imd_quintile", "5"), ("ethnicity_group", "White")):
        need_gaps[dimension] = {}
        for need in ("recorded_need", "true_need"):
            rows = []
            for group in _groups(dimension):
                ratio = 1.0 if group == reference else (1.3 if group in {"1", "Black"} else 1.05)
                rows.append(
                    {
                        "group": group,
                        "is_reference": group == reference,
                        "n": round_count(int(rng.integers(300, 9000))),
                        "n_selected": round_count(int(rng.integers(20, 400))),
                        "stable": True,
                        "disadvantaged": group in {"1", "Black"},
                        "significant": group in {"1", "Black"},
                        "need_gap": round((ratio - 1) * 1.2, 4),
                        "need_gap_ci_low": round((ratio - 1) * 1.2 - 0.1, 4),
                        "need_gap_ci_high": round((ratio - 1) * 1.2 + 0.1, 4),
                        "need_ratio": ratio,
                        "need_ratio_ci_low": ratio - 0.08,
                        "need_ratio_ci_high": ratio + 0.08,
                        "mean_need": 1.4 * ratio,
                        "cutoff_gap": round((ratio - 1) * 2, 4),
                        "cutoff_gap_ci_low": 0.0,
                        "cutoff_gap_ci_high": 0.5,
                        "mean_need_selected": 3.1,
                    }
                )
            need_gaps[dimension][need] = {"reference_group": reference, "groups": rows}
        groups = _groups(dimension)
        weights = rng.dirichlet(np.ones(len(groups)) * 5)
        shares[dimension] = [
            {
                "group": group,
                "n_selected_by_risk_score": round_count(int(w * 2000)),
                "n_selected_by_true_need": round_count(
                    int(w * 2000 * (1.3 if group == "1" else 0.95))
                ),
                "share_by_risk_score": round(float(w), 4),
                "share_by_true_need": round(
                    float(w) * (1.3 if group in {"1", "Black"} else 0.95), 4
                ),
            }
            for group, w in zip(groups, weights, strict=True)
        ]
    policies = []
    for policy, gap, reached in (
        ("risk", 0.12, 0.31),
        ("equal_opportunity", 0.02, 0.3),
        ("core20plus5", 0.06, 0.305),
        ("need_based", 0.04, 0.29),
    ):
        by_group = {
            "imd_quintile": {
                q: {
                    "selection_share": round(
                        0.2 + (0.03 if q == "1" and policy != "risk" else 0), 4
                    ),
                    "tpr": 0.3,
                    "case_tpr": round(0.25 + 0.02 * int(q), 4),
                }
                for q in _groups("imd_quintile")
            }
        }
        policies.append(
            {
                "policy": policy,
                "n_selected": 2000,
                "n_events_reached": round_count(int(reached * 4000)),
                "share_of_events_reached": reached,
                "n_cases_reached": 900,
                "share_of_cases_reached": 0.2,
                "tpr_gap_imd_quintile": gap,
                "case_tpr_gap_imd_quintile": gap + 0.01,
                "n_true_events_reached": round_count(int(reached * 3900)),
                "share_of_true_events_reached": reached - 0.01,
                "by_group": by_group,
            }
        )
    headline = {
        "overall_selection_rate": 0.05,
        "overall_tpr": 0.3,
        "flagged_comparisons": 7,
        "sii_need_reached": 0.09,
        "imd_q1_vs_q5_tpr_ratio": 0.7,
    }
    return {
        "target": target,
        "split": "test",
        "n": 40000,
        "truth_available": True,
        "score_resolution": "exact",
        "operating_point": {
            "capacity_mode": "share",
            "capacity": 0.05,
            "selection": "top of the whole eligible cohort by risk_rank",
        },
        "settings": {
            "confidence": 0.95,
            "fair_ratio_low": 0.8,
            "fair_ratio_high": 1.25,
            "n_bootstrap": 200,
            "n_monte_carlo": 500,
            "min_group_size": 100,
            "min_group_events": 10,
        },
        "dimensions": dimensions,
        "flags": [],
        "flagged_comparisons": 7,
        "gradients": gradients,
        "heat": heat,
        "label_choice": {"need_gaps": need_gaps, "selection_shares": shares},
        "planted_bias_check": {
            "available": True,
            "comparisons": 9,
            "significant_comparisons": 2,
            "disadvantaged_groups": [],
        },
        "mitigation": {
            "policies": policies,
            "case_definition": "true-need case",
            "true_events_source": "expected events from data/truth oracle risk",
            "equal_opportunity_thresholds": None,
        },
        "headline": headline,
    }


def need_curves(rng: np.random.Generator) -> pl.DataFrame:
    """need_by_score.parquet: mean need per group and score percentile (50 bins)."""
    rows = []
    for dimension in ("imd_quintile", "ethnicity_group"):
        for need in ("recorded_need", "true_need"):
            for group in _groups(dimension):
                lift = 1.35 if group in {"1", "Black"} else 1.0
                for percentile in range(1, 51):
                    n = int(rng.integers(20, 300)) if group != "Other" else 5
                    suppressed = 0 < n < 8
                    rows.append(
                        {
                            "dimension": dimension,
                            "need_measure": need,
                            "group": group,
                            "score_percentile": percentile,
                            "n": str(round_count(n)),
                            "mean_need": None if suppressed else 0.2 + lift * percentile / 15,
                            "sd_need": None if suppressed else 1.0,
                            "suppressed": suppressed,
                        }
                    )
    return pl.DataFrame(rows)


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
                        "n_eligible": round_count(int(w * 100000)),
                        "n_selected": round_count(int(w * 5000 * shortfall)),
                        "share_of_eligible": round(float(w), 4),
                        "share_of_selected": round(float(w) * shortfall, 4),
                        "selection_rate": 0.05,
                        "test_split": {
                            "n_selected": round_count(int(w * 1000)),
                            "n_events": round_count(int(w * 2400)),
                            "n_events_reached": round_count(int(w * 700)),
                            "n_expected_events_reached": 100,
                            "event_capture_rate": 0.3,
                            "precision": 0.3,
                        },
                        "stable": True,
                        "n_need_list": round_count(int(w * 5000)),
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


def write_fixture_project(root: Path, *, seed: int = 7) -> Paths:
    """Write every report input under ``root`` (a copy of the repo's params.yaml included)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    paths = Paths.at(root)
    params = load_params(paths.params)
    rng = np.random.default_rng(seed)
    targets = list(params.targets)
    for target in targets:
        folder = paths.reports / "audit" / target
        folder.mkdir(parents=True, exist_ok=True)
        audit = audit_json(target, rng)
        write_json(audit, folder / "audit.json")
        write_json(audit["headline"], paths.reports / "metrics" / f"audit_{target}.json")
        need_curves(rng).write_parquet(folder / "need_by_score.parquet")
        model_dir = paths.models / target
        (model_dir / "plots").mkdir(parents=True, exist_ok=True)
        write_json(model_metrics(target), model_dir / "metrics.json")
        (model_dir / "model.txt").write_text(f"tree\nversion=v4\n# fixture model {target}\n")
        grid = np.linspace(0.0, 1.0, 21)
        pl.DataFrame({"fpr": grid, "tpr": np.sqrt(grid)}).write_csv(model_dir / "plots" / "roc.csv")
        pl.DataFrame({"mean_predicted": grid * 0.4, "observed_rate": grid * 0.41}).write_csv(
            model_dir / "plots" / "calibration.csv"
        )
        pl.DataFrame({"share_selected": grid, "share_of_events": np.sqrt(grid)}).write_csv(
            model_dir / "plots" / "cumulative_gain.csv"
        )
    write_json(outreach_summary(targets, rng), paths.reports / "outreach_summary.json")
    write_json(
        {
            "n_people": 200000,
            "ethnicity_recorded_share": 0.85,
            "valid": True,
            "tables": {"people": {"n_rows": 200000}},
        },
        paths.reports / "data_quality.json",
    )
    return paths


def build_fixture_report(root: Path) -> Path:
    """Write the fixture project and build its report (no MLflow); returns the HTML path."""
    from pipeline.report import run

    paths = write_fixture_project(root)
    return run(load_params(paths.params), paths, log_mlflow=False)
