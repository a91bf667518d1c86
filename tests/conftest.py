"""Shared test helpers: waiting with a deadline, the corpus location, TensorFlow quietness."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

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


IN_FRESH_PROCESS = "KERASSERVE_IN_FRESH_PROCESS"
"""Set in the child of `run_in_fresh_process`, so the tests it runs know where they are."""


def in_fresh_process() -> bool:
    return os.environ.get(IN_FRESH_PROCESS) == "1"


def run_in_fresh_process(*pytest_args: str, timeout_s: float = 600) -> set[str]:
    """Run pytest on `pytest_args` in a new interpreter (TensorFlow's once-per-process state fresh); fail if it fails.

    Returns the names of the tests that passed there, read from the JUnit XML report pytest writes (a
    structured result, not its console output): callers compare them with the tests they meant to run, so a
    test skipped or never collected in the child process is noticed.
    """
    with tempfile.TemporaryDirectory(prefix="fresh-process-") as folder:
        report = Path(folder) / "report.xml"
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junit-xml={report}", *pytest_args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, IN_FRESH_PROCESS: "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        cases = ElementTree.parse(report).getroot().iter("testcase")
        return {
            case.attrib["name"]
            for case in cases
            if not any(child.tag in ("failure", "error", "skipped") for child in case)
        }


def in_ci() -> bool:
    """Whether the suite runs in CI (`CI=true`, as CI services set it): nothing may skip for lack of data there."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing_corpus_message() -> str:
    return (
        f"the model corpus is expected at {CORPUS} (the `shared/corpus` folder beside the repository); "
        "clone or copy it there"
    )


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The corpus folder; every test that needs it asks for this fixture (directly or through another)."""
    if not CORPUS.is_dir():
        pytest.skip(f"corpus test skipped: {missing_corpus_message()}")
    return CORPUS


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs the corpus `corpus`; with CI=true, a missing corpus fails the run."""
    needing = [item for item in items if "corpus" in getattr(item, "fixturenames", ())]
    for item in needing:
        item.add_marker(pytest.mark.corpus)
    if needing and not CORPUS.is_dir() and in_ci():
        raise pytest.UsageError(
            f"CI=true and {len(needing)} collected tests need the model corpus, which is missing: "
            f"{missing_corpus_message()}. Without CI=true these tests are skipped instead."
        )
