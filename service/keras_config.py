"""Keras config repair: Keras 1 and 2 model configs made buildable by Keras 3 (or tf_keras).

Pure dict transforms over the `{"class_name", "config"}` model config of a Keras file (HDF5
`model_config`, architecture JSON, `.keras` `config.json`); `read_keras_config` reads it without
importing Keras. `repair_config` returns a repaired deep copy and a `ConfigReport` of what it found
(class names, Lambda layers, the globals their code loads) and changed:

- Keras 1 / 2.0-2.1 list-style Sequential configs, and Keras 1 layer and argument names;
- a Keras 2 Sequential without InputLayer gets an explicit one (Keras 3 guesses its shape wrong);
- `groups` in DepthwiseConv2D, `time_major` in RNNs and initializer `dtype`, which Keras 3 refuses;
- Keras 2's `hard_sigmoid`, kept under `HARD_SIGMOID_KERAS2` (Keras 3 changed the function);
- Lambda layers with a registered replacement point at it; stored code is converted to Keras 3's
  shape, and its output-shape code dropped when this Python cannot read it.

This module imports neither TensorFlow nor Keras, and never builds a model.
"""

from __future__ import annotations

import copy
import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service import lambda_code
from service.custom_objects import LAMBDA_OBJECT_PREFIX, CustomObjectRegistry
from service.formats import DetectedModel, ModelFormat

HARD_SIGMOID_KERAS2 = "kerasserve_keras2_hard_sigmoid"
"""Custom-object name of Keras 2's hard_sigmoid (0.2x + 0.5), which Keras 3 changed to x/6 + 0.5."""


@dataclass
class ConfigReport:
    """What a walk over a model config found and changed."""

    lambdas: list[str] = field(default_factory=list)
    """Names of every Lambda layer."""
    code_lambdas: list[str] = field(default_factory=list)
    """Lambda layers whose stored Python code would run (no replacement registered)."""
    unreadable_lambdas: list[str] = field(default_factory=list)
    """Lambda layers whose bytecode this Python cannot read, with no replacement."""
    replaced_lambdas: list[str] = field(default_factory=list)
    class_names: set[str] = field(default_factory=set)
    repairs: list[str] = field(default_factory=list)
    lambda_global_names: set[str] = field(default_factory=set)
    """Global names the readable Lambda code loads (LOAD_GLOBAL), e.g. tf, H, W."""

    def repaired(self, what: str) -> None:
        if what not in self.repairs:
            self.repairs.append(what)


_INITIALIZER_KEYS = re.compile(r".*_initializer$")


# Keras 1 argument names -> Keras 2 names (the Keras 2.0 legacy interfaces did this conversion).
_KERAS1_RENAMES = {
    "output_dim": "units",
    "init": "kernel_initializer",
    "inner_init": "recurrent_initializer",
    "W_regularizer": "kernel_regularizer",
    "b_regularizer": "bias_regularizer",
    "U_regularizer": "recurrent_regularizer",
    "W_constraint": "kernel_constraint",
    "b_constraint": "bias_constraint",
    "U_constraint": "recurrent_constraint",
    "bias": "use_bias",
    "nb_filter": "filters",
    "border_mode": "padding",
    "subsample": "strides",
    "inner_activation": "recurrent_activation",
    "dropout_W": "dropout",
    "dropout_U": "recurrent_dropout",
    "p": "rate",
    "gamma_init": "gamma_initializer",
    "beta_init": "beta_initializer",
    "input_length": None,
    "input_dtype": "dtype",
    "W_learning_rate_multiplier": None,
    "b_learning_rate_multiplier": None,
    "consume_less": None,
    "mode": None,
    "dim_ordering": "data_format",
    "forget_bias_init": None,
    "activity_regularizer": "activity_regularizer",
}
KERAS1_CLASSES = {
    "Convolution1D": "Conv1D",
    "Convolution2D": "Conv2D",
    "Convolution3D": "Conv3D",
    "AtrousConvolution2D": "Conv2D",
    "Deconvolution2D": "Conv2DTranspose",
    "SeparableConvolution2D": "SeparableConv2D",
}


def _keras1_layer(class_name: str, cfg: dict, report: ConfigReport) -> str:
    """Convert one Keras 1 layer config to Keras 2 names in place; return the new class name."""
    new_class = KERAS1_CLASSES.get(class_name, class_name)
    if "nb_row" in cfg and "nb_col" in cfg:
        cfg["kernel_size"] = [cfg.pop("nb_row"), cfg.pop("nb_col")]
    if "filter_length" in cfg:
        cfg["kernel_size"] = [cfg.pop("filter_length")]
    if "subsample_length" in cfg:
        cfg["strides"] = [cfg.pop("subsample_length")]
    if "pool_length" in cfg:
        cfg["pool_size"] = [cfg.pop("pool_length")]
    if "stride" in cfg and class_name.endswith("Pooling1D"):
        cfg["strides"] = [cfg.pop("stride")] if cfg["stride"] is not None else cfg.pop("stride")
    if "atrous_rate" in cfg:
        cfg["dilation_rate"] = cfg.pop("atrous_rate")
    for old, new in _KERAS1_RENAMES.items():
        if old in cfg and old != new:
            value = cfg.pop(old)
            if new is not None and new not in cfg:
                cfg[new] = value
    if cfg.get("data_format") in ("tf", "th"):
        cfg["data_format"] = "channels_last" if cfg["data_format"] == "tf" else "channels_first"
    for key in list(cfg):
        if key.endswith("_initializer") and isinstance(cfg[key], str):
            cfg[key] = {"class_name": _initializer_class(cfg[key]), "config": {}}
    if class_name in ("BatchNormalization",):
        for key in ("mode", "beta_regularizer", "gamma_regularizer"):
            cfg.pop(key, None) if cfg.get(key) is None else None
    report.repaired("Keras 1 layer arguments")
    return new_class


def _initializer_class(name: str) -> str:
    table = {
        "glorot_uniform": "GlorotUniform",
        "glorot_normal": "GlorotNormal",
        "he_normal": "HeNormal",
        "he_uniform": "HeUniform",
        "lecun_uniform": "LecunUniform",
        "lecun_normal": "LecunNormal",
        "zero": "Zeros",
        "zeros": "Zeros",
        "one": "Ones",
        "ones": "Ones",
        "orthogonal": "Orthogonal",
        "identity": "Identity",
        "normal": "RandomNormal",
        "uniform": "RandomUniform",
    }
    return table.get(name, name)


def _walk(obj: Any, visit: Callable[[dict], None]) -> None:
    """Call `visit` on every `{"class_name", "config"}` dict in a nested config, outermost first."""
    if isinstance(obj, dict):
        if "class_name" in obj and "config" in obj:
            visit(obj)
        for value in list(obj.values()):
            _walk(value, visit)
    elif isinstance(obj, list):
        for value in obj:
            _walk(value, visit)


def repair_config(
    config: dict,
    *,
    keras_major: int | None,
    registry: CustomObjectRegistry,
    target: str = "keras3",
) -> tuple[dict, ConfigReport]:
    """Return a repaired deep copy of a model config, and what was found and changed.

    Args:
        config: `{"class_name", "config"}` model config (HDF5 `model_config`, JSON, `config.json`).
        keras_major: major version of the Keras that wrote it (1, 2, 3; None = unknown).
        registry: supplies Lambda replacements (by layer name).
        target: "keras3" or "tf_keras": which library will build the result.
    """
    config = copy.deepcopy(config)
    report = ConfigReport()
    legacy = keras_major is not None and keras_major < 3

    # Keras 1 / 2.0-2.1 Sequential: `config` is the list of layers.
    if config.get("class_name") == "Sequential" and isinstance(config.get("config"), list):
        config["config"] = {"name": "sequential", "layers": config["config"]}
        report.repaired("list-style Sequential config")

    def visit(node: dict) -> None:
        class_name = node.get("class_name")
        cfg = node.get("config")
        if not isinstance(cfg, dict) or not isinstance(class_name, str):
            return
        if keras_major == 1 and "name" in cfg and class_name not in ("Sequential", "Model"):
            node["class_name"] = class_name = _keras1_layer(class_name, cfg, report)
        report.class_names.add(node.get("registered_name") or class_name)
        if class_name == "Lambda":
            _visit_lambda(node, cfg, report, registry, target, legacy)
        if legacy and target == "keras3":
            if class_name == "DepthwiseConv2D" and "groups" in cfg:
                cfg.pop("groups")
                report.repaired("'groups' argument of DepthwiseConv2D")
            if "time_major" in cfg and not cfg["time_major"]:
                cfg.pop("time_major")  # tf.keras 2 RNNs; Keras 3 is always batch-major
                report.repaired("'time_major' argument of RNN layers")
            for key, value in list(cfg.items()):
                if _INITIALIZER_KEYS.match(key) and isinstance(value, dict) and isinstance(value.get("config"), dict):
                    if value["config"].pop("dtype", None) is not None:
                        report.repaired("'dtype' argument of initializers")
                if value == "hard_sigmoid" and key in ("activation", "recurrent_activation", "inner_activation"):
                    cfg[key] = HARD_SIGMOID_KERAS2
                    report.repaired("Keras 2 hard_sigmoid kept (0.2x+0.5)")
        if class_name == "Sequential" and target == "keras3":
            _add_input_layer(cfg, report)

    _walk(config, visit)
    return config, report


def _visit_lambda(
    node: dict, cfg: dict, report: ConfigReport, registry: CustomObjectRegistry, target: str, legacy: bool
) -> None:
    name = cfg.get("name", "?")
    report.lambdas.append(name)
    replacement = registry.lambda_replacement(name)
    if replacement is not None:
        key = LAMBDA_OBJECT_PREFIX + name
        if target == "tf_keras":
            # tf_keras' legacy deserialiser swaps custom-object names in configs for the objects
            # themselves, so a "raw" function arrives as the registered function.
            cfg["function"] = key
            cfg["function_type"] = "raw"
        else:
            cfg["function"] = {"module": None, "class_name": "function", "config": key, "registered_name": key}
        if cfg.get("output_shape_type") == "lambda" or isinstance(cfg.get("output_shape"), dict):
            cfg["output_shape"] = None
            cfg["output_shape_type"] = "raw"
        if target == "keras3":
            for key in ("function_type", "output_shape_type", "module", "output_shape_module"):
                cfg.pop(key, None)
            if cfg.get("output_shape") is None:
                cfg.pop("output_shape", None)
        report.replaced_lambdas.append(name)
        report.repaired(f"Lambda '{name}' replaced by a registered function")
        return
    code = lambda_code.stored_code(cfg)
    if code is None:
        return  # a named function (function_type "function"): resolved through custom objects
    report.code_lambdas.append(name)
    if not lambda_code.bytecode_readable(code):
        report.unreadable_lambdas.append(name)
        return
    report.lambda_global_names |= lambda_code.global_names(code)
    output_code = None
    if cfg.get("output_shape_type") == "lambda" or (
        isinstance(cfg.get("output_shape"), dict) and cfg["output_shape"].get("class_name") == "__lambda__"
    ):
        output_code = cfg.get("output_shape")
    if output_code is not None and not lambda_code.bytecode_readable(output_code):
        # Keras 3 infers the output shape by calling the function; drop the unreadable shape code.
        cfg["output_shape"] = None
        cfg["output_shape_type"] = "raw"
    if target == "keras3" and isinstance(cfg.get("function"), (list, tuple)):
        fn = cfg["function"]
        cfg["function"] = {"class_name": "__lambda__", "config": {"code": fn[0], "defaults": fn[1], "closure": fn[2]}}
        if cfg.get("output_shape_type") == "lambda" and isinstance(cfg.get("output_shape"), (list, tuple)):
            shape_fn = cfg["output_shape"]
            cfg["output_shape"] = {
                "class_name": "__lambda__",
                "config": {"code": shape_fn[0], "defaults": shape_fn[1], "closure": shape_fn[2]},
            }
        for key in ("function_type", "output_shape_type", "module", "output_shape_module"):
            cfg.pop(key, None)
        if cfg.get("output_shape") is None:
            cfg.pop("output_shape", None)


def _add_input_layer(cfg: dict, report: ConfigReport) -> None:
    """Give a Keras 2 Sequential without InputLayer an explicit one (Keras 3 guesses its shape wrong)."""
    layers = cfg.get("layers")
    if not isinstance(layers, list) or not layers or not isinstance(layers[0], dict):
        return
    first = layers[0]
    if first.get("class_name") == "InputLayer":
        return
    first_cfg = first.get("config", {})
    shape = first_cfg.get("batch_input_shape") or first_cfg.get("batch_shape")
    if shape is None and first_cfg.get("input_shape") is not None:
        shape = [None, *first_cfg["input_shape"]]
    if shape is None and cfg.get("build_input_shape"):
        shape = cfg["build_input_shape"]
    if shape is None:
        return
    for key in ("batch_input_shape", "batch_shape", "input_shape"):
        first_cfg.pop(key, None)
    if first.get("class_name") != "Embedding":
        first_cfg.pop("input_dim", None)
    dtype = first_cfg.get("dtype") if isinstance(first_cfg.get("dtype"), str) else None
    input_cfg: dict[str, Any] = {"batch_shape": list(shape), "name": f"{first_cfg.get('name', 'input')}_input"}
    if dtype:
        input_cfg["dtype"] = dtype
    layers.insert(0, {"class_name": "InputLayer", "config": input_cfg})
    report.repaired("explicit InputLayer for a Sequential without one")


def looks_keras3(config: Any) -> bool:
    """Keras 3 configs carry `module` / `registered_name` keys on layers."""
    text = json.dumps(config)[:20000] if not isinstance(config, str) else config[:20000]
    return '"registered_name"' in text or '"module": "keras' in text


def read_keras_config(detected: DetectedModel) -> tuple[dict, dict | None]:
    """Return (model config, training config or None) of a Keras file, without importing Keras."""
    if detected.format is ModelFormat.HDF5:
        import h5py

        with h5py.File(detected.path, "r") as f:
            model_config = _attr_json(f.attrs.get("model_config"))
            training_config = _attr_json(f.attrs.get("training_config"))
        return model_config or {}, training_config
    if detected.format is ModelFormat.KERAS_ZIP:
        with zipfile.ZipFile(detected.path) as archive:
            return json.loads(archive.read("config.json")), None
    data = json.loads(detected.path.read_text(encoding="utf-8"))
    return data, None


def _attr_json(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return json.loads(value)
