"""CI's entry point is `make test`, and a clone without the model corpus behaves as documented:
locally its corpus tests skip (each saying where the corpus is expected), under CI=true the run fails.

Runs `make test` itself in a fresh clone (the committed HEAD) placed where no `../shared` exists,
limited to one small test file with the Makefile's TESTS variable.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.conftest import clone_repository, user_environment

SMALL_CORPUS_USER = "tests/unit/test_formats.py"  # a few corpus tests among fast ones


def test_ci_runs_make_test_and_nothing_cleverer() -> None:
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands[-1] == "make test", commands


@pytest.fixture(scope="module")
def lonely_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clone = clone_repository(tmp_path_factory.mktemp("no-shared") / "kerasserve")
    assert not (clone.parent / "shared").exists()
    return clone


def make_test(clone: Path, *, ci: bool) -> subprocess.CompletedProcess:
    environment = user_environment(COLUMNS="1000")  # pytest's skip summary is cut to the terminal's width
    environment.pop("CI", None)
    if ci:
        environment["CI"] = "true"
    return subprocess.run(
        ["make", "test", f"TESTS={SMALL_CORPUS_USER}"],
        cwd=clone,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_make_test_without_the_corpus_passes_and_lists_the_skipped_corpus_tests(lonely_clone: Path) -> None:
    result = make_test(lonely_clone, ci=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected_at = str(lonely_clone.parent / "shared" / "corpus")
    skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skips and all(f"the model corpus is expected at {expected_at}" in line for line in skips), result.stdout[
        -3000:
    ]
    assert " passed" in result.stdout.splitlines()[-1]


def test_make_test_without_the_corpus_fails_under_ci_naming_it(lonely_clone: Path) -> None:
    result = make_test(lonely_clone, ci=True)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "CI=true" in output and f"{lonely_clone.parent / 'shared' / 'corpus'}" in output, output[-3000:]
