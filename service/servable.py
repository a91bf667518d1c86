"""Servable: the identity, state, signature and borrowing of one loaded model version.

Vocabulary (docs/architecture.md, section 6): a *model* is a name clients use; a *version* a positive integer; a
*servable* one loaded, callable version. This module holds the values passed between layers and the
`Servable` object the manager publishes. It imports neither Flask nor TensorFlow.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from service.model_config import ModelConfig, PreprocessingChoice


@dataclass(frozen=True, slots=True, eq=False)
class ModelInputs:
    """One request's inputs exactly as a signature takes them: every input by name, each cast to its dtype and
    shaped as its rows should be, all with `rows` rows (at least 1, at most MAX_IMAGES_PER_REQUEST) on axis 0.

    Built only by `preprocessing.to_model_inputs`, the boundary where every request rule is checked (the
    architecture test enforces it); the batcher, the runner and the model call trust it and check nothing again.
    """

    arrays: Mapping[str, np.ndarray]
    rows: int

    @property
    def batch_key(self) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        """Names, row shapes and dtypes: requests with equal keys can share one call."""
        return tuple(sorted((name, array.shape[1:], array.dtype.str) for name, array in self.arrays.items()))


def merge_rows(parts: Sequence[Mapping[str, np.ndarray]], rows: int, size: int) -> Mapping[str, np.ndarray]:
    """The `rows` rows of `parts` (in order) in one array per input of `size` >= `rows` rows: one copy, padded.

    Padding repeats the last real row (rather than zeros), so no padding row leaves the input's domain and
    turns into NaN or an error in the model. One part that needs no padding is returned as it is (no copy).
    """
    if len(parts) == 1 and rows == size:
        return parts[0]
    merged = {}
    for name, first in parts[0].items():
        out = np.empty((size, *first.shape[1:]), dtype=first.dtype)
        offset = 0
        for part in parts:
            array = part[name]
            out[offset : offset + len(array)] = array
            offset += len(array)
        if size > rows:
            out[rows:] = out[rows - 1]
        merged[name] = out
    return merged


class ServableState(str, enum.Enum):
    """TF Serving's version states; a failed load ends in END with an error."""

    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass(frozen=True, slots=True, order=True)
class ServableId:
    """Identity of one version of one model; used in logs, metrics and errors."""

    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True, slots=True)
class ServableRequest:
    """Which version a request wants: the latest, a specific version, or a label."""

    name: str
    version: int | None = None
    label: str | None = None

    @classmethod
    def latest(cls, name: str) -> ServableRequest:
        return cls(name)

    @classmethod
    def specific(cls, name: str, version: int) -> ServableRequest:
        return cls(name, version=version)

    @classmethod
    def labelled(cls, name: str, label: str) -> ServableRequest:
        return cls(name, label=label)


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """Name, dtype and shape of one input or output.

    `dtype` is a numpy dtype name (`float32`, `int64`, `bool`) or `string` for TF string tensors.
    `shape` is the full shape including the batch dimension first when the signature is batched;
    `None` marks a variable dimension.
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    graph_name: str = ""
    """Name of the graph tensor behind it (SavedModel `x:0`), shown by TF Serving's metadata; "" if none."""
    unknown_rank: bool = False
    """The SavedModel declares no rank (e.g. serialized tf.Example inputs); `shape` is then `()`."""


@dataclass(frozen=True, slots=True)
class Signature:
    """Inputs and outputs of one callable endpoint of a model, in a stable order.

    `batched` is true when dimension 0 of every input and output is the batch dimension and may vary;
    a model with a fixed batch (e.g. shape `(1,)` or a stateful RNN with batch 25) has
    `fixed_batch_size` set instead, and the runner splits or pads rows to it.
    """

    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    method_name: str = "tensorflow/serving/predict"
    batched: bool = True
    fixed_batch_size: int | None = None


Arrays = Mapping[str, np.ndarray]
"""Tensors between layers: name -> numpy array, batch dimension first."""


@dataclass(frozen=True, slots=True)
class BackendReport:
    """Which backend computes a version, at which precision, and what the equivalence gate measured."""

    backend: str = "tensorflow"
    """What serves: `tensorflow`, `openvino`, `onnxruntime` or `xla`."""
    precision: str = "fp32"
    requested: str = "tensorflow"
    """What the model config (or MODEL_BACKEND) asked for: `tensorflow`, `openvino`, `onnxruntime`, `xla` or `auto`."""
    reason: str = ""
    """Why TensorFlow serves although another backend was asked for; '' otherwise."""
    gate_rows: int = 0
    """Rows compared by the equivalence gate (0: no gate ran)."""
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    """max |Δ| relative to the range of TensorFlow's output."""
    tolerance: float | None = None
    top1_agreement: float | None = None
    speedup: float | None = None
    """TensorFlow's time over the backend's on the gate's seeded inputs (noisy: measured once, at load)."""
    inputs_folder: str = ""
    """The model config's `gate.inputs` folder, as written ('' when it names none)."""
    inputs_rows: int = 0
    """Rows of real sample inputs the gate compared, apart from the warm-up and seeded ones (0: none ran)."""
    inputs_max_abs_diff: float | None = None
    inputs_max_rel_diff: float | None = None
    inputs_top1_agreement: float | None = None
    convert_s: float = 0.0
    """Seconds spent converting (OpenVINO) or compiling every allowed batch size (XLA) at load."""
    cached: bool = False
    """The converted model came from BACKEND_CACHE_DIR (no conversion at this load)."""


@dataclass(frozen=True, slots=True)
class ServableInfo:
    """What the status views show about how a version was loaded."""

    path: str
    format: str
    loader: str
    device: str = "cpu"
    load_s: float = 0.0
    warmup_s: float = 0.0
    warnings: tuple[str, ...] = ()
    preprocessing: PreprocessingChoice | None = None
    """How uploaded images are scaled for this version, and why (None: not decided, e.g. a test double)."""
    backend: BackendReport = BackendReport()
    """Which backend computes this version (TensorFlow unless the model config asks for another one)."""


@dataclass(eq=False)
class Servable:
    """One loaded, callable version: model, signatures, labels, runners and batchers.

    Built by the manager, published read-only. Requests borrow it through `acquire()`/`release()`
    (the manager's `handle()`); the manager unloads it once it left the published map and its last
    borrower released it. Thread-safe.
    """

    id: ServableId
    config: ModelConfig
    signatures: Mapping[str, Signature]
    default_signature: str
    info: ServableInfo
    labels: tuple[str, ...] = ()
    submit: Mapping[str, Callable[[ModelInputs], Any]] = field(default_factory=dict)
    """Per signature name: `submit(inputs) -> Future[dict[str, np.ndarray]]` (the batcher's, or a direct run)."""
    close: Callable[[], None] = lambda: None
    """Stops batchers and drops references to the TensorFlow objects."""
    health: Callable[[], str] = lambda: ""
    """'' while it can serve; otherwise why not (a batcher's thread kept dying). Readiness reads it."""

    _borrowers: int = 0
    _lock: threading.Condition = field(default_factory=threading.Condition)

    def acquire(self) -> None:
        with self._lock:
            self._borrowers += 1

    def release(self) -> None:
        with self._lock:
            self._borrowers -= 1
            if self._borrowers == 0:
                self._lock.notify_all()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until no request holds this servable; return False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._borrowers == 0, timeout=timeout_s)
