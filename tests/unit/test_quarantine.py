"""Quarantine: content hashes, and model files remembered as failed across processes.

The dead worker is a real process that dies (SIGKILL) while it holds a loading marker, as a worker
killed by a crashing model would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from service import quarantine
from tests.conftest import REPO


def test_the_content_hash_follows_the_bytes_and_the_names_in_a_folder(tmp_path: Path) -> None:
    a, b = tmp_path / "a.keras", tmp_path / "b.keras"
    a.write_bytes(b"model bytes")
    b.write_bytes(b"model bytes")
    assert quarantine.content_hash(a) == quarantine.content_hash(tmp_path / "a.keras")
    b.write_bytes(b"model bytes, changed")
    assert quarantine.content_hash(a) != quarantine.content_hash(b)
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, name in ((one, "saved_model.pb"), (two, "other.pb")):
        (folder / "variables").mkdir(parents=True)
        (folder / name).write_bytes(b"graph")
    assert quarantine.content_hash(one) != quarantine.content_hash(two)


def test_a_remembered_failure_is_found_by_its_hash_only(tmp_path: Path) -> None:
    quarantine.remember(tmp_path / "state", "abc", "the Lambda probe subprocess crashed with signal 11")
    assert quarantine.failure(tmp_path / "state", "abc") == "the Lambda probe subprocess crashed with signal 11"
    assert quarantine.failure(tmp_path / "state", "abd") is None


def test_a_marker_left_by_a_dead_worker_quarantines_the_content(tmp_path: Path) -> None:
    state = tmp_path / "state"
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from service import quarantine\n"
        "with quarantine.loading(Path(sys.argv[1]), 'deadbeef'):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(state)], cwd=REPO, timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert len(list(state.glob("deadbeef.loading.*"))) == 1
    reason = quarantine.failure(state, "deadbeef")
    assert reason is not None and "a worker died" in reason
    assert list(state.glob("deadbeef.loading.*")) == []  # turned into the remembered failure
    assert quarantine.failure(state, "deadbeef") == reason


def test_markers_of_live_processes_and_clean_exits_quarantine_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with quarantine.loading(state, "cafe"):  # this process, alive: another worker loading it now
        assert quarantine.failure(state, "cafe") is None
    code = "import sys\nfrom pathlib import Path\nfrom service import quarantine\nquarantine.loading(Path(sys.argv[1]), 'f00d').__enter__()\nsys.exit(0)\n"
    assert subprocess.run([sys.executable, "-c", code, str(state)], cwd=REPO, timeout=60).returncode == 0
    assert list(state.glob("f00d.loading.*")) == []  # removed at exit: a clean exit is no crash
    assert quarantine.failure(state, "f00d") is None
    assert os.stat(state).st_mode & 0o777 == 0o700


def test_a_state_dir_that_cannot_be_written_turns_the_quarantine_off_and_fails_no_load(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    state = blocked / "state"  # mkdir fails: NotADirectoryError
    quarantine.remember(state, "abc", "crashed")
    assert quarantine.failure(state, "abc") is None
    with quarantine.loading(state, "abc"):
        pass
