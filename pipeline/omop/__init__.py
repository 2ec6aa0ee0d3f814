"""OMOP CDM input (``population.source: omop``): convert an OMOP database into the contract's
tables, then the normal stages run unchanged. The mapping, table by table, and what OMOP cannot
supply: docs/omop.md.
"""

from __future__ import annotations

from pipeline.omop.adapter import MAPPING_FILE, convert, import_omop
from pipeline.omop.source import OmopSourceError

__all__ = ["MAPPING_FILE", "OmopSourceError", "convert", "import_omop"]
