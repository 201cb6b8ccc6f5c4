"""Where the pipeline reads and writes in the repository: its results, the shipped adapters, the results document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cadis.models.presets import FINETUNED

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = REPOSITORY / "experiments" / "results"  # certification TSVs, sidecars, tables and figures
RESULTS_DOC = REPOSITORY / "docs" / "results.md"  # the document the report writes
__all__ = ["FINETUNED", "REPOSITORY", "RESULTS", "RESULTS_DOC", "in_repository"]


def in_repository(value: Any) -> Any:
    """Paths inside this repository (also in a spec, e.g. `local-dir:PATH`) relative to it: the same on every
    checkout."""
    return value.replace(f"{REPOSITORY}/", "") if isinstance(value, str) else value
