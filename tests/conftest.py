"""Shared test helpers: waiting with a deadline, the corpus location, TensorFlow quietness."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def read_only_mount(folder: Path) -> Iterator[Path]:
    """Make `folder` a read-only mount holding what it held, for the block (how KServe mounts /mnt/models).

    Its files are copied onto a fresh tmpfs (an emptyDir with `medium: Memory` is one) mounted over
    the folder with the folder's mode and owner, which is then remounted read-only: no writable
    mount shows those files anywhere (a read-only bind mount of the folder onto itself would leave
    the writable file system beneath it in /proc/self/mountinfo, which the server counts as
    writable). Needs root (CAP_SYS_ADMIN), as the suite has in CI's container; where mounting is
    refused the test is skipped with the reason (in CI it fails). The originals lie untouched under
    the mount and are visible again when the block ends.
    """
    folder = Path(folder)
    st = folder.stat()
    saved = Path(tempfile.mkdtemp(prefix="kerasserve-ro-")) / "content"
    shutil.copytree(folder, saved, symlinks=True)
    options = f"mode={stat.S_IMODE(st.st_mode):o},uid={st.st_uid},gid={st.st_gid},size=512m"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        shutil.rmtree(saved.parent)
        message = f"cannot make a read-only mount here (needs root): {mounted.stderr.strip()}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    try:
        shutil.copytree(saved, folder, symlinks=True, dirs_exist_ok=True)
        for entry in saved.rglob("*"):  # copytree keeps modes and times, not owners
            if not entry.is_symlink():
                os.chown(folder / entry.relative_to(saved), entry.stat().st_uid, entry.stat().st_gid)
        os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))
        remount = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True, text=True)
        assert remount.returncode == 0, remount.stderr
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
        shutil.rmtree(saved.parent, ignore_errors=True)


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
