"""Pipeline parameters: ``params.yaml`` loaded into frozen pydantic models.

Every stage calls :func:`load_params` before doing any work, so an unknown key or a bad value
stops the run with a message that names the key (for example ``train.learning_rate``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.disclosure import Rule
from pipeline.errors import ParamsError

__all__ = ["Params", "ParamsError", "load_params", "parse_params"]

PARAMS_FILE = "params.yaml"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Probability = Annotated[float, Field(ge=0.0, le=1.0, strict=True)]
Strength = Annotated[float, Field(ge=0.0, le=3.0, strict=True)]


class IntersectionalBias(_Frozen):
    """A planted bias in one ethnic group within one IMD quintile only (0 = none).

    Added on top of the other biases as a log-odds shift, so it is found only where both
    groups meet (the audit's ``ethnicity_group_x_imd_quintile`` table).
    """

    ethnicity_group: Literal["White", "Mixed", "Asian", "Black", "Other"] = "Black"
    """The true broad ethnic group affected (its recorded ethnicity may be missing)."""
    imd_quintile: Annotated[int, Field(ge=1, le=5, strict=True)] = 1
    """The IMD quintile affected (1 = most deprived)."""
    recording: Strength = 0.0
    """How far the log-odds of recording a true condition fall in the intersection."""
    access: Strength = 0.0
    """How far care use falls (log rate, as the ``access`` bias) in the intersection."""


class BiasParams(_Frozen):
    """Planted recording and access biases (0 = an unbiased world)."""

    under_recording: Strength = 1.0
    """How strongly true conditions go unrecorded in deprived areas, some ethnic groups and
    poorly-recording practices."""
    access: Strength = 1.0
    """How strongly care use (and so recorded outcomes) falls for the same need, in the same
    groups."""
    ethnicity_not_recorded: Probability = 0.15
    """Overall share of people with no recorded ethnicity (Z / 99 / null)."""
    intersectional: IntersectionalBias = IntersectionalBias()
    """An extra bias where one ethnic group meets one IMD quintile (default: strength 0)."""


class OmopParams(_Frozen):
    """An OMOP CDM database to convert into the contract's tables (``population.source: omop``;
    docs/omop.md)."""

    path: Annotated[str, Field(min_length=1)]
    """A DuckDB file, or a folder of parquet or CSV files (or folders of parts), one per OMOP table
    (relative paths: from the project folder)."""
    cdm_version: Literal["5.3", "5.4"] = "5.4"
    """CDM version (v5.3 names ``visit_occurrence.admitting_source_concept_id``; v5.4
    ``admitted_from_concept_id``)."""
    cdm_schema: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")] = "main"
    """The schema holding the CDM tables in a DuckDB file (ignored for a folder)."""
    min_follow_up_months: Annotated[int, Field(ge=0, le=120, strict=True)] = 0
    """People must stay observed this many months after the index date to enter the cohort
    (0: observed at the index date is enough)."""


SYNTHETIC_ICBS: tuple[str, ...] = (
    *("QE1", "QF7", "QGH", "QH8", "QHG", "QHL", "QHM", "QJ2", "QJG", "QJK", "QJM", "QK1"),
    *("QKK", "QKS", "QM7", "QMF", "QMJ", "QMM", "QNC", "QNQ", "QNX", "QOC", "QOP", "QOQ"),
    *("QOX", "QPM", "QR1", "QRL", "QRV", "QSL", "QT1", "QT6", "QU9", "QUA", "QUE", "QUY"),
    *("QVV", "QWE", "QWO", "QWU", "QXU", "QYG"),
)
"""The ICBs of the synthetic world (ODS codes, sorted; ``pipeline.synth.reference.ICBS``, kept
equal by tests/test_synth.py) that ``population.only_icbs`` may name."""


class PopulationParams(_Frozen):
    """Size and shape of the synthetic population (stage ``synthesize``)."""

    source: Literal["synthetic", "extract", "omop"] = "synthetic"
    """``extract``: copy a real extract from ``extract_dir`` (validated) instead of simulating;
    ``omop``: convert the OMOP CDM database of ``omop`` (docs/omop.md)."""
    extract_dir: str | None = None
    omop: OmopParams | None = None
    n_people: Annotated[int, Field(ge=1_000, le=100_000_000, strict=True)] = 200_000
    area_size: Annotated[int, Field(ge=200, le=5_000, strict=True)] = 1_600
    practice_size: Annotated[int, Field(ge=500, le=50_000, strict=True)] = 8_000
    history_years: Annotated[int, Field(ge=2, le=10, strict=True)] = 3
    chunk_size: Annotated[int, Field(ge=1_000, le=5_000_000, strict=True)] = 250_000
    """Most people per partition (``data/population/<table>/<icb_code>/part-NNNNN.parquet``):
    each ICB is cut into parts of at most this many, generated one task each."""
    only_icbs: tuple[str, ...] | None = None
    """Generate only these ICBs (ODS codes of :data:`SYNTHETIC_ICBS`), each at the size and with
    the draws it has in the ``n_people`` world; None: all of England."""
    bias: BiasParams = BiasParams()

    @field_validator("only_icbs")
    @classmethod
    def _known_icbs(cls, codes: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if codes is None:
            return None
        if not codes:
            raise ValueError("list at least one ICB code, or null for all of England")
        if unknown := [code for code in codes if code not in SYNTHETIC_ICBS]:
            raise ValueError(
                f"unknown ICB code(s) {', '.join(map(repr, unknown[:5]))} (the synthetic world's "
                f"{len(SYNTHETIC_ICBS)} ICBs: {', '.join(SYNTHETIC_ICBS[:5])}, ...)"
            )
        if len(set(codes)) != len(codes):
            raise ValueError("ICB codes must not repeat")
        return codes

    @model_validator(mode="after")
    def _extract_has_dir(self) -> PopulationParams:
        if self.source == "extract" and not self.extract_dir:
            raise ValueError("extract_dir is required when source is 'extract'")
        if self.source == "omop" and self.omop is None:
            raise ValueError("omop (with its path) is required when source is 'omop'")
        return self


EventType = Literal[
    "gp_consultation",
    "diagnosis",
    "prescription",
    "measurement",
    "ae_attendance",
    "emergency_admission",
    "elective_admission",
    "outpatient",
]
"""The contract's event types (``pipeline.contract.EVENT_TYPES`` is this tuple)."""
ConceptName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
"""A concept of the codelist registry (``codelists/registry.yaml``)."""
SYNTHETIC_OUTCOMES: tuple[str, ...] = (
    "emergency_admission",
    "cvd_event",
    "ae_attendance",
    "diabetes_onset",
)
"""Outcomes the synthetic world simulates (``population.source: synthetic``)."""
SYNTHETIC_EXCLUSIONS: tuple[str, ...] = ("cvd", "diabetes")
"""Prior conditions the synthetic world can exclude from a cohort (from its truth)."""


class OutcomeDefinition(_Frozen):
    """How a target's outcome is found in the events after the index date when the extract has
    no outcomes table (``pipeline.outcomes``): any event of one of ``event_types`` whose code is
    in one of ``concepts`` (all codes when empty), within the follow-up window."""

    event_types: tuple[EventType, ...] = Field(min_length=1)
    concepts: tuple[ConceptName, ...] = ()
    """Registry concepts (any kind) the event's code must be in; empty: any code."""


class TargetParams(_Frozen):
    """One prevention target: an outcome, a follow-up window and an eligible cohort.

    The cohort is everyone in ``people`` (the population registered at the index date) aged
    ``min_age``-``max_age`` at the index date, without a recorded event on or before it in one
    of the ``exclude_prior`` registry concepts. A supplied ``outcomes`` table defines the cohort
    and outcome itself; without one, they are derived from the events (``derive``).
    """

    outcome: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    """The outcome's name (synthetic world: one of :data:`SYNTHETIC_OUTCOMES`)."""
    follow_up_months: Annotated[int, Field(ge=1, le=120, strict=True)]
    min_age: Annotated[int, Field(ge=0, le=110, strict=True)] = 18
    max_age: Annotated[int, Field(ge=0, le=110, strict=True)] = 110
    exclude_prior: tuple[ConceptName, ...] = ()
    """Registry concepts (e.g. ``cvd``, ``diabetes``): people with such a record on or before
    the index date are not in the cohort."""
    derive: OutcomeDefinition | None = None
    """How the outcome is derived from events when no outcomes table is supplied."""
    description: str = ""

    @model_validator(mode="after")
    def _ages_ordered(self) -> TargetParams:
        if self.min_age > self.max_age:
            raise ValueError("min_age must not exceed max_age")
        return self


class FeatureParams(_Frozen):
    """Feature engineering (stage ``features``)."""

    windows_months: tuple[Annotated[int, Field(ge=1, le=120, strict=True)], ...] = (3, 6, 12, 24)
    ethnicity_as_input: Annotated[bool, Field(strict=True)] = False
    region_as_input: Annotated[bool, Field(strict=True)] = False
    deprivation_as_input: Annotated[bool, Field(strict=True)] = True
    split_fractions: tuple[Probability, Probability, Probability] = (0.6, 0.2, 0.2)
    holdout_icb: Annotated[str, Field(pattern=r"^[A-Z0-9]{3}$")] | None = None
    """ODS code of an ICB whose people get split ``external`` (geographic external validation)."""
    measurements: tuple[Literal["sbp", "dbp", "bmi", "hba1c", "cholesterol"], ...] = (
        "sbp",
        "bmi",
        "hba1c",
        "cholesterol",
    )
    """Measurement codes whose latest value, its age and a missing indicator become features."""
    polypharmacy_months: Annotated[int, Field(ge=1, le=120, strict=True)] = 12
    """Look-back for distinct BNF sections prescribed and the practice emergency admission rate."""
    chunk_people: Annotated[int, Field(ge=10_000, le=100_000_000, strict=True)] = 2_000_000
    """People per pass over the events; larger populations run in person_id-range chunks so
    memory stays flat (the output is identical)."""

    @field_validator("measurements")
    @classmethod
    def _measurements_unique(cls, codes: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(codes)) != len(codes):
            raise ValueError("measurement codes must not repeat")
        return codes

    @field_validator("windows_months")
    @classmethod
    def _windows_sorted_unique(cls, windows: tuple[int, ...]) -> tuple[int, ...]:
        if not windows:
            raise ValueError("at least one look-back window is needed")
        if list(windows) != sorted(set(windows)):
            raise ValueError("windows must be strictly increasing, e.g. [3, 6, 12, 24]")
        return windows

    @field_validator("split_fractions")
    @classmethod
    def _fractions_sum_to_one(
        cls, fractions: tuple[float, float, float]
    ) -> tuple[float, float, float]:
        if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) <= 0:
            raise ValueError("train/validation/test fractions must be positive and sum to 1")
        return fractions


class TrainParams(_Frozen):
    """LightGBM training (stage ``train``)."""

    learning_rate: Annotated[float, Field(gt=0.0, le=1.0, strict=True)] = 0.05
    num_leaves: Annotated[int, Field(ge=2, le=4096, strict=True)] = 15
    max_depth: Annotated[int, Field(ge=-1, le=64, strict=True)] = -1
    min_child_samples: Annotated[int, Field(ge=1, strict=True)] = 100
    n_estimators: Annotated[int, Field(ge=1, le=20_000, strict=True)] = 1_000
    early_stopping_rounds: Annotated[int, Field(ge=1, strict=True)] = 50
    feature_fraction: Annotated[float, Field(gt=0.0, le=1.0, strict=True)] = 0.8
    bagging_fraction: Annotated[float, Field(gt=0.0, le=1.0, strict=True)] = 0.8
    lambda_l2: Annotated[float, Field(ge=0.0, strict=True)] = 1.0
    class_weighting: Literal["none", "balanced"] = "none"
    calibration: Literal["auto", "isotonic", "sigmoid", "none"] = "auto"
    max_train_rows: Annotated[int, Field(ge=1_000, strict=True)] = 1_000_000
    max_validation_rows: Annotated[int, Field(ge=1_000, strict=True)] = 2_000_000
    """Validation rows early stopping reads (a seeded sample above this)."""
    max_calibration_rows: Annotated[int, Field(ge=1_000, strict=True)] = 2_000_000
    """Validation rows the calibration is fitted on (a seeded sample above this: every row up
    to a population of about 12M people)."""
    max_test_rows: Annotated[int, Field(ge=1_000, strict=True)] = 2_000_000
    """Test rows the metrics, their bootstrap and the curves read (a seeded sample above
    this). With the other caps, they keep the stage's memory flat in N (``docs/scale.md``)."""
    n_bootstrap: Annotated[int, Field(ge=0, le=10_000, strict=True)] = 200
    num_threads: Annotated[int, Field(ge=1, le=64, strict=True)] = 2
    distributed: Annotated[bool, Field(strict=True)] = False
    """Fit on every training row through ``lightgbm.dask`` (engine ``dask`` only), with the
    number of rounds of a local early-stopped fit on the seeded sample (``docs/scale.md``)."""
    time_out: Annotated[int, Field(ge=1, le=1_440, strict=True)] = 30
    """Minutes LightGBM's distributed workers wait for each other's sockets (LightGBM's
    ``time_out``) before the fit fails instead of hanging."""


AuditDimension = Literal[
    "imd_quintile",
    "imd_decile",
    "region",
    "icb_code",
    "ethnicity_group",
    "sex",
    "age_band",
    "ethnicity_group_x_imd_quintile",
]
"""Groupings the audit can compare (the last is the ethnicity x deprivation intersection)."""

_DEFAULT_REFERENCES: dict[AuditDimension, str] = {
    "imd_quintile": "5",
    "imd_decile": "10",
    "ethnicity_group": "White",
    "ethnicity_group_x_imd_quintile": "White, IMD 5",
}
GeographyDimension = Literal["region", "icb_code"]
"""Dimensions compared with the population value on funnel plots (not with a reference area)."""


class AuditParams(_Frozen):
    """Equity audit (stage ``audit``)."""

    dimensions: tuple[
        AuditDimension,
        ...,
    ] = (
        "imd_quintile",
        "region",
        "icb_code",
        "ethnicity_group",
        "sex",
        "age_band",
        "ethnicity_group_x_imd_quintile",
    )
    n_bootstrap: Annotated[int, Field(ge=0, le=10_000, strict=True)] = 1_000
    n_monte_carlo: Annotated[int, Field(ge=100, le=100_000, strict=True)] = 2_000
    confidence: Annotated[float, Field(gt=0.5, lt=1.0, strict=True)] = 0.95
    fair_ratio_low: Annotated[float, Field(gt=0.0, lt=1.0, strict=True)] = 0.8
    fair_ratio_high: Annotated[float, Field(gt=1.0, strict=True)] = 1.25
    min_group_size: Annotated[int, Field(ge=1, strict=True)] = 100
    min_group_events: Annotated[int, Field(ge=1, strict=True)] = 10
    split: Literal["all", "test", "validation"] = "test"
    """People whose metrics are audited (selection is always made on the whole cohort)."""
    score_bins: Annotated[int, Field(ge=10, le=100_000, strict=True)] = 1_000
    """Cells keep each distinct score when there are at most this many, else quantile bins."""
    bootstrap_score_bins: Annotated[int, Field(ge=10, le=100_000, strict=True)] = 100
    reference_groups: dict[AuditDimension, str] = Field(default_factory=_DEFAULT_REFERENCES.copy)
    """Reference group per dimension; dimensions not listed use their largest group ("Not
    recorded" and a group whose metric is undefined or zero are never a reference)."""
    funnel_dimensions: tuple[GeographyDimension, ...] = ("region", "icb_code")
    """Geographies compared with the population value on funnel plots (Spiegelhalter 2005),
    after indirect standardisation for age band and sex, instead of with a reference area."""
    fdr: Annotated[float, Field(gt=0.0, lt=0.5, strict=True)] = 0.05
    """Benjamini-Hochberg false discovery rate, applied within each dimension."""
    oe_material: Annotated[float, Field(gt=1.0, le=2.0, strict=True)] = 1.1
    """Calibration flag: under-prediction when O/E's CI is above 1 and O/E >= this; over-
    prediction when its CI is below 1 and O/E <= 1 / this."""
    risk_factor_dimensions: tuple[AuditDimension, ...] = ("age_band",)
    """Dimensions that are clinical risk factors of the outcomes: a list ranked by risk reaches
    more of the cases where risk is higher, so their equal-opportunity gap is context (read
    against need), never flagged."""
    label_choice_dimensions: tuple[AuditDimension, ...] = ("imd_quintile", "ethnicity_group")
    label_choice_bins: Annotated[int, Field(ge=5, le=1_000, strict=True)] = 50
    need_case_share: Annotated[float, Field(gt=0.0, lt=1.0, strict=True)] = 0.2
    need_ratio_material: Annotated[float, Field(ge=1.0, le=2.0, strict=True)] = 1.05
    """A group is named disadvantaged when its true need at the same score is significantly above
    the reference's AND at least this ratio (5% more need by default)."""
    """With truth: a true-need case is in the top share of the cohort by true need."""
    need_model_rounds: Annotated[int, Field(ge=1, le=5_000, strict=True)] = 200
    need_model_max_rows: Annotated[int, Field(ge=1_000, strict=True)] = 500_000
    num_threads: Annotated[int, Field(ge=1, le=64, strict=True)] = 2
    max_audited_rows: Annotated[int, Field(ge=1, strict=True)] = 2_000_000
    """Most people of ``split`` the group tables are computed on: past it, a seeded sample of
    exactly this many, drawn slice by slice (the stage's memory stops growing there). Above the
    audited split of a 10M-person population (~1.4M people per target)."""
    max_cohort_rows: Annotated[int, Field(ge=1, strict=True)] = 10_000_000
    """Most people of the whole eligible cohort held for the equal-opportunity fit, the
    policies' selections and their impact: past it, a seeded sample of exactly this many
    (``selected`` and ``true_case`` stay exact, from thresholds over every slice). Above the
    eligible cohort of a 10M-person population (~7M people per target)."""


class _Capacity(_Frozen):
    """How many people a list holds: a share of the eligible cohort, or a count per unit."""

    capacity_mode: Literal["share", "per_icb", "per_practice"] = "share"
    capacity: Annotated[float, Field(gt=0.0, strict=True)] = 0.05
    """A share of the eligible cohort (mode ``share``, 0-1) or a number of people per ICB or per
    practice (modes ``per_icb`` / ``per_practice``)."""

    @model_validator(mode="after")
    def _capacity_fits_mode(self) -> _Capacity:
        if self.capacity_mode == "share" and not 0.0 < self.capacity <= 1.0:
            raise ValueError("capacity must be a share in (0, 1] when capacity_mode is 'share'")
        if self.capacity_mode != "share" and self.capacity != int(self.capacity):
            raise ValueError("capacity must be a whole number of people per ICB or practice")
        return self


class OperatingPointParams(_Capacity):
    """The selection at which models are evaluated (train metrics) and audited (stage ``audit``).

    Kept apart from ``outreach`` so that a team can try another list size with
    ``dvc exp run -S outreach.capacity=...`` without re-training or re-auditing.
    """


EthnicGroup = Literal["White", "Mixed", "Asian", "Black", "Other", "Not recorded"]
"""The broad ethnic groups (``contract.BROAD_ETHNIC_GROUPS``; a test keeps the two equal)."""


class ListTier(_Frozen):
    """One band of an outreach list: the people ranked in the first ``up_to`` share of it."""

    name: Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9][\w .()%-]*$")]
    up_to: Annotated[float, Field(gt=0.0, le=1.0, strict=True)]
    """Cumulative share of the ICB's list (by rank) this tier ends at; the last tier ends at 1."""


class OutreachParams(_Capacity):
    """Outreach lists (stage ``outreach``)."""

    tiers: tuple[ListTier, ...] = (
        ListTier(name="A", up_to=0.2),
        ListTier(name="B", up_to=0.5),
        ListTier(name="C", up_to=1.0),
    )
    """Bands within each ICB's list by rank (contact tier A first); ``up_to`` rises to 1."""

    @field_validator("tiers")
    @classmethod
    def _tiers_cover_the_list(cls, tiers: tuple[ListTier, ...]) -> tuple[ListTier, ...]:
        bounds = [tier.up_to for tier in tiers]
        if not tiers or bounds != sorted(set(bounds)) or bounds[-1] != 1.0:
            raise ValueError("tiers: up_to must rise strictly and the last tier must end at 1.0")
        if len({tier.name for tier in tiers}) != len(tiers):
            raise ValueError("tiers: names must differ")
        return tiers

    policy: Literal["risk", "core20plus5", "equal_opportunity", "need_adjusted"] = "risk"
    core20_uplift: Annotated[float, Field(ge=1.0, le=10.0, strict=True)] = 1.5
    plus_groups: tuple[EthnicGroup, ...] = ("Black", "Asian", "Mixed", "Other")
    plus_uplift: Annotated[float, Field(ge=1.0, le=10.0, strict=True)] = 1.25
    secret_env: str = "PHM_PSEUDONYM_KEY"
    secret_file: str = "~/.config/phm/pseudonym.key"
    targets: tuple[str, ...] | None = None
    """Targets to build lists for (default: every target in ``targets``)."""
    min_group_size: Annotated[int, Field(ge=1, strict=True)] = 100
    """Summary groups with fewer selected people are marked ``"stable": false``."""


class ValidationParams(_Frozen):
    """Stage validate: what to do with record-level problems (implausible values, unknown codes,
    events before birth, exact duplicates). Structural violations always refuse."""

    record_problems: Literal["exclude", "refuse"] = "exclude"
    extract_end: dt.date | None = None
    """The date the extract was taken: events after it refuse the extract (structural), and a
    derived outcome needs its follow-up to end by it. ``None``: unknown (the last event date
    stands in for follow-up)."""


Objective = Literal["events_reached_no_wider_gap", "events_reached", "narrowest_gap"]
"""What the report's summary recommends a policy for (``report.objective``)."""


class ReportParams(_Frozen):
    """Equity report (stage ``report``)."""

    title: str = "Risk stratification for prevention: equity report"
    objective: Objective = "events_reached_no_wider_gap"
    """How the summary recommends a policy from the audit's mitigation table: the most events
    reached among policies that do not widen the need-reached gap (the default), the most events
    reached, or the narrowest gap."""


ImdQuintile = Literal[1, 2, 3, 4, 5]


class ImpactParams(_Frozen):
    """Outcome simulation of each selection policy (the audit's ``impact`` tables).

    Defaults: completed NHS Health Checks among those invited, 39% in the two most deprived
    IMD quintiles vs 47% in the three least deprived (38 Bristol practices, BMC Health Serv Res
    2018); 52.6% nationally for people without a quintile (England 2012-17, Patel et al., BMJ
    Open 2020). No uptake by ethnic group by default: nationally, attendees were similar in
    ethnicity to non-attendees (Patel et al. 2020); local studies differ in both directions
    (docs/audit_tables.md#impact). The relative risk reduction is an assumption, not a
    published figure: events averted scale with it, and whether a policy narrows the gap does
    not depend on it.
    """

    uptake_by_imd_quintile: dict[ImdQuintile, Probability] = {
        1: 0.39,
        2: 0.39,
        3: 0.47,
        4: 0.47,
        5: 0.47,
    }
    """Share of the people a list contacts who take up the offer, by IMD quintile (1 = most
    deprived); all five quintiles must be given."""
    uptake_default: Probability = 0.526
    """Uptake of people without an IMD quintile; also the national anchor the ethnic-group
    uptakes are read against."""
    uptake_by_ethnicity_group: dict[EthnicGroup, Annotated[float, Field(gt=0.0, lt=1.0)]] = {}
    """Optional uptake by broad ethnic group, combined with the IMD-quintile uptake as
    independent effects on the log-odds scale: ``logit u = logit u_quintile + logit u_group -
    logit uptake_default`` (groups not listed: the quintile's uptake)."""
    relative_risk_reduction: Probability = 0.2
    """Relative reduction of the outcome risk in people who take up the offer (assumption)."""
    n_bootstrap: Annotated[int, Field(ge=20, le=10_000, strict=True)] = 200
    """People-bootstrap resamples for the intervals of events averted and of the SII change."""

    @field_validator("uptake_by_imd_quintile", mode="before")
    @classmethod
    def _integer_keys(cls, uptake: Any) -> Any:
        """JSON round trips (``model_dump(mode="json")``) turn the keys into strings."""
        if isinstance(uptake, dict):
            return {
                int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in uptake.items()
            }
        return uptake

    @field_validator("uptake_by_imd_quintile")
    @classmethod
    def _every_quintile(cls, uptake: dict[int, float]) -> dict[int, float]:
        missing = sorted({1, 2, 3, 4, 5} - set(uptake))
        if missing:
            raise ValueError(f"uptake missing for IMD quintile(s) {missing}")
        return dict(sorted(uptake.items()))

    @model_validator(mode="after")
    def _anchor_inside(self) -> ImpactParams:
        """Ethnic-group uptakes are read against ``uptake_default``, which must then be a
        proper probability (strictly between 0 and 1)."""
        if self.uptake_by_ethnicity_group and not 0.0 < self.uptake_default < 1.0:
            raise ValueError(
                "uptake_default must be strictly between 0 and 1 when "
                "uptake_by_ethnicity_group is given (it is the log-odds anchor)"
            )
        return self


class Params(_Frozen):
    """All pipeline parameters; one section per stage."""

    seed: Annotated[int, Field(ge=0, strict=True)] = 20_261_123
    engine: Literal["local", "dask"] = "local"
    """``dask``: partitioned stages run on a ``dask.distributed`` cluster (``pipeline.engine``)."""
    dask_workers: Annotated[int, Field(ge=1, strict=True)] | None = None
    """Worker processes of the LocalCluster that ``engine: dask`` starts (None: one per core);
    ignored for an existing cluster (``DASK_SCHEDULER_ADDRESS``)."""
    index_date: dt.date = dt.date(2025, 4, 1)
    population: PopulationParams = PopulationParams()
    validation: ValidationParams = ValidationParams()
    targets: dict[str, TargetParams]
    features: FeatureParams = FeatureParams()
    train: TrainParams = TrainParams()
    operating_point: OperatingPointParams = OperatingPointParams()
    audit: AuditParams = AuditParams()
    outreach: OutreachParams = OutreachParams()
    impact: ImpactParams = ImpactParams()
    report: ReportParams = ReportParams()
    disclosure: Rule = Rule()
    """Statistical disclosure control of every published count, in every stage and the report's
    scanner (``pipeline.disclosure.Rule``)."""

    @model_validator(mode="after")
    def _extract_ends_after_index(self) -> Params:
        end = self.validation.extract_end
        if end is not None and end < self.index_date:
            raise ValueError(
                f"validation.extract_end ({end}) must not be before index_date ({self.index_date})"
            )
        return self

    @model_validator(mode="after")
    def _targets_simulable(self) -> Params:
        if self.population.source != "synthetic":
            return self
        for name, target in self.targets.items():
            if target.outcome not in SYNTHETIC_OUTCOMES:
                raise ValueError(
                    f"targets.{name}.outcome: {target.outcome!r} is not simulated by the "
                    f"synthetic world ({', '.join(SYNTHETIC_OUTCOMES)}); bring an extract "
                    "(population.source: extract) to derive it from events"
                )
            unknown = sorted(set(target.exclude_prior) - set(SYNTHETIC_EXCLUSIONS))
            if unknown:
                raise ValueError(
                    f"targets.{name}.exclude_prior: {unknown[0]!r} is not simulated by the "
                    f"synthetic world ({', '.join(SYNTHETIC_EXCLUSIONS)})"
                )
        return self

    @model_validator(mode="after")
    def _distributed_needs_dask(self) -> Params:
        if self.train.distributed and self.engine != "dask":
            raise ValueError("train.distributed: true needs engine: dask")
        return self

    @model_validator(mode="after")
    def _outreach_targets_known(self) -> Params:
        unknown = sorted(set(self.outreach.targets or ()) - set(self.targets))
        if unknown:
            known = ", ".join(sorted(self.targets))
            raise ValueError(f"outreach.targets: unknown target {unknown[0]!r} (targets: {known})")
        return self

    @field_validator("targets")
    @classmethod
    def _targets_named(cls, targets: dict[str, TargetParams]) -> dict[str, TargetParams]:
        if not targets:
            raise ValueError("at least one target is needed")
        for name in targets:
            if not name.replace("_", "").isalnum() or not name.islower():
                raise ValueError(f"target name {name!r} must be lower_snake_case")
        return targets


def _key_of(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location) or "<root>"


def _problem(problem: Any) -> str:
    if not problem["loc"]:  # a rule across sections names its keys itself
        return f"  {problem['msg'].removeprefix('Value error, ')}"
    message = "unknown key" if problem["type"] == "extra_forbidden" else problem["msg"]
    return f"  {_key_of(problem['loc'])}: {message}"


def parse_params(raw: object, *, source: str = PARAMS_FILE) -> Params:
    """Validate a parsed params mapping.

    Parameters
    ----------
    raw
        The mapping read from YAML.
    source
        Where it came from, for the error message.

    Returns
    -------
    Params
        The frozen, validated parameters.

    Raises
    ------
    ParamsError
        Naming every offending key, e.g. ``train.learning_rate: Input should be greater than 0``.
    """
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        problems = [_problem(problem) for problem in error.errors()]
        raise ParamsError(f"{source}: invalid parameters\n" + "\n".join(problems)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last
    silently, so a duplicated section would override the first without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml`` (see :func:`parse_params`)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: parameters file not found")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    return parse_params(raw, source=str(path))
