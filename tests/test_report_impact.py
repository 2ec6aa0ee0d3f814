"""The report's outcomes section answers "does targeting narrow the gap?" from the published
impact tables, and never from a suppressed one."""

from __future__ import annotations

from typing import Any

import polars as pl

from pipeline import contract
from pipeline.disclosure import Rule
from pipeline.report.context import impact as section
from pipeline.report.model import TargetView


def _gradient(**rows: dict[str, Any]) -> pl.DataFrame:
    base = {name: None for name in contract.IMPACT_GRADIENT_SCHEMA}
    frame = [base | {"policy": policy, "risk_basis": "true risk"} | r for policy, r in rows.items()]
    return pl.DataFrame(frame, schema=contract.IMPACT_GRADIENT_SCHEMA)


def _view(gradient: pl.DataFrame) -> TargetView:
    impact = pl.DataFrame(
        [
            {
                "policy": p,
                "dimension": "overall",
                "group": "All",
                "n": "1000",
                "n_selected": "50",
                "n_expected_events": "100",
                "n_events_averted": "10",
                "n_events_averted_ci_low": "5",
                "n_events_averted_ci_high": "15",
                "rate_before": 100.0,
                "rate_after": 90.0,
                "suppressed": False,
            }
            for p in gradient["policy"]
        ],
        schema=contract.IMPACT_SCHEMA,
    )
    return TargetView(
        target="t", description="", outcome="cvd event", impact=impact, impact_gradient=gradient
    )


SHOWN = {"suppressed": False, "sii_before": -50.0, "sii_after": -48.0}


def test_the_answer_states_the_current_rankings_change_with_its_interval() -> None:
    gradient = _gradient(
        risk=SHOWN
        | {
            "gap_change": -2.0,
            "gap_change_ci_low": -3.0,
            "gap_change_ci_high": -1.0,
            "narrows": True,
            "widens": False,
        },
        need_based=SHOWN
        | {
            "gap_change": 0.5,
            "gap_change_ci_low": -0.5,
            "gap_change_ci_high": 1.5,
            "narrows": False,
            "widens": False,
        },
        core20plus5={"suppressed": True},
    )
    text = section.answer(_view(gradient))
    assert "narrows the gap by 2.00" in text and "1.00–3.00" in text
    assert "Strategies that clearly narrow the gap: Rank by predicted risk (current)." in text
    assert "Not shown (a quintile's figures are suppressed): Core20PLUS5 uplift." in text
    table = section.gradient_table(_view(gradient), Rule())
    verdicts = [row[-1].text for row in table.rows]
    assert verdicts == [
        "narrows the gap",
        "no clear change in the gap (the interval includes 0)",
        "not shown (a quintile's figures are suppressed)",
    ]


def test_nothing_is_claimed_when_every_strategy_is_suppressed() -> None:
    text = section.answer(_view(_gradient(risk={"suppressed": True})))
    assert text.startswith("Not shown") and "narrow" not in text.split(":")[0]
    assert "No strategy" not in text
