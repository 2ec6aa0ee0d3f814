"""Disclosure that survives differencing: no published figure recovers a count it hides.

The real stages publish on a small simulated world where suppression happens (the audit on
``tests/simworld.py``'s world, outreach's summary, validate's data-quality report and train's
metrics through their pure functions). An attacker then reads *only* the published figures and
knows the disclosure rule: a ``"*"`` is 1-7, a published ``r`` is within ``round_to / 2`` of the
truth, groups of a dimension add up to its total, TPR and FNR share their denominator, and a
rate equals its numerator over its denominator - unless the rate is exactly the share of the
published counts beside it, which tells nothing new. Constraint propagation over candidate sets
(rows vs totals, rate x size, share x total, complementary metrics) must leave every hidden
count, and every rounded one, with more than one possible value.
"""

from __future__ import annotations

import functools
import math
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from pipeline import audit, contract, need, selection
from pipeline.audit.cells import PROPORTIONS
from pipeline.audit.funnel import FUNNEL_METRICS
from pipeline.config import load_params, parse_params
from pipeline.disclosure import SUPPRESSED, Rule
from pipeline.io import Paths
from pipeline.metrics import wilson_interval
from pipeline.outreach.summary import MAKE_UP_DIMENSIONS, summarise_target
from pipeline.train.evaluation import split_metrics
from pipeline.validate import data_quality_report
from tests import simworld
from tests.fixture_params import FIXTURE_PARAMS

REPO = Path(__file__).resolve().parents[1]
RULE = Rule()
WORLD_PEOPLE = 3_000
"""Small enough that ICBs, ethnic groups and age bands hold 1-7 selected people."""
Key = tuple[str, ...]


class Attacker:
    """Candidate values of every quantity the published figures speak about."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.candidates: dict[Key, set[int]] = {}
        self.published: dict[Key, object] = {}
        self.sums: list[tuple[Key, list[Key]]] = []
        self.ratios: list[tuple[Key, Key, float, float]] = []
        self.intervals: list[tuple[Key, Key, float, float, float]] = []

    def count(self, key: Key, value: object) -> None:
        """A published count (``"*"``, a rounded number, or null)."""
        if value is None:
            return
        if value == SUPPRESSED:
            found = set(range(1, self.rule.suppress_below))
        else:
            r = int(float(str(value).replace(",", "")))
            half = self.rule.round_to // 2
            low = 0 if r == 0 else max(self.rule.suppress_below, r - half)
            found = set(range(low, r + (self.rule.round_to - 1 - half) + 1))
        self.published[key] = value
        self._narrow(key, found)

    def unknown(self, key: Key) -> None:
        """A quantity not published itself (e.g. a total behind shares): any count."""
        self.candidates.setdefault(key, set())

    def total(self, total: Key, parts: list[Key]) -> None:
        self.unknown(total)
        self.sums.append((total, parts))

    def rate(self, numerator: Key, denominator: Key, value: object) -> None:
        """``value = numerator / denominator``, unless it is the share of their published
        values (which any attacker can compute, so it carries nothing new)."""
        if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
            return
        num, den = _as_int(self.published.get(numerator)), _as_int(self.published.get(denominator))
        if self._of_published(numerator, num, denominator, den, float(value)):
            return
        self.unknown(numerator)
        self.unknown(denominator)
        self.ratios.append((numerator, denominator, float(value), _tolerance(value)))

    def wilson(
        self, numerator: Key, denominator: Key, low: object, high: object, confidence: float
    ) -> None:
        """A Wilson interval is a function of its two counts: it pins them unless it is the
        interval of their published values."""
        if not isinstance(low, float) or not isinstance(high, float) or math.isnan(low):
            return
        num, den = _as_int(self.published.get(numerator)), _as_int(self.published.get(denominator))
        if isinstance(num, int) and isinstance(den, int) and den > 0:
            shown = wilson_interval(np.array([num]), np.array([den]), confidence=confidence)
            if np.allclose([shown[0][0], shown[1][0]], [low, high], rtol=1e-9, atol=1e-12):
                return
        self.intervals.append((numerator, denominator, low, high, confidence))

    def _propagate_wilson(
        self, numerator: Key, denominator: Key, low: float, high: float, confidence: float
    ) -> bool:
        nums, dens = self.candidates.get(numerator), self.candidates.get(denominator)
        if not nums or not dens:
            return False
        pairs = [(a, b) for a in sorted(nums) for b in sorted(dens) if 0 <= a <= b and b > 0]
        if not pairs:
            return False
        bounds = wilson_interval(*map(np.array, zip(*pairs, strict=True)), confidence=confidence)
        fits = np.isclose(bounds[0], low, rtol=1e-9, atol=1e-12) & np.isclose(
            bounds[1], high, rtol=1e-9, atol=1e-12
        )
        kept = [pair for pair, fit in zip(pairs, fits, strict=True) if fit]
        changed = self._narrow(numerator, {a for a, _ in kept})
        return self._narrow(denominator, {b for _, b in kept}) or changed

    def _of_published(
        self, numerator: Key, num: object, denominator: Key, den: object, value: float
    ) -> bool:
        """Whether ``value`` may be a share of published counts (so it tells nothing new); a
        share over an unpublished total tells the total's published (rounded) value."""
        shown = _share_of_published(num, den)
        if isinstance(shown, float):
            return math.isclose(shown, value, rel_tol=1e-9, abs_tol=1e-12)
        step = self.rule.round_to
        if isinstance(num, int) and den is None and num > 0 and value > 0:
            implied = num / value
            if math.isclose(implied, step * round(implied / step), rel_tol=1e-9):
                self.count(denominator, step * round(implied / step))
                return True
        if isinstance(den, int) and num is None and den > 0:
            implied = value * den
            if math.isclose(implied, step * round(implied / step), abs_tol=1e-6):
                self.count(numerator, step * round(implied / step))
                return True
        return False

    def allow_secondary(self) -> None:
        """Where complementary suppression may have hidden a row (exactly two ``"*"`` among a
        published total's parts), either may be any size up to the total: widen both."""
        for total, parts in self.sums:
            stars = [p for p in parts if self.published.get(p) == SUPPRESSED]
            bounded = total in self.published
            if len(stars) == 2 and bounded:
                _, high = self._bounds(total)
                for star in stars:
                    self.candidates[star] = set(range(1, int(high) + 1))

    def _narrow(self, key: Key, values: set[int]) -> bool:
        before = self.candidates.get(key)
        after = values if not before else before & values
        if not after:  # constraints inconsistent with the attacker's model: it learns nothing
            after = before or values
        self.candidates[key] = after
        return after != before

    def _bounds(self, key: Key) -> tuple[float, float]:
        found = self.candidates.get(key)
        return (min(found), max(found)) if found else (0, math.inf)

    def _propagate_sum(self, total: Key, parts: list[Key]) -> bool:
        lows, highs = zip(*(self._bounds(p) for p in parts), strict=True)
        changed = False
        t_low, t_high = self._bounds(total)
        if math.isfinite(sum(highs)):
            changed |= self._narrow(total, set(range(int(sum(lows)), int(sum(highs)) + 1)))
            t_low, t_high = self._bounds(total)
        for part, low, high in zip(parts, lows, highs, strict=True):
            rest_low, rest_high = sum(lows) - low, sum(highs) - high
            if not (math.isfinite(t_high) and math.isfinite(rest_high)):
                continue
            span = range(max(0, int(t_low - rest_high)), int(t_high - rest_low) + 1)
            if math.isfinite(high) or len(span) < 100_000:
                changed |= self._narrow(part, set(span))
        return changed

    def _propagate_ratio(self, numerator: Key, denominator: Key, value: float, tol: float) -> bool:
        nums, dens = self.candidates.get(numerator), self.candidates.get(denominator)
        if not dens:
            return False
        if not nums:  # numerator unknown: the integers the rate allows
            nums = {round(value * d) for d in dens}
        pairs = [(a, b) for a in nums for b in dens if b > 0 and abs(a / b - value) <= tol]
        changed = self._narrow(numerator, {a for a, _ in pairs})
        return self._narrow(denominator, {b for _, b in pairs}) or changed

    def solve(self) -> None:
        self.allow_secondary()
        for _ in range(30):
            changed = False
            for total, parts in self.sums:
                changed |= self._propagate_sum(total, parts)
            for ratio in self.ratios:
                changed |= self._propagate_ratio(*ratio)
            for interval in self.intervals:
                changed |= self._propagate_wilson(*interval)
            if not changed:
                return

    def recovered(self) -> list[str]:
        """Hidden (``"*"``) or rounded counts pinned to one value (a published 0 is exact)."""
        return [
            f"{'/'.join(key)} published {self.published[key]!r}, recovered {next(iter(found))}"
            for key, found in sorted(self.candidates.items())
            if key in self.published and len(found) == 1 and self.published[key] not in (0, "0")
        ]


def _share_of_published(numerator: object, denominator: object) -> float | None:
    """What any reader computes from two published counts (the attacker's own arithmetic)."""
    if isinstance(numerator, int) and isinstance(denominator, int) and denominator > 0:
        return numerator / denominator
    return None


def _as_int(value: object) -> object:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _tolerance(value: float) -> float:
    """Half a unit of the value's last decimal when it is short (rounded), else float noise."""
    digits = len(repr(value).split(".")[1]) if "." in repr(value) and "e" not in repr(value) else 17
    return 0.5 * 10.0**-digits + 1e-12 if digits <= 6 else 1e-9 * abs(value) + 1e-12


# --- the published figures ------------------------------------------------------------------


@functools.cache
def audited() -> Path:
    """The audit's real outputs on a world small enough to suppress (one target)."""
    root = Path(tempfile.mkdtemp(prefix="phm-differencing-"))
    raw = load_params(FIXTURE_PARAMS).model_dump(mode="json")
    raw["audit"] |= {"n_bootstrap": 50, "n_monte_carlo": 100, "need_model_rounds": 20}
    params = parse_params(raw)
    target = next(iter(params.targets))
    world = simworld.simulate_world(WORLD_PEOPLE, seed=5, targets=(target,))
    simworld.write_world(root, world, targets=(target,))
    need.run(params, Paths.at(root), target=target)
    audit.run(params, Paths.at(root), target=target)
    return root / "reports" / "audit" / target


@pytest.fixture(scope="module")
def audit_folder() -> Iterable[Path]:
    folder = audited()
    yield folder
    shutil.rmtree(folder.parents[2], ignore_errors=True)


def read_groups(attacker: Attacker, groups: pl.DataFrame) -> None:
    """``groups.parquet``: rows of a dimension add up to ``overall``; counts add up by kind."""
    for row in groups.iter_rows(named=True):
        for column in contract.GROUP_COUNTS:
            attacker.count((row["dimension"], row["group"], column), row[column])
    for dimension in groups["dimension"].unique().to_list():
        if dimension == "overall":
            continue
        members = groups.filter(pl.col("dimension") == dimension)["group"].to_list()
        for column in contract.GROUP_COUNTS:
            attacker.total(("overall", "All", column), [(dimension, g, column) for g in members])
    for row in groups.iter_rows(named=True):
        key = (row["dimension"], row["group"])
        for total, parts in (
            ("n", ("n_events", "n_non_events")),
            ("n_events", ("n_true_positives", "n_false_negatives")),
            ("n_selected", ("n_true_positives", "n_false_positives")),
        ):
            attacker.total((*key, total), [(*key, p) for p in parts])


def read_group_metrics(attacker: Attacker, metrics: pl.DataFrame, *, confidence: float) -> None:
    """``group_metrics.parquet``: each proportion is its numerator over its denominator, and its
    Wilson interval a function of both."""
    for row in metrics.iter_rows(named=True):
        key = (row["dimension"], row["group"])
        for column in ("n", "n_events", "n_selected"):
            attacker.count((*key, column), row[column])
        if row["metric"] in PROPORTIONS:
            num, den = contract.METRIC_COUNTS[row["metric"]]
            attacker.rate((*key, num), (*key, den), row["value"])
            if row["ci_method"] == "wilson":
                attacker.wilson((*key, num), (*key, den), row["ci_low"], row["ci_high"], confidence)


def read_selection_shares(attacker: Attacker, shares: pl.DataFrame) -> None:
    """``selection_shares.parquet``: each share is the group's count over the dimension's
    (unpublished) total selected."""
    for ranking in contract.SELECTION_RANKINGS:
        column = f"n_selected_by_{ranking}"
        for dimension, rows in shares.group_by("dimension"):
            total = ("shares", str(dimension[0]), "*total*", column)
            keys = []
            for row in rows.iter_rows(named=True):
                key = ("shares", row["dimension"], row["group"], column)
                keys.append(key)
                attacker.count(key, row[column])
                attacker.rate(key, total, row[f"share_by_{ranking}"])
            if rows[column].is_not_null().all():
                attacker.total(total, keys)


def read_mitigation(attacker: Attacker, tradeoffs: pl.DataFrame, by_group: pl.DataFrame) -> None:
    """``mitigation*.parquet``: per-group reach adds up to the policy's totals."""
    pairs = {"tpr": ("n_events_reached", "n_events"), "case_tpr": ("n_cases_reached", "n_cases")}
    counts = ("n_selected", "n_events", "n_events_reached", "n_cases", "n_cases_reached")
    for row in tradeoffs.iter_rows(named=True):
        for column in counts:
            attacker.count(("policy", row["policy"], column), row[column])
        attacker.rate(
            ("policy", row["policy"], "n_events_reached"),
            ("policy", row["policy"], "n_events"),
            row["share_of_events_reached"],
        )
    for (policy, dimension), rows in by_group.group_by("policy", "dimension"):
        for column in counts:
            keys = [("policy", policy, dimension, g, column) for g in rows["group"]]
            attacker.total(("policy", policy, column), keys)
        for row in rows.iter_rows(named=True):
            key = ("policy", policy, dimension, row["group"])
            for column in (*counts, "n"):
                attacker.count((*key, column), row[column])
            for rate, (num, den) in pairs.items():
                attacker.rate((*key, num), (*key, den), row[rate])
            attacker.rate(
                (*key, "n_selected"), ("policy", policy, "n_selected"), row["selection_share"]
            )


def read_funnel(attacker: Attacker, funnels: pl.DataFrame) -> None:
    """``funnel.parquet``: each observed count is the group's count of ``groups.parquet``; its
    ratio is that published count over an expected count (so a suppressed point has none)."""
    for row in funnels.iter_rows(named=True):
        key = (row["dimension"], row["group"], FUNNEL_METRICS[row["metric"]])
        attacker.count(key, row["n_observed"])
        if row["n_observed"] == SUPPRESSED:
            assert row["ratio"] is None and row["z_score"] is None, row
        elif row["ratio"] is not None:
            assert row["ratio"] * row["expected"] == pytest.approx(
                int(row["n_observed"]), rel=1e-3, abs=0.06
            ), row


def read_impact(attacker: Attacker, impact: pl.DataFrame) -> None:
    """``impact.parquet``: groups of a dimension add up to the policy's overall row; the
    expected-event rate (per 1,000) is events over people."""
    counts = ("n", "n_selected", "n_expected_events", "n_events_averted")
    for (policy, dimension), rows in impact.group_by("policy", "dimension"):
        for row in rows.iter_rows(named=True):
            key = ("impact", policy, dimension, row["group"])
            for column in counts:
                attacker.count((*key, column), row[column])
            rate = row["rate_before"]
            attacker.rate(
                (*key, "n_expected_events"), (*key, "n"), None if rate is None else rate / 1000
            )
        if dimension != "overall":
            for column in counts:
                parts = [("impact", policy, dimension, g, column) for g in rows["group"]]
                attacker.total(("impact", policy, "overall", "All", column), parts)


def read_audit(attacker: Attacker, folder: Path) -> None:
    tables = {name: pl.read_parquet(folder / t.file) for name, t in contract.AUDIT_TABLES.items()}
    read_groups(attacker, tables["groups"])
    settings = contract.read_summary(contract.AuditSummary, folder / contract.AUDIT_SUMMARY_FILE)
    read_group_metrics(attacker, tables["group_metrics"], confidence=settings.settings.confidence)
    read_selection_shares(attacker, tables["selection_shares"])
    read_mitigation(attacker, tables["mitigation"], tables["mitigation_by_group"])
    read_funnel(attacker, tables["funnel"])
    read_impact(attacker, tables["impact"])


def test_the_small_world_suppresses(audit_folder: Path) -> None:
    groups = pl.read_parquet(audit_folder / "groups.parquet")
    assert (groups["n_selected"] == SUPPRESSED).sum() >= 3


def test_no_hidden_or_rounded_count_recoverable_from_the_audit(audit_folder: Path) -> None:
    attacker = Attacker(RULE)
    read_audit(attacker, audit_folder)
    attacker.solve()
    assert attacker.recovered() == []


def test_the_attacker_finds_exact_figures() -> None:
    """The attack works: a share of exact counts beside rounded ones gives them away, and a
    lone hidden row is the total minus the others when those are exact."""
    attacker = Attacker(RULE)
    attacker.count(("a",), RULE.count(61))
    attacker.count(("b",), RULE.count(1240))
    attacker.rate(("a",), ("b",), round(61 / 1240, 4))
    attacker.count(("hidden",), RULE.count(6))
    attacker.count(("total",), RULE.count(1246))
    attacker.total(("total",), [("b",), ("hidden",)])
    attacker.rate(("b",), ("total",), 1240 / 1246)
    attacker.solve()
    assert any(line.startswith("hidden ") for line in attacker.recovered())
    assert any(line.startswith("a ") for line in attacker.recovered())


# --- outreach, validate, train --------------------------------------------------------------


def outreach_block() -> dict[str, Any]:
    """``summarise_target`` on the small world's cohort at a 5% capacity (share mode)."""
    world = simworld.simulate_world(WORLD_PEOPLE, seed=5)
    cohort = world["scores"].join(
        world["features"].drop("split"), on="person_id", how="left", maintain_order="left"
    )
    capacity = selection.list_sizes(cohort, capacity_mode="share", capacity=0.05, key="test")
    cohort = cohort.with_columns((pl.col("risk_rank") <= 0.05 * cohort.height).alias("selected"))
    return summarise_target(
        cohort,
        capacity=capacity,
        truth_need=world["truth"],
        capacity_mode="share",
        min_group_size=10,
        rule=RULE,
    )


def read_outreach_level(attacker: Attacker, block: Mapping[str, Any], key: Key) -> None:
    test = block["test_split"]
    for column in ("n_eligible", "n_selected", "n_need_list"):
        attacker.count((*key, column), block.get(column))
    for column in ("n_selected", "n_events", "n_events_reached"):
        attacker.count((*key, f"test_{column}"), test[column])
    attacker.rate(
        (*key, "test_n_events_reached"), (*key, "test_n_events"), test["event_capture_rate"]
    )
    attacker.rate((*key, "test_n_events_reached"), (*key, "test_n_selected"), test["precision"])


def read_outreach(attacker: Attacker, block: Mapping[str, Any]) -> None:
    top: Key = ("outreach", "all")
    read_outreach_level(attacker, block, top)
    attacker.rate((*top, "n_selected"), (*top, "n_eligible"), block["share_selected"])
    lists = [("outreach", "icb", icb, "n") for icb in block["lists"]]
    for key, value in zip(lists, block["lists"].values(), strict=True):
        attacker.count(key, value["n"])
    attacker.total((*top, "n_selected"), lists)
    sums = ("n_eligible", "n_selected", "test_n_selected", "test_n_events", "test_n_events_reached")
    for dimension in MAKE_UP_DIMENSIONS:
        rows = block["make_up"][dimension]
        for row in rows:
            key = ("outreach", dimension, row["group"])
            read_outreach_level(attacker, row, key)
            attacker.rate((*key, "n_eligible"), (*top, "n_eligible"), row["share_of_eligible"])
            attacker.rate((*key, "n_selected"), (*top, "n_selected"), row["share_of_selected"])
            attacker.rate((*key, "n_selected"), (*key, "n_eligible"), row["selection_rate"])
            attacker.rate((*key, "n_need_list"), (*top, "n_need_list"), row["share_of_need_list"])
        for column in sums:
            attacker.total(
                (*top, column), [("outreach", dimension, r["group"], column) for r in rows]
            )


def test_no_count_recoverable_from_the_outreach_summary() -> None:
    block = outreach_block()
    assert any(
        row["n_selected"] == SUPPRESSED for rows in block["make_up"].values() for row in rows
    )
    shown = block["make_up"]["imd_quintile"][0]
    assert isinstance(shown["share_of_true_need"], float)
    assert shown["selection_rate"] == shown["n_selected"] / shown["n_eligible"]
    attacker = Attacker(RULE)
    read_outreach(attacker, block)
    attacker.solve()
    assert attacker.recovered() == []


def test_no_count_recoverable_from_data_quality() -> None:
    facts = {
        "rows": {"people": 1243, "events": 48_211},
        "n_people": 1243,
        "nulls": {"people": {"ethnicity": 61, "practice_id": 3}, "events": {"value": 30_117}},
        "ethnicity_recorded": 1182,
        "events_last_year": {"gp_consultation": 4_871, "emergency_admission": 6},
        "excluded": [
            {"column": "value", "rule": "implausible", "rows": 3, "examples": ("bmi = 6.9",)},
            {"column": "*", "rule": "exact duplicate", "rows": 251, "examples": ()},
        ],
        "date_min": None,
        "date_max": None,
    }
    import datetime as dt

    report = data_quality_report(facts, folder="x", index_date=dt.date(2025, 1, 1), rule=RULE)
    attacker = Attacker(RULE)
    attacker.count(("people",), report["n_people"])
    for table, block in report["tables"].items():
        attacker.count((table, "rows"), block["n_rows"])
        for column, share in block["null_share"].items():
            attacker.rate((table, column, "nulls"), (table, "rows"), share)
    attacker.rate(("recorded",), ("people",), report["ethnicity_recorded_share"])
    for kind, rate in report["events_per_person_year_last_12_months"].items():
        attacker.rate((kind,), ("people",), rate)
    for excluded in report["excluded"]:
        attacker.count(("excluded", excluded["rule"]), excluded["rows"])
    attacker.solve()
    assert report["events_per_person_year_last_12_months"]["emergency_admission"] == SUPPRESSED
    assert [excluded["rows"] for excluded in report["excluded"]] == [SUPPRESSED, 250]
    assert attacker.recovered() == []


def test_no_count_recoverable_from_model_metrics() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(1243) < 0.05).astype(np.int8)
    p = np.clip(0.05 + 0.3 * y + rng.normal(0, 0.05, y.size), 0.001, 0.999)
    selected = np.argsort(np.argsort(-p, kind="stable")) < 62  # the top 62 by score
    doc = split_metrics(
        y, p, selected, oracle=None, n_bootstrap=20, seed=1, target="t", extra={}, rule=RULE
    )
    attacker = Attacker(RULE)
    for key in (
        "n_test",
        "n_test_events",
        "n_selected_at_capacity",
        "n_selected_events_at_capacity",
    ):
        attacker.count((key,), doc[key])
    reached = ("n_selected_events_at_capacity",)
    attacker.rate(reached, ("n_test_events",), doc["sensitivity_at_capacity"])
    attacker.rate(reached, ("n_selected_at_capacity",), doc["ppv_at_capacity"])
    attacker.solve()
    assert attacker.recovered() == []


def test_the_published_tables_pass_the_scanner(audit_folder: Path) -> None:
    from pipeline.report.scan import scan_parquet

    found = [
        v for path in sorted(audit_folder.glob("*.parquet")) for v in scan_parquet(path, rule=RULE)
    ]
    assert found == []


def test_no_exact_group_sizes_published(audit_folder: Path) -> None:
    raw = re.compile(r"_raw$")
    for path in audit_folder.glob("*.parquet"):
        assert not [c for c in pl.read_parquet(path).columns if raw.search(c)], path.name
