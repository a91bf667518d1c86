"""Loader: turns one model path (any supported format) into a `LoadedModel` with compiled calls.

`Loader.load(path, config)` detects the format by content (`service.formats`), then tries the load
paths that fit it, in order, until one works:

- `.keras` zip: Keras 3 (`keras3`), with the config repaired in a temporary copy when a Lambda
  replacement applies (`keras3-repaired`).
- full-model HDF5 and architecture JSON + weights: the model config is read and repaired first
  (`service.keras_config`: Keras 1/2 list-style Sequential, Sequential without InputLayer, `groups`
  in DepthwiseConv2D, initializer `dtype`, Keras 2 `hard_sigmoid`, Keras 1 argument names, Lambda
  replacements), then
  built by Keras 3 (`keras3` / `keras3-repaired`); when Keras 3 cannot build it, tf_keras builds it
  (`tf_keras`). Weights are read by the matching library's HDF5 reader (by name when the layer
  counts differ).
- SavedModel directory: `tf.saved_model.load` and its signatures (`saved_model`), or a TF1
  `Session` for graphs TF2 cannot prune (`tf1_session`).

While Keras rebuilds Lambda layers, `python_utils.func_load` is wrapped (`service.lambda_code`) so
the code sees the registry's globals (Keras never passes custom objects to it) and gets its defaults
as a tuple (docs/keras-loading.md, facts 5-7). The wrapper is process-wide, so every load holds
`_LOAD_LOCK`.

Each model's signatures and compiled calls are built by the runner (`runner.keras_signature`,
`saved_model_call`, `session_call`). Errors: every failure becomes a `ModelLoadError` (or
`MissingCustomObject`, `UnsafeModelRefused`) naming the file (never the server's absolute path), the
detected format, the loaders tried and each missing object, parsed from the whole exception chain
(`service.load_errors`). The model is never called with `training=True` and never through `predict()`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from service import lambda_code
from service.applications import LayerNode, Recognition, recognise
from service.custom_objects import LAMBDA_OBJECT_PREFIX, CustomObjectRegistry
from service.errors import MissingCustomObject, ModelLoadError, UnsafeModelRefused
from service.formats import DetectedModel, ModelFormat, detect_format
from service.keras_config import (
    HARD_SIGMOID_KERAS2,
    ConfigReport,
    looks_keras3,
    read_keras_config,
    repair_config,
)
from service.load_errors import (
    LAMBDA_HINT,
    PLUGIN_HINT,
    LoadAttempt,
    load_failure,
    missing_names,
    root_cause,
)
from service.loaded_model import LoadedModel
from service.model_config import ModelConfig
from service.runner import (
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    batch_layout,
    keras_signature,
    natural_key,
    saved_model_call,
    session_call,
    tensor_info,
    tensor_info_from_proto,
)
from service.servable import Signature
from service.settings import Settings

log = logging.getLogger(__name__)

_LOAD_LOCK = threading.RLock()
"""Held during every load: the func_load wrapper and Keras' global scopes are process-wide."""


# --------------------------------------------------------------------------------------------------
# Lazy imports
# --------------------------------------------------------------------------------------------------
def _tf() -> Any:
    import tensorflow as tf

    return tf


def _keras() -> Any:
    import keras

    return keras


def _tf_keras() -> Any:
    # tf_keras is slow to import and only needed for Keras 2 files Keras 3 cannot build.
    import tf_keras

    return tf_keras


def keras2_hard_sigmoid(x: Any) -> Any:
    """Keras 2's hard_sigmoid: clip(0.2 x + 0.5, 0, 1) (Keras 3's is clip(x / 6 + 0.5, 0, 1))."""
    ops = _keras().ops
    return ops.clip(0.2 * x + 0.5, 0.0, 1.0)


def layer_outline(model: Any) -> tuple[LayerNode, ...]:
    """List a Keras (3 or 2) model's operations in call order, each nested model's right after it.

    Keras 3 functional models list their ops too (`x[..., ::-1]`, `x - mean` on symbolic tensors),
    so a `preprocess_input` called inside the model is seen; tf_keras lists them as TFOpLambda layers.
    """
    nodes: list[LayerNode] = []

    def walk(container: Any, prefix: str) -> None:
        members = getattr(container, "operations", None)
        if members is None:
            members = getattr(container, "layers", None) or []
        for op in members:
            path = prefix + getattr(op, "name", type(op).__name__)
            is_layer = hasattr(op, "weights")
            is_model = is_layer and getattr(op, "layers", None) is not None
            has_weights = is_layer and not is_model and bool(op.weights)
            nodes.append(
                LayerNode(path, type(op).__name__, is_model=is_model, is_layer=is_layer, has_weights=has_weights)
            )
            if is_model:
                walk(op, path + "/")

    walk(model, "")
    return tuple(nodes)


def _recognise(model: Any) -> Recognition | None:
    """Recognise Keras Applications architectures in a loaded model; None when its layers cannot be read."""
    try:
        return recognise(getattr(model, "name", ""), layer_outline(model))
    except Exception:  # noqa: BLE001 - recognising is advice: it never fails a load
        log.debug(
            "cannot read the layers of %s to recognise an architecture", getattr(model, "name", "?"), exc_info=True
        )
        return None


# --------------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------------
class Loader:
    """Turns one model path into a `LoadedModel`; cheap to build, `load()` does the work.

    Thread-safe: loads are serialised on a process-wide lock (Keras' deserialisation state is global).
    """

    def __init__(self, registry: CustomObjectRegistry, settings: Settings) -> None:
        self._registry = registry
        self._settings = settings

    @property
    def registry(self) -> CustomObjectRegistry:
        return self._registry

    def load(self, path: Path, config: ModelConfig | None = None) -> LoadedModel:
        """Load the model at `path` (a file, or a folder holding one version) with its config.

        Raises:
            ModelLoadError: nothing loadable there, or every load path failed (the message names
                the format, the loaders tried and the root cause).
            MissingCustomObject: a layer, function, Lambda global or Lambda replacement is missing
                (each one named, with how to provide it).
            UnsafeModelRefused: the file holds Lambda code and allow_lambda is off.
        """
        path = Path(path)
        started = time.monotonic()
        try:
            detected = detect_format(path)
        except ModelLoadError:
            raise
        except Exception as err:  # noqa: BLE001 - unreadable files (permissions, h5py errors)
            raise ModelLoadError(f"cannot read '{path.name}': {root_cause(err)}") from err
        base_dirs = [path if path.is_dir() else path.parent, path.parent, path.parent.parent]
        try:
            registry = self._registry.for_model(config, base_dirs)
        except ValueError as err:
            raise MissingCustomObject(f"{path.name}: {err}", format=detected.format.value) from err
        attempt = LoadAttempt(detected)
        with _LOAD_LOCK:
            try:
                if detected.format is ModelFormat.SAVED_MODEL:
                    loaded = self._load_saved_model(detected, attempt, config)
                else:
                    loaded = self._load_keras(detected, attempt, registry, config)
            except ModelLoadError:
                raise
            except Exception as err:  # noqa: BLE001 - e.g. a config Keras never wrote; never raw
                log.debug("%s: unexpected load failure", path.name, exc_info=True)
                raise ModelLoadError(
                    f"cannot load {detected.path.name} ({detected.format.value}): {root_cause(err)}",
                    format=detected.format.value,
                    tried=tuple(attempt.tried),
                ) from err
        _choose_default_signature(loaded, config, attempt)
        loaded.load_s = time.monotonic() - started
        log.info(
            "loaded %s as %s via %s in %.2fs%s",
            path.name,
            detected.format.value,
            loaded.loader,
            loaded.load_s,
            f" ({'; '.join(loaded.warnings)})" if loaded.warnings else "",
        )
        return loaded

    # --- Keras files --------------------------------------------------------------------------
    def _allow_lambda(self, config: ModelConfig | None) -> bool:
        if config is not None and config.allow_lambda is not None:
            return config.allow_lambda
        return self._settings.allow_lambda

    def _load_keras(
        self, detected: DetectedModel, attempt: LoadAttempt, registry: CustomObjectRegistry, config: ModelConfig | None
    ) -> LoadedModel:
        raw_config, training_config = read_keras_config(detected)
        keras_major = detected.keras_major
        if keras_major is None and detected.format is not ModelFormat.KERAS_ZIP:
            keras_major = 3 if looks_keras3(raw_config) else 2
        elif detected.format is ModelFormat.KERAS_ZIP and keras_major is None:
            keras_major = 3
        repaired, report = repair_config(raw_config, keras_major=keras_major, registry=registry, target="keras3")
        attempt.report = report
        name = detected.path.name
        if report.code_lambdas and not self._allow_lambda(config):
            raise UnsafeModelRefused(
                f"{name} holds Python code in Lambda layer(s) {', '.join(report.code_lambdas)} and allow_lambda is off; "
                "set ALLOW_LAMBDA=true (or `allow_lambda: true` in the model's config) if you trust the file, "
                "or register replacements with register_lambda()",
                format=detected.format.value,
                missing=tuple(report.code_lambdas),
            )
        _check_saved_with(detected, report, config)
        _check_declared_objects(detected, registry, config)
        if report.unreadable_lambdas:
            raise MissingCustomObject(
                f"{name} ({detected.format.value}, Keras {detected.keras_version or '?'}): Lambda layer(s) "
                + ", ".join(f"'{n}'" for n in report.unreadable_lambdas)
                + f" need a replacement function: {LAMBDA_HINT}"
                + (
                    f" (saved by Python {config.saved_with['python']}, this server runs Python {_python_version()})"
                    if config is not None and config.saved_with.get("python")
                    else ""
                ),
                format=detected.format.value,
                missing=tuple(report.unreadable_lambdas),
                tried=(),
            )
        custom_objects = registry.custom_objects()
        for layer_name, fn in registry.lambdas().items():
            custom_objects[LAMBDA_OBJECT_PREFIX + layer_name] = fn
        custom_objects[HARD_SIGMOID_KERAS2] = keras2_hard_sigmoid
        lambda_globals = registry.lambda_globals()

        # Code lambdas were refused above when Lambda code is not allowed; Keras' safe mode stays on
        # then, as a second guard. Replaced Lambdas are plain registered functions either way.
        safe_mode = not self._allow_lambda(config)
        loaders: list[tuple[str, Callable[[], tuple[Any, list[str]]]]] = []
        label = "keras3-repaired" if report.repairs else "keras3"
        if detected.format is ModelFormat.KERAS_ZIP:
            loaders.append((label, lambda: self._keras3_zip(detected, repaired, report, custom_objects, safe_mode)))
        elif detected.format is ModelFormat.HDF5:
            loaders.append(
                (label, lambda: self._keras3_hdf5(detected, repaired, training_config, custom_objects, safe_mode))
            )
        else:
            loaders.append(
                (label, lambda: self._keras3_json(detected, repaired, custom_objects, keras_major, safe_mode))
            )
        if keras_major is not None and keras_major < 3 and detected.format is not ModelFormat.KERAS_ZIP:
            tf_keras_loader = (
                "tf_keras",
                lambda: self._tf_keras(detected, raw_config, keras_major, registry, custom_objects, safe_mode),
            )
            # Keras 1 weights need tf_keras' Keras-1 weight conversion (kernel layouts), which Keras 3 lacks.
            if keras_major == 1:
                loaders.insert(0, tf_keras_loader)
            else:
                loaders.append(tf_keras_loader)

        for label, fn in loaders:
            attempt.tried.append(label)
            if label == "tf_keras":
                _tf_keras()  # imported before the scope, so its func_load gets wrapped too
            try:
                with lambda_code.lambda_scope(lambda_globals):
                    model, warnings = fn()
                signature, call = keras_signature(model, config.extra_outputs if config is not None else ())
            except ModelLoadError:
                raise
            except Exception as err:  # noqa: BLE001 - every Keras failure is analysed below
                log.debug("%s: loader %s failed", name, label, exc_info=True)
                attempt.errors.append((label, err))
                continue
            attempt.warnings.extend(warnings)
            if attempt.errors:
                attempt.warnings.append(
                    "loaded by "
                    + label
                    + " after "
                    + ", ".join(f"{lbl} failed ({root_cause(e)[:160]})" for lbl, e in attempt.errors)
                )
            return LoadedModel(
                path=detected.path,
                format=detected.format.value,
                loader=label,
                signatures={DEFAULT_SIGNATURE: signature},
                default_signature=DEFAULT_SIGNATURE,
                warnings=tuple(attempt.warnings),
                recognition=_recognise(model),
                _calls={DEFAULT_SIGNATURE: call},
                _keep=[model],
            )
        raise load_failure(attempt, registry)

    def _keras3_zip(
        self, detected: DetectedModel, repaired: dict, report: ConfigReport, custom_objects: dict, safe_mode: bool
    ) -> tuple[Any, list[str]]:
        keras = _keras()
        with tempfile.TemporaryDirectory(prefix="kerasserve-") as tmp:
            target = Path(tmp) / "model.keras"
            if report.replaced_lambdas:
                _rewrite_zip(detected.path, target, repaired)
            else:
                try:
                    target.symlink_to(detected.path.resolve())
                except OSError:
                    shutil.copyfile(detected.path, target)
            warnings: list[str] = []
            try:
                model = keras.saving.load_model(
                    target, custom_objects=custom_objects, compile=True, safe_mode=safe_mode
                )
            except Exception as err:  # noqa: BLE001 - retried without compile; a layer error repeats there
                model = keras.saving.load_model(
                    target, custom_objects=custom_objects, compile=False, safe_mode=safe_mode
                )
                warnings.append(
                    _compile_warning(err, repaired.get("compile_config") or _zip_compile_config(detected.path))
                )
        return model, warnings

    def _keras3_hdf5(
        self,
        detected: DetectedModel,
        repaired: dict,
        training_config: dict | None,
        custom_objects: dict,
        safe_mode: bool,
    ) -> tuple[Any, list[str]]:
        import h5py
        from keras.src.legacy.saving import legacy_h5_format, saving_options, saving_utils
        from keras.src.saving import object_registration, serialization_lib

        keras = _keras()
        with h5py.File(detected.path, "r") as f:
            with (
                saving_options.keras_option_scope(use_legacy_config=True),
                serialization_lib.SafeModeScope(safe_mode),
                object_registration.CustomObjectScope(custom_objects),
            ):
                model = saving_utils.model_from_config(repaired, custom_objects=custom_objects)
                group = f["model_weights"] if "model_weights" in f else f
                _load_legacy_weights(legacy_h5_format, group, model)
        warnings = _compile_keras3(keras, model, training_config, custom_objects)
        return model, warnings

    def _keras3_json(
        self, detected: DetectedModel, repaired: dict, custom_objects: dict, keras_major: int | None, safe_mode: bool
    ) -> tuple[Any, list[str]]:
        from keras.src.legacy.saving import saving_options, saving_utils
        from keras.src.saving import object_registration, serialization_lib

        keras = _keras()
        repaired = dict(repaired)
        compile_config = repaired.pop("compile_config", None)
        warnings: list[str] = []
        if compile_config:
            warnings.append("compile=False: architecture JSON's compile_config ignored (serving never needs it)")
        with serialization_lib.SafeModeScope(safe_mode), object_registration.CustomObjectScope(custom_objects):
            if keras_major == 3 or (keras_major is None and looks_keras3(repaired)):
                model = keras.saving.deserialize_keras_object(
                    repaired, custom_objects=custom_objects, safe_mode=safe_mode
                )
            else:
                with saving_options.keras_option_scope(use_legacy_config=True):
                    model = saving_utils.model_from_config(repaired, custom_objects=custom_objects)
        if detected.weights is None:
            raise ModelLoadError(
                f"{detected.path.name} is an architecture without weights: put name.weights.h5, name_weights.h5 "
                "or name.h5 beside it",
                format=detected.format.value,
            )
        warnings.extend(_load_weights_file(model, detected.weights))
        return model, warnings

    def _tf_keras(
        self,
        detected: DetectedModel,
        raw_config: dict,
        keras_major: int,
        registry: CustomObjectRegistry,
        custom_objects: dict,
        safe_mode: bool,
    ) -> tuple[Any, list[str]]:
        import h5py

        tf_keras = _tf_keras()
        from tf_keras.src.saving import serialization_lib as tfk_serialization
        from tf_keras.src.saving.legacy import hdf5_format

        repaired, _ = repair_config(raw_config, keras_major=keras_major, registry=registry, target="tf_keras")
        repaired.pop("compile_config", None)
        # Keras 3 classes cannot live in a tf_keras model: hand tf_keras only plain functions.
        objects = {k: v for k, v in custom_objects.items() if not isinstance(v, type)}
        objects.pop(HARD_SIGMOID_KERAS2, None)
        with tf_keras.utils.custom_object_scope(objects), tfk_serialization.SafeModeScope(safe_mode):
            model = tf_keras.models.model_from_config(repaired, custom_objects=objects)
            if detected.format is ModelFormat.HDF5:
                with h5py.File(detected.path, "r") as f:
                    group = f["model_weights"] if "model_weights" in f else f
                    _load_legacy_weights(hdf5_format, group, model)
            elif detected.weights is not None:
                with h5py.File(detected.weights, "r") as f:
                    group = f["model_weights"] if "model_weights" in f else f
                    _load_legacy_weights(hdf5_format, group, model)
            else:
                raise ModelLoadError(
                    f"{detected.path.name} has no weights file beside it", format=detected.format.value
                )
        compiled = detected.format is ModelFormat.HDF5 and _has_training_config(detected.path)
        return model, ["compile=False: the tf_keras path serves the model uncompiled"] if compiled else []

    # --- SavedModel ---------------------------------------------------------------------------
    def _load_saved_model(
        self, detected: DetectedModel, attempt: LoadAttempt, config: ModelConfig | None
    ) -> LoadedModel:
        if config is not None and config.extra_outputs:
            raise ModelLoadError(
                f"{detected.path.name}: extra_outputs needs a Keras model file (.keras, .h5); a SavedModel "
                "serves only its signatures' outputs",
                format=detected.format.value,
            )
        for label, fn in (("saved_model", self._tf2_saved_model), ("tf1_session", self._tf1_session)):
            attempt.tried.append(label)
            try:
                loaded = fn(detected)
            except Exception as err:  # noqa: BLE001 - the next path is tried, then all are reported
                log.debug("%s: loader %s failed", detected.path.name, label, exc_info=True)
                attempt.errors.append((label, err))
                continue
            if attempt.errors:
                loaded.warnings = (
                    *loaded.warnings,
                    f"loaded by {label} after "
                    + ", ".join(f"{lbl} failed ({root_cause(e)[:160]})" for lbl, e in attempt.errors),
                )
            return loaded
        raise load_failure(attempt, self._registry)

    def _tf2_saved_model(self, detected: DetectedModel) -> LoadedModel:
        tf = _tf()
        obj = tf.saved_model.load(str(detected.path))
        defs = _signature_defs(detected.path)
        signatures: dict[str, Signature] = {}
        calls: dict[str, Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]] = {}
        for name, fn in obj.signatures.items():
            _, kwargs = fn.structured_input_signature
            in_specs = sorted(kwargs.items(), key=lambda item: natural_key(item[0]))
            out_specs = sorted(fn.structured_outputs.items(), key=lambda item: natural_key(item[0]))
            sig_def = defs.get(name)
            in_names = {k: v.name for k, v in sig_def.inputs.items()} if sig_def is not None else {}
            out_names = {k: v.name for k, v in sig_def.outputs.items()} if sig_def is not None else {}
            inputs = tuple(tensor_info(k, s.dtype, s.shape, in_names.get(k, "")) for k, s in in_specs)
            outputs = tuple(tensor_info(k, s.dtype, s.shape, out_names.get(k, "")) for k, s in out_specs)
            batched, fixed = batch_layout(inputs)
            method = sig_def.method_name if sig_def is not None and sig_def.method_name else PREDICT_METHOD
            signatures[name] = Signature(name, inputs, outputs, method, batched, fixed)
            calls[name] = saved_model_call(fn, inputs, outputs)
        if not signatures:
            raise ModelLoadError(
                f"{detected.path.name}: the SavedModel has no signatures (save it with signatures, or use model.export())",
                format=detected.format.value,
            )
        return LoadedModel(
            path=detected.path,
            format=detected.format.value,
            loader="saved_model",
            signatures=signatures,
            default_signature=DEFAULT_SIGNATURE,
            _calls=calls,
            _keep=[obj],
        )

    def _tf1_session(self, detected: DetectedModel) -> LoadedModel:
        tf = _tf()
        graph = tf.Graph()
        session_config = tf.compat.v1.ConfigProto(
            # The pools configure_tensorflow() chose for this worker (0 where it left TF's default).
            intra_op_parallelism_threads=tf.config.threading.get_intra_op_parallelism_threads(),
            inter_op_parallelism_threads=tf.config.threading.get_inter_op_parallelism_threads(),
        )
        session_config.gpu_options.allow_growth = True  # never take the whole GPU for one small graph
        session = tf.compat.v1.Session(graph=graph, config=session_config)
        tags = _saved_model_tags(detected.path)
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(session, tags, str(detected.path))
        signatures: dict[str, Signature] = {}
        calls: dict[str, Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]] = {}
        for name, sig in meta.signature_def.items():
            inputs = tuple(
                tensor_info_from_proto(k, v, graph)
                for k, v in sorted(sig.inputs.items(), key=lambda i: natural_key(i[0]))
            )
            outputs = tuple(
                tensor_info_from_proto(k, v, graph)
                for k, v in sorted(sig.outputs.items(), key=lambda i: natural_key(i[0]))
            )
            batched, fixed = batch_layout(inputs)
            signatures[name] = Signature(name, inputs, outputs, sig.method_name or PREDICT_METHOD, batched, fixed)
            feeds = {k: graph.get_tensor_by_name(v.name) for k, v in sig.inputs.items()}
            fetches = {k: graph.get_tensor_by_name(v.name) for k, v in sig.outputs.items()}
            calls[name] = session_call(session, feeds, fetches, inputs)
        if not signatures:
            session.close()
            raise ModelLoadError(f"{detected.path.name}: the TF1 graph has no signatures", format=detected.format.value)
        return LoadedModel(
            path=detected.path,
            format=detected.format.value,
            loader="tf1_session",
            signatures=signatures,
            default_signature=DEFAULT_SIGNATURE,
            _calls=calls,
            _keep=[session, graph],
            _close=session.close,
        )


# --------------------------------------------------------------------------------------------------
# Helpers for the load paths
# --------------------------------------------------------------------------------------------------
def _choose_default_signature(loaded: LoadedModel, config: ModelConfig | None, attempt: LoadAttempt) -> None:
    """Set the default signature: the config's `signature_name`, else `serving_default`, else the first."""
    wanted = config.signature_name if config is not None and config.signature_name else None
    if wanted is not None and wanted not in loaded.signatures:
        loaded.close()
        raise ModelLoadError(
            f"{attempt.detected.path.name}: signature '{wanted}' from the model's config does not exist; "
            f"the model has {sorted(loaded.signatures, key=natural_key)}",
            format=attempt.detected.format.value,
            tried=tuple(attempt.tried),
        )
    default = wanted or DEFAULT_SIGNATURE
    loaded.default_signature = (
        default if default in loaded.signatures else sorted(loaded.signatures, key=natural_key)[0]
    )


def _check_saved_with(detected: DetectedModel, report: ConfigReport, config: ModelConfig | None) -> None:
    """Refuse Lambda bytecode written by another Python minor version (it may crash this process)."""
    import platform

    saved = (config.saved_with.get("python") if config is not None else None) or ""
    if not saved or not report.code_lambdas:
        return
    here = platform.python_version_tuple()[:2]
    there = tuple(saved.split(".")[:2])
    if there != tuple(here):
        pending = [n for n in report.code_lambdas if n not in report.unreadable_lambdas]
        report.unreadable_lambdas.extend(pending)


def _check_declared_objects(
    detected: DetectedModel, registry: CustomObjectRegistry, config: ModelConfig | None
) -> None:
    """Name the custom objects a model's sidecar declares that nothing provides, before Keras fails."""
    if config is None or not config.custom_objects:
        return
    keras = _keras()
    missing = [
        name
        for name in config.custom_objects
        if not registry.knows(name) and keras.saving.get_registered_object(name) is None
    ]
    if missing:
        raise MissingCustomObject(
            f"cannot load {detected.path.name} ({detected.format.value}): custom object(s) "
            + ", ".join(f"'{n}'" for n in missing)
            + f" declared by the model's config are not registered; {PLUGIN_HINT}",
            missing=tuple(missing),
            format=detected.format.value,
        )


def _python_version() -> str:
    import platform

    return platform.python_version()


def _has_training_config(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        return f.attrs.get("training_config") is not None


def _zip_compile_config(path: Path) -> dict | None:
    with contextlib.suppress(Exception), zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json")).get("compile_config")
    return None


def _rewrite_zip(source: Path, target: Path, config: dict) -> None:
    """Copy a .keras zip with its config.json replaced."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            if item.filename == "config.json":
                dst.writestr("config.json", json.dumps(config))
            else:
                with src.open(item) as stream, dst.open(item.filename, "w") as out:
                    shutil.copyfileobj(stream, out, 1024 * 1024)


def _loss_names(config: Any, *, strings_only: bool = False) -> list[str]:
    """Names of losses / metrics in a training or compile config (plain strings only, if asked)."""
    names: list[str] = []

    def add(value: Any) -> None:
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, dict):
            if "class_name" in value:
                if strings_only and value.get("class_name") not in ("function",):
                    return
                inner = value.get("config")
                if value.get("class_name") in ("function", "method") and isinstance(inner, str):
                    names.append(inner)
                elif (
                    isinstance(inner, dict)
                    and isinstance(inner.get("name"), str)
                    and value["class_name"] in ("function",)
                ):
                    names.append(inner["name"])
                else:
                    names.append(str(value.get("registered_name") or value["class_name"]))
            else:
                for item in value.values():
                    add(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                add(item)

    if isinstance(config, dict):
        for key in ("loss", "metrics", "weighted_metrics"):
            add(config.get(key))
    return names


def _compile_warning(err: BaseException, compile_config: Any) -> str:
    names = [n for n, _ in missing_names(err)]
    if not names:
        names = _loss_names(compile_config)
    what = ", ".join(f"'{n}'" for n in names) if names else root_cause(err)
    message = f"compile=False: loss/metric {what} not resolved (serving does not need the compiled state)"
    log.warning("%s", message)
    return message


def unresolved_names(keras: Any, training_config: Any, custom_objects: dict) -> list[str]:
    """Names of losses/metrics given as plain strings or functions that Keras 3 cannot resolve."""
    unresolved = []
    for name in _loss_names(training_config, strings_only=True):
        if name in custom_objects or name in ("acc", "accuracy", "crossentropy", "ce"):
            continue
        resolved = False
        for getter in (keras.losses.get, keras.metrics.get):
            try:
                if getter(name) is not None:
                    resolved = True
                    break
            except (ValueError, TypeError):
                continue
        if not resolved and name not in unresolved:
            unresolved.append(name)
    return unresolved


def _compile_keras3(keras: Any, model: Any, training_config: dict | None, custom_objects: dict) -> list[str]:
    """Compile a model from an HDF5 training_config when every loss and metric resolves.

    Returns the warnings (one "compile=False: ..." line when the model stays uncompiled).
    """
    if not training_config:
        return []
    from keras.src.legacy.saving import saving_utils
    from keras.src.saving import object_registration

    with object_registration.CustomObjectScope(custom_objects):
        unresolved = unresolved_names(keras, training_config, custom_objects)
        if unresolved:
            message = "compile=False: loss/metric " + ", ".join(f"'{n}'" for n in unresolved) + " not resolved"
            log.warning("%s (serving does not need the compiled state)", message)
            return [message]
        try:
            model.compile(**saving_utils.compile_args_from_training_config(training_config, custom_objects))
        except Exception as err:  # noqa: BLE001 - serving never needs the compiled state
            message = f"compile=False: {root_cause(err)[:200]}"
            log.warning("%s (serving does not need the compiled state)", message)
            return [message]
    return []


def _load_legacy_weights(module: Any, group: Any, model: Any) -> None:
    """Load legacy HDF5 weights; by layer name when the layer counts differ."""
    try:
        module.load_weights_from_hdf5_group(group, model)
    except ValueError as err:
        if "mismatch" not in str(err).lower() and "layer count" not in str(err).lower():
            raise
        log.warning("weights: %s; loading by layer name", str(err).splitlines()[0])
        module.load_weights_from_hdf5_group_by_name(group, model)


def _load_weights_file(model: Any, weights: Path) -> list[str]:
    """Load a weights file into a Keras 3 model: legacy HDF5 (by name on mismatch) or `.weights.h5`."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(weights, "r") as f:
        legacy = "layer_names" in f.attrs or ("model_weights" in f and "layer_names" in f["model_weights"].attrs)
        if legacy:
            group = f["model_weights"] if "model_weights" in f else f
            try:
                legacy_h5_format.load_weights_from_hdf5_group(group, model)
                return []
            except ValueError as err:
                if "mismatch" not in str(err).lower():
                    raise
                legacy_h5_format.load_weights_from_hdf5_group_by_name(group, model)
                return [f"weights loaded by layer name ({str(err).splitlines()[0][:120]})"]
    with tempfile.TemporaryDirectory(prefix="kerasserve-") as tmp:
        target = Path(tmp) / "model.weights.h5"
        target.symlink_to(weights.resolve())
        model.load_weights(target)
    return []


def _saved_model_proto(path: Path) -> Any:
    from tensorflow.python.saved_model import loader_impl

    return loader_impl.parse_saved_model(str(path))


def _signature_defs(path: Path) -> dict[str, Any]:
    """SignatureDef protos of the serving meta graph (method names, graph tensor names)."""
    with contextlib.suppress(Exception):
        proto = _saved_model_proto(path)
        for meta in proto.meta_graphs:
            if "serve" in meta.meta_info_def.tags or len(proto.meta_graphs) == 1:
                return dict(meta.signature_def.items())
    return {}


def _saved_model_tags(path: Path) -> list[str]:
    with contextlib.suppress(Exception):
        proto = _saved_model_proto(path)
        tag_sets = [list(m.meta_info_def.tags) for m in proto.meta_graphs]
        for tags in tag_sets:
            if "serve" in tags:
                return tags
        if tag_sets:
            return tag_sets[0]
    return ["serve"]
