"""Disclosure scanner: checks the report HTML and every JSON/parquet under ``reports/``.

The convention (declared in :mod:`pipeline.contract`: count names, ``NOT_PEOPLE_COUNTS``,
``METRIC_COUNTS`` and each audit table's count columns; docs/audit_tables.md). The stages
publish through the contract; this scanner is the backstop that refuses any breach:

- a key or column holding a count of people or events is named ``n``, ``n_*`` or ``*_count``
  (or is declared a count by its table's contract); its value is None, 0, ``'*'`` or a multiple
  of the rounding base;
- a rate in a cell whose denominator ``n`` is ``'*'`` is ``'*'`` (or null), and so are its CIs;
  the well-known numerator pairs (``n_events`` -> base rate / TPR, ``n_selected`` -> selection
  rate / PPV) follow the same rule;
- nothing row-level (no ``person_id`` / ``pseudonym`` key or column).

In the HTML, every count is a ``<span class="n">`` or ``<td class="n">``, every rate a ``.r``
cell; a table row whose first count is ``'*'`` has every rate ``'*'``; numbers of people written
in prose (``"1,234 people"``) are checked too; and nothing may be fetched (no external ``src``,
``href`` on ``<link>``, ``url(...)`` or ``@import``). The stage refuses to publish on any finding.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Final

import polars as pl

from pipeline import contract
from pipeline.disclosure import SUPPRESSED, Rule
from pipeline.io import read_json

__all__ = [
    "Violation",
    "is_count_key",
    "is_rate_key",
    "scan_html",
    "scan_json",
    "scan_parquet",
    "scan_reports",
]

NOT_PEOPLE_COUNTS: Final = contract.NOT_PEOPLE_COUNTS
"""``n_*`` keys that count things other than people or events (declared in the contract)."""
METRIC_COUNTS: Final = contract.METRIC_COUNTS
"""Which counts each well-known metric is computed from (declared in the contract)."""
_TABLE_COUNTS: Final = {table.file: table.counts for table in contract.AUDIT_TABLES.values()}
"""Count columns of each published audit table, by file name (declared in the contract)."""

ROW_LEVEL_KEYS: Final = frozenset({"person_id", "pseudonym", "nhs_number"})

_RATE_WORDS: Final = (
    "rate",
    "share",
    "mean",
    "prop",
    "pct",
    "percent",
    "prevalence",
    "tpr",
    "fpr",
    "fnr",
    "ppv",
    "npv",
    "auroc",
    "auprc",
    "brier",
    "ratio",
    "diff",
    "oe",
    "o_e",
    "slope",
    "intercept",
    "sensitivity",
    "specificity",
    "ci",
    "low",
    "high",
    "lower",
    "upper",
    "value",
    "estimate",
)


@dataclass(frozen=True)
class Violation:
    """One breach of the disclosure convention (or of the report's self-containment)."""

    source: str
    location: str
    rule: str
    value: str

    def __str__(self) -> str:
        return f"{self.source}: {self.location}: {self.rule} (found {self.value})"


def is_count_key(key: str) -> bool:
    """True for keys/columns that hold counts of people or events under the convention
    (:func:`pipeline.contract.is_count_name`)."""
    return contract.is_count_name(key)


def is_rate_key(key: str) -> bool:
    """True for keys that hold a rate, share, mean, ratio or one of their CI bounds."""
    key = key.lower()
    if is_count_key(key):
        return False
    parts = re.split(r"[_\W]+", key)
    return any(word in parts or key.startswith(word) for word in _RATE_WORDS)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _numbers_in(value: Any) -> bool:
    """True when a value (or any element of a list/dict value) is a published number."""
    if _is_number(value):
        return True
    if isinstance(value, list | tuple):
        return any(_numbers_in(item) for item in value)
    if isinstance(value, dict):
        return any(_numbers_in(item) for item in value.values())
    return False


def _holds_ids(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, list | tuple):
        return any(isinstance(item, str) for item in value)
    return False


# --- JSON -----------------------------------------------------------------------------------


def scan_json(
    payload: Any,
    *,
    source: str = "<json>",
    rule: Rule,
) -> list[Violation]:
    """Check a parsed JSON document against the convention.

    Parameters
    ----------
    payload
        The parsed document.
    source
        Name used in the findings (usually the file path).
    rule
        The disclosure rule in force (params ``disclosure``).

    Returns
    -------
    list[Violation]
        Every breach found, in document order; empty when the document is clean.
    """
    rules = _JsonRules(source=source, rule=rule)
    return list(_walk(payload, "", rules))


@dataclass(frozen=True)
class _JsonRules:
    """What the JSON walk needs to name and judge a finding."""

    source: str
    rule: Rule


def _walk(node: Any, where: str, rules: _JsonRules) -> Iterator[Violation]:
    """Findings in ``node`` and everything under it, in document order."""
    if isinstance(node, dict):
        suppressed_rates = _suppressed_rate_keys(node)
        for key, value in node.items():
            name = str(key)
            here = f"{where}.{name}" if where else name
            yield from _key_findings(name, value, here, suppressed_rates, rules)
            yield from _walk(value, here, rules)
    elif isinstance(node, list | tuple):
        for index, item in enumerate(node):
            yield from _walk(item, f"{where}[{index}]", rules)


def _suppressed_rate_keys(node: dict[Any, Any]) -> set[str]:
    """Keys of ``node`` holding rates whose counts are suppressed (so must show no number)."""
    suppressed_rates: set[str] = set()
    if node.get("n") == SUPPRESSED:
        suppressed_rates = {key for key in node if is_rate_key(str(key))}
    hidden = {key for key, value in node.items() if value == SUPPRESSED}
    for metric, counts in METRIC_COUNTS.items():
        if not hidden.intersection(counts):
            continue
        # wide records (``tpr``, ``tpr_ci_low``) ...
        suppressed_rates |= {key for key in node if str(key).startswith(metric)}
        # ... and long ones (``metric: tpr``, ``value``, ``ci_low``)
        if node.get("metric") == metric:
            suppressed_rates |= {key for key in node if is_rate_key(str(key))}
    return suppressed_rates


def _key_findings(
    name: str, value: Any, here: str, suppressed_rates: set[str], rules: _JsonRules
) -> Iterator[Violation]:
    """Findings about one key of a record (not about what is nested under it)."""
    # an id value (not e.g. a column's null share keyed by the column name)
    if name.lower() in ROW_LEVEL_KEYS and _holds_ids(value):
        yield Violation(rules.source, here, "row-level identifier key", name)
    if is_count_key(name):
        yield from _count_findings(value, here, rules)
    elif name in suppressed_rates and _numbers_in(value):
        yield Violation(rules.source, here, "rate shown for a suppressed count", _shown(value))


def _count_findings(value: Any, where: str, rules: _JsonRules) -> Iterator[Violation]:
    """Every number under a count key that is not a published count."""
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _count_findings(item, f"{where}[{index}]", rules)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _count_findings(item, f"{where}.{key}", rules)
    elif not rules.rule.is_published(value):
        yield Violation(rules.source, where, "count not disclosure-controlled", _shown(value))


# --- parquet --------------------------------------------------------------------------------


def scan_parquet(
    path: str | Path,
    *,
    source: str | None = None,
    rule: Rule,
) -> list[Violation]:
    """Check an aggregate parquet table: count columns, rates of suppressed cells, no ids."""
    source = source or str(path)
    frame = pl.read_parquet(path)
    found = [
        Violation(source, column, "row-level identifier column", column)
        for column in frame.columns
        if column.lower() in ROW_LEVEL_KEYS
    ]
    # a contract table's declared counts, and any other column named like a count
    declared = _TABLE_COUNTS.get(Path(path).name, ()) if "audit" in Path(path).parts else ()
    for column in [c for c in frame.columns if c in declared or is_count_key(c)]:
        series = frame[column]
        bad = _unpublished_counts(series, round_to=rule.round_to)
        if bad.any():
            found.append(
                Violation(
                    source,
                    f"column {column} ({int(bad.sum())} rows)",
                    "count not disclosure-controlled",
                    _shown(series.filter(bad)[0]),
                )
            )
    if "n" in frame.columns and frame["n"].dtype == pl.String:
        found += _suppressed_rate_columns(frame, source)
    return found


def _unpublished_counts(series: pl.Series, *, round_to: int) -> pl.Series:
    """True where a count column's value is neither null, ``'*'`` nor a non-negative multiple
    of ``round_to`` (every row of a column that is neither text nor numeric)."""
    if series.dtype == pl.String:
        text = series.str.replace_all(",", "")
        return ~(
            text.is_null()
            | (text == SUPPRESSED)
            | (text.str.contains(r"^\d+$") & (text.cast(pl.Int64, strict=False) % round_to == 0))
        )
    if series.dtype.is_numeric():
        return ~(series.is_null() | ((series >= 0) & (series % round_to == 0)))
    return pl.Series([True] * series.len())


def _suppressed_rate_columns(frame: pl.DataFrame, source: str) -> list[Violation]:
    """Rate columns that show a number in a row whose (String) ``n`` is ``'*'``."""
    suppressed = frame["n"] == SUPPRESSED
    found = []
    for column in [c for c in frame.columns if is_rate_key(c)]:
        series = frame[column]
        # a String column leaks only numbers (a label such as ci_method does not)
        shown = (
            series.str.contains(r"^-?[\d.,]+(e-?\d+)?$")
            if series.dtype == pl.String
            else series.is_not_null()
        )
        leaked = (suppressed & shown).fill_null(False)
        if leaked.any():
            found.append(
                Violation(
                    source,
                    f"column {column} ({int(leaked.sum())} rows)",
                    "rate shown for a suppressed count",
                    _shown(series.filter(leaked)[0]),
                )
            )
    return found


# --- HTML -----------------------------------------------------------------------------------

_PROSE_COUNT: Final = re.compile(
    r"(?<![\d.,])(\d[\d,]*)(?![\d.,]*%)\s+(?:people|persons|patients|adults|individuals|events|"
    r"admissions|cases|residents)\b",
    re.IGNORECASE,
)
_EXTERNAL_URL: Final = re.compile(r"url\(\s*['\"]?(?!data:|#)([^)'\"]+)", re.IGNORECASE)


class _ReportParser(HTMLParser):
    """Collects count/rate cells per table row, prose text and fetching references."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, str]] = []  # (tag, kind) kind: n | r | "" for the text target
        self.rows: list[list[tuple[str, str, int, str | None]]] = []  # (kind, text, line, of)
        self.in_row = 0
        self.cells: list[tuple[str, str, int, str | None]] = []  # every n / r element
        self.current: list[list[Any]] = []
        self.prose: list[tuple[str, int]] = []
        self.external: list[tuple[str, str, int]] = []
        self.skip = 0  # inside <style>, <script> or <svg>: not prose

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: (value or "") for key, value in attrs}
        line = self.getpos()[0]
        for key in ("src", "href", "xlink:href", "data", "poster", "srcset", "background"):
            target = values.get(key, "").strip()
            if not target or target.startswith(("#", "data:")):
                continue
            if key == "href" and tag == "a":
                continue  # a link is followed only when clicked; opening fetches nothing
            self.external.append((tag, f"{key}={target}", line))
        if tag == "link":
            self.external.append((tag, f"<link href={values.get('href', '')}>", line))
        for match in _EXTERNAL_URL.finditer(values.get("style", "")):
            self.external.append((tag, f"style url({match.group(1)})", line))
        if tag in {"style", "script", "svg"}:
            self.skip += 1
        classes = values.get("class", "").split()
        kind = "n" if "n" in classes else "r" if "r" in classes else ""
        if tag == "tr":
            self.in_row += 1
            self.rows.append([])
        if tag in {"br", "img", "meta", "input", "hr", "col", "wbr"}:
            return  # void elements have no end tag
        self.stack.append((tag, kind))
        if kind:
            self.current.append([kind, "", line, values.get("data-of")])

    def handle_endtag(self, tag: str) -> None:
        if tag in {"style", "script", "svg"} and self.skip:
            self.skip -= 1
        while self.stack:
            open_tag, kind = self.stack.pop()
            if kind and self.current:
                cell_kind, text, line, of = self.current.pop()
                cell = (cell_kind, " ".join(text.split()), line, of)
                self.cells.append(cell)
                if self.in_row and self.rows:
                    self.rows[-1].append(cell)
            if open_tag == tag:
                break
        if tag == "tr" and self.in_row:
            self.in_row -= 1

    def handle_data(self, data: str) -> None:
        if self.current:
            self.current[-1][1] += data
        if not self.skip:
            self.prose.append((data, self.getpos()[0]))


def scan_html(
    text: str,
    *,
    source: str = "<html>",
    rule: Rule,
) -> list[Violation]:
    """Check the report HTML: marked counts, rates beside suppressed counts, prose, fetches."""
    parser = _ReportParser()
    parser.feed(text)
    parser.close()
    return [
        *_cell_findings(parser.cells, source, rule=rule),
        *_row_findings(parser.rows, source),
        *_prose_findings(parser.prose, source, rule=rule),
        *_fetch_findings(parser.external, text, source),
    ]


_HIDDEN: Final = frozenset({SUPPRESSED, "", "-", "–", "—"})
"""What a rate beside a suppressed count may show."""
_Cell = tuple[str, str, int, str | None]


def _count_shown_ok(shown: str, *, rule: Rule) -> bool:
    value = shown.replace(",", "").strip()
    if value in {"", "-", "–", "—", "n/a"}:
        return True
    return rule.is_published(value)


def _cell_findings(cells: list[_Cell], source: str, *, rule: Rule) -> Iterator[Violation]:
    """Counts not disclosure-controlled, and rates shown although a count they name
    (``data-of``) is suppressed."""
    for kind, shown, line, of in cells:
        if kind == "n" and not _count_shown_ok(shown, rule=rule):
            yield Violation(source, f"line {line}", "count not disclosure-controlled", shown)
        if kind == "r" and of is not None and SUPPRESSED in of.split() and shown not in _HIDDEN:
            yield Violation(source, f"line {line}", "rate shown for a suppressed count", shown)


def _row_findings(rows: list[list[_Cell]], source: str) -> Iterator[Violation]:
    """Rates shown in a table row whose first count is suppressed."""
    for row in rows:
        counts = [cell for cell in row if cell[0] == "n"]
        if not counts or counts[0][1] != SUPPRESSED:
            continue
        for kind, shown, line, of in row:
            # a rate that names its own counts (data-of) was checked with the cells
            if kind == "r" and of is None and shown not in _HIDDEN:
                yield Violation(source, f"line {line}", "rate shown for a suppressed count", shown)


def _prose_findings(
    prose: list[tuple[str, int]], source: str, *, rule: Rule
) -> Iterator[Violation]:
    """Numbers of people written in prose that are not published counts."""
    for data, line in prose:
        for match in _PROSE_COUNT.finditer(data):
            if not _count_shown_ok(match.group(1), rule=rule):
                yield Violation(
                    source,
                    f"line {line}",
                    "count in prose not disclosure-controlled",
                    match.group(0),
                )


def _fetch_findings(
    external: list[tuple[str, str, int]], text: str, source: str
) -> Iterator[Violation]:
    """Anything the page would fetch: attributes, ``@import``/``@font-face``, style ``url()``."""
    for tag, reference, line in external:
        yield Violation(source, f"line {line} <{tag}>", "fetches a resource", reference)
    for match in re.finditer(r"@import|@font-face", text):
        line = text.count("\n", 0, match.start()) + 1
        yield Violation(source, f"line {line}", "fetches a resource", match.group(0))
    for match in _EXTERNAL_URL.finditer(_style_blocks(text)):
        yield Violation(source, "<style>", "fetches a resource", f"url({match.group(1)})")


def _style_blocks(text: str) -> str:
    return "\n".join(re.findall(r"<style[^>]*>(.*?)</style>", text, flags=re.DOTALL | re.I))


# --- a whole reports/ folder ------------------------------------------------------------------


def _files(reports: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    for path in sorted(reports.rglob("*")):
        if path.is_file() and path.suffix in suffixes and not path.name.startswith("."):
            yield path


def scan_reports(
    reports: str | Path,
    *,
    rule: Rule,
    include_parquet: bool = True,
) -> list[Violation]:
    """Scan every JSON (and parquet) file and every HTML report under ``reports``.

    Returns
    -------
    list[Violation]
        All findings across the folder, with the file each came from.
    """
    reports = Path(reports)
    found: list[Violation] = []
    suffixes = (".json", ".html", ".parquet") if include_parquet else (".json", ".html")
    for path in _files(reports, suffixes):
        source = str(path.relative_to(reports.parent))
        if path.suffix == ".json":
            found += scan_json(read_json(path), source=source, rule=rule)
        elif path.suffix == ".html":
            found += scan_html(path.read_text(encoding="utf-8"), source=source, rule=rule)
        else:
            found += scan_parquet(path, source=source, rule=rule)
    return found
