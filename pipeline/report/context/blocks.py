"""The values the templates lay out: a table of cells, a figure, a target's heading.

They hold plain values only (text, :class:`~pipeline.report.fmt.Cell`, an SVG from
:mod:`pipeline.report.charts`); the markup is in ``templates/_macros.html.j2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from markupsafe import Markup

from pipeline.report.fmt import Cell
from pipeline.report.model import TargetView


@dataclass(frozen=True)
class Table:
    """A table: ``columns`` are (heading, explanation shown on hover), ``rows`` lists of cells.

    ``compact`` tables are narrow and sit side by side; ``sortable`` ones sort on a click.
    """

    columns: list[tuple[str, str]]
    rows: list[list[Cell]]
    caption: str = ""
    sortable: bool = False
    compact: bool = False


@dataclass(frozen=True)
class Figure:
    """An inline SVG chart and its title (the caption's template starts from the title)."""

    svg: Markup
    title: str = ""


@dataclass(frozen=True)
class Heading:
    """A target's subheading: its code and what it predicts."""

    target: str
    about: str


@dataclass(frozen=True)
class Section:
    """One report section: its anchor, title, optional lead line, template and context.

    ``template`` (under ``templates/``) renders ``context``; the page template wraps it in
    ``<section id=...>`` with the title.
    """

    id: str
    title: str
    template: str
    context: dict = field(default_factory=dict)
    lead: str = ""


def heading(view: TargetView) -> Heading:
    """The subheading of ``view``'s part of a section."""
    return Heading(view.target, view.description or view.outcome)
