"""Shared test helpers: waiting with a deadline, the corpus location, TensorFlow quietness."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


def wait_until(condition: Callable[[], object], timeout_s: float = 30.0, interval_s: float = 0.05) -> object:
    """Return the first truthy value of `condition()`, or fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 - the condition may fail until it holds
            last_error = err
        time.sleep(interval_s)
    pytest.fail(f"condition not met within {timeout_s}s (last error: {last_error!r})")


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"corpus not found at {CORPUS}")
    return CORPUS
