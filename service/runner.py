"""InferenceRunner: device placement, TensorFlow threads, padded compiled calls and warm-up.

This is the only module that chooses a device, sets GPU memory growth and TensorFlow's thread pools,
and the only one that calls a loaded model. It owns the shape discipline of a servable: every call
it makes uses one of a fixed set of batch sizes (`allowed_batch_sizes`), so a compiled function
never meets a new shape after `warm_up()` (no trace, no new oneDNN/cuDNN primitives on a request),
and rows are padded up to the next allowed size and sliced back afterwards.

`run()` takes the requests of one call as `ModelInputs` (`service.servable`): built and checked once
by preprocessing (names, dtypes, row shapes, row counts), so the runner checks nothing again. Their
rows are merged once, straight into arrays of the padded size (`merge_rows`: one copy for a batch,
none for a lone request that needs no padding). Every input carries a leading row axis (one row per
example), whatever the signature:

* batched signature: rows are padded to the next allowed size; more rows than the largest allowed
  size are processed in chunks of that size;
* fixed-batch signature (`batched=False`, `fixed_batch_size=n`): rows are cut into chunks of `n`,
  the last one padded;
* unbatched signature (`batched=False`, no fixed size: scalar or per-example inputs): one call per
  row with the row axis removed, and the outputs stacked back along a new row axis.

It never batches requests together (that is `service.batching`) and never decodes requests.

It also builds what it calls: the loader asks it for each loaded model's signatures and compiled
calls (`keras_signature`: a `tf.function` with a fixed input signature over `training=False`;
`saved_model_call` for SavedModel signature functions; `session_call` for TF1 graphs), so the
loader reads files and this module owns every call into a model.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from service import extra_outputs as extra_outputs_
from service import metrics
from service.errors import InferenceError, InvalidInput, ModelLoadError
from service.gpus import DEFAULT_CPU_WORKERS
from service.servable import ModelInputs, Signature, TensorInfo, merge_rows
from service.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from service.loaded_model import LoadedModel

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
"""Name of the default signature, as in TensorFlow Serving."""
PREDICT_METHOD = "tensorflow/serving/predict"
"""`method_name` of a predict signature (Keras models, and SavedModel signatures that do not say)."""
STRING_DTYPE = "string"
"""`TensorInfo.dtype` of TF string tensors; such inputs are passed through uncast and never warmed up."""

_configure_lock = threading.Lock()
_configured: tuple[int, str] | None = None
"""(process id, device) once `configure_tensorflow` ran in this process."""


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota.

    A Kubernetes pod limited to 2 CPUs on a 64-core node sees 64 cores in its affinity mask;
    TensorFlow's default pools would then start 64 threads per worker and thrash on the quota.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def tf_thread_counts(settings: Settings, gpu: bool) -> tuple[int, int]:
    """(intra-op, inter-op) threads for this worker; 0 leaves TensorFlow's own default.

    Explicit settings win. Otherwise on CPU the cores are shared out between the workers
    (`available_cores() // workers`, at least 1), for both pools. Measured on 2 cores with 2 workers
    against TensorFlow's defaults: equal to 1.45x the throughput on a quiet host, 1.3x to 2x with
    a third of the p99 on a busy one (docs/benchmarks.md), because every worker's default pools
    otherwise each claim every core. With a GPU TensorFlow's defaults stay.
    """
    share = 0 if gpu else max(1, available_cores() // (settings.workers or DEFAULT_CPU_WORKERS))
    return (settings.tf_intra_op_threads or share, settings.tf_inter_op_threads or share)


def configure_tensorflow(settings: Settings) -> str:
    """Set TensorFlow's threads and GPU memory growth and pick the device, once per worker process.

    Call it in the worker after the fork, before any model is loaded (TensorFlow fixes its thread
    pools and GPU allocator on first use; later changes are logged and ignored). Later calls return
    the device chosen by the first one.

    Returns:
        The device string models run on: `/GPU:0` or `/CPU:0`.

    Raises:
        ValueError: `DEVICE=gpu` but TensorFlow sees no GPU.
    """
    global _configured
    with _configure_lock:
        # The pid check makes a configuration inherited through fork() count as not done.
        if _configured is not None and _configured[0] == os.getpid():
            return _configured[1]
        gpus = tf.config.list_physical_devices("GPU")  # lists without starting the runtime
        if gpus and settings.device == "cpu":
            # gunicorn's workers already hide the GPUs (gpus.worker_environment); this covers any other
            # process: a GPU TensorFlow merely sees gets a CUDA context and some of its memory.
            try:
                tf.config.set_visible_devices([], "GPU")
            except RuntimeError as err:  # the runtime already started in this process
                log.warning("DEVICE=cpu: could not hide the GPUs, the runtime is already initialised: %s", err)
        intra, inter = tf_thread_counts(settings, gpu=bool(gpus) and settings.device != "cpu")
        try:
            if intra:
                tf.config.threading.set_intra_op_parallelism_threads(intra)
            if inter:
                tf.config.threading.set_inter_op_parallelism_threads(inter)
        except RuntimeError as err:  # the runtime already started in this process
            log.warning("TensorFlow thread settings ignored, the runtime is already initialised: %s", err)
        for gpu in gpus:
            try:
                if settings.gpu_memory_limit_mb:
                    # A hard cap, for workers sharing one GPU (more workers than GPUs).
                    tf.config.set_logical_device_configuration(
                        gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=settings.gpu_memory_limit_mb)]
                    )
                else:
                    # Without memory growth the first model takes the whole GPU and every other worker
                    # (or a second version loaded during a swap) fails to allocate.
                    tf.config.experimental.set_memory_growth(gpu, True)
            except (RuntimeError, ValueError) as err:
                log.warning("GPU memory settings not applied on %s: %s", gpu.name, err)
        if settings.device == "gpu" and not gpus:
            raise ValueError("DEVICE=gpu but TensorFlow sees no GPU; set DEVICE=auto or DEVICE=cpu")
        device = "/GPU:0" if gpus and settings.device != "cpu" else "/CPU:0"
        log.info(
            "TensorFlow %s: models run on %s (%d GPU(s) visible, GPU memory limit %s); "
            "intra-op threads %s, inter-op threads %s",
            tf.__version__,
            device,
            len(gpus),
            f"{settings.gpu_memory_limit_mb} MiB" if settings.gpu_memory_limit_mb else "none",
            tf.config.threading.get_intra_op_parallelism_threads() or "auto",
            tf.config.threading.get_inter_op_parallelism_threads() or "auto",
        )
        _configured = (os.getpid(), device)
        return device


def device_scope(device: str) -> AbstractContextManager[None]:
    """Return the context that places variables and ops on `device` (wrap `Loader.load` in it)."""
    return tf.device(device)


def default_allowed_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Return the batch sizes a batched signature is compiled for: 1, 2, 3, 4, 6, 8, 12, 16, ... up to `max_batch_size`.

    Powers of two and the midpoints between them (x1.5), so padding wastes at most a third of a call
    (at most half with powers of two alone, which costs real throughput on CPU where compute grows
    linearly with rows); the last size is always `max_batch_size`.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
    sizes = set()
    power = 1
    while power < max_batch_size:
        sizes.add(power)
        if power >= 2 and power * 3 // 2 < max_batch_size:
            sizes.add(power * 3 // 2)
        power *= 2
    sizes.add(max_batch_size)
    return tuple(sorted(sizes))


class InferenceRunner:
    """Runs one signature of one loaded model on its device, in the batch sizes it was warmed up for.

    Built by the manager after loading, warmed up before the version is published, and called by the
    batcher's thread (or directly, for signatures that are not batched). Holds no mutable state after
    construction. Thread-safe.
    """

    def __init__(
        self,
        model: LoadedModel,
        signature_name: str,
        *,
        device: str,
        allowed_batch_sizes: tuple[int, ...],
        model_name: str = "",
    ) -> None:
        """Prepare the calls of `model`'s signature `signature_name`.

        Args:
            model: the loaded model; `model.call(signature_name, inputs)` is its compiled call.
            signature_name: which of `model.signatures` this runner calls.
            device: where to run (`configure_tensorflow`'s answer).
            allowed_batch_sizes: increasing batch sizes of a batched signature (ignored for fixed-batch
                and unbatched signatures).
            model_name: the `model` label of the padding counter (`kerasserve_padding_rows_total`).

        Raises:
            ValueError: `allowed_batch_sizes` is empty, not increasing, or holds a size below 1.
        """
        self._model = model
        self._signature_name = signature_name
        self._signature: Signature = model.signatures[signature_name]
        self._device = device
        self._padding_rows = metrics.PADDING_ROWS.labels(model=model_name)
        signature = self._signature
        if signature.batched:
            sizes = tuple(allowed_batch_sizes)
            if not sizes or sizes[0] < 1 or any(b <= a for a, b in zip(sizes, sizes[1:])):
                raise ValueError(f"allowed_batch_sizes must be increasing positive sizes, not {allowed_batch_sizes}")
            self.allowed_batch_sizes: tuple[int, ...] = sizes
        elif signature.fixed_batch_size:
            self.allowed_batch_sizes = (signature.fixed_batch_size,)
        else:
            self.allowed_batch_sizes = ()
        self._dtypes: dict[str, np.dtype | None] = {t.name: _numpy_dtype(t) for t in signature.inputs}
        # Shape of one row as the signature declares it (None = any), to check requests cheaply.
        self._row_shapes: dict[str, tuple[int | None, ...]] = {
            t.name: tuple(t.shape[1:]) if signature.batched or signature.fixed_batch_size else tuple(t.shape)
            for t in signature.inputs
        }

    @property
    def signature(self) -> Signature:
        return self._signature

    def run(self, requests: Sequence[ModelInputs]) -> dict[str, np.ndarray]:
        """Compute the outputs of the rows of `requests` together (one request, or a batcher's batch).

        Returns:
            Output name -> array with exactly as many rows as the requests together, in their order.

        Raises:
            InvalidInput: the model rejected the values.
            InferenceError: TensorFlow failed while computing.
        """
        return self._compute([r.arrays for r in requests], sum(r.rows for r in requests))

    def _compute(self, parts: Sequence[Mapping[str, np.ndarray]], rows: int) -> dict[str, np.ndarray]:
        """Run `rows` rows held by `parts` (merged here, padded once), the signature's way."""
        try:
            with tf.device(self._device):
                if self._signature.batched:
                    return self._run_batched(parts, rows)
                arrays = merge_rows(parts, rows, rows)
                if self._signature.fixed_batch_size:
                    return self._run_chunks(arrays, rows, self._signature.fixed_batch_size)
                return self._run_rows(arrays, rows)
        except tf.errors.InvalidArgumentError as err:
            raise InvalidInput(f"the model rejected the input: {_first_line(err.message)}") from err
        except tf.errors.OpError as err:
            log.error("signature %r failed: %s", self._signature_name, err.message)
            raise InferenceError(f"the model failed while computing: {type(err).__name__}") from err

    def warm_up(self) -> float:
        """Call the model once per batch size it will see, on zeros built from the signature.

        Variable non-batch dimensions are given size 1. A signature with a string input is not warmed
        up (no neutral value exists for it). A failure is raised when every dimension is known (the
        model is broken), and only logged otherwise (size 1 may be too small for a model that works
        on real inputs).

        Returns:
            Seconds spent.
        """
        started = time.monotonic()
        signature = self._signature
        if any(t.dtype == STRING_DTYPE for t in signature.inputs):
            log.info("signature %r has a string input: warm-up skipped", self._signature_name)
            return 0.0
        sizes = self.allowed_batch_sizes or (1,)
        fully_known = all(d is not None for shape in self._row_shapes.values() for d in shape)
        try:
            for size in sizes:
                arrays = {
                    name: np.zeros((size, *(d if d is not None else 1 for d in shape)), dtype=self._dtypes[name])
                    for name, shape in self._row_shapes.items()
                }
                self._compute([arrays], size)
        except Exception as err:  # noqa: BLE001 - see the docstring: only raised for known shapes
            if fully_known:
                raise
            log.warning("warm-up of signature %r failed on placeholder shapes, skipped: %s", self._signature_name, err)
        elapsed_s = time.monotonic() - started
        log.debug("signature %r warmed up for batch sizes %s in %.2fs", self._signature_name, sizes, elapsed_s)
        return elapsed_s

    # --- internals ------------------------------------------------------------------------------

    def _run_batched(self, parts: Sequence[Mapping[str, np.ndarray]], rows: int) -> dict[str, np.ndarray]:
        largest = self.allowed_batch_sizes[-1]
        if rows <= largest:
            size = self.allowed_batch_sizes[bisect.bisect_left(self.allowed_batch_sizes, rows)]
            return self._call_padded(merge_rows(parts, rows, size), rows, size)
        return self._run_chunks(merge_rows(parts, rows, rows), rows, largest, pad_to_allowed=True)

    def _run_chunks(
        self, arrays: Mapping[str, np.ndarray], rows: int, chunk: int, *, pad_to_allowed: bool = False
    ) -> dict[str, np.ndarray]:
        """Call chunks of `chunk` rows; the last one is padded (to the next allowed size if asked)."""
        if rows == chunk:
            return self._call_padded(arrays, rows, chunk)
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, rows, chunk):
            stop = min(start + chunk, rows)
            size = chunk
            if pad_to_allowed and stop - start < chunk:
                size = self.allowed_batch_sizes[bisect.bisect_left(self.allowed_batch_sizes, stop - start)]
            chunk_rows = {k: v[start:stop] for k, v in arrays.items()}
            parts.append(self._call_padded(merge_rows([chunk_rows], stop - start, size), stop - start, size))
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _run_rows(self, arrays: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """Unbatched signature: one call per row, without the row axis; outputs stacked along a new one."""
        parts = [
            _as_numpy(self._model.call(self._signature_name, {k: v[i] for k, v in arrays.items()})) for i in range(rows)
        ]
        return {name: np.stack([p[name] for p in parts]) for name in parts[0]}

    def _call_padded(self, arrays: Mapping[str, np.ndarray], rows: int, size: int) -> dict[str, np.ndarray]:
        """Call `arrays` of `size` rows, padded past `rows` (`merge_rows`), and slice the outputs back to `rows`."""
        if rows < size:
            self._padding_rows.inc(size - rows)
        outputs = _as_numpy(self._model.call(self._signature_name, arrays))
        if rows == size:
            return outputs
        return {k: v[:rows] if v.ndim and v.shape[0] == size else v for k, v in outputs.items()}


def _as_numpy(outputs: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Return the outputs as numpy arrays (the loader's call already does; tensors are converted)."""
    result: dict[str, np.ndarray] = {}
    for name, value in outputs.items():
        result[name] = value if isinstance(value, np.ndarray) else np.asarray(value)
    return result


def _numpy_dtype(info: TensorInfo) -> np.dtype | None:
    """Numpy dtype requests are cast to; None for strings and dtypes numpy lacks (passed through)."""
    if info.dtype == STRING_DTYPE:
        return None
    try:
        return np.dtype(info.dtype)
    except TypeError:
        return None


def _first_line(text: str) -> str:
    """The line of a TensorFlow error message that says what went wrong, without node names or paths.

    Graph execution errors start with "Graph execution error:" and a Python traceback of where the
    failing op was defined (file paths, which clients must not see); the reason follows it.
    """
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith(("Graph execution error", "Detected at node", "File ", "[[")):
            continue
        return re.sub(r"\s*\[\[\{\{node [^]]*\]\]|\s*\[Op:[^]]*\]", "", line).strip() or "invalid argument"
    return "invalid argument"


# --------------------------------------------------------------------------------------------------
# Signatures and compiled calls: built by the loader for each signature of a model it loads
# --------------------------------------------------------------------------------------------------
def _dtype_name(dtype: Any) -> str:
    try:
        dt = tf.as_dtype(dtype)
    except TypeError:
        return str(dtype)
    return "string" if dt == tf.string else dt.name


def tensor_info(name: str, dtype: Any, shape: Any, graph_name: str = "") -> TensorInfo:
    """TensorInfo from a TF dtype and shape; an unknown rank becomes `()` with `unknown_rank`."""
    rank = getattr(shape, "rank", 0)
    return TensorInfo(name, _dtype_name(dtype), _shape(shape), graph_name=graph_name, unknown_rank=rank is None)


def _shape(shape: Any) -> tuple[int | None, ...]:
    try:
        dims = list(shape)
    except (TypeError, ValueError):  # unknown rank
        return ()
    return tuple(None if d is None else int(d) for d in dims)


def batch_layout(inputs: tuple[TensorInfo, ...]) -> tuple[bool, int | None]:
    """(batched, fixed_batch_size) from the input shapes (unknown-rank inputs count as batched)."""
    if inputs and all(t.unknown_rank or (len(t.shape) >= 1 and t.shape[0] is None) for t in inputs):
        return True, None
    firsts = {t.shape[0] if t.shape else None for t in inputs}
    if len(firsts) == 1:
        (first,) = firsts
        return False, first
    return False, None


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that puts `output_2` before `output_10`."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        if name in seen:
            seen[name] += 1
            result.append(f"{name}_{seen[name]}")
        else:
            seen[name] = 0
            result.append(name)
    return result


def _iter_layers(model: Any) -> Iterator[Any]:
    for layer in getattr(model, "layers", []) or []:
        yield layer
        if getattr(layer, "layers", None):
            yield from _iter_layers(layer)
        inner = getattr(layer, "layer", None)
        if inner is not None:
            yield inner


def _keras_input_names(model: Any) -> list[str]:
    names = getattr(model, "input_names", None)
    if names:
        return list(names)
    result = []
    for i, tensor in enumerate(model.inputs):
        history = getattr(tensor, "_keras_history", None)
        op = history[0] if history else None
        result.append(getattr(op, "name", None) or getattr(tensor, "name", None) or f"input_{i}")
    return result


def _keras_output_names(model: Any) -> list[str]:
    names = getattr(model, "output_names", None)
    if names and len(names) == len(model.outputs):
        return _unique(list(names))
    result = []
    for i, tensor in enumerate(model.outputs):
        history = getattr(tensor, "_keras_history", None)
        op = history[0] if history else None
        result.append(getattr(op, "name", None) or f"output_{i}")
    return _unique(result)


def keras_signature(
    model: Any, extra_outputs: tuple[str, ...] = (), *, jit_compile: bool = False
) -> tuple[Signature, Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]]:
    """Build the `serving_default` signature of a Keras (3 or 2) model and its compiled call.

    `extra_outputs` (layer paths, see `service.extra_outputs`) are served after the model's own
    outputs, named as given. `jit_compile=True` builds the same call compiled by XLA (the `xla`
    backend, `service.backends`): XLA compiles it once per input shape, on the first call of each.

    Raises:
        ModelLoadError: no known inputs/outputs, or an extra output that cannot be served.
    """
    inputs_ = getattr(model, "inputs", None)
    outputs_ = getattr(model, "outputs", None)
    if not inputs_ or not outputs_:
        raise ModelLoadError("the model has no known inputs/outputs (a subclassed model that was never built?)")
    in_names = _keras_input_names(model)
    out_names = _keras_output_names(model)
    served = model
    if extra_outputs:
        clash = sorted(set(extra_outputs) & set(out_names))
        if clash:
            raise ModelLoadError(f"extra_outputs: '{clash[0]}' is already an output of the model")
        served = extra_outputs_.with_extra_outputs(model, extra_outputs)
        outputs_ = served.outputs
        out_names = [*out_names, *extra_outputs]
    inputs = tuple(TensorInfo(n, _dtype_name(t.dtype), _shape(t.shape)) for n, t in zip(in_names, inputs_))
    outputs = tuple(TensorInfo(n, _dtype_name(t.dtype), _shape(t.shape)) for n, t in zip(out_names, outputs_))
    batched, fixed = batch_layout(inputs)
    signature = Signature(DEFAULT_SIGNATURE, inputs, outputs, PREDICT_METHOD, batched, fixed)
    specs = [
        tf.TensorSpec(t.shape, tf.string if t.dtype == "string" else tf.as_dtype(t.dtype), name=spec_name(t.name))
        for t in inputs
    ]
    structure = getattr(served, "_inputs_struct", None)

    def forward(*args: Any) -> list[Any]:
        if structure is not None and len(args) > 1:
            x = tf.nest.pack_sequence_as(structure, list(args))
        else:
            x = args[0] if len(args) == 1 else list(args)
        y = served(x, training=False)
        return tf.nest.flatten(y)

    compiled = tf.function(
        forward, input_signature=specs, autograph=False, reduce_retracing=True, jit_compile=jit_compile or None
    )
    stateful = [layer for layer in _iter_layers(model) if getattr(layer, "stateful", False)]
    lock = threading.Lock()

    def call(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [_as_tensor(values[t.name], t) for t in inputs]
        if stateful:
            # Stateful RNNs carry state between calls; serve each call from the initial state.
            with lock:
                for layer in stateful:
                    _reset_state(layer)
                result = compiled(*args)
        else:
            result = compiled(*args)
        return {name: np.asarray(value) for name, value in zip(out_names, result)}

    return signature, call


def _reset_state(layer: Any) -> None:
    for attr in ("reset_states", "reset_state"):
        fn = getattr(layer, attr, None)
        if callable(fn):
            fn()
            return


def spec_name(name: str) -> str:
    """A TensorSpec name for input `name` (TensorFlow accepts only some characters)."""
    clean = re.sub(r"[^A-Za-z0-9_.\-/]", "_", name)
    return clean if re.match(r"[A-Za-z0-9.]", clean) else f"x{clean}"


def _as_array(value: Any, info: TensorInfo) -> np.ndarray:
    """Cast one input to the dtype its signature declares (strings stay numpy object arrays of bytes)."""
    if info.dtype == "string":
        return np.asarray(value, dtype=object)
    return np.asarray(value, dtype=np.dtype(info.dtype))


def _as_tensor(value: Any, info: TensorInfo) -> Any:
    if info.dtype == "string":
        return tf.constant(_as_array(value, info), dtype=tf.string)
    return tf.convert_to_tensor(_as_array(value, info))


def tensor_info_from_proto(name: str, info: Any, graph: Any) -> TensorInfo:
    # The graph tensor's dtype is what a feed must have (half_plus_three's regress SignatureDef says
    # DT_FLOAT for a string placeholder).
    dtype = _dtype_name(graph.get_tensor_by_name(info.name).dtype)
    if info.tensor_shape.unknown_rank or not info.HasField("tensor_shape"):
        # The signature does not say; the graph tensor usually does.
        tensor = graph.get_tensor_by_name(info.name)
        return tensor_info(name, tensor.dtype, tensor.shape, info.name)
    shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
    return TensorInfo(name, dtype, shape, graph_name=info.name)


def saved_model_call(
    fn: Any, inputs: tuple[TensorInfo, ...], outputs: tuple[TensorInfo, ...], *, jit_compile: bool = False
) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """The call of a SavedModel signature function; `jit_compile=True` wraps it in a `tf.function` XLA compiles."""
    if jit_compile:
        fn = tf.function(_keywords_to(fn), autograph=False, reduce_retracing=True, jit_compile=True)

    def call(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # By keyword, whatever the number of inputs: TF2 binds positional arguments of a TF1 signature in
        # plain string order of its keys (`item_10` before `item_2`), not in our natural order.
        result = fn(**{t.name: _as_tensor(values[t.name], t) for t in inputs})
        return {t.name: _to_numpy(result[t.name]) for t in outputs}  # the signature's output order

    return call


def _keywords_to(fn: Any) -> Callable[..., Any]:
    def forward(**kwargs: Any) -> Any:
        return fn(**kwargs)

    return forward


def _to_numpy(value: Any) -> np.ndarray:
    array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    return np.asarray(array)


def session_call(
    session: Any, feeds: dict[str, Any], fetches: dict[str, Any], inputs: tuple[TensorInfo, ...]
) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    infos = {t.name: t for t in inputs}
    order = sorted(fetches, key=natural_key)  # the signature's output order

    def call(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Fed by input name too: each signature key is paired with its own graph tensor.
        feed = {tensor: _as_array(values[k], infos[k]) for k, tensor in feeds.items()}
        result = session.run(fetches, feed_dict=feed)
        return {k: np.asarray(result[k]) for k in order}

    return call
