"""ServableBuilder: turns one complete version on disk into a warmed-up servable.

It owns everything between "these files should serve" and "this servable can answer": the
TensorFlow configuration of the worker (device, threads), the custom object registry built from the
plugins and the `Loader` that uses it, the security gate on the models folder, the Lambda sandbox,
and the assembly of one `InferenceRunner` (warmed up) and, for batched signatures, one `Batcher` per
signature, compiled and warmed up only for the batch sizes that pay on the device
(`MAX_BATCH_INPUT_BYTES`); it applies the worker's memory policy (`service.memory`: the allocator
before TensorFlow starts, free memory given back after each warm-up). The manager calls `rebuild_registry()` and `build()` on its loader thread and decides
when; the builder never tracks versions, states or handles, and never touches HTTP.

TensorFlow is imported in `start()` and `build()`, never when this module is imported.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from types import MappingProxyType
from typing import Any

from service import backends, equivalence, memory, preprocessing, quarantine, sandbox, security
from service.errors import ModelCrashed, ModelLoadError
from service.repository import VersionSource, display_path
from service.servable import ModelInputs, Servable, ServableInfo
from service.settings import Settings

log = logging.getLogger(__name__)


class ServableBuilder:
    """Loads versions, warms them up and wraps them in runners and batchers.

    Lifecycle: `__init__` is cheap; `start()` runs once in the gunicorn worker, after the fork and
    before the manager starts; `rebuild_registry()` and `build()` are then called by the manager's
    loader thread only, one at a time (TensorFlow loading and the loader's Lambda patching are not
    safe to run concurrently), so the builder needs no lock.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._loader: Any = None  # service.loader.Loader once the registry is built
        self.device = "/CPU:0"
        """Where models run: `/GPU:0` or `/CPU:0`, chosen by `start()`."""

    def start(self) -> None:
        """Check the models folder, configure TensorFlow for this worker, then freeze the heap.

        Raises:
            InsecureModelsDir: MODELS_DIR is world-writable and ALLOW_WORLD_WRITABLE_MODELS is off
                (model files and plugins are code; the worker does not boot).
            ValueError: `DEVICE=gpu` but TensorFlow sees no GPU.
        """
        security.check_models_dir(self._settings)
        # Before TensorFlow starts: it reads its allocator choice once (service/memory.py).
        memory.configure_allocator()
        from service.runner import configure_tensorflow  # TensorFlow starts here, in the worker

        self.device = configure_tensorflow(self._settings)
        import service.batching  # noqa: F401 - imported before freezing, like TensorFlow
        import service.loader  # noqa: F401 - the same: imported before freezing

        # Move everything imported so far (TensorFlow, Keras: hundreds of thousands of long-lived
        # objects) out of the collector's sight, so the gc.collect() the manager runs after each
        # unload scans only newer objects (the servables): it pauses the other threads for
        # milliseconds, not tenths. Here, because this is where TensorFlow gets imported; a test
        # builder that imports no TensorFlow has nothing worth freezing.
        gc.freeze()

    def rebuild_registry(self) -> None:
        """Build the custom object registry and the loader from the plugins; keep the previous ones on failure."""
        from service.custom_objects import CustomObjectRegistry
        from service.loader import Loader

        started = time.monotonic()
        try:
            registry = CustomObjectRegistry.from_plugins(self._settings)
            for plugin, message in getattr(registry, "plugin_errors", {}).items():
                log.error("plugin %s failed to import: %s", plugin, message)
            loader = Loader(registry, self._settings)
        except Exception:  # noqa: BLE001 - keep the previous registry; retried when plugins change
            log.exception("building the custom object registry failed; keeping the previous one")
            return
        self._loader = loader
        log.info("custom object registry built in %.2fs", time.monotonic() - started)

    def build(self, source: VersionSource) -> Servable:
        """Load a version, build a runner (and batcher) per signature, warm them up.

        Every step is keyed on the version's content hash: content remembered as having crashed a
        worker or the Lambda probe (`service.quarantine`) is refused at once, the probe loads only that
        content, and the worker loads it only if the files still hold it; while the worker loads and
        warms it up, a marker says so, and a worker that dies meanwhile gets the content quarantined.

        Raises:
            ModelLoadError: the models folder is unsafe, the content is quarantined or changed while it
                was probed, the sandbox or the loader refused the version, or warm-up failed on the
                default signature.
        """
        settings = self._settings
        problem = security.models_dir_problem(settings.models_dir)
        if problem and not settings.allow_world_writable_models:
            raise ModelLoadError(f"refused: {problem}; see ALLOW_WORLD_WRITABLE_MODELS in docs/security.md")
        digest, state = quarantine.content_hash(source.path), quarantine.state_folder(settings.state_dir)
        remembered = quarantine.failure(state, digest)
        if remembered:
            raise ModelCrashed(f"{source.path.name}: not loaded: {remembered} (remembered by content hash)")
        # Lambda layers hold Python code that can crash the interpreter: run it in a throw-away
        # process first, so a crash fails this version instead of killing the worker.
        lambda_layers = sandbox.needs_probe(source.path, source.config, settings)
        if lambda_layers:
            try:
                sandbox.probe(source.path, source.config, settings, layers=lambda_layers, digest=digest)
            except ModelCrashed as err:
                quarantine.remember(state, digest, str(err))
                raise
            if quarantine.content_hash(source.path) != digest:
                raise ModelLoadError(
                    f"{source.path.name} changed after it was probed; it is probed again once it settles"
                )
        if self._loader is None:
            raise ModelLoadError("the custom object registry could not be built (see the log); fix models/plugins/")
        with quarantine.loading(state, digest):
            return self._load_and_assemble(source)

    def _load_and_assemble(self, source: VersionSource) -> Servable:
        """Load the version in this worker, build and warm up its runners and batchers."""
        from service.batching import capped_batch_sizes
        from service.runner import InferenceRunner, default_allowed_batch_sizes, device_scope, tf_thread_counts

        settings, batching = self._settings, source.config.batching
        started, resident_before = time.monotonic(), memory.resident_bytes()
        with device_scope(self.device):
            loaded = self._loader.load(source.path, source.config)
        load_s = time.monotonic() - started
        max_batch_size = batching.max_batch_size or settings.max_batch_size
        allowed = tuple(batching.allowed_batch_sizes or default_allowed_batch_sizes(max_batch_size))
        if allowed[-1] < max_batch_size:
            allowed = (*allowed, max_batch_size)
        default = loaded.signatures.get(loaded.default_signature)
        if (
            self.device == "/CPU:0"
            and default is not None
            and not (batching.max_batch_size or batching.allowed_batch_sizes)
        ):
            # Only the sizes that pay are compiled and warmed up (MAX_BATCH_INPUT_BYTES); larger
            # requests run in chunks of the largest.
            allowed = capped_batch_sizes(allowed, default, settings.max_batch_input_bytes)
            max_batch_size = allowed[-1]
        # The image preprocessing is decided once, here: explicit config, else the recognised family.
        # Before the backend: the gate's sample images get exactly what a request's images get.
        choice = preprocessing.choose(source.config.preprocessing, getattr(loaded, "recognition", None))
        log.info("%s image preprocessing: %s", source.id, choice)
        gate_inputs = None
        if source.gate_inputs is not None and source.config.gate.inputs is not None:
            gate_inputs = equivalence.GateInputs(
                folder=source.gate_inputs,
                shown=source.config.gate.inputs,
                preprocessing=choice.config,
                max_image_pixels=settings.max_image_pixels,
            )
        try:
            # Conversion and the equivalence gate happen here, at load, never on a request.
            backend = backends.choose(
                loaded,
                source.id,
                source.config,
                default_backend=settings.model_backend,
                cache_dir=settings.backend_cache_dir,
                threads=tf_thread_counts(settings, gpu=False)[0],
                device=self.device,
                allowed_batch_sizes=allowed,
                gate_inputs=gate_inputs,
            )
        except BaseException:
            loaded.close()
            raise
        closers: list[Callable[[], None]] = []
        checks: list[Callable[[], str]] = []
        submit: dict[str, Callable[[ModelInputs], Future]] = {}
        warnings = list(getattr(loaded, "warnings", ()))
        warmup_s = 0.0
        try:
            for name, signature in loaded.signatures.items():
                runner = InferenceRunner(
                    loaded, name, device=self.device, allowed_batch_sizes=allowed, model_name=source.id.name
                )
                try:
                    warmup_s += runner.warm_up()
                except Exception as err:
                    if name == loaded.default_signature:
                        raise ModelLoadError(f"warm-up of signature '{name}' failed: {err}") from err
                    warnings.append(f"signature '{name}' failed its warm-up and is not served: {err}")
                    continue
                if signature.batched:
                    from service.batching import Batcher

                    batcher = Batcher(
                        source.id,
                        runner.run,
                        max_batch_size=max_batch_size,
                        batch_timeout_ms=batching.batch_timeout_ms
                        if batching.batch_timeout_ms is not None
                        else settings.batch_timeout_ms,
                        max_enqueued_batches=batching.max_enqueued_batches or settings.max_enqueued_batches,
                    )
                    closers.append(batcher.close)
                    checks.append(batcher.health)
                    submit[name] = batcher.submit
                else:
                    submit[name] = _direct(runner.run)
        except BaseException:
            for step in closers:
                step()
            loaded.close()
            memory.release_free_memory()
            raise
        closers.append(loaded.close)
        # The warm-up's activations are freed but still held by malloc: give them back, so a
        # worker keeps its models' weights and graphs, not every model's high-water mark.
        memory.release_free_memory()
        log.info(
            "%s batch sizes %s; about %+.0f MiB resident after its load and warm-up",
            source.id,
            ",".join(map(str, allowed)),
            (memory.resident_bytes() - resident_before) / 2**20,
        )

        def close() -> None:
            for step in closers:
                step()
            closers.clear()

        def health() -> str:
            return "; ".join(problem for problem in (check() for check in checks) if problem)

        return Servable(
            id=source.id,
            config=source.config.model_copy(update={"preprocessing": choice.config}),
            signatures=MappingProxyType(dict(loaded.signatures)),
            default_signature=loaded.default_signature,
            info=ServableInfo(
                path=display_path(source.path, settings.models_dir),
                format=str(getattr(loaded.format, "value", loaded.format)),
                loader=str(loaded.loader),
                device=self.device,
                load_s=load_s,
                warmup_s=warmup_s,
                warnings=tuple(warnings),
                preprocessing=choice,
                backend=backend,
            ),
            labels=source.labels,
            submit=MappingProxyType(submit),
            close=close,
            health=health,
        )


def _direct(run: Callable[[Sequence[ModelInputs]], dict]) -> Callable[[ModelInputs], Future]:
    """Wrap a runner's `run` as a submit function returning a completed Future (unbatched signatures)."""

    def submit(inputs: ModelInputs) -> Future:
        future: Future = Future()
        try:
            future.set_result(run([inputs]))
        except Exception as err:  # noqa: BLE001 - delivered through the future, as a batcher would
            future.set_exception(err)
        return future

    return submit
