"""tf.Example encoding for TF Serving's `:classify` and `:regress` requests.

TF Serving turns `{"examples": [{feature: value|list}, ...], "context": {...}}` into serialized
`tensorflow.Example` protos and feeds them to a classify or regress signature's string input. This
module writes those protos directly in the protobuf wire format (a handful of fields), so the API
layer needs neither TensorFlow nor generated proto classes. JSON value rules follow TF Serving's
json_tensor.cc: integers -> int64_list, other numbers -> float_list, strings and `{"b64": ...}` ->
bytes_list; context features are merged into every example. Never imports Flask or TensorFlow.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from service.errors import InvalidInput, InvalidTensor

if TYPE_CHECKING:  # pragma: no cover
    from service.servable import Signature

FeatureValue = bool | int | float | str | bytes


def _varint(value: int) -> bytes:
    """Encode an unsigned varint (negative int64 values as their 64-bit two's complement)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """Encode one length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def json_feature_values(name: str, value: object) -> list[FeatureValue]:
    """Flatten one JSON feature value (scalar, list or `{"b64": ...}`) into a list of Python values.

    Raises:
        InvalidInput: nested lists, nulls, objects other than b64, or invalid base64.
    """
    items = value if isinstance(value, list) else [value]
    values: list[FeatureValue] = []
    for item in items:
        if isinstance(item, dict):
            if set(item) != {"b64"} or not isinstance(item["b64"], str):
                raise InvalidInput(f'feature \'{name}\': an object value must be {{"b64": "<base64>"}}')
            try:
                values.append(base64.b64decode(item["b64"], validate=True))
            except (binascii.Error, ValueError) as err:
                raise InvalidInput(f"feature '{name}': invalid base64") from err
        elif isinstance(item, (bool, int, float, str)):
            values.append(item)
        else:
            raise InvalidInput(
                f"feature '{name}': values must be numbers, strings or {{\"b64\"}} objects, not {type(item).__name__ if item is not None else 'null'}"
            )
    return values


def feature_column(name: str, rows: Sequence[Sequence[FeatureValue]]) -> np.ndarray:
    """Turn one feature's values in every example into an input column: one row per example.

    A single value per example makes a column of shape (examples,), several of (examples, values).
    Strings and b64 values become an object array of bytes (kept whole: numpy's `S` arrays would cut
    trailing zero bytes off encoded images); numbers keep numpy's inference for the data plane to cast.

    Raises:
        InvalidTensor: strings mixed with numbers, examples with different counts of values, or
            integers outside 64 bits.
    """
    cells = [list(row) for row in rows]
    kinds = {isinstance(v, (str, bytes)) for row in cells for v in row}
    if kinds == {True, False}:
        raise InvalidTensor(f"feature '{name}' mixes strings and numbers")
    widths = {len(row) for row in cells}
    if len(widths) > 1:
        raise InvalidTensor(f"feature '{name}' has values of different lengths")
    width = widths.pop() if widths else 0
    if kinds == {True}:
        out = np.empty((len(cells),) if width == 1 else (len(cells), width), dtype=object)
        out.reshape(-1)[:] = [v.encode("utf-8") if isinstance(v, str) else v for row in cells for v in row]
        return out
    array = np.asarray([row[0] for row in cells] if width == 1 else cells)
    if array.dtype == object:
        raise InvalidTensor(f"feature '{name}' has an integer outside the int64 range")
    return array


def feature_columns(
    examples: Sequence[Mapping[str, object]], context: Mapping[str, object], signature: Signature
) -> dict[str, np.ndarray]:
    """Turn JSON examples into one column per input of `signature` (features named like inputs, the
    context merged into each example), as `feature_column` shapes them.

    Raises:
        InvalidInput: an example without a feature the signature takes; see `json_feature_values`.
        InvalidTensor: see `feature_column`.
    """
    columns: dict[str, np.ndarray] = {}
    for tensor in signature.inputs:
        rows = []
        for index, example in enumerate(examples):
            merged = {**context, **example}
            if tensor.name not in merged:
                raise InvalidInput(f"example {index} has no feature '{tensor.name}' (the model's input)")
            rows.append(json_feature_values(tensor.name, merged[tensor.name]))
        columns[tensor.name] = feature_column(tensor.name, rows)
    return columns


def encode_feature(name: str, values: Sequence[FeatureValue]) -> bytes:
    """Encode one `tensorflow.Feature` from Python values of one kind.

    Raises:
        InvalidInput: strings mixed with numbers.
    """
    texts = [v.encode() if isinstance(v, str) else v for v in values if isinstance(v, (str, bytes))]
    if values and len(texts) == len(values):
        return _field(1, b"".join(_field(1, v) for v in texts))  # bytes_list
    if any(isinstance(v, (str, bytes)) for v in values):
        raise InvalidInput(f"feature '{name}' mixes strings and numbers")
    if values and all(isinstance(v, (bool, int)) for v in values):
        if any(not -(1 << 63) <= int(v) < (1 << 63) for v in values):
            raise InvalidInput(f"feature '{name}' has an integer outside the int64 range")
        packed = b"".join(_varint(int(v)) for v in values)
        return _field(3, _field(1, packed))  # int64_list
    floats = [float(v) for v in values]
    if any(math.isfinite(f) and abs(f) > 3.4028234663852886e38 for f in floats):
        raise InvalidInput(f"feature '{name}' has a number outside the float32 range")
    packed = struct.pack(f"<{len(floats)}f", *floats)
    return _field(2, _field(1, packed) if floats else b"")  # float_list


def encode_example(features: Mapping[str, object], context: Mapping[str, object] | None = None) -> bytes:
    """Serialize one `tensorflow.Example` from JSON features, with `context` features merged in.

    Raises:
        InvalidInput: a feature value TF Serving would refuse too.
    """
    merged = {**(context or {}), **features}
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, encode_feature(key, json_feature_values(key, value))))
        for key, value in merged.items()
    )
    return _field(1, entries)


def decode_examples_request(body: Mapping[str, object]) -> tuple[list[Mapping[str, object]], Mapping[str, object]]:
    """Check a `:classify`/`:regress` body and return its examples and context.

    Raises:
        InvalidInput: `examples` missing or not a list of objects, `context` not an object.
    """
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples or not all(isinstance(e, dict) for e in examples):
        raise InvalidInput("'examples' must be a non-empty list of objects mapping feature names to values")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise InvalidInput("'context' must be an object mapping feature names to values")
    return examples, context
