"""Lambda code: reading the Python bytecode stored in Lambda layers, and the `func_load` wrapper.

A Lambda layer that wraps a Python `lambda` stores `base64(marshal.dumps(fn.__code__))` with its
defaults and closure: Keras 3 as `{"class_name": "__lambda__", "config": {"code", ...}}`, tf_keras as
`[code, defaults, closure]` with `"function_type": "lambda"` (docs/keras-loading.md, fact 4). This
module reads that code without running it (`stored_code`, `bytecode_readable`, `global_names`,
`runs_stored_code`), for the loader's config walk and the sandbox's cheap "is a probe needed?"
test, and holds `lambda_scope`, the wrapper that gives rebuilt Lambdas the registry's globals.

It imports neither TensorFlow nor Keras at module level (`lambda_scope` imports Keras when entered),
so the sandbox's parent side can use it.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import marshal
import sys
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def lambda_scope(lambda_globals: dict[str, Any]) -> Iterator[None]:
    """Make every Lambda rebuilt inside see `lambda_globals` and get tuple defaults.

    Keras gives Lambda code the globals of its own utility module and never the custom objects
    (docs/keras-loading.md, facts 5-6), and passes saved defaults as a list (fact 7). There is no
    public hook for either, so the module attribute Keras calls is replaced while one load runs,
    under the loader's `_LOAD_LOCK`, and restored afterwards.
    """
    from keras.src.utils import python_utils

    original = python_utils.func_load
    globs = {"__builtins__": builtins, **lambda_globals}

    def func_load(code: Any, defaults: Any = None, closure: Any = None, globs_: Any = None) -> Any:
        if isinstance(code, (tuple, list)):
            code, defaults, closure = code
        if isinstance(defaults, list):
            defaults = tuple(defaults)
        return original(code, defaults=defaults, closure=closure, globs=globs)

    patched: list[tuple[Any, str, Any]] = [(python_utils, "func_load", original)]
    python_utils.func_load = func_load
    tfk_utils = sys.modules.get("tf_keras.src.utils.generic_utils")
    if tfk_utils is not None:
        tfk_original = tfk_utils.func_load

        def tfk_func_load(code: Any, defaults: Any = None, closure: Any = None, globs: Any = None) -> Any:
            merged = dict(globs or {})
            merged.update(lambda_globals)
            merged.setdefault("__builtins__", builtins)
            if isinstance(code, (tuple, list)):
                code, defaults, closure = code
            if isinstance(defaults, list):
                defaults = tuple(defaults)
            return tfk_original(code, defaults=defaults, closure=closure, globs=merged)

        setattr(tfk_utils, "func_load", tfk_func_load)  # noqa: B010 - tf_keras' stubs do not declare it
        patched.append((tfk_utils, "func_load", tfk_original))
    try:
        yield
    finally:
        for module, name, value in patched:
            setattr(module, name, value)


def bytecode_readable(code: Any) -> bool:
    """Say whether marshalled function bytecode (base64 text) can be read by this Python."""
    if isinstance(code, (list, tuple)):
        code = code[0] if code else None
    if not isinstance(code, str):
        return True
    try:
        raw = base64.decodebytes(code.encode("ascii"))
        marshal.loads(raw)
    except (ValueError, EOFError, TypeError, UnicodeError):
        return False
    return True


def global_names(code: Any) -> set[str]:
    """Names a marshalled function loads as globals (empty when the bytecode cannot be read)."""
    import dis
    import types

    if isinstance(code, (list, tuple)):
        code = code[0] if code else None
    if not isinstance(code, str):
        return set()
    try:
        obj = marshal.loads(base64.decodebytes(code.encode("ascii")))
    except (ValueError, EOFError, TypeError, UnicodeError):
        return set()
    names: set[str] = set()
    stack = [obj]
    while stack:
        current = stack.pop()
        if not isinstance(current, types.CodeType):
            continue
        try:
            instructions = list(dis.get_instructions(current))
        except (IndexError, ValueError, TypeError, KeyError):
            # Corrupted bytecode (e.g. an out-of-range constant index): nothing to name here; loading
            # it fails later with a named error, or in the sandbox probe, not with a bare IndexError.
            continue
        for instruction in instructions:
            if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(instruction.argval, str):
                names.add(instruction.argval)
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return names


def stored_code(layer_config: dict) -> Any | None:
    """Return the stored bytecode of a Lambda config (Keras 2 list or Keras 3 dict), or None."""
    fn = layer_config.get("function")
    if isinstance(fn, dict) and fn.get("class_name") == "__lambda__":
        return (fn.get("config") or {}).get("code")
    if isinstance(fn, (list, tuple)) and layer_config.get("function_type", "lambda") == "lambda":
        return fn
    return None


def runs_stored_code(layer_config: object) -> bool:
    """Tell whether a Lambda layer config holds bytecode this Python can read (and so would run).

    Bytecode this Python cannot unmarshal never runs: the loader refuses it and asks for a replacement.
    """
    if not isinstance(layer_config, dict):
        return False
    code = stored_code(layer_config)
    if isinstance(code, (list, tuple)):  # Keras 2: [code, defaults, closure]
        code = code[0] if code else None
    return isinstance(code, str) and bytecode_readable(code)
