"""Model control: which models of the repository serve, as Triton's model control modes decide it.

With MODEL_CONTROL=poll (the default) every model in the models folder serves, and the repository
API's `load` and `unload` are refused. With MODEL_CONTROL=explicit a model serves once STARTUP_MODELS
names it (`*`: every model in the folder at start) or a `load` call asked for it, until an `unload`
call. `ModelControl` keeps those decisions; the repository watcher asks it, on every scan, which of
the models it found should serve (`select`), and feeds only those to the manager: the decisions
steer the repository's aspired versions, the manager still decides how to load them.

gunicorn runs several workers, each with its own manager and watcher, and a `load` call reaches one
of them. So the decisions live in one small JSON file (MODEL_CONTROL_FILE, made fresh at every server
start by gunicorn.conf.py), replaced atomically (written aside, then renamed) under an exclusive
`flock`, so two workers deciding at once never lose each other's decision. The worker that took the
call rescans at once and waits for the model; every other worker's watcher reads the file on its
next scan: on inotify's event for the file, else within POLL_INTERVAL_S. A worker forked later (a
recycled or crashed one) reads the same file, so it serves what the others serve. Without a file
(Flask's test client, one process) the decisions stay in memory.

Imports neither Flask nor TensorFlow, never loads a model and never talks to the manager.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from service.errors import ModelControlDisabled
from service.settings import Settings

log = logging.getLogger(__name__)

STARTUP_ALL = "*"
"""STARTUP_MODELS entry meaning every model in the models folder at start (Triton's `--load-model=*`)."""


@dataclass(frozen=True, slots=True)
class Decisions:
    """The explicit decisions: models loaded through STARTUP_MODELS or `load`, and models `unload`ed since."""

    loaded: frozenset[str] = frozenset()
    unloaded: frozenset[str] = frozenset()

    def to_json(self) -> str:
        return json.dumps({"loaded": sorted(self.loaded), "unloaded": sorted(self.unloaded)})

    @classmethod
    def from_json(cls, text: str) -> Decisions:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return cls(frozenset(map(str, data.get("loaded", ()))), frozenset(map(str, data.get("unloaded", ()))))


class ModelControl:
    """The decisions of one server, shared by its workers through MODEL_CONTROL_FILE; thread-safe.

    Lifecycle: built by `create_app`; the watcher calls `attach(rescan)` and then `select()` on every
    scan (the first one creates the file from STARTUP_MODELS when no worker did yet); the data plane
    calls `load()`, `unload()` and `rescan()` for the repository API.
    """

    def __init__(self, settings: Settings) -> None:
        self.explicit = settings.model_control == "explicit"
        self._path = settings.model_control_file
        self._startup = tuple(settings.startup_models)
        self._lock = threading.Lock()
        self._decisions: Decisions | None = None
        self._repository: frozenset[str] = frozenset()
        self._rescan: Callable[[], None] | None = None

    @property
    def path(self) -> Path | None:
        """The shared decisions file (None: decisions in memory); the watcher watches its folder."""
        return self._path if self.explicit else None

    def attach(self, rescan: Callable[[], None]) -> None:
        """Take the watcher's `rescan` (scan now, return once the manager has the result)."""
        self._rescan = rescan

    # --- what the watcher calls -----------------------------------------------------------------
    def select(self, names: Collection[str]) -> frozenset[str]:
        """Note every model the repository holds now; return those that should serve."""
        with self._lock:
            self._repository = frozenset(names)
        if not self.explicit:
            return frozenset(names)
        return self.decisions().loaded & frozenset(names)

    # --- what the data plane calls --------------------------------------------------------------
    def repository_names(self) -> frozenset[str]:
        """Every model the repository held at the last scan, serving or not."""
        with self._lock:
            return self._repository

    def decisions(self) -> Decisions:
        """The current decisions (read again from the file when it changed)."""
        with self._lock:
            return self._read_locked()

    def require_explicit(self) -> None:
        """Raise ModelControlDisabled unless MODEL_CONTROL=explicit."""
        if not self.explicit:
            raise ModelControlDisabled()

    def load(self, name: str) -> None:
        """Decide that `name` serves (every worker follows). Raises ModelControlDisabled under poll."""
        self.require_explicit()
        self._change(lambda d: Decisions(d.loaded | {name}, d.unloaded - {name}))
        log.info("model '%s' loaded through the repository API (MODEL_CONTROL=explicit)", name)

    def unload(self, name: str) -> None:
        """Decide that `name` no longer serves (every worker follows). Raises ModelControlDisabled under poll."""
        self.require_explicit()
        with self._lock:
            known = name in self._repository
        # Only names that mean something are kept (the index shows them "unloaded"): made-up names
        # from clients must not grow the file.
        self._change(
            lambda d: Decisions(d.loaded - {name}, d.unloaded | {name} if known or name in d.loaded else d.unloaded)
        )
        log.info("model '%s' unloaded through the repository API (MODEL_CONTROL=explicit)", name)

    def rescan(self) -> None:
        """Have this worker's watcher scan now and feed the manager; return when it did."""
        if self._rescan is not None:
            self._rescan()

    # --- the file -------------------------------------------------------------------------------
    def _startup_decisions(self) -> Decisions:
        names = set(self._startup)
        if STARTUP_ALL in names:
            names = (names - {STARTUP_ALL}) | set(self._repository)
        return Decisions(frozenset(names))

    def _read_locked(self) -> Decisions:
        if self._path is None:
            if self._decisions is None:
                self._decisions = self._startup_decisions()
            return self._decisions
        # Read on every call: a few hundred bytes per scan, and no stat signature can miss a change.
        try:
            self._decisions = Decisions.from_json(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            # No worker wrote it yet: the first one writes STARTUP_MODELS (under the flock, once).
            return self._write_locked(lambda current: current)
        except (OSError, ValueError) as err:
            return self._keep_locked(f"cannot read {self._path}: {err}")
        return self._decisions

    def _keep_locked(self, problem: str) -> Decisions:
        log.warning("%s; keeping the decisions read before", problem)
        if self._decisions is None:
            self._decisions = self._startup_decisions()
        return self._decisions

    def _change(self, change: Callable[[Decisions], Decisions]) -> None:
        with self._lock:
            if self._path is None:
                self._decisions = change(self._read_locked())
                return
            self._write_locked(change)

    def _write_locked(self, change: Callable[[Decisions], Decisions]) -> Decisions:
        """Read, change and replace the file under an exclusive flock (creating it from STARTUP_MODELS)."""
        assert self._path is not None
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self._path}.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                try:
                    current = Decisions.from_json(self._path.read_text(encoding="utf-8"))
                except FileNotFoundError:
                    current = self._startup_decisions()
                    log.info("model control: serving %s at start (STARTUP_MODELS)", sorted(current.loaded) or "nothing")
                    missing = sorted(current.loaded - self._repository)
                    if missing:
                        log.warning("STARTUP_MODELS names %s, not in MODELS_DIR: each loads once it arrives", missing)
                except (OSError, ValueError) as err:
                    log.warning("cannot read %s (%s); rewriting it from the decisions read before", self._path, err)
                    current = self._decisions or self._startup_decisions()
                decisions = change(current)
                fd, temporary = tempfile.mkstemp(dir=self._path.parent, prefix=".model-control-")
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    out.write(decisions.to_json())
                os.replace(temporary, self._path)
                self._decisions = decisions
                return decisions
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
