"""Load errors: why a model did not load, in words that name each missing object and how to provide it.

Keras reports a missing custom object differently per format, often only deep in the exception
chain (docs/keras-loading.md, fact 9), and stops at the first one. `missing_names` reads every name
from the whole chain, `config_missing` adds the others a config walk found (unknown class names,
undefined Lambda globals), and `load_failure` turns a `LoadAttempt` (the loaders tried and how each
failed) into one `ModelLoadError` or `MissingCustomObject`. `root_cause` is the one-line reason
shown for each loader, without the server's paths.

It imports Keras only inside `keras_knows`; it never loads a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from service.custom_objects import LAMBDA_OBJECT_PREFIX, CustomObjectRegistry
from service.errors import MissingCustomObject, ModelLoadError, strip_paths
from service.formats import DetectedModel
from service.keras_config import HARD_SIGMOID_KERAS2, KERAS1_CLASSES, ConfigReport

PLUGIN_HINT = (
    "put the module that defines it (the training script's layers, losses and globals) into "
    "<MODELS_DIR>/plugins/ or name it in MODEL_PLUGINS (see docs/plugins.md)"
)
LAMBDA_HINT = (
    "it was saved by another Python version and its code cannot be read here: register a replacement "
    "with register_lambda('<layer name>', fn) in a plugin, or `lambdas:` in the model's config file"
)


_MISSING_PATTERNS = (
    (re.compile(r"Could not locate (?:class|function) '([^']+)'"), "object"),
    (
        re.compile(
            r"Unknown (?:layer|loss|metric|activation|initializer|regularizer|constraint|optimizer|object)(?: type)?: '?([^'\s.,]+)'?"
        ),
        "object",
    ),
    (
        re.compile(r"Could not interpret (?:loss|metric|activation|initializer) identifier: '?([^'\s]+?)'?$", re.M),
        "object",
    ),
    (re.compile(r"name '([^']+)' is not defined"), "global"),
)


def exception_chain(err: BaseException) -> list[BaseException]:
    """Return `err` and every exception in its `__cause__` / `__context__` chain."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        current = stack.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        chain.append(current)
        stack.extend([current.__cause__, current.__context__])
    return chain


def missing_names(err: BaseException) -> list[tuple[str, str]]:
    """Return (name, kind) of every missing object named anywhere in the exception chain.

    kind is "object" (layer, function, loss...) or "global" (a name a Lambda's code uses).
    """
    found: list[tuple[str, str]] = []
    for exc in exception_chain(err):
        text = str(exc)
        for pattern, kind in _MISSING_PATTERNS:
            for match in pattern.finditer(text):
                name = match.group(1).strip("'\"")
                if name.startswith(LAMBDA_OBJECT_PREFIX):
                    continue
                if (name, kind) not in found:
                    found.append((name, kind))
    return found


def root_cause(err: BaseException) -> str:
    """One line: the deepest informative message in the chain, without absolute paths."""
    chain = exception_chain(err)
    candidates = [e for e in chain if str(e).strip()] or chain
    deepest = candidates[-1]
    first_line = str(deepest).strip().splitlines()[0] if str(deepest).strip() else ""
    # Keras appends the whole layer config and generic advice; the name is in the first sentence.
    for noise in (" Full object config:", " Make sure custom classes", " Please ensure you are using"):
        first_line = first_line.split(noise, 1)[0]
    return strip_paths(f"{type(deepest).__name__}: {first_line}"[:400])


@dataclass
class LoadAttempt:
    """Bookkeeping of one `load()` call: loaders tried, their errors, warnings."""

    detected: DetectedModel
    tried: list[str] = field(default_factory=list)
    errors: list[tuple[str, BaseException]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    report: ConfigReport | None = None


def load_failure(attempt: LoadAttempt, registry: CustomObjectRegistry) -> ModelLoadError:
    """The error that says why every loader tried failed: the missing objects by name, else each root cause."""
    detected = attempt.detected
    name = detected.path.name
    where = (
        f"{name} ({detected.format.value}"
        + (f", Keras {detected.keras_version}" if detected.keras_version else "")
        + ")"
    )
    tried = ", ".join(attempt.tried)
    missing: list[tuple[str, str]] = []
    for _, err in attempt.errors:
        for item in missing_names(err):
            if item not in missing and not registry.knows(item[0]):
                missing.append(item)
    if missing and attempt.report is not None:
        # Keras stops at the first unknown name; the config names every one.
        missing.extend(config_missing(attempt.report, registry, missing))
    if missing:
        parts = []
        objects = [n for n, k in missing if k == "object"]
        globals_ = [n for n, k in missing if k == "global"]
        if objects:
            parts.append("custom object(s) " + ", ".join(f"'{n}'" for n in objects) + " not registered")
        if globals_:
            parts.append("Lambda global(s) " + ", ".join(f"'{n}'" for n in globals_) + " not defined")
        errors = "; ".join(f"{lbl}: {root_cause(e)}" for lbl, e in attempt.errors)
        message = f"cannot load {where}: {'; '.join(parts)}; {PLUGIN_HINT}. Loaders tried: {tried} ({errors})"
        if registry.plugin_errors:
            message += ". Plugins that failed to import: " + "; ".join(
                f"{k}: {v}" for k, v in registry.plugin_errors.items()
            )
        return MissingCustomObject(
            message, missing=tuple(n for n, _ in missing), format=detected.format.value, tried=tuple(attempt.tried)
        )
    errors = "; ".join(f"{lbl}: {root_cause(e)}" for lbl, e in attempt.errors)
    message = f"cannot load {where}. Loaders tried: {tried}. {errors}"
    if registry.plugin_errors:
        message += ". Plugins that failed to import: " + "; ".join(
            f"{k}: {v}" for k, v in registry.plugin_errors.items()
        )
    error = ModelLoadError(message, format=detected.format.value, tried=tuple(attempt.tried))
    return error


def config_missing(
    report: ConfigReport, registry: CustomObjectRegistry, known: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Unknown class names and undefined Lambda globals found in a config walk, not yet in `known`."""
    import builtins as builtins_module

    found: list[tuple[str, str]] = []
    seen = {name for name, _ in known}
    for name in sorted(report.class_names):
        if name not in seen and not registry.knows(name) and not keras_knows(name):
            found.append((name, "object"))
    available = set(registry.lambda_globals()) | set(dir(builtins_module))
    for name in sorted(report.lambda_global_names - available - seen):
        found.append((name, "global"))
    return found


_STRUCTURAL_NAMES = frozenset(
    {
        "Functional",
        "Model",
        "Sequential",
        "InputLayer",
        "__lambda__",
        "function",
        "method",
        "DTypePolicy",
        "FloatDTypePolicy",
        "__tensor__",
        "__numpy__",
        "__tuple__",
        "__keras_tensor__",
        "__bytes__",
        "__typespec__",
    }
)


def keras_knows(name: str) -> bool:
    """Say whether Keras 3 (or Keras 2 under the same name) ships `name` itself."""
    import keras

    if name in _STRUCTURAL_NAMES or name == HARD_SIGMOID_KERAS2:
        return True
    namespaces = (
        keras.layers,
        keras.initializers,
        keras.regularizers,
        keras.constraints,
        keras.optimizers,
        keras.losses,
        keras.metrics,
        keras.activations,
        keras.models,
        keras.dtype_policies,
    )
    if any(hasattr(ns, name) for ns in namespaces):
        return True
    plain = name.split(">", 1)[-1]
    if name.startswith("Custom>") and any(hasattr(ns, plain) for ns in namespaces):
        return True  # Keras 2.11+ optimizers: "Custom>Adam"
    return name in KERAS1_CLASSES or keras.saving.get_registered_object(name) is not None
