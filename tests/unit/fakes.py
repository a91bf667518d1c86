"""Servables without TensorFlow: a builder for the HTTP, data plane and manager tests.

`FakeBuilder` stands where `service.builder.ServableBuilder` stands in `service.app.create_app`: it
turns the versions the repository finds into servables, here from small numpy functions chosen by
model name, behind a real `Batcher`. Everything else (repository, watcher, manager, data plane,
preprocessing, adapters, Flask) is the real thing; only the model call is a plain function, so
these tests run in milliseconds and need neither gunicorn nor TensorFlow.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from service.batching import Batcher
from service.errors import ModelLoadError
from service.manager import Builder, ServableManager
from service.model_config import PreprocessingConfig
from service.preprocessing import to_model_inputs
from service.repository import ModelRepository, RepositoryWatcher, VersionSource
from service.servable import Arrays, ModelInputs, Servable, ServableInfo, Signature, TensorInfo, merge_rows
from service.settings import Settings


def checked(arrays: Mapping[str, np.ndarray], signature: Signature | None = None) -> ModelInputs:
    """`arrays` as the boundary (`preprocessing.to_model_inputs`) hands them on: for `signature`, else for one
    that takes exactly these arrays (their dtypes, any sizes)."""
    if signature is None:
        inputs = tuple(TensorInfo(name, a.dtype.name, (None,) * a.ndim) for name, a in arrays.items())
        signature = Signature("serving_default", inputs, ())
    return to_model_inputs(arrays, (), signature, PreprocessingConfig(), max_pixels=1, max_rows=10**6)


def merging(
    call: Callable[[Arrays], dict[str, np.ndarray]],
) -> Callable[[Sequence[ModelInputs]], dict[str, np.ndarray]]:
    """A batcher's `run` from a function of arrays: the requests' rows merged as the runner merges them."""

    def run(requests: Sequence[ModelInputs]) -> dict[str, np.ndarray]:
        rows = sum(r.rows for r in requests)
        return call(merge_rows([r.arrays for r in requests], rows, rows))

    return run


@dataclass(frozen=True)
class FakeModel:
    """One servable's signature and the function standing for the model call."""

    signature: Signature
    call: Callable[[Arrays], dict[str, np.ndarray]]


def _double(inputs: Arrays) -> dict[str, np.ndarray]:
    return {"y": np.asarray(inputs["x"], np.float32) * 2}


def _pixel_mean(inputs: Arrays) -> dict[str, np.ndarray]:
    mean = np.asarray(inputs["image"], np.float32).reshape(len(inputs["image"]), -1).mean(axis=1)
    return {"probs": np.stack([mean, 1 - mean, np.zeros_like(mean)], axis=1)}


DOUBLE = FakeModel(
    Signature("serving_default", (TensorInfo("x", "float32", (None, 2)),), (TensorInfo("y", "float32", (None, 2)),)),
    _double,
)
"""y = 2 x, two values per row."""

PIXEL_MEAN = FakeModel(
    Signature(
        "serving_default",
        (TensorInfo("image", "float32", (None, 2, 2, 1)),),
        (TensorInfo("probs", "float32", (None, 3)),),
    ),
    _pixel_mean,
)
"""A 2x2 grayscale image classifier: scores (mean pixel, 1 - mean pixel, 0) on the unit scale."""


def _sum(inputs: Arrays) -> dict[str, np.ndarray]:
    return {"total": np.asarray(inputs["x"], np.float32).sum(axis=1, keepdims=True)}


def _half(inputs: Arrays) -> dict[str, np.ndarray]:
    return {"y": np.asarray(inputs["x"], np.float32) / 2}


def _fail(inputs: Arrays) -> dict[str, np.ndarray]:
    raise RuntimeError("the fake model failed")


SUM = FakeModel(
    Signature(
        "serving_default", (TensorInfo("x", "float32", (None, 2)),), (TensorInfo("total", "float32", (None, 1)),)
    ),
    _sum,
)
"""One value per row: the sum of its two inputs."""

HALF = FakeModel(
    Signature("serving_default", (TensorInfo("x", "float32", (None, 1)),), (TensorInfo("y", "float32", (None, 1)),)),
    _half,
)
"""y = x / 2 on an input of shape (None, 1): clients may send one plain value per row."""

FAILING = FakeModel(DOUBLE.signature, _fail)
"""Loads, then raises on every call."""


class FakeBuilder:
    """Builds servables from `models[name]`; a name it does not know fails to load, like a corrupt file.

    While `gate` is given and not set, every build waits for it (the version stays LOADING).
    """

    device = "/CPU:0"

    def __init__(
        self, models: Mapping[str, FakeModel], settings: Settings, *, gate: threading.Event | None = None
    ) -> None:
        self._models = models
        self._settings = settings
        self._gate = gate
        self.registry_builds = 0

    def start(self) -> None:
        """Nothing to configure: no TensorFlow."""

    def rebuild_registry(self) -> None:
        self.registry_builds += 1

    def build(self, source: VersionSource) -> Servable:
        if self._gate is not None:
            self._gate.wait(30)
        model = self._models.get(source.id.name)
        if model is None:
            raise ModelLoadError(f"'{Path(source.path).name}' is truncated or corrupt")
        batcher = Batcher(
            source.id,
            merging(model.call),
            max_batch_size=self._settings.max_batch_size,
            batch_timeout_ms=self._settings.batch_timeout_ms,
            max_enqueued_batches=self._settings.max_enqueued_batches,
        )
        return Servable(
            id=source.id,
            config=source.config,
            signatures=MappingProxyType({model.signature.name: model.signature}),
            default_signature=model.signature.name,
            info=ServableInfo(path=Path(source.path).name, format="fake", loader="fake", device=self.device),
            labels=source.labels,
            submit=MappingProxyType({model.signature.name: batcher.submit}),
            close=batcher.close,
            health=batcher.health,
        )


def serve(
    settings: Settings, builder: Builder, on_recycle: Callable[[], None] | None = None
) -> tuple[ServableManager, Callable[[], None]]:
    """Wire a manager and its repository watcher as `service.app.create_app` does; return it and its stop."""
    manager = ServableManager(builder, settings, on_recycle=on_recycle)
    watcher = RepositoryWatcher(ModelRepository(settings.models_dir, settle_s=settings.settle_s), manager, settings)
    watcher.start()
    manager.start()

    def stop() -> None:
        watcher.stop()
        manager.stop()

    return manager, stop
