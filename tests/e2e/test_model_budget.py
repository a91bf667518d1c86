"""MAX_LOADED_MODELS on the real server: `bench/lru_budget.py` at a small scale (6 models, a budget of 2).

The bench starts gunicorn with the budget, sends a request mix over every model from several
clients, and replays the worker's log to find the most models resident at once. Every request must
get its own model's answer (requests wait for their model instead of failing) and residency must
never go over the budget. The full-scale figures (20 models, a budget of 5) are in docs/operations.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_requests_over_more_models_than_the_budget_all_succeed_within_the_budget(tmp_path: Path) -> None:
    figures_path = tmp_path / "figures.json"
    bench = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "lru_budget.py"),
            *("--models", "6", "--budget", "2", "--requests", "40", "--clients", "3", "--units", "32"),
            *("--json", str(figures_path)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
    figures = json.loads(figures_path.read_text())["budgeted"]
    assert (figures["failed"], figures["wrong_answers"]) == ([], [])
    assert figures["requests"] == 40
    assert 1 <= figures["most_resident"] <= 2
    assert figures["evictions"] >= 4  # the mix asked for all 6 models: 4 at least were loaded in another's place
