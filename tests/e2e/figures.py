"""Figures for docs/reliability.md: tests record what they tried and saw; set KERASSERVE_FIGURES=<file> to keep them.

Each `record()` appends one JSON line `{"test": ..., **figures}` to that file; without the variable
it does nothing, so the suite never writes into the repository.
"""

from __future__ import annotations

import json
import os


def record(test: str, **figures: object) -> None:
    """Append `figures` for `test` to $KERASSERVE_FIGURES (when set)."""
    target = os.environ.get("KERASSERVE_FIGURES")
    if not target:
        return
    with open(target, "a", encoding="utf-8") as out:
        out.write(json.dumps({"test": test, **figures}) + "\n")
