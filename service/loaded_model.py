"""LoadedModel: one loaded model version, its signatures and a compiled call per signature.

What the loader (`service.loader`) returns and the runner (`service.runner`) calls. It holds the
TensorFlow objects only by reference (`_keep`) and imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.applications import Recognition
from service.servable import Signature


@dataclass(eq=False)
class LoadedModel:
    """One loaded model version: its signatures and a compiled call per signature.

    `call` is thread-safe: Keras models run through a `tf.function` with a fixed input signature,
    SavedModels through their concrete signature functions, TF1 graphs through `Session.run`
    (thread-safe in TensorFlow). Stateful models (stateful RNNs) reset their state before each call,
    under a lock, so every call sees the same start state.
    """

    path: Path
    format: str
    loader: str
    signatures: dict[str, Signature]
    default_signature: str
    warnings: tuple[str, ...] = ()
    load_s: float = 0.0
    recognition: Recognition | None = None
    """Keras Applications architectures found in a Keras model (None for SavedModels: no layers to read)."""
    _calls: dict[str, Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]] = field(
        default_factory=dict, repr=False
    )
    _keep: list[Any] = field(default_factory=list, repr=False)
    """References that keep the TensorFlow objects alive (model, loaded SavedModel, session)."""
    _close: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def signature(self) -> Signature:
        """The default signature."""
        return self.signatures[self.default_signature]

    def call(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one compiled inference call (training=False) and return outputs keyed by name.

        Raises:
            KeyError: unknown signature name or a missing input (the caller validates beforehand).
        """
        try:
            fn = self._calls[signature_name]
        except KeyError:
            raise KeyError(f"signature '{signature_name}' does not exist; have {sorted(self.signatures)}") from None
        return fn(inputs)

    def replace_call(
        self, signature_name: str, call: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
    ) -> None:
        """Serve `signature_name` through `call` instead (a compiled backend); only before any runner is built."""
        if signature_name not in self._calls:
            raise KeyError(f"signature '{signature_name}' does not exist; have {sorted(self.signatures)}")
        self._calls[signature_name] = call

    @property
    def model(self) -> Any:
        """The underlying Keras model or SavedModel object (for tools and tests, not for serving)."""
        return self._keep[0] if self._keep else None

    def close(self) -> None:
        """Drop the references to the TensorFlow objects (and close a TF1 session)."""
        if self._close is not None:
            with contextlib.suppress(Exception):
                self._close()
            self._close = None
        self._calls.clear()
        self._keep.clear()
