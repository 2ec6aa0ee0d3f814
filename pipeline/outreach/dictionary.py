"""The data dictionary written beside the outreach lists, and the read-me of an export.

``data/outreach/data_dictionary.csv`` says what every column of every list means (one row per
file kind and column), so a team opening a list never has to guess what ``risk_score`` or
``list_tier`` is. The same words open each exported workbook (:mod:`pipeline.export`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import polars as pl

from pipeline.config import ListTier
from pipeline.outreach.lists import tier_labels

__all__ = ["README_LINES", "data_dictionary"]

_TARGET_COLUMNS: Final = (
    ("pseudonym", "The person's keyed pseudonym (HMAC-SHA256 of the practice's person_id under "
     "the ICB's secret key): 64 hex characters. Re-identify at the practice only: see Read me."),
    ("practice_id", "The GP practice the person is registered with."),
    ("icb_code", "ODS code of the integrated care board."),
    ("rank", "Order of contact within this ICB's list for this target: 1 = contact first."),
    ("list_tier", "Band of this ICB's list by rank ({tiers}); contact tier {first} first."),
    ("risk_score", "The model's calibrated probability of the target's outcome over its "
     "horizon (0-1, 4 decimals): 0.25 = about 1 in 4 people like this have the outcome."),
    ("age", "Age in years at the index date (context, never a reason)."),
    ("sex", "Recorded sex: F, M or U (context, never a reason)."),
    ("conditions_recorded", "Long-term conditions already recorded in the GP record."),
    ("reason_1", "The largest modifiable or actionable factor raising this person's risk "
     "(the model's top contribution that is not age, sex, place or practice context)."),
    ("reason_2", "The second such factor (empty when there is none)."),
    ("reason_3", "The third such factor (empty when there is none)."),
    ("suggested_action", "What to offer: a review of a recorded condition (e.g. blood pressure "
     "control), or case-finding when the condition is not recorded."),
)  # fmt: skip
_MERGED_COLUMNS: Final = (
    (
        "rank",
        "Order of contact within the ICB across all lists: by the best rank on any list, "
        "then people on more lists first.",
    ),
    ("n_lists", "On how many targets' lists the person is (contact once, for all of them)."),
    ("<target>_rank", "Rank on that target's list (empty: not on it)."),
    ("<target>_tier", "Tier on that target's list."),
    ("<target>_risk_score", "Calibrated risk of that target's outcome."),
    ("<target>_reasons", "That list's reasons, separated by '; '."),
    ("<target>_action", "That list's suggested action."),
    ("suggested_actions", "Every distinct suggested action across the lists, in target order."),
)
README_LINES: Final = (
    "Outreach lists: people to contact first for prevention, by a risk model.",
    "Pseudonymised: no names, NHS numbers or dates of birth. Do not add them to this file.",
    "To find a person: the practice runs HMAC-SHA256 over each registered person_id with the "
    "ICB's pseudonymisation key (held by the practice's data controller, never sent with a list) "
    "and matches the result to the pseudonym column: see docs/outreach.md, 'Re-identifying a "
    "pseudonym'.",
    "Contact in rank order; list tier A first. One person on several lists: use the 'All lists' "
    "sheet and contact them once.",
    "Reasons are modifiable or actionable factors; age and sex are context columns.",
)
"""The read-me of every exported workbook (first sheet)."""


def data_dictionary(targets: Sequence[str], tiers: Sequence[ListTier]) -> pl.DataFrame:
    """``file``, ``column``, ``meaning`` for every column of the per-target and merged lists.

    Parameters
    ----------
    targets
        The targets with lists (their names prefix the merged list's columns).
    tiers
        ``outreach.tiers`` (named in ``list_tier``'s meaning).
    """
    labels = "; ".join(tier_labels(tiers))
    target_rows = [
        ("<target>.csv", column, meaning.format(tiers=labels, first=tiers[0].name))
        for column, meaning in _TARGET_COLUMNS
    ]
    person = {"pseudonym", "practice_id", "icb_code", "age", "sex", "conditions_recorded"}
    person -= {"rank"}
    merged_rows = [row for row in target_rows if row[1] in person]
    merged_rows = [("merged.csv", column, meaning) for _, column, meaning in merged_rows]
    merged_rows += [("merged.csv", column, meaning) for column, meaning in _MERGED_COLUMNS]
    note = ("merged.csv", "<target>", "One of: " + ", ".join(targets))
    return pl.DataFrame(
        [*target_rows, *merged_rows, note], schema=["file", "column", "meaning"], orient="row"
    )
