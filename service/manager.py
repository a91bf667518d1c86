"""Manager: the single owner of loading, version states, swaps, handles and unloading.

The repository watcher tells the manager, per model, which versions should serve
(`set_aspired_versions`). The manager loads new versions on its one loader thread (START -> LOADING ->
warm-up -> AVAILABLE), publishes them by building a new read-only map of available servables and
assigning it in one statement, and unloads versions that left the map once their last request
returned (UNLOADING -> END), on a background thread. A failed load ends in END with its error while
the version already serving keeps serving (TF Serving's availability-preserving policy). Requests
borrow a servable through `handle()`; they never wait for a load or a swap.

It builds none of its collaborators: `service.app` creates the repository watcher that calls
`set_aspired_versions`, and the builder (`service.builder.ServableBuilder`) that turns a version on
disk into a warmed-up servable; the manager only decides when to call it. It never reads the file
system itself, never imports TensorFlow and never touches HTTP.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from service import metrics
from service.errors import ModelLoadError, ModelNotFound, ModelNotReady
from service.repository import SETTLING, VersionSource, display_path
from service.servable import Servable, ServableId, ServableRequest, ServableState
from service.settings import Settings
from service.status import ModelStatus, Readiness, VersionStatus

log = logging.getLogger(__name__)

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_DRAIN_LOG_INTERVAL_S = 30.0
_HANDLE_RETRIES = 8


class Builder(Protocol):
    """What the manager needs to turn versions into servables: `service.builder.ServableBuilder`,
    or a test's fake. The manager calls both methods on its loader thread only, one at a time."""

    device: str
    """Where servables run, for the manager's log lines."""

    def rebuild_registry(self) -> None:
        """Pick up the current plugins; called before the first load and whenever the plugins change."""

    def build(self, source: VersionSource) -> Servable:
        """Turn one complete version into a warmed-up servable; raise ModelLoadError (or anything) on failure."""


# --- internal bookkeeping (guarded by ServableManager._cond) ---------------------------------------
@dataclass(eq=False)
class _Version:
    number: int
    state: ServableState = ServableState.START
    source: VersionSource | None = None
    aspired: bool = False
    present: bool = False
    pending: str = ""
    """Why the version's files are not complete yet ("" when complete or gone)."""
    servable: Servable | None = None
    loaded_fingerprint: str = ""
    loading: str = ""
    """Fingerprint being loaded now ("" when none)."""
    error: str = ""
    failed: tuple[str, str | None] | None = None
    """(fingerprint, plugins fingerprint) of the last failed load: retried only when either changes."""
    draining: int = 0
    """Instances of this version unloading in the background."""


@dataclass(eq=False)
class _Model:
    name: str
    versions: dict[int, _Version] = field(default_factory=dict)
    version_labels: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    ever_available: bool = False
    evicted: bool = False
    """Not loaded because of MAX_LOADED_MODELS (unloaded as least recently used, or never fitted); a
    request for it loads it again (`handle` waits for that)."""


@dataclass(frozen=True, slots=True)
class _Published:
    """One model's available servables; built once, never mutated."""

    versions: Mapping[int, Servable]
    latest: Servable
    version_labels: Mapping[str, int]


class ServableManager:
    """Decides when each version of every model loads (through its builder), publishes, hands out and unloads it.

    Lifecycle: `__init__` is cheap; the watcher may call `set_aspired_versions` right away (its
    first scan); `start()` starts the loader thread and takes the models known by then as the
    start-up models readiness waits for; `stop()` (after the watcher stopped) ends the loader
    thread and unloads everything. Thread-safe: `handle()` reads the published map without
    locking; every other method takes one lock for a short, non-blocking moment. Builds are
    serialised on the loader thread (TensorFlow loading and the loader's Lambda patching are not
    safe to run concurrently).
    """

    def __init__(
        self,
        builder: Builder,
        settings: Settings,
        *,
        on_recycle: Callable[[], None] | None = None,
    ) -> None:
        """Prepare an empty manager; nothing loads before `start()`.

        Args:
            builder: turns a version on disk into a servable (`service.builder.ServableBuilder`).
            settings: the service settings (models folder, graceful timeout, `swaps_before_recycle`).
            on_recycle: called once, after `swaps_before_recycle` unloads (`service.app` passes the
                worker recycling); None: never recycle.
        """
        self._settings = settings
        self._builder = builder
        self._on_recycle = on_recycle
        self._cond = threading.Condition(threading.RLock())
        self._models: dict[str, _Model] = {}
        self._serving: Mapping[str, _Published] = _EMPTY
        self._startup: frozenset[str] | None = None
        self._startup_logged = False
        self._started_at = time.monotonic()
        self._plugins_fp: str | None = None
        self._registry_fp: str | None = None
        self._registry_built = False
        self._unloads = 0
        self._recycling = False
        self._stopping = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._budgeted = bool(settings.max_loaded_models or settings.max_loaded_bytes)
        """MAX_LOADED_MODELS or MAX_LOADED_BYTES is set."""
        self._last_used: dict[str, float] = {}
        """Model -> when a request last borrowed it (MAX_LOADED_MODELS unloads the least recent)."""

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the loader thread; the models known now are the start-up models readiness waits for.

        Call it after the watcher's first scan (`RepositoryWatcher.start()` scans before returning),
        so the registry is built from the plugins that scan saw and readiness knows the models.
        """
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run_loader, name="servable-loader", daemon=True)
        self._thread.start()
        with self._cond:
            # Readiness waits for the models the first scan found (complete or still settling).
            self._startup = frozenset(self._models)
            log.info(
                "start-up scan of %s: %d model(s) %s; loading in the background on %s",
                self._settings.models_dir,
                len(self._models),
                sorted(self._models) or "",
                self._builder.device,
            )
            self._check_startup_locked()

    def stop(self) -> None:
        """Stop the loader thread, then unload every version; safe to call twice.

        Stop the watcher first, so nothing sets aspired versions while the manager unloads.
        """
        with self._cond:
            if self._stopped:
                return
            self._stopped = self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self._settings.graceful_timeout_s)
        with self._cond:
            leaving = []
            for model in self._models.values():
                for version in model.versions.values():
                    if version.servable is not None:
                        leaving.append(version.servable)
                        version.servable = None
                        version.state = ServableState.UNLOADING
            self._publish_locked()
        for servable in leaving:
            if not servable.wait_idle(self._settings.graceful_timeout_s):
                log.warning("%s still has requests in flight at shutdown; closing it anyway", servable.id)
            _close(servable)
        with self._cond:
            for model in self._models.values():
                for version in model.versions.values():
                    if version.state == ServableState.UNLOADING:
                        version.state = ServableState.END

    # --- what the watcher calls ----------------------------------------------------------------
    def set_aspired_versions(
        self,
        name: str,
        versions: Sequence[VersionSource],
        *,
        present: Collection[int] | None = None,
        pending: Mapping[int, str] | None = None,
        version_labels: Mapping[str, int] | None = None,
    ) -> None:
        """Say which versions of model `name` should serve: the full list (empty when the model is gone).

        Versions not in `versions` are unloaded, except that one still present on disk keeps serving
        until an aspired version of the model is AVAILABLE (so a failed new version never takes the
        model down). A version whose files changed (new fingerprint) is loaded again and swapped in.

        Args:
            name: the model.
            versions: the aspired versions (complete, chosen by the version policy).
            present: every complete version on disk (default: the aspired ones).
            pending: versions on disk not complete yet -> why (shown as START).
            version_labels: TF Serving-style labels, label -> version.
        """
        aspired = {v.id.version: v for v in versions}
        on_disk = set(present or ()) | set(aspired)
        pending = dict(pending or {})
        with self._cond:
            model = self._models.get(name)
            if model is None:
                if not aspired and not pending:
                    return
                model = self._models[name] = _Model(name)
            # Versions on disk that the policy leaves out are listed only once they have been loaded.
            for number in {*aspired, *pending}:
                model.versions.setdefault(number, _Version(number))
            for number, version in model.versions.items():
                version.aspired = number in aspired
                # A version whose files are being replaced is still on disk: it keeps serving meanwhile.
                version.pending = "" if number in on_disk else pending.get(number, "")
                version.present = number in on_disk or bool(version.pending)
                if version.aspired:
                    version.source = aspired[number]
            model.version_labels = MappingProxyType(dict(version_labels or {}))
            self._commit_locked()
            self._cond.notify_all()

    def set_plugins_fingerprint(self, fingerprint: str) -> None:
        """Note the state of `models/plugins/`; a change rebuilds the registry and retries failed versions."""
        with self._cond:
            if fingerprint != self._plugins_fp:
                if self._plugins_fp is not None:
                    log.info("plugins changed; rebuilding the custom object registry")
                self._plugins_fp = fingerprint
                self._cond.notify_all()

    # --- what the data plane calls ---------------------------------------------------------------
    @contextmanager
    def handle(self, request: ServableRequest, *, load: bool = True) -> Iterator[Servable]:
        """Borrow the servable answering `request` for one call; it stays loaded until returned.

        A model left unloaded by MAX_LOADED_MODELS is loaded again first (unless `load` is False):
        the call waits for it, at most LOAD_WAIT_S.

        Raises:
            ModelNotFound: no such model, version or label.
            ModelNotReady: the model (or that version) exists but is not AVAILABLE (loading, failed,
                unloading, or not loaded again within LOAD_WAIT_S).
        """
        budget = self._budgeted
        for _ in range(_HANDLE_RETRIES):
            servable = self._lookup_or_load(request) if budget and load else self._lookup(request)
            servable.acquire()
            # The unloader removes a servable from the map before waiting for its borrowers, so one
            # still in the map after acquire() cannot be closed under us; otherwise look again.
            try:
                current = self._lookup(request)
            except Exception:
                servable.release()
                raise
            if current is servable:
                break
            servable.release()
        else:
            raise ModelNotReady(request.name, "its versions are changing; retry")
        if budget:
            self._last_used[request.name] = time.monotonic()  # one dict store: no lock on the request path
        try:
            yield servable
        finally:
            servable.release()

    def wait_loaded(self, name: str, timeout_s: float) -> ModelStatus:
        """Wait until every version of `name` the repository aspires is AVAILABLE with its current files
        or failed to load (the repository API's synchronous `load`); return the model's status.

        A model left unloaded by MAX_LOADED_MODELS is loaded again (it becomes the most recently used).

        Raises:
            ModelNotFound: the repository gives the manager no version of `name`.
            ModelNotReady: still loading after `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                model = self._models.get(name)
                if model is None:
                    raise ModelNotFound(name)
                self._demand_locked(model)
                if self._load_settled_locked(model):
                    return self._status_locked(model)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ModelNotReady(name, f"still loading after {timeout_s:g}s (LOAD_WAIT_S)")
                self._cond.wait(remaining)

    def wait_unloaded(self, name: str, timeout_s: float) -> bool:
        """Wait until no version of `name` is loaded, loading or unloading (its requests in flight
        finished); False on timeout (the repository API's synchronous `unload`)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: (model := self._models.get(name)) is None or not self._resident_locked(model), timeout_s
            )

    def model_names(self) -> list[str]:
        """Every model the repository knows, in any state, sorted."""
        with self._cond:
            return sorted(self._models)

    def default_model(self) -> str:
        """The model answering requests that name none: `DEFAULT_MODEL`, else the only model.

        Raises:
            ModelNotFound: no default is set and there is not exactly one model.
        """
        if self._settings.default_model:
            return self._settings.default_model
        names = self.model_names()
        if len(names) == 1:
            return names[0]
        error = ModelNotFound("(default)")
        detail = f"{len(names)} models are served ({', '.join(names)})" if names else "no model is served"
        error.args = (f"name the model in the URL, or set DEFAULT_MODEL: {detail}",)
        raise error

    def status(self, name: str) -> ModelStatus:
        """Every version of model `name` with its state, error, load details and signatures.

        Raises:
            ModelNotFound: the repository has no such model.
        """
        with self._cond:
            model = self._models.get(name)
            if model is None:
                raise ModelNotFound(name)
            return self._status_locked(model)

    def statuses(self) -> list[ModelStatus]:
        """The status of every model, sorted by name."""
        with self._cond:
            return [self._status_locked(self._models[n]) for n in sorted(self._models)]

    def readiness(self) -> Readiness:
        """Ready once every start-up model reached AVAILABLE or failed, while every model that ever
        became AVAILABLE still has an AVAILABLE version, and none of them reports a problem
        (`Servable.health()`: a batch thread that kept dying)."""
        with self._cond:
            models: dict[str, bool] = {}
            problems: dict[str, list[str]] = {}
            for name, model in self._models.items():
                serving = [v.servable for v in model.versions.values() if v.servable is not None]
                found = [f"{s.id}: {p}" for s in serving if (p := s.health())]
                # A model MAX_LOADED_MODELS left unloaded can answer: a request loads it.
                models[name] = (bool(serving) or model.evicted) and not found
                if found:
                    problems[name] = found
            reason = self._not_ready_reason_locked(models, problems)
            return Readiness(ready=not reason, models=MappingProxyType(models), reason=reason)

    # --- the loader thread -----------------------------------------------------------------------
    def _run_loader(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    if self._registry_outdated_locked():
                        job: VersionSource | str | None = "registry"
                        break
                    job = self._next_load_locked()
                    if job is not None:
                        break
                    self._cond.wait()
                if self._stopping:
                    return
            try:
                if job == "registry":
                    self._rebuild_registry()
                elif isinstance(job, VersionSource):
                    self._load(job)
            except Exception:  # noqa: BLE001 - the loader thread must never die
                log.exception("loader thread error")

    def _registry_outdated_locked(self) -> bool:
        if not self._registry_built:
            return True
        return self._plugins_fp is not None and self._plugins_fp != self._registry_fp

    def _rebuild_registry(self) -> None:
        with self._cond:
            fingerprint = self._plugins_fp
        try:
            self._builder.rebuild_registry()
        finally:
            with self._cond:
                # Recorded even on failure, so a broken plugin folder is not rebuilt in a loop; a
                # new fingerprint also retries the versions that failed with the previous plugins.
                self._registry_fp = fingerprint
                self._registry_built = True

    def _next_load_locked(self) -> VersionSource | None:
        """Pick the next version to load (highest first) and mark it LOADING.

        Under MAX_LOADED_MODELS, loaded models come first (their new versions), then the others by
        when they were last asked for; a model that does not fit waits for the least recently used
        one to unload.
        """
        order = sorted(self._models)
        if self._budgeted:
            order.sort(key=lambda n: (not self._resident_locked(self._models[n]), self._last_used.get(n, 0.0)))
        for name in order:
            model = self._models[name]
            for number in sorted(model.versions, reverse=True):
                version = model.versions[number]
                source = version.source
                if not version.aspired or source is None or version.loading:
                    continue
                if version.servable is not None and version.loaded_fingerprint == source.fingerprint:
                    continue
                if version.failed == (source.fingerprint, self._registry_fp):
                    continue  # bounded retries: only a change of its files or of the plugins retries it
                if not self._make_room_locked(model):
                    break
                version.loading = source.fingerprint
                self._note_loaded_locked()
                if version.servable is None:
                    version.state = ServableState.LOADING
                    version.error = ""
                return source
        return None

    def _load(self, source: VersionSource) -> None:
        servable_id = source.id
        log.info("%s LOADING from %s", servable_id, display_path(source.path, self._settings.models_dir))
        started = time.monotonic()
        try:
            if source.error:
                raise ModelLoadError(source.error)
            servable = self._builder.build(source)
        except Exception as err:  # noqa: BLE001 - every load failure is recorded, none escapes
            message = str(err) or type(err).__name__
            if not isinstance(err, ModelLoadError):
                log.error("%s failed to load", servable_id, exc_info=True)
                message = f"{type(err).__name__}: {message}"
            metrics.MODEL_LOAD_FAILURES.labels(model=servable_id.name).inc()
            with self._cond:
                self._record_failure(source, message)
                self._cond.notify_all()
            return
        elapsed_s = time.monotonic() - started
        discard: Servable | None = None
        with self._cond:
            model = self._models.get(servable_id.name)
            version = model.versions.get(servable_id.version) if model else None
            current = (
                version is not None
                and version.aspired
                and version.source is not None
                and version.source.fingerprint == source.fingerprint
                and not self._stopping
            )
            if not current:
                # Superseded while loading (files changed again, version no longer aspired): drop it;
                # the loader thread picks up the current state next.
                discard = servable
                if version is not None:
                    version.loading = ""
                    if version.servable is None and version.state == ServableState.LOADING:
                        version.state = ServableState.START
                self._commit_locked()
            else:
                assert model is not None and version is not None
                replaced = version.servable
                version.servable = servable
                version.loaded_fingerprint = source.fingerprint
                version.loading = ""
                version.failed = None
                version.error = ""
                version.state = ServableState.AVAILABLE
                model.ever_available = True
                model.evicted = False
                if self._budgeted:
                    # The most recently used now: the request waiting for it borrows it before it can leave.
                    self._last_used[model.name] = time.monotonic()
                info = servable.info

                def announce() -> None:
                    log.info(
                        "%s AVAILABLE after %.2fs (load %.2fs, warm-up %.2fs) on %s",
                        servable_id,
                        elapsed_s,
                        info.load_s,
                        info.warmup_s,
                        info.device,
                    )

                # Publish first, report AVAILABLE after: a client told "AVAILABLE" finds it served.
                self._commit_locked(extra_leaving=[replaced] if replaced is not None else [], announce=announce)
            self._cond.notify_all()
        if discard is not None:
            log.info("%s loaded but no longer wanted; discarded", servable_id)
            _close(discard)
            return
        metrics.MODEL_LOAD_SECONDS.labels(model=servable_id.name).observe(elapsed_s)
        with self._cond:
            self._check_startup_locked()

    def _record_failure(self, source: VersionSource, message: str) -> None:
        model = self._models.get(source.id.name)
        version = model.versions.get(source.id.version) if model else None
        if version is None:
            return
        version.loading = ""
        if version.source is None or version.source.fingerprint != source.fingerprint:
            if version.servable is None and version.state == ServableState.LOADING:
                version.state = ServableState.START  # its files changed during the load: load again
            return
        version.failed = (source.fingerprint, self._registry_fp)
        version.error = message
        if version.servable is None:
            version.state = ServableState.END
            log.error("%s FAILED: %s", source.id, message)
        else:
            log.error("%s: the new copy FAILED to load, the previous copy keeps serving: %s", source.id, message)
        self._commit_locked()
        self._check_startup_locked()

    # --- publishing and unloading ----------------------------------------------------------------
    def _commit_locked(
        self, extra_leaving: Sequence[Servable] = (), announce: Callable[[], None] | None = None
    ) -> None:
        """Decide which servables leave, publish the new map, then unload the leavers in the background.

        `announce` runs right after the publish (the AVAILABLE log line), before any UNLOADING line.
        """
        leaving = list(extra_leaving)
        for model in self._models.values():
            versions = model.versions.values()
            aspired_available = any(v.aspired and v.servable is not None for v in versions)
            anything_aspired = any(v.aspired for v in versions)
            for version in versions:
                if version.servable is None or version.aspired:
                    continue
                # Availability first: a version no longer aspired keeps serving while its files are
                # there and no aspired version is AVAILABLE yet (the new one loads, or failed).
                if version.pending or (version.present and anything_aspired and not aspired_available):
                    continue
                leaving.append(version.servable)
                version.servable = None
                version.loaded_fingerprint = ""
                version.state = ServableState.UNLOADING
        for servable in leaving:
            leaving_model = self._models.get(servable.id.name)
            leaving_version = leaving_model.versions.get(servable.id.version) if leaving_model else None
            if leaving_version is not None:
                leaving_version.draining += 1
        self._publish_locked()
        if announce is not None:
            announce()
        for servable in leaving:
            log.info("%s UNLOADING (waits for its in-flight requests)", servable.id)
            holder = [servable]
            threading.Thread(
                target=self._finish_unload, args=(holder,), name=f"unload-{servable.id}", daemon=True
            ).start()
        self._drop_gone_locked()

    def _publish_locked(self) -> None:
        """Build the new read-only map of available servables and publish it in one assignment."""
        serving: dict[str, _Published] = {}
        for name, model in self._models.items():
            versions = {n: v.servable for n, v in model.versions.items() if v.servable is not None}
            if versions:
                serving[name] = _Published(
                    versions=MappingProxyType(versions),
                    latest=versions[max(versions)],
                    version_labels=model.version_labels,
                )
        for name in set(self._serving) | set(serving):
            metrics.MODELS_AVAILABLE.labels(model=name).set(len(serving[name].versions) if name in serving else 0)
        self._serving = MappingProxyType(serving)
        self._note_loaded_locked()

    def _note_loaded_locked(self) -> None:
        metrics.MODELS_LOADED.set(sum(1 for m in self._models.values() if self._resident_locked(m)))

    def _finish_unload(self, holder: list[Servable]) -> None:
        servable = holder.pop()
        servable_id = servable.id
        started = time.monotonic()
        while not servable.wait_idle(_DRAIN_LOG_INTERVAL_S):
            log.warning("%s still has requests in flight after %.0fs; waiting", servable_id, time.monotonic() - started)
        drained = time.monotonic()
        _close(servable)
        closed = time.monotonic()
        del servable
        gc.collect()
        log.debug(
            "unload timings: drain %.3fs close %.3fs gc %.3fs",
            drained - started,
            closed - drained,
            time.monotonic() - closed,
        )
        recycle = False
        with self._cond:
            model = self._models.get(servable_id.name)
            version = model.versions.get(servable_id.version) if model else None
            if version is not None:
                version.draining -= 1
                if version.state == ServableState.UNLOADING and version.servable is None and not version.draining:
                    version.state = ServableState.END
            self._note_loaded_locked()
            self._unloads += 1
            limit = self._settings.swaps_before_recycle
            if (
                limit
                and self._on_recycle is not None
                and self._unloads >= limit
                and not self._recycling
                and not self._stopping
            ):
                self._recycling = recycle = True
            self._drop_gone_locked()
            self._cond.notify_all()
        log.info("%s END (unloaded %.2fs after leaving service)", servable_id, time.monotonic() - started)
        if recycle:
            log.warning(
                "%d version swaps in this worker (SWAPS_BEFORE_RECYCLE=%d): recycling it to give memory back",
                self._unloads,
                self._settings.swaps_before_recycle,
            )
            assert self._on_recycle is not None
            self._on_recycle()

    def _drop_gone_locked(self) -> None:
        """Forget versions (and models) that left the disk and finished unloading."""
        for name in list(self._models):
            model = self._models[name]
            for number in list(model.versions):
                v = model.versions[number]
                if v.aspired or v.pending or v.servable or v.loading or v.draining:
                    continue
                # Gone from disk, or on disk but left out by the policy before it was ever loaded.
                if not v.present or (v.state == ServableState.START and not v.error):
                    del model.versions[number]
            if not model.versions:
                del self._models[name]
                self._last_used.pop(name, None)
                log.info("model '%s' removed", name)

    # --- MAX_LOADED_MODELS ------------------------------------------------------------------------
    def _lookup_or_load(self, request: ServableRequest) -> Servable:
        """`_lookup`, but a model left unloaded by MAX_LOADED_MODELS is loaded again first (waits LOAD_WAIT_S)."""
        try:
            return self._lookup(request)
        except ModelNotReady:
            pass
        timeout_s = self._settings.load_wait_s
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                try:
                    return self._lookup(request)
                except ModelNotReady:
                    model = self._models.get(request.name)
                    if model is None or not self._loadable_locked(model):
                        raise
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ModelNotReady(
                            request.name, f"not loaded again within {timeout_s:g}s (MAX_LOADED_MODELS, LOAD_WAIT_S)"
                        ) from None
                    # Asked again on every wake-up: under heavy churn it may have been unloaded again.
                    self._demand_locked(model)
                    self._cond.wait(remaining)

    def _loadable_locked(self, model: _Model) -> bool:
        """Tell whether waiting can make `model` AVAILABLE: it was unloaded for the budget or is on its way."""
        if model.evicted:
            return True
        return any(
            v.aspired
            and v.source is not None
            and v.failed != (v.source.fingerprint, self._registry_fp)
            and v.state is not ServableState.AVAILABLE
            for v in model.versions.values()
        )

    def _demand_locked(self, model: _Model) -> None:
        """A request (or a `load` call) wants `model` loaded: take it off the unloaded list as the most recent."""
        self._last_used[model.name] = time.monotonic()
        if model.evicted:
            model.evicted = False
            self._cond.notify_all()

    def _resident_locked(self, model: _Model) -> bool:
        """Whether `model` holds memory: a version loaded, loading or still unloading."""
        return any(_holds_memory(v) for v in model.versions.values())

    def _bytes_locked(self, model: _Model, *, incoming: bool = False) -> int:
        """Bytes of `model`'s files held in memory (`incoming`: of the versions it would load now)."""
        return sum(
            v.source.size_bytes
            for v in model.versions.values()
            if v.source is not None and ((v.aspired and v.servable is None) if incoming else _holds_memory(v))
        )

    def _fits_locked(self, model: _Model, others: list[_Model]) -> bool:
        """Whether `model` fits beside the resident `others` under MAX_LOADED_MODELS and MAX_LOADED_BYTES."""
        budget, max_bytes = self._settings.max_loaded_models, self._settings.max_loaded_bytes
        if budget and len(others) >= budget:
            return False
        if max_bytes and others:  # a model over the byte budget still loads, alone
            held = sum(self._bytes_locked(m) for m in others)
            return held + self._bytes_locked(model, incoming=True) <= max_bytes
        return True

    def _make_room_locked(self, model: _Model) -> bool:
        """Under MAX_LOADED_MODELS / MAX_LOADED_BYTES, tell whether `model` may start loading now; unload the
        least recently used model to make room when the budget is full (the caller waits for its unload)."""
        if not self._budgeted or self._resident_locked(model):
            return True
        if model.evicted:
            return False
        others = [m for m in self._models.values() if m is not model and self._resident_locked(m)]
        if self._fits_locked(model, others):
            return True
        budget = self._settings.max_loaded_models
        if not model.ever_available and self._last_used.get(model.name) is None:
            # Never asked for and no room (start-up with more models than the budget): it waits for a request.
            model.evicted = True
            log.info(
                "model '%s' not loaded: %d models are loaded (MAX_LOADED_MODELS=%d, MAX_LOADED_BYTES=%d); a request loads it",
                model.name,
                len(others),
                budget,
                self._settings.max_loaded_bytes,
            )
            return False
        if any(v.draining for m in others for v in m.versions.values()):
            # One unload at a time: the model loaded last gets the time of a whole load to be borrowed
            # by the request waiting for it before it can be the least recently used.
            return False
        victims = [
            m
            for m in others
            if not any(v.loading for v in m.versions.values())
            and any(v.servable is not None for v in m.versions.values())
        ]
        if victims:
            victim = min(victims, key=lambda m: (self._last_used.get(m.name, 0.0), m.name))
            self._evict_locked(victim)
        return False

    def _evict_locked(self, model: _Model) -> None:
        """Unload every version of `model` (least recently used) to stay within MAX_LOADED_MODELS."""
        leaving = []
        for version in model.versions.values():
            if version.servable is not None:
                leaving.append(version.servable)
                version.servable = None
                version.loaded_fingerprint = ""
                version.state = ServableState.UNLOADING
        model.evicted = True
        log.info(
            "model '%s' unloaded: the least recently used loaded model (MAX_LOADED_MODELS=%d, MAX_LOADED_BYTES=%d); "
            "a request loads it again",
            model.name,
            self._settings.max_loaded_models,
            self._settings.max_loaded_bytes,
        )
        metrics.MODEL_EVICTIONS.labels(model=model.name).inc()
        self._commit_locked(extra_leaving=leaving)

    def _load_settled_locked(self, model: _Model) -> bool:
        """Whether a `load` call is done: no version settling, and every aspired version AVAILABLE with its
        current files or failed with them."""
        for v in model.versions.values():
            if v.pending == SETTLING:
                return False
            if not v.aspired or v.source is None:
                continue
            if v.loading:
                return False
            if v.servable is not None and v.loaded_fingerprint == v.source.fingerprint:
                continue
            if v.failed is not None and v.failed[0] == v.source.fingerprint:
                continue
            return False
        return True

    # --- lookups and views ---------------------------------------------------------------------
    def _lookup(self, request: ServableRequest) -> Servable:
        published = self._serving.get(request.name)
        if published is None:
            raise self._not_available(request.name, request.version)
        if request.label is not None:
            version = published.version_labels.get(request.label)
            if version is None:
                raise ModelNotFound(request.name, label=request.label)
        elif request.version is not None:
            version = request.version
        else:
            return published.latest
        servable = published.versions.get(version)
        if servable is None:
            raise self._not_available(request.name, version)
        return servable

    def _not_available(self, name: str, version: int | None) -> Exception:
        with self._cond:
            model = self._models.get(name)
            if model is None:
                return ModelNotFound(name)
            if version is not None:
                known = model.versions.get(version)
                if known is None:
                    return ModelNotFound(name, version)
                return ModelNotReady(name, _describe(known))
            details = [_describe(v) for _, v in sorted(model.versions.items(), reverse=True)]
            return ModelNotReady(name, "; ".join(details))

    def _status_locked(self, model: _Model) -> ModelStatus:
        statuses = []
        labels: tuple[str, ...] = ()
        for number in sorted(model.versions):
            v = model.versions[number]
            if v.servable is not None:
                s = v.servable
                statuses.append(VersionStatus(number, v.state, v.error, s.info, s.signatures, s.default_signature))
                labels = s.labels
            else:
                statuses.append(VersionStatus(number, v.state, v.error))
        resident = any(v.servable is not None for v in model.versions.values())
        return ModelStatus(
            model.name, tuple(statuses), model.version_labels, labels, resident=resident, evicted=model.evicted
        )

    def _not_ready_reason_locked(self, available: Mapping[str, bool], problems: Mapping[str, list[str]]) -> str:
        if self._startup is None:
            return "the models folder has not been scanned yet"
        waiting = sorted(n for n in self._startup if n in self._models and not self._settled_locked(self._models[n]))
        if waiting:
            return f"loading {', '.join(waiting)}"
        lost = sorted(
            n
            for n, m in self._models.items()
            if m.ever_available and not m.evicted and not available[n] and n not in problems
        )
        reasons = [f"no AVAILABLE version of {', '.join(lost)}"] if lost else []
        reasons += [problem for name in sorted(problems) for problem in problems[name]]
        return "; ".join(reasons)

    def _settled_locked(self, model: _Model) -> bool:
        """Tell whether a model reached AVAILABLE, or has nothing left to wait for (failed, incomplete, or
        left unloaded by MAX_LOADED_MODELS)."""
        if model.evicted:
            return True
        for v in model.versions.values():
            if v.servable is not None:
                return True
        return not any(
            v.pending == SETTLING or (v.aspired and v.state in (ServableState.START, ServableState.LOADING))
            for v in model.versions.values()
        )

    def _check_startup_locked(self) -> None:
        """Log one summary line when the start-up models have all loaded or failed."""
        if self._startup is None or self._startup_logged:
            return
        if any(n in self._models and not self._settled_locked(self._models[n]) for n in self._startup):
            return
        self._startup_logged = True
        states = []
        for name in sorted(self._models):
            for number, v in sorted(self._models[name].versions.items()):
                state = "FAILED" if v.error and v.servable is None else v.state.value
                states.append(f"{ServableId(name, number)} {state}")
        available = sum(1 for m in self._models.values() for v in m.versions.values() if v.servable is not None)
        log.info(
            "start-up loading done in %.2fs: %d model(s), %d version(s) AVAILABLE on %s%s",
            time.monotonic() - self._started_at,
            len(self._models),
            available,
            self._builder.device,
            f" ({', '.join(states)})" if states else " (the models folder is empty)",
        )


# --- helpers -----------------------------------------------------------------------------------
def _close(servable: Servable) -> None:
    try:
        servable.close()
    except Exception:  # noqa: BLE001 - a failing close must not stop unloading
        log.exception("%s did not close cleanly", servable.id)


def _holds_memory(version: _Version) -> bool:
    """A version loaded, loading or still unloading."""
    return version.servable is not None or bool(version.loading) or version.draining > 0


def _describe(version: _Version) -> str:
    if version.error and version.servable is None:
        return f"version {version.number} failed to load: {version.error}"
    if version.pending:
        return f"version {version.number} is arriving ({version.pending})"
    return f"version {version.number} is {version.state.value}"
