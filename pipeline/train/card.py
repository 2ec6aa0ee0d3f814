"""The model card (``models/<target>/model_card.md``): aggregate and disclosure-controlled, so
safe to log to MLflow. Its prose is the Jinja template ``templates/model_card.md.j2``."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import jinja2

from pipeline import contract, selection
from pipeline.disclosure import Rule
from pipeline.train.evaluation import METRIC_NAMES

if TYPE_CHECKING:
    from pipeline.config import OperatingPointParams, TargetParams, TrainParams

TEMPLATES: Final = Path(__file__).parent / "templates"


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # markdown, not HTML
    )


def metric_text(doc: Mapping[str, Any], name: str, digits: int = 3) -> str:
    """``value (low to high)`` of one metric of ``metrics.json`` (``"*"`` / ``n/a`` as given)."""
    value = doc.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return str(value) if value is not None else "n/a"
    low, high = doc.get(f"{name}_ci_low"), doc.get(f"{name}_ci_high")
    if isinstance(low, int | float) and isinstance(high, int | float):
        return f"{value:.{digits}f} ({low:.{digits}f} to {high:.{digits}f})"
    return f"{value:.{digits}f}"


def model_card(
    *,
    target: str,
    target_params: TargetParams,
    train: TrainParams,
    operating_point: OperatingPointParams,
    index_date: dt.date,
    metrics: Mapping[str, Any],
    calibration_method: str,
    importance: Sequence[Mapping[str, Any]],
    n_cohort: int,
    n_train_rows: int,
    rule: Rule,
) -> str:
    """Markdown model card of one target's model (TRIPOD+AI items listed in the template)."""
    capacity_text = selection.capacity_text(
        capacity_mode=operating_point.capacity_mode, capacity=operating_point.capacity
    )
    context = {
        "target": target,
        "description": target_params.description or target,
        "outcome": target_params.outcome,
        "follow_up_months": target_params.follow_up_months,
        "ages": f"{target_params.min_age}-{target_params.max_age}",
        "exclusions": ", ".join(target_params.exclude_prior) or "none",
        "index_date": index_date.isoformat(),
        "n_people": rule.count(n_cohort),
        "n_train": rule.count(n_train_rows),
        "max_train_rows": f"{train.max_train_rows:,}",
        "max_validation_rows": f"{train.max_validation_rows:,}",
        "learning_rate": train.learning_rate,
        "num_leaves": train.num_leaves,
        "early_stopping_rounds": train.early_stopping_rounds,
        "class_weighting": train.class_weighting,
        "n_bootstrap": train.n_bootstrap,
        "best_iteration": metrics.get("best_iteration"),
        "calibration_method": calibration_method,
        "top_features": ", ".join(row["feature"] for row in importance[:10]),
        "capacity_text": capacity_text,
        "performance": [
            {"name": name.replace("_", " "), "value": metric_text(metrics, name)}
            for name in (*METRIC_NAMES, *contract.ORACLE_METRICS)
            if name in metrics
        ],
    }
    return _environment().get_template("model_card.md.j2").render(context)
