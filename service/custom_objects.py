"""Custom object registry: the user's layers, losses, metrics, Lambda globals and Lambda replacements.

Filled by *plugins*: every `*.py` in `<MODELS_DIR>/plugins/` and every module named in
`MODEL_PLUGINS` is imported when the registry is built. Every public module-level name of a plugin
becomes both a custom object (when it is a class or a function) and a Lambda global, so the module a
user's training script used (`MyLayer`, `mycrossentropy`, `H = 64`, `import tensorflow as tf`) makes
their model load without any registration code. Plugins may also call the module-level functions
`register`, `register_globals` and `register_lambda` of this module; those calls are recorded into
the registry being built while the plugin is imported (and replayed when a module that is already
imported is named again).

Classes are registered under their plain name and under their Keras registered name
(`package>Name`), because Keras 3 saves a registered class under the latter (docs/keras-loading.md,
fact 10). A plugin that fails to import never stops the server: the error is recorded in
`plugin_errors` and logged, and only models that need the plugin's objects fail to load.

The registry is built once, then only read (the loader takes a per-model copy with `for_model`), so
it is safe to share between threads. This module owns plugin import; it never loads models.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from service.settings import PLUGINS_FOLDER

if TYPE_CHECKING:  # pragma: no cover
    from service.model_config import ModelConfig
    from service.settings import Settings

log = logging.getLogger(__name__)

LAMBDA_OBJECT_PREFIX = "kerasserve_lambda__"
"""Prefix of the custom-object name under which a Lambda replacement is handed to Keras."""

DEFAULT_GLOBAL_NAMES = ("tf", "keras", "K", "ops", "np", "math")
"""Names every Lambda sees unless a plugin or config overrides them."""

# Registrations made by plugin modules through the module-level functions, per module name, so that
# a module imported before (sys.modules cache) can be replayed into a new registry.
_RECORDS: dict[str, list[tuple[str, tuple[Any, ...], dict[str, Any]]]] = {}
_building: CustomObjectRegistry | None = None
_BUILD_LOCK = threading.RLock()


class KerasBackendCompat:
    """`K` for Lambda code: `keras.backend`, plus the Keras 2 backend functions Keras 3 moved to `ops`.

    Keras 2 Lambda code calls `K.mean(x, axis=1)`, `K.square(x)`, `K.concatenate(...)`; Keras 3's
    `keras.backend` no longer has them, `keras.ops` has most under the same name.
    """

    _RENAMED = {"pow": "power", "gather": "take"}

    def __getattr__(self, name: str) -> Any:
        import keras

        if hasattr(keras.backend, name):
            return getattr(keras.backend, name)
        ops = keras.ops
        if name == "batch_flatten":
            return lambda x: ops.reshape(x, (ops.shape(x)[0], -1))
        if name == "int_shape":
            return lambda x: tuple(getattr(x, "shape", ()))
        if name == "l2_normalize":
            return lambda x, axis=-1: x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), 1e-12))
        target = self._RENAMED.get(name, name)
        if hasattr(ops, target):
            return getattr(ops, target)
        import tensorflow as tf

        for namespace in (tf, tf.math, tf.nn):
            if hasattr(namespace, name):
                return getattr(namespace, name)
        raise AttributeError(f"K.{name} (neither keras.backend nor keras.ops has it)")


def default_lambda_globals() -> dict[str, Any]:
    """Return the default Lambda globals: tf, keras, K (keras.backend + Keras 2 names), ops, np, math."""
    import math

    import keras
    import numpy as np
    import tensorflow as tf

    return {"tf": tf, "keras": keras, "K": KerasBackendCompat(), "ops": keras.ops, "np": np, "math": math}


def _registered_name(obj: Any) -> str | None:
    """Keras' registered name (`package>Name`) of a class or function, when Keras knows one."""
    try:
        import keras

        name = keras.saving.get_registered_name(obj)
    except Exception:  # noqa: BLE001 - objects Keras cannot name are simply not aliased
        return None
    return name if isinstance(name, str) else None


def _public_names(module: ModuleType) -> dict[str, Any]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return {n: getattr(module, n) for n in names if hasattr(module, n)}


def plugin_files(models_dir: Path) -> list[Path]:
    """Return the plugin files of a models folder, sorted by name (import order)."""
    folder = Path(models_dir) / PLUGINS_FOLDER
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.py") if p.is_file() and not p.name.startswith((".", "_")))


class CustomObjectRegistry:
    """Custom objects, Lambda globals and Lambda replacements that the loader hands to Keras.

    Build it with `from_plugins(settings)` (or empty, for tests and scripts), fill it with
    `register*`, then only read it. `for_model(config)` returns a copy with one model's overrides.
    Reading is thread-safe; registering is meant for build time.
    """

    def __init__(self) -> None:
        self._objects: dict[str, Any] = {}
        self._globals: dict[str, Any] = {}
        self._lambdas: dict[str, Callable[..., Any]] = {}
        self.plugin_errors: dict[str, str] = {}
        """Plugin module -> why it failed to import (the server keeps running without it)."""
        self.plugin_modules: list[str] = []
        """Plugin modules imported successfully, in import order."""

    # --- building -----------------------------------------------------------------------------
    @classmethod
    def from_plugins(cls, settings: Settings) -> CustomObjectRegistry:
        """Build a registry from `<models_dir>/plugins/*.py` and the MODEL_PLUGINS modules.

        A plugin that fails to import (syntax error, exception) is recorded in `plugin_errors` and
        logged; it never raises here.
        """
        registry = cls()
        for path in plugin_files(settings.models_dir):
            registry.import_plugin_file(path)
        for name in settings.model_plugins:
            registry.import_plugin_module(name)
        if registry.plugin_errors:
            log.warning("plugins that failed to import: %s", ", ".join(sorted(registry.plugin_errors)))
        log.info(
            "custom object registry: %d objects, %d Lambda globals, %d Lambda replacements from plugins %s",
            len(registry._objects),
            len(registry._globals),
            len(registry._lambdas),
            registry.plugin_modules or "(none)",
        )
        return registry

    def import_plugin_file(self, path: Path) -> ModuleType | None:
        """Import one plugin `.py` file (freshly, every time) and register its names.

        The module is importable afterwards under its file stem, unless that name belongs to another
        module already (then `kerasserve_plugins.<stem>`), so pickled or registered names that
        mention the training script's module resolve.
        """
        path = Path(path)
        name = re.sub(r"\W", "_", path.stem)
        existing = sys.modules.get(name)
        if existing is not None and getattr(existing, "__file__", None) != str(path):
            name = f"kerasserve_plugins.{name}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            self._record_error(path.name, "cannot be imported (not a Python module)")
            return None
        module = importlib.util.module_from_spec(spec)
        with self._building_scope():
            _RECORDS.pop(name, None)
            previous = sys.modules.get(name)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException as err:  # noqa: BLE001 - a broken plugin must not stop the server
                if previous is not None:
                    sys.modules[name] = previous
                else:
                    sys.modules.pop(name, None)
                if isinstance(err, KeyboardInterrupt):
                    raise
                self._record_error(path.name, _describe(err, path.name))
                return None
        self.add_module(module)
        self.plugin_modules.append(path.name)
        return module

    def import_plugin_module(self, module_name: str) -> ModuleType | None:
        """Import a plugin by import path (e.g. `mypkg.layers`) and register its names."""
        module_name = module_name.strip()
        if not module_name:
            return None
        with self._building_scope():
            try:
                module = importlib.import_module(module_name)
            except BaseException as err:  # noqa: BLE001 - a broken plugin must not stop the server
                if isinstance(err, KeyboardInterrupt):
                    raise
                self._record_error(module_name, _describe(err, module_name))
                return None
        self.add_module(module)
        self.plugin_modules.append(module_name)
        return module

    def add_module(self, module: ModuleType) -> None:
        """Register every public module-level name of `module`, then replay its `register*` calls."""
        for name, value in _public_names(module).items():
            self._globals[name] = value
            if inspect.isclass(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
                self._add_object(name, value)
        for op, args, kwargs in _RECORDS.get(module.__name__, ()):
            getattr(self, op)(*args, **kwargs)

    def _building_scope(self) -> _BuildingScope:
        return _BuildingScope(self)

    def _record_error(self, module: str, message: str) -> None:
        self.plugin_errors[module] = message
        log.error("plugin %s failed to import: %s", module, message)

    def _add_object(self, name: str, obj: Any) -> None:
        self._objects[name] = obj
        registered = _registered_name(obj) if inspect.isclass(obj) or inspect.isfunction(obj) else None
        if registered and registered != name and ">" in registered:  # "package>Name" (fact 10)
            self._objects[registered] = obj

    # --- public registration API --------------------------------------------------------------
    def register(self, obj: Any = None, *, name: str | None = None) -> Any:
        """Register a class or function as a custom object (and a Lambda global); usable as decorator.

        `@registry.register`, `@registry.register(name="x")` and `registry.register(MyLayer)` all
        work. Classes are also registered under their Keras registered name (`package>Name`).
        """
        if obj is None:
            return lambda target: self.register(target, name=name)
        key = name or getattr(obj, "__name__", None)
        if not key:
            raise ValueError(f"cannot register {obj!r} without a name; pass name=")
        self._add_object(key, obj)
        self._globals.setdefault(key, obj)
        return obj

    def register_globals(self, **names: Any) -> None:
        """Make `names` visible to every Lambda layer's code (e.g. `H=64, W=64`)."""
        self._globals.update(names)

    def register_lambda(self, layer_name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Use `fn` instead of the stored code of every Lambda layer named `layer_name`.

        This is how Lambda layers saved by another Python (whose bytecode cannot be read here) are
        served: `register_lambda("lambda_1", lambda x: x / 127.5 - 1.0)`.
        """
        if not callable(fn):
            raise TypeError(f"Lambda replacement for '{layer_name}' must be callable, got {type(fn).__name__}")
        self._lambdas[layer_name] = fn
        return fn

    # --- reading ------------------------------------------------------------------------------
    def custom_objects(self) -> dict[str, Any]:
        """Return a copy of the custom objects (name -> class or function) for Keras."""
        return dict(self._objects)

    def lambda_globals(self) -> dict[str, Any]:
        """Return the globals a Lambda's code sees: the defaults, then every registered name."""
        return {**default_lambda_globals(), **self._globals}

    def lambdas(self) -> dict[str, Callable[..., Any]]:
        """Return the Lambda replacements (layer name -> function)."""
        return dict(self._lambdas)

    def lambda_replacement(self, layer_name: str) -> Callable[..., Any] | None:
        """Return the function registered for the Lambda layer `layer_name`, if any."""
        return self._lambdas.get(layer_name)

    def knows(self, name: str) -> bool:
        """Say whether `name` is a registered custom object or Lambda global."""
        return name in self._objects or name in self._globals

    def copy(self) -> CustomObjectRegistry:
        """Return an independent copy (plugin errors included)."""
        other = CustomObjectRegistry()
        other._objects = dict(self._objects)
        other._globals = dict(self._globals)
        other._lambdas = dict(self._lambdas)
        other.plugin_errors = dict(self.plugin_errors)
        other.plugin_modules = list(self.plugin_modules)
        return other

    def for_model(self, config: ModelConfig | None, base_dirs: Iterable[Path] = ()) -> CustomObjectRegistry:
        """Return a copy with one model's overrides: its plugins, globals and Lambda replacements.

        Args:
            config: the model's ModelConfig (None: no overrides, the registry itself is returned).
            base_dirs: folders in which relative `.py` plugin paths of the config are looked up.

        Raises:
            ValueError: a `lambdas` entry names a function that cannot be found (the message names it).
        """
        if config is None or not (config.plugins or config.globals or config.lambdas):
            return self
        registry = self.copy()
        for plugin in config.plugins:
            if plugin.endswith(".py"):
                candidates = [Path(plugin)] if Path(plugin).is_absolute() else [Path(d) / plugin for d in base_dirs]
                path = next((c for c in candidates if c.is_file()), None)
                if path is None:
                    registry.plugin_errors[plugin] = "plugin file not found beside the model"
                    continue
                registry.import_plugin_file(path)
            else:
                registry.import_plugin_module(plugin)
        registry._globals.update(config.globals)
        for layer_name, target in config.lambdas.items():
            registry._lambdas[layer_name] = registry._resolve_function(target, layer_name)
        return registry

    def _resolve_function(self, target: str, layer_name: str) -> Callable[..., Any]:
        if ":" in target:
            module_name, _, attr = target.partition(":")
            try:
                module = importlib.import_module(module_name)
                fn: Any = module
                for part in attr.split("."):
                    fn = getattr(fn, part)
            except (ImportError, AttributeError) as err:
                raise ValueError(
                    f"Lambda replacement '{target}' for layer '{layer_name}' cannot be imported: {err}"
                ) from err
        else:
            fn = self._objects.get(target, self._globals.get(target))
        if not callable(fn):
            raise ValueError(
                f"Lambda replacement '{target}' for layer '{layer_name}' is not a registered function; "
                "use 'module:function' or the name of a function defined in a plugin"
            )
        return fn


class _BuildingScope:
    """Route module-level `register*` calls to one registry while its plugins import."""

    def __init__(self, registry: CustomObjectRegistry) -> None:
        self._registry = registry
        self._previous: CustomObjectRegistry | None = None

    def __enter__(self) -> None:
        global _building
        _BUILD_LOCK.acquire()
        self._previous, _building = _building, self._registry

    def __exit__(self, *exc: object) -> None:
        global _building
        _building = self._previous
        _BUILD_LOCK.release()


def _describe(err: BaseException, where: str) -> str:
    """One line naming the error and the plugin line that raised it."""
    if isinstance(err, SyntaxError):
        return f"SyntaxError: {err.msg} (line {err.lineno})"
    frames = [
        f for f in traceback.extract_tb(err.__traceback__) if f.filename and Path(f.filename).name == Path(where).name
    ]
    line = f" (line {frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {err}{line}"


def _record(op: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], depth: int = 2) -> None:
    module_name = sys._getframe(depth).f_globals.get("__name__", "__main__")
    _RECORDS.setdefault(module_name, []).append((op, args, dict(kwargs)))
    if _building is not None:
        getattr(_building, op)(*args, **kwargs)


# --- module-level functions for plugin modules ------------------------------------------------
def register(obj: Any = None, *, name: str | None = None) -> Any:
    """Register a custom object into the registry being built (call from a plugin module).

    Usable as `@register`, `@register(name="x")` or `register(MyLayer)`.
    """
    if obj is None:
        module_name = sys._getframe(1).f_globals.get("__name__", "__main__")

        def decorator(target: Any) -> Any:
            _RECORDS.setdefault(module_name, []).append(("register", (target,), {"name": name}))
            if _building is not None:
                _building.register(target, name=name)
            return target

        return decorator
    _record("register", (obj,), {"name": name})
    return obj


def register_globals(**names: Any) -> None:
    """Add Lambda globals to the registry being built (call from a plugin module)."""
    _record("register_globals", (), names)


def register_lambda(layer_name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register the function that replaces the Lambda layer `layer_name` (call from a plugin module)."""
    _record("register_lambda", (layer_name, fn), {})
    return fn
