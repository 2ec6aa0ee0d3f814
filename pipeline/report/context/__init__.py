"""Template context of the report: small functions from the view's frames to plain values.

One module per section (``population``, ``performance``, ``deprivation``, ...), each with a
``*_section(report, sdc) -> Section`` that names its template under ``templates/sections/``;
shared pieces (labels, per-group rows, HEAT tables, capacity wording) have modules of their own.
See docs/report.md.
"""
