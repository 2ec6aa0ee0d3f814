"""The DVC metrics and plot data kept in git: ``metrics/<target>/`` (aggregate, disclosure-safe).

``dvc metrics show / diff`` and ``dvc exp show`` read a handful of headline numbers per target,
so they stay readable and work on a fresh clone (``cache: false`` in ``dvc.yaml``, as in DVC's
own example project):

- ``metrics/<target>/train.json`` (stage train): test-split AUROC, AUPRC, Brier, O/E,
  calibration slope and who the operating point reaches;
- ``metrics/<target>/audit.json`` (stage audit): the count of flagged comparisons and the IMD
  gaps behind them;
- ``metrics/<target>/plots/*.csv`` (stage train): the test-split curves for ``dvc plots``.

Everything else (confidence intervals, counts, settings) stays in the detail files
(``models/<target>/metrics.json``, ``reports/metrics/audit_<target>.json``), which are not DVC
metrics. Headline values are numbers only, rounded to :data:`DIGITS` decimals; a value
published as ``"*"`` (suppressed) or not finite is left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pipeline import io

DIGITS: Final = 4
"""Decimals of a headline figure (differences below 1e-4 are noise for a reader)."""
FOLDER: Final = "metrics"
TRAIN_HEADLINE: Final = (
    "auroc",
    "auprc",
    "brier",
    "oe_ratio",
    "calibration_slope",
    "sensitivity_at_capacity",
    "n_selected_events_at_capacity",
)
"""From ``models/<target>/metrics.json``: ranking, accuracy, calibration, cases reached (share of
test-split events among the selected, and their published count)."""
AUDIT_HEADLINE: Final = (
    "flagged_comparisons",
    "imd_q1_vs_q5_tpr_ratio",
    "imd_q1_vs_q5_selection_rate_ratio",
    "sii_need_reached",
)
"""From ``reports/metrics/audit_<target>.json``: flags, and the deprivation gaps."""


def target_folder(root: Path, target: str) -> Path:
    """``metrics/<target>/`` under the project root."""
    return root / FOLDER / target


def plots_folder(root: Path, target: str) -> Path:
    """``metrics/<target>/plots/``: the test-split curves (CSV) for ``dvc plots``."""
    return target_folder(root, target) / "plots"


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None  # "*" (suppressed), text or a flag
    if isinstance(value, int):
        return value
    return round(value, DIGITS) if math.isfinite(value) else None


def headline(document: Mapping[str, Any], *, keys: tuple[str, ...]) -> dict[str, int | float]:
    """The numbers of ``document`` named in ``keys``, in that order, rounded to :data:`DIGITS`.

    Parameters
    ----------
    document
        A flat metrics document (train's ``metrics.json`` or the audit headline).
    keys
        Which figures to keep (:data:`TRAIN_HEADLINE`, :data:`AUDIT_HEADLINE`).

    Returns
    -------
    dict
        Numbers only: suppressed (``"*"``), missing or non-finite figures are left out.
    """
    numbers = {key: _number(document.get(key)) for key in keys}
    return {key: value for key, value in numbers.items() if value is not None}


def write_headline(
    document: Mapping[str, Any], *, keys: tuple[str, ...], root: Path, target: str, name: str
) -> Path:
    """Write :func:`headline` of ``document`` to ``metrics/<target>/<name>`` (atomically)."""
    return io.write_json(headline(document, keys=keys), target_folder(root, target) / name)
