"""What a person sees: one line per stage, no progress bar in a pipe, quiet libraries, and the
headline numbers DVC shows (numbers only, a handful per target)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from pipeline import console, headline


def test_stage_line_names_stage_target_work_figure_and_time() -> None:
    line = console.stage_line(
        "train", target="cvd", did="1,000 people", figure="test AUROC 0.8", took="2.0 s"
    )
    assert line == "train cvd: 1,000 people; test AUROC 0.8 (2.0 s)"
    assert console.stage_line("features", did="10 people", took="1.0 s") == (
        "features: 10 people (1.0 s)"
    )


def test_elapsed_reads_seconds_then_minutes() -> None:
    start = console._STARTED
    assert console.elapsed(now=start + 4.24) == "4.2 s"
    assert console.elapsed(now=start + 65.4) == "1 min 05 s"


def test_stage_done_prints_exactly_one_line_on_stderr(capsys: pytest.CaptureFixture) -> None:
    console.stage_done("need", target="cvd", did="12 people scored")
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("done need cvd: 12 people scored (")


def test_progress_draws_nothing_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture,
) -> None:
    with console.progress("boosting", total=3) as advance:
        for _ in range(3):
            advance(1)
    assert capsys.readouterr() == ("", "")


def test_figures_show_suppressed_or_missing_as_a_star() -> None:
    document = {"auroc": 0.78612, "oe_ratio": "*"}
    text = console.figures(document, ("auroc", "AUROC"), ("oe_ratio", "O/E"))
    assert text == "test AUROC 0.786, O/E *"


def test_quiet_third_party_sets_defaults_but_keeps_the_users_choice() -> None:
    environ = {"MLFLOW_LOGGING_LEVEL": "DEBUG"}
    console.quiet_third_party(environ)
    assert environ["MLFLOW_LOGGING_LEVEL"] == "DEBUG"  # the user's own setting wins
    assert environ["MLFLOW_LOG_UV_FILES"] == "false"  # uv.lock not copied into model artifacts
    assert environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    assert logging.getLogger("mlflow.utils.environment").level == logging.ERROR


def test_headline_keeps_named_numbers_only_rounded_in_order() -> None:
    document = {
        "auroc": 0.786112745,
        "brier": "*",  # suppressed: left out
        "oe_ratio": math.nan,  # undefined: left out
        "calibration_slope": 0.97396,
        "n_selected_events_at_capacity": 840,
        "calibration_method": "none",  # text is never a metric
        "auroc_ci_low": 0.77,  # detail: not a headline
    }
    keys = ("auroc", "brier", "oe_ratio", "calibration_slope", "n_selected_events_at_capacity")
    assert headline.headline(document, keys=keys) == {
        "auroc": 0.7861,
        "calibration_slope": 0.974,
        "n_selected_events_at_capacity": 840,
    }
    assert headline.headline({"flagged_comparisons": True}, keys=("flagged_comparisons",)) == {}


def test_headline_sets_stay_small() -> None:
    # dvc exp show: a handful of columns per target, not every bound of every interval
    assert len(headline.TRAIN_HEADLINE) + len(headline.AUDIT_HEADLINE) <= 12
    assert not [key for key in headline.TRAIN_HEADLINE if key.endswith(("_ci_low", "_ci_high"))]


def test_timings_go_only_to_the_file_the_environment_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(console.TIMINGS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    console.record_timing("need", "fit", 1.5, target="t", rows=10)
    assert list(tmp_path.iterdir()) == []  # unset: nothing written anywhere
    timings = tmp_path / "timings.jsonl"
    monkeypatch.setenv(console.TIMINGS_ENV, str(timings))
    console.record_timing("need", "fit", 1.5, target="t", rows=10)
    console.record_timing("train", "fit", 2.0)
    assert [json.loads(line) for line in timings.read_text().splitlines()] == [
        {"stage": "need", "target": "t", "step": "fit", "seconds": 1.5, "rows": 10},
        {"stage": "train", "target": None, "step": "fit", "seconds": 2.0, "rows": None},
    ]
