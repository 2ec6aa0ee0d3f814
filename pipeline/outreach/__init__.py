"""Stage ``outreach``: capacity-limited, pseudonymised outreach lists per ICB, with reasons.

For every target the eligible cohort is ranked by a policy (:mod:`.policies`), cut at the
outreach capacity, pseudonymised and banded into tiers (:mod:`.lists`), given three actionable
reasons in plain words, age and sex as context, and a Core20PLUS5 action that knows what is
already recorded (:mod:`.reasons`), merged across targets per ICB with a data dictionary
(:mod:`.lists`, :mod:`.dictionary`), and described in aggregate (:mod:`.summary`); :mod:`.stage`
does the IO. Design and file layouts: ``docs/outreach.md``.
"""

from __future__ import annotations

from pipeline.outreach.lists import OUTREACH_COLUMNS, select_outreach
from pipeline.outreach.policies import Policy, equal_opportunity_thresholds, policy_priority
from pipeline.outreach.reasons import attach_reasons, feature_glossary
from pipeline.outreach.stage import run
from pipeline.outreach.summary import summarise_target

__all__ = [
    "OUTREACH_COLUMNS",
    "Policy",
    "attach_reasons",
    "equal_opportunity_thresholds",
    "feature_glossary",
    "policy_priority",
    "run",
    "select_outreach",
    "summarise_target",
]
