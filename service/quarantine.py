"""Quarantine: model files that crashed a worker or the Lambda probe, remembered by content hash.

A file whose load kills the process (a SIGSEGV in stored Lambda bytecode, a crashing custom op)
would otherwise crash-loop every worker: gunicorn starts a new worker, which loads the same file and
dies too. So the builder keys every load on the content's SHA-256 (`content_hash`) and, in STATE_DIR
(shared by the workers of a host, kept across worker restarts):

- refuses at once a hash remembered as failed (`failure`), with the reason remembered: the version
  is FAILED, and is tried again only when its content changes (another hash);
- leaves a marker holding its process id while it loads a version in the worker (`loading`); a
  worker that dies mid-load leaves it behind, and the next worker that meets the marker of a dead
  process remembers the hash as failed ("a worker died while loading it");
- remembers a hash whose Lambda probe crashed (`remember`).

A clean exit (gunicorn's SIGTERM, a recycle) removes its markers first (`atexit`), so only a death
during a load quarantines a file. To retry a quarantined file without changing it, delete its
`<hash>.failed.json` in STATE_DIR. A STATE_DIR that cannot be written (a read-only file system)
turns the quarantine off with a warning; it never fails a load. Imports neither Flask nor TensorFlow.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from service.formats import walk_folder

log = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
_own_markers: set[Path] = set()


def content_hash(path: Path) -> str:
    """SHA-256 of a model file, or of every regular file of a version folder (relative paths included)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = [(Path(path.name), path)] if path.is_file() else [(f.relative_to(path), f) for f in walk_folder(path).files]
    for relative, file in sorted(files):
        digest.update(str(relative).encode("utf-8", "surrogateescape") + b"\0")
        with file.open("rb") as stream:
            while chunk := stream.read(_CHUNK_BYTES):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def state_folder(state_dir: Path | None) -> Path:
    """STATE_DIR, or `kerasserve-state-<uid>` in the system's temporary folder when it is unset."""
    return state_dir if state_dir is not None else Path(tempfile.gettempdir()) / f"kerasserve-state-{os.getuid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _folder(state_dir: Path) -> Path:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return state_dir


def _unusable(state_dir: Path, err: OSError) -> None:
    log.warning("STATE_DIR %s cannot be used (%s): files that crash a worker are not remembered", state_dir, err)


def remember(state_dir: Path, digest: str, reason: str) -> None:
    """Remember `digest` as failed with `reason` (shown to clients: no paths)."""
    try:
        target = _folder(state_dir) / f"{digest}.failed.json"
        staged = target.with_suffix(f".{os.getpid()}.tmp")
        staged.write_text(json.dumps({"reason": reason}), encoding="utf-8")
        os.replace(staged, target)
    except OSError as err:
        _unusable(state_dir, err)


def failure(state_dir: Path, digest: str) -> str | None:
    """The remembered reason `digest` failed, or None; a marker left by a dead worker is remembered first."""
    try:
        folder = _folder(state_dir)
    except OSError as err:
        _unusable(state_dir, err)
        return None
    for marker in folder.glob(f"{digest}.loading.*"):
        pid = marker.name.rsplit(".", 1)[-1]
        if pid.isascii() and pid.isdigit() and not _alive(int(pid)) and marker not in _own_markers:
            remember(
                state_dir,
                digest,
                f"a worker died (process {pid}) while loading this content; it is not loaded again until it changes",
            )
            with contextlib.suppress(OSError):
                marker.unlink()
    try:
        remembered = json.loads((folder / f"{digest}.failed.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(remembered.get("reason") or "it failed before") if isinstance(remembered, dict) else None


@contextlib.contextmanager
def loading(state_dir: Path, digest: str) -> Iterator[None]:
    """Mark `digest` as being loaded by this process for the duration of the block."""
    marker = state_dir / f"{digest}.loading.{os.getpid()}"
    try:
        _folder(state_dir)
        marker.touch()
    except OSError as err:
        _unusable(state_dir, err)
        yield
        return
    _own_markers.add(marker)
    try:
        yield
    finally:
        _own_markers.discard(marker)
        with contextlib.suppress(OSError):
            marker.unlink()


@atexit.register
def _remove_own_markers() -> None:
    """A clean exit is no crash: drop this process's markers."""
    for marker in list(_own_markers):
        with contextlib.suppress(OSError):
            marker.unlink()
