"""Repository: the `models/` folder, what it says should be served, and the watcher that reads it.

`ModelRepository.scan()` lists the models folder and returns, per model, the full list of *aspired
versions* (complete versions chosen by the model's version policy), plus the versions present on
disk and those still arriving. `RepositoryWatcher` calls `scan()` on file-system events (watchdog,
inotify) and every `poll_interval_s` (the polling fallback that also works on network volumes and
Kubernetes ConfigMap symlink swaps), and hands each model's list to its target's
`set_aspired_versions` (the manager's; `app.py` wires them). A version left out of a list is unloaded, so the watcher
keeps no state between scans; the repository keeps only what settle detection needs.

Layout (see docs/model-repository.md):

    models/<name>.keras|.h5|.hdf5     one file = version 1 (config `<name>.yaml`, labels `<name>.labels.txt`)
    models/<name>/                    a folder holding a model file, a JSON + weights pair or a SavedModel = version 1
    models/<name>/<N>/...             numeric version folders (TF Serving layout; `00000123` is version 123)
    models/plugins/                   plugin modules, not a model

Single-model mode (`model_name`, MODEL_NAME; KServe's `--model_name` with `/mnt/models`): the folder
is that one model's base path, read like `models/<name>/` above: a model file or SavedModel at its
root is version 1, numbered folders are versions; `plugins/` is still plugins, never part of a version.

A file counts as complete once it arrived by atomic rename (seen by inotify) or its size and mtime
stayed unchanged for `settle_s`; a SavedModel folder once `saved_model.pb` and every variables shard
are there too. This module never loads a model and imports neither Flask nor TensorFlow.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from service.formats import SAVED_MODEL_FILES, FolderWalk, special_file_problem, special_kind, walk_folder
from service.model_config import (
    CONFIG_SUFFIXES,
    FOLDER_CONFIG_NAMES,
    LABELS_FILE,
    ForeignConfigFile,
    ModelConfig,
    ModelConfigError,
    read_labels,
    read_model_config,
)
from service.model_control import ModelControl
from service.servable import ServableId
from service.settings import PLUGINS_FOLDER, Settings

log = logging.getLogger(__name__)

MODEL_FILE_SUFFIXES = (".keras", ".h5", ".hdf5")
"""Suffixes of single-file models at the top of the models folder."""
IGNORED_SUFFIXES = (".tmp", ".part", ".crdownload", ".swp", ".swx", ".partial", "~")
IGNORED_NAMES = frozenset({"__pycache__", "lost+found"})
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
"""Safe model names: they appear in URLs, metric labels and file names."""
VERSION_DIR = re.compile(r"^[0-9]{1,18}$")
_SHARD = re.compile(r"^variables\.data-(\d+)-of-(\d+)$")

SETTLING = "settling"
"""`ModelSource.pending` reason of a version whose files are still changing."""

_Signature = tuple[int, int, int, int]
"""(size, mtime_ns, inode, device) of a file, following symlinks."""


def display_path(path: Path, models_dir: Path) -> str:
    """Return `path` relative to the models folder, for logs and status views (its name when outside)."""
    try:
        return str(Path(path).relative_to(models_dir))
    except ValueError:
        return Path(path).name


def is_ignored(name: str) -> bool:
    """Tell whether a file or folder name is a temporary, hidden or editor file (never a model)."""
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES) or name in IGNORED_NAMES


@dataclass(frozen=True, slots=True)
class VersionSource:
    """One complete version on disk: where it is, what identifies its files, and its config.

    `fingerprint` changes whenever any file of the version (model files, config files, labels)
    changes; the manager loads the version again when it does. `error` is set when the version's
    config cannot be read: the manager then records the version as failed without loading it.
    """

    id: ServableId
    path: Path
    fingerprint: str
    config: ModelConfig = field(default_factory=ModelConfig)
    labels: tuple[str, ...] = ()
    error: str = ""
    size_bytes: int = 0
    """Bytes of the version's files on disk (what MAX_LOADED_BYTES counts)."""
    gate_inputs: Path | None = None
    """The config's `gate.inputs` folder, resolved against the folder of the config file that names it."""


@dataclass(frozen=True, slots=True)
class ModelSource:
    """What the repository says about one model: the aspired versions and what else is on disk."""

    name: str
    aspired: tuple[VersionSource, ...]
    """Complete versions the version policy selects, ascending."""
    present: frozenset[int] = frozenset()
    """Every complete version on disk, aspired or not (a version missing here was deleted)."""
    pending: Mapping[int, str] = field(default_factory=dict)
    """Versions on disk that are not complete yet -> why (`SETTLING`, or what is missing)."""
    version_labels: Mapping[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Candidate:
    version: int
    path: Path
    files: list[Path]
    configs: list[Path]
    labels_file: Path | None
    missing: str = ""
    special: list[tuple[Path, str]] = field(default_factory=list)
    """FIFOs, sockets and devices in the version: it is refused (`VersionSource.error`), never read."""


class ModelRepository:
    """Reads the models folder; remembers file signatures only to tell when files have settled.

    `scan()` is called by one thread (the watcher's); `note_arrived()` may be called from any thread.
    """

    def __init__(
        self,
        models_dir: Path,
        *,
        settle_s: float,
        model_name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Read `models_dir` as a repository of models, or as the base path of the one model `model_name`.

        Raises:
            ValueError: `model_name` is not a valid model name.
        """
        if model_name is not None and not MODEL_NAME.match(model_name):
            raise ValueError(
                f"MODEL_NAME '{model_name}' is not a valid model name: it must start with a letter or digit and "
                "hold only letters, digits, '_', '-' and '.' (at most 128 characters)"
            )
        self.models_dir = Path(models_dir)
        self.model_name = model_name
        self.settle_s = settle_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[_Signature, float, bool]] = {}
        """path -> (signature, first seen with it, settled)."""
        self._arrived: dict[str, _Signature] = {}
        self._scanned_once = False
        self._next_deadline: float | None = None
        self._logged: dict[str, str] = {}
        self._plugins: str | None = None

    # --- settle detection --------------------------------------------------------------------
    def note_arrived(self, path: str | os.PathLike[str]) -> None:
        """Record that `path` (a file or folder) arrived by atomic rename: its current files are complete."""
        path = Path(path)
        files = [path] if path.is_file() else _walk_files(path).files if path.is_dir() else []
        with self._lock:
            for file in files:
                signature = _stat(file)
                if signature is not None:
                    self._arrived[str(file)] = signature

    def _settled(self, path: Path, signature: _Signature, now: float, now_wall: float, seen: dict) -> bool:
        key = str(path)
        entry = seen.get(key) or self._seen.get(key)
        if entry is None or entry[0] != signature:
            entry = (signature, now, False)
        if not entry[2]:
            settled = (
                self._arrived.get(key) == signature
                or now - entry[1] >= self.settle_s
                # At start-up nothing has been observed yet: a file whose mtime is older than the
                # settle period has not changed for that long. Later scans rely on observation only,
                # so a file server whose clock lags ours cannot make a half-written file look settled.
                or (not self._scanned_once and now_wall - signature[1] / 1e9 >= self.settle_s)
            )
            entry = (signature, entry[1], settled)
        seen[key] = entry
        if not entry[2]:
            deadline = entry[1] + self.settle_s
            if self._next_deadline is None or deadline < self._next_deadline:
                self._next_deadline = deadline
        return entry[2]

    def next_settle_deadline(self) -> float | None:
        """Monotonic time at which a file now settling will count as complete (None if none settles)."""
        return self._next_deadline

    # --- scanning ----------------------------------------------------------------------------
    def scan(self) -> dict[str, ModelSource]:
        """List the models folder: per model, its aspired versions and what else is on disk.

        Names that are not safe, files that are not models and unreadable entries are skipped with a
        logged reason (logged once until it changes). A missing models folder gives no models.
        """
        now, now_wall = self._clock(), self._wall_clock()
        seen: dict[str, tuple[_Signature, float, bool]] = {}
        models: dict[str, ModelSource] = {}
        with self._lock:
            self._next_deadline = None
            if self.model_name is None:
                self._scan_repository(now, now_wall, seen, models)
            elif self.models_dir.is_dir():
                source = self._scan_model(self.model_name, self.models_dir, now, now_wall, seen)
                if source is not None:
                    models[self.model_name] = source
            else:
                self._note("(models dir)", f"cannot list {self.models_dir}: not a folder")
            self._plugins = self._scan_plugins(now, now_wall, seen)
            self._seen = seen
            self._arrived = {k: v for k, v in self._arrived.items() if k in seen}
            self._scanned_once = True
        return models

    def _scan_repository(self, now: float, now_wall: float, seen: dict, models: dict[str, ModelSource]) -> None:
        """Add every model of a repository folder (one per file stem or folder name) to `models`."""
        try:
            entries = sorted(os.scandir(self.models_dir), key=lambda e: e.name)
        except OSError as err:
            self._note("(models dir)", f"cannot list {self.models_dir}: {err}")
            entries = []
        names = {e.name for e in entries}
        claimed: dict[str, list[Path]] = {}
        models_real = Path(os.path.realpath(self.models_dir))
        for entry in entries:
            name = entry.name
            if is_ignored(name) or name == PLUGINS_FOLDER:
                continue
            path = Path(entry.path)
            if path.is_dir():
                if models_real.is_relative_to(os.path.realpath(path)):
                    self._note(name, f"skipped {name}: a symlink to a folder holding the models folder (a loop)")
                    continue
                claimed.setdefault(name, []).insert(0, path)
                continue
            stem, suffix = os.path.splitext(name)
            kind = _special(path)
            if kind and suffix.lower() in MODEL_FILE_SUFFIXES:
                claimed.setdefault(stem, []).append(path)  # refused as a version, never opened
            elif not path.is_file():
                self._note(name, f"skipped {name}: not a regular file ({kind or 'a dangling link or a loop?'})")
            elif suffix.lower() in MODEL_FILE_SUFFIXES:
                claimed.setdefault(stem, []).append(path)
            elif not _is_companion(name, names):
                self._note(
                    name,
                    f"skipped {name}: not a model file ({', '.join(MODEL_FILE_SUFFIXES)}) or folder",
                    logging.INFO,
                )
        for name, paths in claimed.items():
            if not MODEL_NAME.match(name):
                self._note(name, f"skipped '{name}': model names may only hold letters, digits, '_', '-' and '.'")
                continue
            if len(paths) > 1:
                self._note(
                    name,
                    f"model '{name}' is claimed by {', '.join(p.name for p in paths)}; serving {paths[0].name}",
                )
            source = self._scan_model(name, paths[0], now, now_wall, seen)
            if source is not None:
                models[name] = source

    def plugins_fingerprint(self) -> str | None:
        """Fingerprint of the files in `models/plugins/` at the last scan; None while one is still settling."""
        return self._plugins

    def _scan_plugins(self, now: float, now_wall: float, seen: dict) -> str | None:
        folder = self.models_dir / PLUGINS_FOLDER
        digest = hashlib.sha1()
        settled = True
        for file in _walk_files(folder).files if folder.is_dir() else []:
            signature = _stat(file)
            if signature is not None:
                settled = self._settled(file, signature, now, now_wall, seen) and settled
                digest.update(f"{file.relative_to(folder)}\0{signature}\n".encode())
        return digest.hexdigest() if settled else None

    def _scan_model(self, name: str, path: Path, now: float, now_wall: float, seen: dict) -> ModelSource | None:
        model_configs: list[Path] = []
        if path.is_dir():
            model_configs = _first_existing(path, FOLDER_CONFIG_NAMES)
            children = [c for c in _list_dir(path) if not self._is_plugins(c)]
            version_dirs = [c for c in children if VERSION_DIR.match(c.name) and c.is_dir()]
            if version_dirs:
                candidates = []
                for vdir in version_dirs:
                    version = int(vdir.name)
                    if version < 1:
                        self._note(f"{name}/{vdir.name}", f"skipped {name}/{vdir.name}: versions start at 1")
                        continue
                    candidates.append(
                        self._candidate(version, vdir, model_configs, vdir / LABELS_FILE, path / LABELS_FILE)
                    )
            else:
                if not any(
                    not is_ignored(c.name) and c.name not in FOLDER_CONFIG_NAMES and c.name != LABELS_FILE
                    for c in children
                ):
                    return None  # an empty folder (or only temporary files): nothing has arrived yet
                candidates = [self._candidate(1, path, model_configs, path / LABELS_FILE)]
        else:
            model_configs = _first_existing(path.parent, tuple(name + s for s in CONFIG_SUFFIXES))
            labels = path.parent / f"{name}.labels.txt"
            kind = _special(path)
            candidates = [
                _Candidate(
                    1, path, [path], [], labels if labels.is_file() else None, special=[(path, kind)] if kind else []
                )
            ]

        model_config, model_error = self._read_configs(model_configs)
        present: set[int] = set()
        complete: list[_Candidate] = []
        pending: dict[int, str] = {}
        for cand in candidates:
            all_settled = True
            for file in [*cand.files, *model_configs, *cand.configs, *([cand.labels_file] if cand.labels_file else [])]:
                signature = _stat(file)
                if signature is None or not self._settled(file, signature, now, now_wall, seen):
                    all_settled = False
            if cand.missing:
                pending[cand.version] = cand.missing
                self._note(
                    f"{name}:{cand.version}",
                    f"{name}:{cand.version} is incomplete ({cand.missing}); waiting",
                    logging.INFO,
                )
            elif all_settled:
                present.add(cand.version)
                complete.append(cand)
            else:
                pending[cand.version] = SETTLING
        if not present and not pending:
            return None
        chosen = _apply_policy(model_config, sorted(present))
        aspired = tuple(
            self._version_source(name, cand, model_configs, model_config, model_error, seen)
            for cand in complete
            if cand.version in chosen
        )
        return ModelSource(
            name=name,
            aspired=tuple(sorted(aspired, key=lambda v: v.id.version)),
            present=frozenset(present),
            pending=MappingProxyType(pending),
            version_labels=MappingProxyType(dict(model_config.version_labels)),
        )

    def _candidate(self, version: int, folder: Path, model_configs: list[Path], *labels: Path) -> _Candidate:
        configs = (
            [] if model_configs and folder == model_configs[0].parent else _first_existing(folder, FOLDER_CONFIG_NAMES)
        )
        skip = {str(p) for p in [*configs, *model_configs]}
        walk = _walk_files(folder)
        for link in walk.revisits:
            where = display_path(link, self.models_dir)
            self._note(f"{link}:loop", f"{where}: not followed, it leads to a folder already walked (a symlink loop?)")
        files = [f for f in walk.files if str(f) not in skip and not any(map(self._is_plugins, f.parents))]
        labels_file = next((p for p in labels if p.is_file()), None)
        files = [f for f in files if f != labels_file]
        # A version holding a FIFO is refused, not left waiting for the part the FIFO stands in for.
        missing = "" if walk.special else _missing_parts(folder, files)
        return _Candidate(version, folder, files, configs, labels_file, missing, walk.special)

    def _version_source(
        self,
        name: str,
        cand: _Candidate,
        model_configs: list[Path],
        model_config: ModelConfig,
        model_error: str,
        seen: dict,
    ) -> VersionSource:
        error = special_file_problem(cand.path, cand.special) or model_error
        config = model_config
        # A relative gate.inputs is found beside the config file that names it (a version config's
        # `gate` replaces the whole section, so it names it when it sets `gate`).
        config_folder = model_configs[0].parent if model_configs else cand.path
        if not error and cand.configs:
            version_config, error = self._read_configs(cand.configs)
            try:
                config = model_config.merged(version_config)
            except ModelConfigError as err:  # e.g. `backend: xla` over the model's `precision: bf16`
                error = error or f"{cand.configs[0].name}: {err}"
            if "gate" in version_config.model_fields_set:
                config_folder = cand.configs[0].parent
        labels: tuple[str, ...] = tuple(config.labels or ())
        if not labels and cand.labels_file is not None:
            try:
                labels = read_labels(cand.labels_file)
            except (OSError, UnicodeError) as err:
                error = error or f"labels file {cand.labels_file.name} is unreadable: {err}"
        digest = hashlib.sha1()
        for file in sorted(
            {*cand.files, *model_configs, *cand.configs, *([cand.labels_file] if cand.labels_file else [])}
        ):
            digest.update(f"{file}\0{seen[str(file)][0]}\n".encode())
        for file, kind in cand.special:
            digest.update(f"{file}\0{kind}\n".encode())
        if error:
            self._note(f"{name}:{cand.version}:config", error)
        return VersionSource(
            id=ServableId(name, cand.version),
            path=cand.path,
            fingerprint=digest.hexdigest(),
            config=config,
            labels=labels,
            error=error,
            size_bytes=sum(seen[str(file)][0][0] for file in cand.files),
            gate_inputs=None if config.gate.inputs is None else config_folder / config.gate.inputs,
        )

    def _is_plugins(self, path: Path) -> bool:
        """Tell whether `path` is the plugins folder (inside a single model's base path, it is not a version's)."""
        return path == self.models_dir / PLUGINS_FOLDER

    def _read_configs(self, paths: list[Path]) -> tuple[ModelConfig, str]:
        """Read the config file in `paths` (zero or one); return the config and an error message.

        Another tool's `config.json` in a model folder is not ours: the defaults apply, and an info
        line says so once (a user may have meant it as ours).
        """
        if not paths:
            return ModelConfig(), ""
        try:
            return read_model_config(paths[0]), ""
        except ForeignConfigFile as err:
            where = paths[0].relative_to(self.models_dir)
            self._note(
                f"{paths[0]}:foreign", f"{where}: {err}; ignored, the model gets the default config", logging.INFO
            )
            return ModelConfig(), ""
        except ModelConfigError as err:
            return ModelConfig(), str(err)

    def _note(self, key: str, message: str, level: int = logging.WARNING) -> None:
        """Log `message` once per key until it changes (a scan runs every poll interval)."""
        if self._logged.get(key) != message:
            self._logged[key] = message
            log.log(level, "%s", message)


# --- helpers -----------------------------------------------------------------------------------
def _stat(path: Path) -> _Signature | None:
    try:
        st = os.stat(path)  # follows symlinks: a ConfigMap swap changes the target's inode
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def _list_dir(path: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(path))
    except OSError:
        return []


def _special(path: Path) -> str | None:
    """The kind of `path` when it is a FIFO, socket or device (following symlinks), else None."""
    try:
        return special_kind(os.stat(path).st_mode)
    except OSError:
        return None


def _walk_files(folder: Path) -> FolderWalk:
    """Every non-ignored file under `folder`: following symlinks but never a loop, skipping hidden and temporary names.

    Dangling links are no files (they would never settle and hold the version back forever);
    FIFOs, sockets and devices are listed apart (`FolderWalk.special`) and never opened.
    """
    return walk_folder(folder, skip=is_ignored)


def _first_existing(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """The first of `names` that exists in `folder`, as a list of zero or one path."""
    return next(([folder / n] for n in names if (folder / n).is_file()), [])


def _is_companion(name: str, names: set[str]) -> bool:
    """Tell whether a top-level file is the config or labels file of a model file beside it."""
    for suffix in (*CONFIG_SUFFIXES, ".labels.txt"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            return any(stem + s in names for s in MODEL_FILE_SUFFIXES)
    return False


def _missing_parts(folder: Path, files: list[Path]) -> str:
    """Say what a version folder still lacks ("" when nothing): no model file, or SavedModel parts."""
    if not files:
        return "no model file yet"
    if not any((folder / name).is_file() for name in SAVED_MODEL_FILES):
        if (folder / "variables").is_dir():
            return "saved_model.pb missing"
        return ""
    variables = folder / "variables"
    if not variables.is_dir():
        return ""  # a SavedModel without variables is valid (e.g. a graph of constants)
    names = {p.name for p in variables.iterdir() if not is_ignored(p.name)}
    if not any(n.startswith("variables.data-") for n in names) and "variables.index" not in names:
        return ""  # an empty variables/ folder: a SavedModel without variables
    if "variables.index" not in names:
        return "variables/variables.index missing"
    shards = [m for m in map(_SHARD.match, names) if m]
    if not shards:
        return "variables/variables.data-* missing"
    expected = int(shards[0].group(2))
    have = {int(m.group(1)) for m in shards}
    if len(have) < expected:
        return f"variables/ holds {len(have)} of {expected} data shards"
    return ""


def _apply_policy(config: ModelConfig, versions: list[int]) -> set[int]:
    """Versions the model's version policy selects among the complete ones."""
    if not versions:
        return set()
    if config.version_policy == "all":
        return set(versions)
    if config.version_policy == "specific":
        return set(versions) & set(config.versions)
    return {versions[-1]}


# --- the watcher -------------------------------------------------------------------------------
class AspiredVersionsTarget(Protocol):
    """What the watcher feeds: `service.manager.ServableManager` (typed here so this module never imports it)."""

    def set_aspired_versions(
        self,
        name: str,
        versions: Sequence[VersionSource],
        *,
        present: Collection[int] | None = None,
        pending: Mapping[int, str] | None = None,
        version_labels: Mapping[str, int] | None = None,
    ) -> None: ...

    def set_plugins_fingerprint(self, fingerprint: str) -> None: ...

    def model_names(self) -> list[str]: ...


class RepositoryWatcher:
    """Rescans the repository on file-system events and every `poll_interval_s`; feeds the manager.

    Lifecycle: `start()` runs the first scan in the caller's thread (so the manager knows the
    start-up models when it returns), then starts watchdog's inotify observer (when it cannot, e.g.
    inotify limits or an unsupported file system, polling alone goes on) and the scan thread.
    `stop()` ends both. Events only wake the scan thread; every decision comes from a full scan.
    """

    DEBOUNCE_S = 0.05

    def __init__(
        self,
        repository: ModelRepository,
        manager: AspiredVersionsTarget,
        settings: Settings,
        *,
        control: ModelControl | None = None,
    ) -> None:
        self.repository = repository
        self.manager = manager
        self.poll_interval_s = settings.poll_interval_s
        self.control = control or ModelControl(settings)
        self.control.attach(self.rescan)
        self._wait_s = settings.load_wait_s
        self._wake = threading.Event()
        self._scans = threading.Condition()
        self._scans_started = 0
        self._scans_done = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer = None

    def start(self) -> None:
        """Scan once now, then keep watching in the background."""
        self.scan_once()
        self._observer = self._start_observer()
        self._thread = threading.Thread(target=self._run, name="repository-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; safe to call twice."""
        self._stopping.set()
        self._wake.set()
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=5)
            except Exception:  # noqa: BLE001 - stopping must not fail shutdown
                log.debug("watchdog observer did not stop cleanly", exc_info=True)
            self._observer = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def scan_once(self) -> None:
        """Scan the repository and pass every serving model's full aspired list (and plugin changes) to the manager.

        The models that serve are those the model control selects (all of them under
        MODEL_CONTROL=poll); every other model the manager knows gets an empty list, so it unloads.
        """
        with self._scans:
            self._scans_started += 1
        try:
            models = self.repository.scan()
            serving = self.control.select(models)
            plugins = self.repository.plugins_fingerprint()
            if plugins is not None:
                self.manager.set_plugins_fingerprint(plugins)
            for name, source in models.items():
                if name in serving:
                    self.manager.set_aspired_versions(
                        name,
                        source.aspired,
                        present=source.present,
                        pending=source.pending,
                        version_labels=source.version_labels,
                    )
            for name in self.manager.model_names():
                if name not in serving:
                    self.manager.set_aspired_versions(name, ())
        finally:
            with self._scans:
                self._scans_done += 1
                self._scans.notify_all()

    def rescan(self) -> None:
        """Scan now (on the watcher's thread) and return once a scan that started after this call fed the manager.

        The repository API calls it after a decision, so the answering worker acts on it before it
        answers. Scans stay on one thread, in order: a scan that read the folder earlier can never
        feed the manager after a later one.
        """
        if self._thread is None or not self._thread.is_alive():
            self.scan_once()
            return
        with self._scans:
            wanted = self._scans_started + 1
        self._wake.set()
        with self._scans:
            self._scans.wait_for(lambda: self._scans_done >= wanted, timeout=self._wait_s)

    def _run(self) -> None:
        while not self._stopping.is_set():
            timeout = self.poll_interval_s
            deadline = self.repository.next_settle_deadline()
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - time.monotonic() + 0.01))
            if self._wake.wait(timeout):
                # Let a burst of events (a copy, an extraction) end before scanning.
                self._stopping.wait(self.DEBOUNCE_S)
                self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self.scan_once()
            except Exception:  # noqa: BLE001 - the watcher must survive any scan error
                log.exception("scanning %s failed; retrying in %.1fs", self.repository.models_dir, self.poll_interval_s)

    def _start_observer(self):  # -> watchdog BaseObserver | None
        folder = self.repository.models_dir
        if not folder.is_dir():
            log.warning(
                "models folder %s does not exist; polling every %.1fs until it does", folder, self.poll_interval_s
            )
            return None
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers.inotify import InotifyObserver
        except ImportError as err:  # not Linux: polling alone
            log.info("file-system events unavailable (%s); polling %s every %.1fs", err, folder, self.poll_interval_s)
            return None
        watcher = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type == "moved" and event.dest_path:
                    watcher.repository.note_arrived(os.fsdecode(event.dest_path))
                if event.event_type not in ("opened", "closed_no_write"):
                    watcher._wake.set()

        try:
            # Full events: a rename from outside the folder (mv /tmp/x models/) is a move, not a create.
            observer = InotifyObserver(generate_full_events=True)
            observer.schedule(_Handler(), str(folder), recursive=True)
            control_file = self.control.path
            if control_file is not None and control_file.parent.is_dir():
                # Another worker's load/unload decision: act on it now, not at the next poll.
                observer.schedule(_Handler(), str(control_file.parent), recursive=False)
            observer.daemon = True
            observer.start()
        except Exception as err:  # noqa: BLE001 - e.g. inotify watch limit reached
            log.warning("inotify unavailable for %s (%s); polling every %.1fs", folder, err, self.poll_interval_s)
            return None
        log.info("watching %s (inotify, and polling every %.1fs)", folder, self.poll_interval_s)
        return observer
