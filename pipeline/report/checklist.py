"""Reporting checklists: where the report (or the pipeline) answers each fairness item.

TRIPOD+AI (Collins et al., BMJ 2024) fairness-related items and the STANDING Together
recommendations (2024) on the data behind health AI. Each item points at a section anchor of
the report or at the artefact that answers it, so a reviewer can tick it off.
"""

from __future__ import annotations

from typing import Final

TRIPOD_AI: Final = (
    (
        "3c",
        "Known health inequalities between groups relevant to the model",
        "intro",
        "Why this report exists; deprivation, geography and ethnicity sections.",
    ),
    (
        "7",
        "Data preparation and quality across groups",
        "population",
        "Data quality table; ethnicity 'Not recorded' kept as its own group.",
    ),
    (
        "8a",
        "Outcome definition and whether it is measured alike across groups",
        "label-choice",
        "Label-choice audit: recorded outcomes vs need by group.",
    ),
    (
        "12e",
        "Model performance measures, with intervals",
        "performance",
        "AUROC, AUPRC, Brier, calibration intercept/slope, O/E, ECE with 95% CIs.",
    ),
    (
        "12f",
        "Methods to assess fairness (groups, metrics, reference)",
        "methods",
        "Group metrics, ratios to reference (0.8-1.25), SII/RII, WHO HEAT.",
    ),
    (
        "14",
        "Fairness approach: how unfairness would be identified and handled",
        "mitigation",
        "Mitigation trade-off table (ThresholdOptimizer, Core20PLUS5, need-based label).",
    ),
    (
        "20b",
        "Performance in key subgroups",
        "deprivation",
        "Per-group tables for deprivation, region, ICB, ethnicity and their intersection.",
    ),
    (
        "23a",
        "Performance with CIs in key subgroups (fairness)",
        "deprivation",
        "Every group rate and ratio shown with its 95% CI; small groups marked.",
    ),
    ("25", "Limitations, including fairness", "limitations", "Limitations section."),
)
"""(item, what it asks, report section id, where it is answered)."""

STANDING_TOGETHER: Final = (
    (
        "Dataset documentation: the groups represented and their sizes",
        "population",
        "Population tables by IMD, region, ethnicity, age, sex.",
    ),
    (
        "Missing attribute data reported (e.g. ethnicity not recorded)",
        "ethnicity",
        "'Not recorded' shown as a group; its size in the population table.",
    ),
    (
        "Known biases in how data and labels were recorded",
        "label-choice",
        "Label-choice audit; limitations.",
    ),
    (
        "Performance reported for each group, not only overall",
        "deprivation",
        "Deprivation, geography, ethnicity and intersection sections.",
    ),
    ("Intersectional groups considered", "intersection", "Ethnicity x deprivation grid."),
    (
        "Uncertainty for small groups; disclosure control",
        "limitations",
        "95% CIs throughout; 'small group' marks; counts 1-7 shown as '*'.",
    ),
    ("Actions to mitigate identified disparities", "mitigation", "Mitigation trade-off."),
)
"""(recommendation, report section id, where it is answered)."""
