"""Protocol adapters: wire formats (native, TF Serving REST, KServe v2) to and from the data plane's values.

Each module turns one protocol's requests into `service.dataplane` request values and the data
plane's responses into that protocol's JSON or bytes. Adapters never call a model or the manager.
The helpers here are shared by several adapters: JSON parsing, declared shapes, numbers from text,
and TF Serving's unit axis (`add_unit_axis` / `squeeze_unit_axis`: TF Serving REST and gRPC, and
the native protocol's JSON body, which is TF Serving's), which the data plane knows nothing of.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from service.errors import InvalidInput
from service.preprocessing import UNNAMED, is_encoded
from service.servable import BackendReport, Signature

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""A `\\uD800`..`\\uDFFF` escape: JSON may spell a lone UTF-16 surrogate, which no UTF-8 text can hold."""
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json_object(body: bytes, *, what: str = "request body") -> dict:
    """Parse a body that must be one JSON object (NaN and Infinity allowed, as in TF Serving).

    Every string (keys too) must be valid Unicode: JSON's `\\ud800` escape decodes to a lone
    surrogate that cannot be encoded as UTF-8, so it is refused here, once, rather than wherever a
    string is later encoded (tensors of bytes, tf.Example features, echoed ids).

    Raises:
        InvalidInput: not JSON, nested too deeply, not an object, or a string holding a lone
            surrogate; the message names `what`.
    """
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidInput(f"{what} is not valid JSON: {err}") from err
    except RecursionError as err:
        raise InvalidInput(f"{what} is nested too deeply") from err
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    if _SURROGATE_ESCAPE.search(body):  # rare: only then walk every string (a valid pair is one character by now)
        surrogate = _lone_surrogate(value)
        if surrogate:
            raise InvalidInput(
                f"{what} holds a string with a lone UTF-16 surrogate ('\\u{ord(surrogate):04x}'); strings must be valid Unicode"
            )
    return value


def _lone_surrogate(value: object) -> str:
    """Return the first lone surrogate in any string or key of parsed JSON ("" when none); iterative, any depth."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found:
                return found.group()
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return ""


MAX_RANK = 32
"""Most dimensions a request tensor may have (numpy's limit is 64, some of its functions stop at 32;
models rarely pass 6)."""

MAX_ELEMENTS = 2**31 - 1
"""Most elements a request tensor may declare, and the largest dimension: far more than a body under
MAX_REQUEST_BYTES can carry, far from the int64 overflow numpy fails on."""


def check_shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    """Bound a declared shape (non-negative integers) before anything is allocated for it: its rank,
    every dimension and the element count. The one check of every protocol's declared shapes.

    Raises:
        InvalidInput: more than MAX_RANK dimensions, a dimension or a product over MAX_ELEMENTS
            (numpy refuses more than 64 dimensions, and int64 overflows).
    """
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"input '{name}': shape has {len(shape)} dimensions; at most {MAX_RANK}")
    largest = max(shape, default=0)
    if largest > MAX_ELEMENTS:
        raise InvalidInput(f"input '{name}': shape dimension {largest} is larger than {MAX_ELEMENTS}")
    # Zero dimensions aside: numpy refuses a shape like [2**31, 2**31, 0] too. At most 32 factors
    # below 2**31 make a small Python integer.
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} is too large: its dimensions multiply to more than {MAX_ELEMENTS}"
        )
    return tuple(shape)


_ASCII_INT = re.compile(r"[0-9]+")
_ASCII_FLOAT = re.compile(
    r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|infinity|nan)", re.IGNORECASE
)


def parse_int(text: str, *, max_digits: int = 18) -> int | None:
    """Read a non-negative integer written in ASCII digits only (at most `max_digits`); None for anything else.

    The one way numbers are read from URLs, query strings and headers. `int()` alone also takes
    '\u0661' (Arabic-Indic one), ' 7', '+7' and '1_0', and `str.isdigit()` passes '\u00b2', which
    `int()` then refuses: neither is a rule a client can rely on.
    """
    if len(text) > max_digits or not _ASCII_INT.fullmatch(text):
        return None
    return int(text)


def parse_float(text: str) -> float | None:
    """Read a decimal number written in ASCII only (`-1.5e-3`, `inf`, `nan`); None for anything else.

    `float()` alone also takes Unicode digits, surrounding spaces and '_' between digits.
    """
    if len(text) > 64 or not _ASCII_FLOAT.fullmatch(text):
        return None
    return float(text)


def leaves(value: object) -> Iterator[object]:
    """Yield the leaves of nested JSON lists, row-major."""
    if isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def backend_json(report: BackendReport) -> dict:
    """Which backend computes a version, and what its equivalence gate measured (when one ran)."""
    entry: dict = {"name": report.backend, "precision": report.precision, "requested": report.requested}
    if report.reason:
        entry["reason"] = report.reason
    if report.gate_rows:
        entry["gate"] = {
            "rows": report.gate_rows,
            "max_abs_diff": report.max_abs_diff,
            "max_rel_diff": report.max_rel_diff,
            "tolerance": report.tolerance,
            "top1_agreement": report.top1_agreement,
            "speedup": None if report.speedup is None else round(report.speedup, 3),
        }
        if report.inputs_rows:
            entry["gate"]["inputs"] = {
                "folder": report.inputs_folder,
                "rows": report.inputs_rows,
                "max_abs_diff": report.inputs_max_abs_diff,
                "max_rel_diff": report.inputs_max_rel_diff,
                "top1_agreement": report.inputs_top1_agreement,
            }
        entry["convert_s"] = round(report.convert_s, 4)
        entry["cached"] = report.cached
    return entry


# --- TF Serving's unit axis -------------------------------------------------------------------------


def _unit_axis_keys(inputs: Mapping[str, np.ndarray], signature: Signature) -> list[str]:
    """The inputs sent with one value per row to an input of shape (..., 1): each lacks only that trailing unit axis.

    Only for signatures with a row axis; an unnamed array counts only for a single-input signature;
    encoded bytes (images) never.
    """
    if not (signature.batched or signature.fixed_batch_size is not None):
        return []
    keys = []
    for tensor in signature.inputs:
        key = tensor.name if tensor.name in inputs else UNNAMED
        value = inputs.get(key)
        if (
            value is not None
            and not is_encoded(value)
            and value.ndim == len(tensor.shape) - 1
            and tensor.shape[-1] == 1
            and (key != UNNAMED or len(signature.inputs) == 1)
        ):
            keys.append(key)
    return keys


def add_unit_axis(inputs: Mapping[str, np.ndarray], signature: Signature) -> dict[str, np.ndarray]:
    """TF Serving's JSON and TensorProto inputs for `signature`: one value per row sent to an input of
    shape (None, 1) (`{"instances": [1.0, 2.0]}`) gets its trailing unit axis; other arrays are kept."""
    shaped = dict(inputs)
    for key in _unit_axis_keys(inputs, signature):
        shaped[key] = shaped[key][..., np.newaxis]
    return shaped


def unit_axis_inputs(inputs: Mapping[str, np.ndarray]) -> Callable[[Signature], dict[str, np.ndarray]]:
    """The `PredictRequest.inputs_for` hook of a TF Serving-shaped request: `add_unit_axis` for the
    signature of the version the data plane borrowed."""

    def inputs_for(signature: Signature) -> dict[str, np.ndarray]:
        return add_unit_axis(inputs, signature)

    return inputs_for


def squeeze_unit_axis(
    outputs: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray], signature: Signature | None
) -> Mapping[str, np.ndarray]:
    """The outputs answered to `inputs`: when `add_unit_axis` added a unit axis to them (one value per
    row sent), every output's trailing unit axis is dropped, so the answer has one value per row as well.

    `signature`: the one that computed the outputs (`PredictResponse.signature`); None: outputs as they are.
    """
    if signature is None or not _unit_axis_keys(inputs, signature):
        return outputs
    return {k: v[..., 0] if v.ndim >= 2 and v.shape[-1] == 1 else v for k, v in outputs.items()}
