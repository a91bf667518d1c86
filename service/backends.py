"""Compiled backends: a model converted to OpenVINO or ONNX Runtime, or compiled by XLA, kept only if it is equivalent.

Chosen per model (`backend:` and `precision:` in the model config, else MODEL_BACKEND; TensorFlow
by default). At load, on the manager's loader thread, never on a request: the Keras model our
loader produced (custom layers, Lambdas and all) is traced as a `tf.function` over its serving
signature (a TF2 SavedModel's signature function is taken as it is) and converted with
`openvino.convert_model` (`backend: openvino`) or `tf2onnx.convert.from_function`, opset ONNX_OPSET
(`backend: onnxruntime`, the `_onnxruntime_*` functions); the converted model is cached in
BACKEND_CACHE_DIR under the hash of the source files' content, the model config's graph-changing
keys and the engine's versions, so a restart or another worker reads it instead of converting. It
is compiled for the worker's threads (the same count TensorFlow gets) and the asked precision
(OpenVINO would otherwise pick bf16 on CPUs that have it), then the equivalence gate
(`service.equivalence`) runs warm-up and seeded inputs through both, and the real sample inputs of
the config's `gate.inputs` folder (read before anything is converted, compared on their own); the
version serves on the compiled backend only if the gate passes. `auto` tries both engines (OpenVINO,
then ONNX Runtime; OpenVINO alone for bf16, which ONNX Runtime does not run here) and keeps the one
that was fastest on the seeded inputs, if it was faster than TensorFlow. Any failure, an unusable
sample folder included, leaves TensorFlow serving, with the reason in the version's status.

`xla` takes the same path without a converter: the default signature's call is built again by the
runner with `tf.function(jit_compile=True)` (same input signature, on the worker's device, CPU or
GPU), compiled at load for every allowed batch size (XLA compiles once per shape; the runner pads
requests to those sizes), and kept only if the same gate passes at fp32. Nothing is cached: XLA
compiles again at every load. `auto` never tries XLA.

This module never calls TensorFlow for a request and never decides states; it replaces the default
signature's compiled call of a `LoadedModel` (before its runner is built) and reports what it did.
OpenVINO, tf2onnx, ONNX Runtime and TensorFlow are imported lazily, in `choose()`, only for the engine asked for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from service import equivalence, metrics
from service.errors import InferenceError, strip_paths
from service.formats import walk_folder
from service.model_config import ModelConfig
from service.servable import BackendReport, ServableId, Signature

if TYPE_CHECKING:  # pragma: no cover
    from service.loaded_model import LoadedModel

log = logging.getLogger(__name__)

TENSORFLOW = "tensorflow"
OPENVINO = "openvino"
ONNXRUNTIME = "onnxruntime"
XLA = "xla"
ONNX_OPSET = 17
"""The ONNX opset tf2onnx converts to (part of ONNX Runtime's cache key)."""
AUTO = "auto"
CACHE_FORMAT = "1"
"""Bumped when what the cache holds changes, so old entries are never read."""
_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16"}
_GRAPH_KEYS = ("plugins", "globals", "lambdas", "extra_outputs", "custom_objects")
"""Model config keys that change the graph the loader builds (part of the cache key)."""

Call = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
_T = TypeVar("_T")


class ConversionFailed(Exception):
    """The model cannot run on the backend (an op it lacks, an input type it does not take)."""


def requested_backend(config: ModelConfig, default: str) -> str:
    """The backend a version asks for: its config's `backend`, else the MODEL_BACKEND setting."""
    return config.backend or default


def candidates(requested: str, precision: str) -> tuple[str, ...]:
    """The engines a version tries, in order: the one it names, or for `auto` every engine that runs its precision."""
    if requested != AUTO:
        return (requested,)
    return (OPENVINO,) if precision == "bf16" else (OPENVINO, ONNXRUNTIME)


def choose(
    loaded: LoadedModel,
    servable_id: ServableId,
    config: ModelConfig,
    *,
    default_backend: str,
    cache_dir: Path,
    threads: int,
    device: str,
    allowed_batch_sizes: tuple[int, ...],
    gate_inputs: equivalence.GateInputs | None = None,
) -> BackendReport:
    """Move `loaded`'s default signature onto the requested backend if it converts and passes the gate.

    On success `loaded`'s default call is replaced (call this before building its runner). Never
    raises for a model that TensorFlow serves: every failure is returned as the report's `reason`.
    `gate_inputs`: the real sample inputs the model config names (`gate.inputs`), read before anything
    is converted; a folder that cannot be read serves the version on TensorFlow, with the reason.
    `auto` tries every engine (`candidates`) and keeps the fastest that passes its gate, if it was
    faster than TensorFlow.
    """
    requested = requested_backend(config, default_backend)
    if requested == TENSORFLOW:
        return BackendReport()
    report = BackendReport(
        requested=requested, precision="fp32", inputs_folder=gate_inputs.shown if gate_inputs else ""
    )
    started = time.monotonic()
    target = _Target(
        loaded, config, cache_dir, gate_inputs.folder if gate_inputs else None, threads, device, allowed_batch_sizes
    )
    attempts: list[_Attempt] = []
    try:
        samples = _samples(gate_inputs, loaded.signature, allowed_batch_sizes[-1])
        for name in candidates(requested, config.precision):
            attempts.append(_attempt(_ENGINES[name], target, servable_id, samples))
    except equivalence.GateInputsError as err:
        metrics.BACKEND_FALLBACKS.labels(model=servable_id.name, reason="gate").inc()
        reason = f"gate.inputs '{report.inputs_folder}' cannot be used: {err}"
        log.warning("%s serves on TensorFlow: %s", servable_id, reason)
        return _replace(report, reason=reason, convert_s=time.monotonic() - started)
    passed = [a for a in attempts if a.kind == "" and a.call is not None]
    best = max(passed, key=lambda a: a.speedup) if passed else None
    if best is not None and best.call is not None and not (requested == AUTO and best.speedup < 1.0):
        loaded.replace_call(loaded.default_signature, best.call)
        for other in passed:
            if other is not best:
                log.info(
                    "%s: %s passed its gate too, %.2fx TensorFlow's speed; not kept",
                    servable_id,
                    other.engine.shown,
                    other.speedup,
                )
        log.info("%s serves on %s", servable_id, best.summary)
        return _replace(report, backend=best.engine.name, precision=best.precision, **best.gate)
    # TensorFlow serves: one fallback, counted under the furthest any engine got.
    for attempt in passed:
        attempt.kind = "slower"
        attempt.reason = (
            f"{attempt.engine.shown} was slower than TensorFlow on the gate's inputs ({attempt.speedup:.2f}x)"
        )
    kind = next(k for k in ("slower", "gate", "conversion") if any(a.kind == k for a in attempts))
    metrics.BACKEND_FALLBACKS.labels(model=servable_id.name, reason=kind).inc()
    if len(attempts) == 1:
        reason = attempts[0].reason
    else:
        reason = "; ".join(
            a.reason if a.reason.startswith(a.engine.shown) else f"{a.engine.shown}: {a.reason}" for a in attempts
        )
    shown = best or next((a for a in reversed(attempts) if "gate_rows" in a.gate), attempts[-1])
    (log.info if kind == "slower" else log.warning)("%s serves on TensorFlow: %s", servable_id, reason)
    return _replace(report, reason=reason, **shown.gate)


@dataclass(frozen=True, slots=True)
class _Target:
    """What an engine prepares a call for: the loaded version, its config and the worker's resources."""

    loaded: LoadedModel
    config: ModelConfig
    cache_dir: Path
    exclude: Path | None
    """A folder inside the model's files left out of the cache key (the gate's sample inputs)."""
    threads: int
    device: str
    allowed: tuple[int, ...]
    """The allowed batch sizes, largest last."""


@dataclass(frozen=True, slots=True)
class _Engine:
    """A compiled backend: how it gets a call for a loaded model (cached or converted), and converts again."""

    name: str
    shown: str
    check: Callable[[_Target], None]
    """Raises ConversionFailed for a model the engine does not take."""
    prepare: Callable[[_Target], tuple[Call, str, bool]]
    """(call, precision it runs at, whether it came from the cache)."""
    again: Callable[[_Target], tuple[Call, str]]
    """(call, precision): converted anew, the cache not read."""
    failed: str = "conversion failed"
    """How its failure reads in the reason (`<shown> <failed>: ...`)."""


@dataclass(slots=True)
class _Attempt:
    """What one engine came to: kind '' passed its gate, else 'conversion' or 'gate' (and the reason)."""

    engine: _Engine
    kind: str
    reason: str = ""
    call: Call | None = None
    precision: str = "fp32"
    speedup: float = 0.0
    gate: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


def _attempt(
    engine: _Engine, target: _Target, servable_id: ServableId, samples: list[dict[str, np.ndarray]] | None
) -> _Attempt:
    """Convert (or read from the cache), compile and gate `target` on one engine; never raises but for GateInputsError."""
    loaded, config, allowed = target.loaded, target.config, target.allowed
    started = time.monotonic()
    try:
        engine.check(target)
        call, actual, cached = engine.prepare(target)
        convert_s = time.monotonic() - started
        result = _gate(loaded, call, config, samples, precision=actual, allowed_batch_sizes=allowed)
        if cached and not result.passed:
            # A cached conversion of the same file may predate a plugin change (a custom layer's code
            # is not in the key): convert again once before giving up on the backend.
            log.info("%s: the cached %s model failed the gate; converting again", servable_id, engine.shown)
            (call, actual), cached = engine.again(target), False
            convert_s = time.monotonic() - started
            result = _gate(loaded, call, config, samples, precision=actual, allowed_batch_sizes=allowed)
    except equivalence.GateInputsError:
        raise
    except ConversionFailed as err:
        reason = f"{engine.shown} {engine.failed}: {err}"
        log.info("%s: %s", servable_id, reason)
        return _Attempt(engine, "conversion", reason, gate={"convert_s": time.monotonic() - started})
    except Exception as err:  # noqa: BLE001 - the backend must never fail a version TensorFlow can serve
        reason = f"{engine.shown} failed: {type(err).__name__}: {strip_paths(str(err))[:300]}"
        log.exception("%s: %s", servable_id, reason)
        return _Attempt(engine, "conversion", reason, gate={"convert_s": time.monotonic() - started})
    comparison, on_inputs, speedup = result.seeded, result.inputs, result.speedup
    gate: dict[str, Any] = {
        "gate_rows": comparison.rows,
        "max_abs_diff": comparison.max_abs_diff,
        "max_rel_diff": comparison.max_rel_diff,
        "tolerance": comparison.tolerance,
        "top1_agreement": comparison.top1_agreement,
        "speedup": speedup,
        "convert_s": convert_s,
        "cached": cached,
    }
    metrics.BACKEND_MAX_ABS_DIFF.labels(model=servable_id.name, backend=engine.name, precision=actual).set(
        comparison.max_abs_diff
    )
    if on_inputs is not None:
        gate |= {
            "inputs_rows": on_inputs.rows,
            "inputs_max_abs_diff": on_inputs.max_abs_diff,
            "inputs_max_rel_diff": on_inputs.max_rel_diff,
            "inputs_top1_agreement": on_inputs.top1_agreement,
        }
        metrics.BACKEND_INPUTS_MAX_ABS_DIFF.labels(model=servable_id.name, backend=engine.name, precision=actual).set(
            on_inputs.max_abs_diff
        )
    if not result.passed:
        problems = [comparison.reason] if not comparison.passed else []
        if on_inputs is not None and not on_inputs.passed:
            problems.append(f"on the sample inputs in gate.inputs '{config.gate.inputs}': {on_inputs.reason}")
        reason = f"equivalence gate failed ({actual}): {'; '.join(problems)}"
        log.info("%s: %s: %s", servable_id, engine.shown, reason)
        return _Attempt(engine, "gate", reason, precision=actual, speedup=speedup, gate=gate)
    summary = (
        f"{engine.shown} {actual}: gate passed on {comparison.rows} rows, max |Δ| {comparison.max_abs_diff:.3g} "
        f"({comparison.max_rel_diff:.3g} of the range), {speedup:.2f}x TensorFlow's speed"
    )
    if on_inputs is not None:
        summary += f"; {on_inputs.rows} sample rows from gate.inputs '{config.gate.inputs}', max |Δ| {on_inputs.max_abs_diff:.3g}"
    return _Attempt(engine, "", call=call, precision=actual, speedup=speedup, gate=gate, summary=summary)


def _samples(
    gate_inputs: equivalence.GateInputs | None, signature: Signature, chunk: int
) -> list[dict[str, np.ndarray]] | None:
    """The real sample inputs in chunks of at most `chunk` rows (the largest batch size); None when none are named."""
    if gate_inputs is None:
        return None
    return equivalence.read_gate_inputs(gate_inputs, signature, chunk=chunk)


def _replace(report: BackendReport, **changes: Any) -> BackendReport:
    from dataclasses import replace

    return replace(report, **changes)


def _check_supported(
    loaded: LoadedModel, device: str, extra_outputs: tuple[str, ...], *, engine: str = "OpenVINO"
) -> None:
    """What OpenVINO and ONNX Runtime take: a model on the CPU, without extra outputs, and `_check_common`."""
    if device != "/CPU:0":
        raise ConversionFailed(f"{engine} runs on the CPU here and this worker serves on {device}")
    _check_common(loaded, "converted", extra_outputs=extra_outputs)


def _check_common(loaded: LoadedModel, done: str, *, extra_outputs: tuple[str, ...] = ()) -> None:
    """What no compiled backend takes: TF1 graphs, signatures without a batch axis, string inputs, stateful layers
    (and `extra_outputs`, passed by the backends that cannot serve them). `done`: `converted` or `compiled`."""
    if not _is_keras(loaded.model) and _signature_function(loaded) is None:
        raise ConversionFailed(
            f"only Keras models and SavedModel signature functions are {done} (this one was loaded by {loaded.loader})"
        )
    if extra_outputs:
        raise ConversionFailed("extra_outputs are served by TensorFlow")
    signature = loaded.signature
    if not signature.batched:
        raise ConversionFailed("the signature has a fixed batch size or no batch axis")
    if any(t.dtype == "string" for t in signature.inputs):
        raise ConversionFailed("string inputs are not supported")
    if any(getattr(layer, "stateful", False) for layer in _layers(loaded.model)):
        raise ConversionFailed("stateful layers are not supported")


def _is_keras(model: Any) -> bool:
    return hasattr(model, "layers") and hasattr(model, "inputs")


def _layers(model: Any) -> list[Any]:
    found: list[Any] = []
    stack = list(getattr(model, "layers", []) or [])
    while stack:
        layer = stack.pop()
        found.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
    return found


def cache_key(path: Path, config: ModelConfig, *, exclude: Path | None = None, engine: str = OPENVINO) -> str:
    """Hash of the model's files' content, the config keys that shape its graph and the backend's version.

    `exclude`: a folder whose files are left out (the gate's sample inputs, when they sit inside a
    model folder: conversion does not depend on them). `engine`: whose conversion the entry holds
    (ONNX Runtime's key also names tf2onnx's version and the opset).
    """
    digest = hashlib.sha256()
    files = [path] if path.is_file() else walk_folder(path).files
    if exclude is not None:
        skipped = Path(os.path.realpath(exclude))
        files = [f for f in files if not Path(os.path.realpath(f)).is_relative_to(skipped)]
    for file in sorted(files):
        digest.update(f"{file.relative_to(path) if file != path else file.name}\0".encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    graph = config.model_dump(include=set(_GRAPH_KEYS), mode="json")
    digest.update(repr(sorted(graph.items())).encode())
    digest.update(f"\0{_engine_versions(engine)}\0cache {CACHE_FORMAT}".encode())
    return digest.hexdigest()[:40]


def _engine_versions(engine: str) -> str:
    """What the converted model depends on besides the model: the engine's (and its converter's) versions."""
    if engine == ONNXRUNTIME:
        return _onnxruntime_versions()
    import openvino

    return f"openvino {openvino.get_version()}"


def _cached_or_converted(
    target: _Target,
    engine: str,
    name: str,
    read: Callable[[Path], _T],
    convert: Callable[[], _T],
    write: Callable[[_T, Path], object],
) -> tuple[_T, bool]:
    """`target`'s converted model from BACKEND_CACHE_DIR (`read` of `<entry>/name`), else `convert()`ed and
    cached (`write`, atomically); and whether it came from the cache. A cache that is world-writable,
    unreadable or read-only only costs a conversion per load."""
    cache_dir = target.cache_dir
    entry: Path | None = None
    try:
        if _world_writable(cache_dir):
            # Anyone could plant a converted model there: convert every time instead.
            raise OSError(f"{cache_dir} is world-writable; not used")
        entry = cache_dir / cache_key(target.loaded.path, target.config, exclude=target.exclude, engine=engine)
        if (entry / name).is_file():
            return read(entry / name), True
    except (OSError, RuntimeError) as err:
        log.warning("backend cache unreadable, converting: %s", err)
    converted = convert()
    if entry is not None:
        try:
            _store_entry(cache_dir, entry, name, lambda file: write(converted, file))
        except (OSError, RuntimeError) as err:  # a read-only cache folder only costs a conversion per load
            log.warning("backend cache not written (%s): %s", cache_dir, err)
    return converted, False


def _world_writable(folder: Path) -> bool:
    """Whether `folder` exists and every user may write into it (as for MODELS_DIR, the group may)."""
    try:
        return bool(folder.stat().st_mode & 0o002)
    except FileNotFoundError:
        return False


def _signature_function(loaded: LoadedModel) -> Any:
    """The concrete function of a TF2-loaded SavedModel's default signature; None for anything else."""
    if loaded.loader != "saved_model":
        return None
    return getattr(loaded.model, "signatures", {}).get(loaded.default_signature)


def convert(loaded: LoadedModel) -> Any:
    """Convert `loaded`'s default signature with `openvino.convert_model`: a Keras model traced over
    its serving signature, or a SavedModel's signature function as it is.

    Raises:
        ConversionFailed: the trace or the conversion failed (the first lines say which ops).
    """
    import openvino

    signature = loaded.signature
    try:
        function = _signature_function(loaded)
        if function is not None:
            concrete = function
            inputs = [_spec_of(concrete, t.name) for t in signature.inputs]
            outputs = [concrete.structured_outputs[t.name].name for t in signature.outputs]
        else:
            concrete = _keras_function(loaded)
            inputs = [spec.name for spec in concrete.structured_input_signature[0]]
            outputs = [t.name for t in concrete.outputs]
        ov_model = _in_signature_order(openvino, openvino.convert_model(concrete), inputs, outputs)
    except ConversionFailed:
        raise
    except Exception as err:  # noqa: BLE001 - every failure means: serve on TensorFlow, say why
        raise ConversionFailed(_why(err)) from err
    return ov_model


def _keras_function(loaded: LoadedModel) -> Any:
    import tensorflow as tf

    from service.runner import spec_name

    model, signature = loaded.model, loaded.signature
    specs = [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=spec_name(t.name)) for t in signature.inputs]
    structure = getattr(model, "_inputs_struct", None)

    def forward(*args: Any) -> list[Any]:
        if structure is not None and len(args) > 1:
            x = tf.nest.pack_sequence_as(structure, list(args))
        else:
            x = args[0] if len(args) == 1 else list(args)
        return tf.nest.flatten(model(x, training=False))

    return tf.function(forward, input_signature=specs, autograph=False).get_concrete_function()


def _spec_of(concrete: Any, name: str) -> str:
    spec = concrete.structured_input_signature[1][name]
    return spec.name or name


def _in_signature_order(openvino: Any, ov_model: Any, inputs: list[str], outputs: list[str]) -> Any:
    """The converted model with exactly the signature's inputs and outputs, in its order.

    The converter may also return dangling ops as outputs (Keras mask ops) and orders a signature
    function's parameters its own way; matched by tensor name (`x` or `x:0`).
    """

    def find(ports: Any, name: str, what: str) -> Any:
        for port in ports:
            names = set(port.get_names()) if hasattr(port, "get_names") else {port.get_friendly_name()}
            if hasattr(port, "output"):  # a Parameter node: its output tensor's names too
                names |= set(port.output(0).get_names())
            if name in names or name.split(":")[0] in names or f"{name}:0" in names:
                return port
        raise ConversionFailed(f"the converted model has no {what} named '{name}'")

    params = [find(ov_model.get_parameters(), name, "input") for name in inputs]
    results = [find(ov_model.outputs, name, "output") for name in outputs]
    if len(params) != len(ov_model.get_parameters()):
        raise ConversionFailed(
            f"the converted model has {len(ov_model.get_parameters())} inputs, the signature {len(params)}"
        )
    return openvino.Model(results, params, ov_model.get_friendly_name())


def _why(err: Exception) -> str:
    """The line of a conversion or compilation error that names the missing ops, else its first line."""
    text = str(err)
    # XLA: "Detected unsupported operations when trying to compile graph ... on XLA_CPU_JIT: PyFunc (No registered ..."
    missing = sorted(set(re.findall(r"(\w+) \(No registered '", text)))
    if missing:
        device = re.search(r" on (XLA_\w+_JIT)", text)
        return f"ops without an XLA kernel{f' on {device.group(1)}' if device else ''}: {', '.join(missing)}"
    for line in text.splitlines():
        if "No conversion rule" in line or "Conversion is failed for" in line or "not supported" in line.lower():
            return line.strip(" -")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return f"{type(err).__name__}: {first[:300]}"


def _store_entry(cache_dir: Path, entry: Path, name: str, write: Callable[[Path], object]) -> None:
    """Have `write` write `entry/name` into a private temporary folder, then rename it to `entry` (atomic)."""
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache_dir))
    try:
        write(tmp / name)
        os.rename(tmp, entry)
    except OSError:
        if not (entry / name).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_core_lock = threading.Lock()
_core_instance: Any = None


def _core() -> Any:
    global _core_instance
    with _core_lock:
        if _core_instance is None:
            import openvino

            _core_instance = openvino.Core()
        return _core_instance


def _compile(ov_model: Any, signature: Signature, *, threads: int, precision: str) -> tuple[Call, str]:
    """Compile for the CPU with `threads` threads and `precision`; return its call and the precision it runs at.

    Thread-safe call: each concurrent caller takes its own infer request from a pool.
    """
    core = _core()
    try:
        compiled = core.compile_model(
            ov_model,
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                "INFERENCE_PRECISION_HINT": _PRECISION_HINT[precision],
                "PERFORMANCE_HINT": "LATENCY",
                # Workers share the cores, as TensorFlow's pools do: no thread pinned to one.
                "ENABLE_CPU_PINNING": False,
            },
        )
        actual = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    except Exception as err:  # noqa: BLE001 - a model the CPU plugin cannot compile serves on TensorFlow
        raise ConversionFailed(_why(err)) from err
    served = "bf16" if "bf" in actual.lower() else "fp32"  # OpenVINO names it `bfloat16`
    names = [t.name for t in signature.inputs]
    outputs = [(t.name, np.dtype(t.dtype)) for t in signature.outputs]
    pool: queue.SimpleQueue = queue.SimpleQueue()

    def call(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            request = pool.get_nowait()
        except queue.Empty:
            request = compiled.create_infer_request()
        try:
            result = request.infer([np.ascontiguousarray(values[name]) for name in names])
            answers = list(result.values())
        except RuntimeError as err:  # OpenVINO's errors, as the runner reports TensorFlow's
            log.error("OpenVINO call failed: %s", err)
            raise InferenceError("the model failed while computing: OpenVINO error") from err
        finally:
            pool.put(request)
        return {name: np.asarray(value).astype(dtype, copy=False) for (name, dtype), value in zip(outputs, answers)}

    return call, served


@dataclass(frozen=True, slots=True)
class GateResult:
    """What the gate measured: on the warm-up and seeded inputs, on the real sample inputs (None: none named)."""

    seeded: equivalence.Comparison
    inputs: equivalence.Comparison | None
    speedup: float
    """TensorFlow's time over the candidate's on the seeded inputs."""

    @property
    def passed(self) -> bool:
        return self.seeded.passed and (self.inputs is None or self.inputs.passed)


def _gate(
    loaded: LoadedModel,
    call: Call,
    config: ModelConfig,
    samples: list[dict[str, np.ndarray]] | None,
    *,
    precision: str,
    allowed_batch_sizes: tuple[int, ...],
) -> GateResult:
    """Run warm-up, seeded and sample inputs through TensorFlow and the candidate; compare, and time both on the seeded ones.

    The sample inputs are compared on their own (their own output range), with the same rules.
    """
    signature, name = loaded.signature, loaded.default_signature
    warm = _warm_up_inputs(signature, allowed_batch_sizes)
    seeded = equivalence.seeded_inputs(
        signature, samples=config.gate.samples, chunk=allowed_batch_sizes[-1], seed=config.gate.seed
    )
    try:
        reference = [loaded.call(name, chunk) for chunk in warm]
        candidate = [call(chunk) for chunk in warm]
        tf_s = ov_s = 0.0
        for chunk in seeded:
            started = time.perf_counter()
            reference.append(loaded.call(name, chunk))
            tf_s += time.perf_counter() - started
            started = time.perf_counter()
            candidate.append(call(chunk))
            ov_s += time.perf_counter() - started
    except Exception as err:  # noqa: BLE001 - a call failing on the gate's inputs: serve on TensorFlow
        raise ConversionFailed(f"the gate's inputs failed to run: {_why(err)}") from err
    tolerance = config.gate.tolerance
    comparison = equivalence.compare(reference, candidate, precision=precision, tolerance=tolerance)
    on_inputs = None
    if samples is not None:
        try:
            expected = [loaded.call(name, chunk) for chunk in samples]
        except Exception as err:  # noqa: BLE001 - TensorFlow itself fails on them: the folder is at fault
            raise equivalence.GateInputsError(f"TensorFlow failed on them: {_why(err)}") from err
        try:
            got = [call(chunk) for chunk in samples]
        except Exception as err:  # noqa: BLE001 - the candidate fails on them: serve on TensorFlow
            raise ConversionFailed(f"the gate's sample inputs failed to run: {_why(err)}") from err
        on_inputs = equivalence.compare(expected, got, precision=precision, tolerance=tolerance)
    return GateResult(comparison, on_inputs, tf_s / ov_s if ov_s > 0 else 1.0)


def _warm_up_inputs(signature: Signature, allowed_batch_sizes: tuple[int, ...]) -> list[dict[str, np.ndarray]]:
    """Zeros of every allowed batch size (variable non-batch dimensions 1), as the runner's warm-up sends."""
    return [
        {
            t.name: np.zeros((size, *(1 if d is None else d for d in t.shape[1:])), np.dtype(t.dtype))
            for t in signature.inputs
        }
        for size in allowed_batch_sizes
    ]


def _openvino_check(target: _Target) -> None:
    _check_supported(target.loaded, target.device, target.config.extra_outputs, engine="OpenVINO")


def _openvino_prepare(target: _Target) -> tuple[Call, str, bool]:
    import openvino

    ov_model, cached = _cached_or_converted(
        target,
        OPENVINO,
        "model.xml",
        read=lambda file: _core().read_model(file),
        convert=lambda: convert(target.loaded),
        write=lambda model, file: openvino.save_model(model, file, compress_to_fp16=False),
    )
    call, actual = _compile(
        ov_model, target.loaded.signature, threads=target.threads, precision=target.config.precision
    )
    return call, actual, cached


def _openvino_again(target: _Target) -> tuple[Call, str]:
    return _compile(
        convert(target.loaded), target.loaded.signature, threads=target.threads, precision=target.config.precision
    )


# --- ONNX Runtime: tf2onnx converts the same traced function, ONNX Runtime's CPU provider runs it -----


_ONNX_INPUTS, _ONNX_OUTPUTS = "kerasserve.inputs", "kerasserve.outputs"
"""Metadata of a converted ONNX model: its input / output names in the signature's order (JSON lists)."""


def _onnxruntime_versions() -> str:
    import onnxruntime
    import tf2onnx

    return f"onnxruntime {onnxruntime.__version__} tf2onnx {tf2onnx.__version__} opset {ONNX_OPSET}"


def _onnxruntime_check(target: _Target) -> None:
    _check_supported(target.loaded, target.device, target.config.extra_outputs, engine="ONNX Runtime")


def _onnxruntime_prepare(target: _Target) -> tuple[Call, str, bool]:
    """The ONNX Runtime call of the default signature: the cached .onnx, else converted, opened, then cached."""
    _onnxruntime_precision(target.config.precision)
    signature, threads = target.loaded.signature, target.threads
    (_, call), cached = _cached_or_converted(
        target,
        ONNXRUNTIME,
        "model.onnx",
        read=lambda file: (b"", _onnxruntime_session(file, signature, threads)),
        convert=lambda: _onnxruntime_converted(target),  # opened before it is cached: a broken one never is
        write=lambda converted, file: file.write_bytes(converted[0]),
    )
    return call, "fp32", cached


def _onnxruntime_again(target: _Target) -> tuple[Call, str]:
    _onnxruntime_precision(target.config.precision)
    return _onnxruntime_converted(target)[1], "fp32"


def _onnxruntime_converted(target: _Target) -> tuple[bytes, Call]:
    """Convert with tf2onnx and open the result: the serialized model and its call."""
    model, errors = _onnxruntime_convert(target.loaded)
    return model, _onnxruntime_session(model, target.loaded.signature, target.threads, errors=errors)


def _onnxruntime_precision(precision: str) -> None:
    if precision != "fp32":
        # The model config refuses `backend: onnxruntime` with bf16; this is MODEL_BACKEND=onnxruntime's case.
        raise ConversionFailed(f"ONNX Runtime runs fp32 only here (precision: {precision} asks for OpenVINO)")


class _Traced:
    """What `tf2onnx.convert.from_function` asks of a tf.function, for an already traced concrete one."""

    def __init__(self, concrete: Any) -> None:
        self.concrete = concrete

    def get_concrete_function(self, *_: Any) -> Any:
        return self.concrete


class _ErrorLines(logging.Handler):
    """tf2onnx's error lines: an op it cannot convert is logged, and left in the graph (ONNX Runtime then refuses it)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage().splitlines()[0][:300])


def _onnxruntime_convert(loaded: LoadedModel) -> tuple[bytes, list[str]]:
    """Convert `loaded`'s default signature with tf2onnx (opset ONNX_OPSET): the same traced function OpenVINO converts.

    Returns the serialized ONNX model, its input and output names in the signature's order stored in
    its metadata, and tf2onnx's error lines (ops it could not convert).

    Raises:
        ConversionFailed: the trace or the conversion failed.
    """
    import tensorflow as tf
    import tf2onnx

    tf2onnx_log = logging.getLogger("tf2onnx")
    tf2onnx_log.setLevel(logging.WARNING)  # its INFO lines narrate every conversion
    errors = _ErrorLines()
    tf2onnx_log.addHandler(errors)
    signature = loaded.signature
    try:
        function = _signature_function(loaded)
        if function is not None:
            concrete = function
            inputs = [_spec_of(concrete, t.name) for t in signature.inputs]
            # The graph's outputs are the flattened structure's (a dict's: by key), named `Identity_<n>`.
            order = tf.nest.flatten({key: key for key in concrete.structured_outputs})
            outputs = [concrete.outputs[order.index(t.name)].name for t in signature.outputs]
        else:
            concrete = _keras_function(loaded)
            inputs = [spec.name for spec in concrete.structured_input_signature[0]]
            outputs = [t.name for t in concrete.outputs]
        proto, _ = tf2onnx.convert.from_function(_Traced(concrete), input_signature=[], opset=ONNX_OPSET)
    except Exception as err:  # noqa: BLE001 - every failure means: serve on TensorFlow, say why
        raise ConversionFailed(errors.lines[0] if errors.lines else _why(err)) from err
    finally:
        tf2onnx_log.removeHandler(errors)

    def find(names: list[str], name: str, what: str) -> str:
        for candidate in (name, name.split(":")[0], f"{name}:0"):
            if candidate in names:
                return candidate
        raise ConversionFailed(f"the ONNX model has no {what} named '{name}' (it has {names})")

    graph_inputs = [i.name for i in proto.graph.input]
    feeds = [find(graph_inputs, name, "input") for name in inputs]
    fetches = [find([o.name for o in proto.graph.output], name, "output") for name in outputs]
    if len(feeds) != len(graph_inputs):
        raise ConversionFailed(f"the ONNX model has {len(graph_inputs)} inputs, the signature {len(feeds)}")
    for key, value in ((_ONNX_INPUTS, feeds), (_ONNX_OUTPUTS, fetches)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    return proto.SerializeToString(), errors.lines


def _onnxruntime_session(
    model: bytes | Path, signature: Signature, threads: int, *, errors: Sequence[str] = ()
) -> Call:
    """Open `model` on ONNX Runtime's CPU provider with `threads` intra-op threads and one inter-op thread.

    Thread-safe call (ONNX Runtime's `run` is). Raises ConversionFailed when the session cannot be
    created (an op tf2onnx left unconverted: its error line is the reason).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    # Workers share the cores, as TensorFlow's pools do: idle pool threads sleep instead of spinning.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(
            model if isinstance(model, bytes) else str(model), options, providers=["CPUExecutionProvider"]
        )
        meta = session.get_modelmeta().custom_metadata_map
        feeds, fetches = json.loads(meta[_ONNX_INPUTS]), json.loads(meta[_ONNX_OUTPUTS])
    except Exception as err:  # noqa: BLE001 - a model ONNX Runtime cannot open serves on TensorFlow
        raise ConversionFailed(errors[0] if errors else _why(err)) from err
    names = [t.name for t in signature.inputs]
    outputs = [(t.name, np.dtype(t.dtype)) for t in signature.outputs]

    def call(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            answers = session.run(fetches, {feed: np.ascontiguousarray(values[n]) for feed, n in zip(feeds, names)})
        except Exception as err:  # ONNX Runtime's errors, as the runner reports TensorFlow's
            log.error("ONNX Runtime call failed: %s", err)
            raise InferenceError("the model failed while computing: ONNX Runtime error") from err
        return {name: np.asarray(value).astype(dtype, copy=False) for (name, dtype), value in zip(outputs, answers)}

    return call


# --- XLA: the runner's own call, compiled by XLA (`tf.function(jit_compile=True)`) ------------------


def _xla_check(target: _Target) -> None:
    """XLA runs on the worker's own device and serves `extra_outputs`; it computes in the model's dtypes, and
    compiles once per shape, so no bf16 and no variable dimension besides the batch axis."""
    loaded, config = target.loaded, target.config
    if config.precision != "fp32":
        raise ConversionFailed(
            f"precision {config.precision} is OpenVINO's; XLA computes in the model's own dtypes "
            "(build mixed precision into the model, e.g. a Keras dtype policy, and keep precision fp32)"
        )
    _check_common(loaded, "compiled")
    for tensor in loaded.signature.inputs:
        if any(d is None for d in tensor.shape[1:]):
            raise ConversionFailed(
                f"input '{tensor.name}' has a variable dimension besides the batch axis "
                "(XLA would compile again for every new size a request sends)"
            )


def _xla_prepare(target: _Target) -> tuple[Call, str, bool]:
    """Build the default signature's call with `jit_compile=True` on `device` and compile every allowed batch size.

    XLA compiles once per input shape, on the first call of each: compiling every size the runner
    pads to here, at load, means no request ever waits for a compilation. Nothing is cached.
    """
    from service.runner import device_scope, keras_signature, saved_model_call

    loaded, config, device = target.loaded, target.config, target.device
    signature = loaded.signature
    function = _signature_function(loaded)
    with device_scope(device):
        if function is not None:
            compiled = saved_model_call(function, signature.inputs, signature.outputs, jit_compile=True)
        else:
            xla_signature, compiled = keras_signature(loaded.model, config.extra_outputs, jit_compile=True)
            if xla_signature != signature:
                raise ConversionFailed("the compiled call's signature differs from the served one")

    def call(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with device_scope(device):
            return compiled(values)

    try:
        for inputs in _warm_up_inputs(signature, target.allowed):
            call(inputs)
    except Exception as err:  # noqa: BLE001 - an op XLA lacks, a shape it cannot fix: serve on TensorFlow
        raise ConversionFailed(_why(err)) from err
    return call, "fp32", False


def _xla_again(target: _Target) -> tuple[Call, str]:
    raise AssertionError("XLA keeps no cache, so there is no cached compilation to redo")  # pragma: no cover


_ENGINES = {
    OPENVINO: _Engine(OPENVINO, "OpenVINO", _openvino_check, _openvino_prepare, _openvino_again),
    ONNXRUNTIME: _Engine(ONNXRUNTIME, "ONNX Runtime", _onnxruntime_check, _onnxruntime_prepare, _onnxruntime_again),
    XLA: _Engine(XLA, "XLA", _xla_check, _xla_prepare, _xla_again, failed="compilation failed"),
}
