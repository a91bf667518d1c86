"""Saving side: write a model in the recommended format with a sidecar that makes it load anywhere.

`save_model(model, path)` writes `<name>.keras` (Keras 3 zip) and `<name>.yaml`, a ModelConfig file
(the same file the repository reads beside a model) that records what the model needs beyond Keras:

- `custom_objects`: names of custom layers and loss / metric functions (the loader names any that no
  plugin provides, before it even tries);
- `plugins`: importable modules that define them, and `.py` files copied beside the model
  (`plugin_files=`), so a later load imports them without help;
- `globals`: plain values (numbers, strings, lists) the model's Lambda code reads, such as `H`, `W`;
- `saved_with`: the Python / Keras / TensorFlow versions, because Lambda bytecode only runs on the
  Python minor version that wrote it.

Keys already in an existing `<name>.yaml` (labels, preprocessing, ...) are kept. This module imports
Keras only inside `save_model`; it never serves.
"""

from __future__ import annotations

import logging
import platform
import shutil
import sys
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service.custom_objects import DEFAULT_GLOBAL_NAMES
from service.model_config import ModelConfig, read_model_config

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".yaml"
_LIBRARY_PREFIXES = ("keras", "tf_keras", "tensorflow", "numpy", "builtins", "math", "jax", "torch")


@dataclass
class Requirements:
    """What a model needs beyond Keras itself, found by walking its layers, losses and Lambdas."""

    custom_objects: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    """Modules that define the custom objects (import paths; `__main__` excluded)."""
    globals: dict[str, Any] = field(default_factory=dict)
    """Plain values Lambda code reads."""
    problems: list[str] = field(default_factory=list)
    """Things a later load cannot resolve from the sidecar alone (e.g. classes defined in __main__)."""

    def need(self, name: str, obj: Any) -> None:
        if name not in self.custom_objects:
            self.custom_objects.append(name)
        self.module_of(obj, name)

    def module_of(self, obj: Any, what: str) -> None:
        module = getattr(obj, "__module__", None) or ""
        if module.startswith(_LIBRARY_PREFIXES):
            return
        if module in ("__main__", "") or not _importable(module):
            problem = (
                f"'{what}' is defined in {module or 'an unknown module'}, which a server cannot import: "
                "put it in a module in <MODELS_DIR>/plugins/ or pass plugin_files="
            )
            if problem not in self.problems:
                self.problems.append(problem)
            return
        if module not in self.modules:
            self.modules.append(module)


def _importable(module: str) -> bool:
    """Say whether `module` can be imported by name on a fresh interpreter (not only by file path)."""
    from importlib.machinery import PathFinder

    top = module.split(".", 1)[0]
    if top in sys.builtin_module_names:
        return True
    try:
        return PathFinder.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _code_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


def _layers(model: Any) -> Iterator[Any]:
    for layer in getattr(model, "layers", []) or []:
        yield layer
        yield from _layers(layer)
        inner = getattr(layer, "layer", None)
        if inner is not None:
            yield inner


def _loss_functions(value: Any) -> Iterator[Any]:
    if value is None or isinstance(value, str):
        return
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _loss_functions(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _loss_functions(item)
    else:
        yield value


def requirements(model: Any) -> Requirements:
    """Find the custom objects, their modules and the Lambda globals a Keras model needs."""
    import keras

    found = Requirements()
    for obj in [model, *_layers(model)]:
        cls = type(obj)
        if cls.__module__.startswith(_LIBRARY_PREFIXES):
            if isinstance(obj, keras.layers.Lambda):
                _lambda_requirements(obj, found)
            continue
        found.need(keras.saving.get_registered_name(cls), cls)
    for fn in _loss_functions(getattr(model, "loss", None)):
        target = getattr(fn, "fn", fn)  # LossFunctionWrapper keeps the function in .fn
        module = getattr(target, "__module__", "") or ""
        if module.startswith(_LIBRARY_PREFIXES) or not callable(target):
            continue
        if isinstance(target, types.MethodType):
            found.problems.append(
                f"loss '{target.__name__}' is a bound method; the model will load with compile=False (fine for serving)"
            )
            continue
        name = getattr(target, "__name__", type(target).__name__)
        if "<locals>" in getattr(target, "__qualname__", ""):
            found.problems.append(
                f"loss '{name}' is a closure; provide a module-level '{name}' in a plugin to load it compiled "
                "(serving does not need it)"
            )
            continue
        found.need(name, target)
    return found


def _lambda_requirements(layer: Any, found: Requirements) -> None:
    fn = getattr(layer, "function", None)
    code = getattr(fn, "__code__", None)
    if fn is None or code is None:
        return
    if getattr(fn, "__name__", "") != "<lambda>":
        found.need(fn.__name__, fn)
        return
    module_globals = getattr(fn, "__globals__", {})
    for name in set(_code_names(code)):
        if name not in module_globals or name in DEFAULT_GLOBAL_NAMES:
            continue
        value = module_globals[name]
        if isinstance(value, types.ModuleType):
            continue  # e.g. `import tensorflow as tf`: the defaults or the plugin module provide it
        if _plain(value):
            found.globals[name] = value
        else:
            found.module_of(value if hasattr(value, "__module__") else fn, name)
    if fn.__module__ not in ("__main__",) and not fn.__module__.startswith(_LIBRARY_PREFIXES):
        found.module_of(fn, f"Lambda '{layer.name}'")


def save_model(
    model: Any,
    path: str | Path,
    *,
    plugins: Iterable[str] = (),
    plugin_files: Iterable[str | Path] = (),
    lambda_globals: Mapping[str, Any] | None = None,
    labels: Iterable[str] | None = None,
) -> Path:
    """Save `model` as `<name>.keras` with a `<name>.yaml` sidecar; return the model's path.

    Args:
        model: a Keras 3 model.
        path: target file; `.keras` is added when the name has another suffix.
        plugins: extra plugin modules (import paths) to record.
        plugin_files: `.py` files (e.g. the training module) copied beside the model as
            `<name>.<file>.py` and recorded as plugins of this model.
        lambda_globals: extra Lambda globals to record (plain values only).
        labels: class labels, index order, recorded as `labels:`.

    Raises:
        ValueError: a Lambda global is not a plain value (number, string, list, dict).
    """
    import keras
    import tensorflow as tf

    path = Path(path)
    if path.suffix != ".keras":
        path = path.with_name(path.name + ".keras")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)

    found = requirements(model)
    for name, value in (lambda_globals or {}).items():
        if not _plain(value):
            raise ValueError(f"Lambda global '{name}' must be a plain value (number, string, list, dict)")
        found.globals[name] = value
    recorded_plugins = [*found.modules, *plugins]
    for source in plugin_files:
        source = Path(source)
        target = path.with_name(f"{path.stem}.{source.name}")
        shutil.copyfile(source, target)
        recorded_plugins.append(target.name)
    if plugin_files:
        # The copied files define the objects; problems about __main__ / unimportable modules are solved.
        found.problems = [p for p in found.problems if "cannot import" not in p]
    for problem in found.problems:
        log.warning("%s: %s", path.name, problem)

    sidecar = path.with_suffix(SIDECAR_SUFFIX)
    existing = read_model_config(sidecar) if sidecar.exists() else ModelConfig()
    data = existing.model_dump(exclude_unset=True, mode="json")
    data["plugins"] = list(dict.fromkeys([*existing.plugins, *recorded_plugins]))
    data["globals"] = {**existing.globals, **found.globals}
    data["custom_objects"] = list(dict.fromkeys([*existing.custom_objects, *found.custom_objects]))
    data["saved_with"] = {"python": platform.python_version(), "keras": keras.__version__, "tensorflow": tf.__version__}
    if labels is not None:
        data["labels"] = list(labels)
    data = {k: v for k, v in data.items() if v not in ([], {}, None)}
    ModelConfig.model_validate(data)  # never write a sidecar the loader would reject
    header = f"# Written by service.saving.save_model for {path.name}; see docs/model-config.md.\n"
    sidecar.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    log.info(
        "saved %s with sidecar %s (%d custom objects, %d plugins)",
        path.name,
        sidecar.name,
        len(found.custom_objects),
        len(recorded_plugins),
    )
    return path
