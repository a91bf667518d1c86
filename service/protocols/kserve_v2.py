"""KServe v2 / Open Inference Protocol (Triton HTTP) shapes, with the binary and classification extensions.

JSON tensors `{"name", "shape", "datatype", "data"}` (data flat or nested, row-major), the binary
tensor data extension (`Inference-Header-Content-Length`: a JSON header followed by raw little-endian
tensors; BYTES elements carry a 4-byte length prefix; header length 0 = the raw bytes of the only
input), and the classification extension (`"parameters": {"classification": K}` on a requested
output -> `"value:index:label"` BYTES, formatted like Triton). Converts to and from the data plane's
values; never calls a model.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from service import __version__
from service.classification import triton_classes
from service.dataplane import IndexEntry, ModelMetadata, PredictRequest, PredictResponse
from service.errors import InvalidInput, InvalidTensor, ModelNotFound
from service.preprocessing import STRING_DTYPES, cast_tensor
from service.protocols import check_shape, leaves, parse_int, parse_json_object
from service.servable import ServableRequest, ServableState, Signature, TensorInfo

SERVER_NAME = "kerasserve"
EXTENSIONS = ("binary_tensor_data", "classification", "model_repository")
HEADER_LENGTH = "Inference-Header-Content-Length"

V2_TO_NUMPY = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
NUMPY_TO_V2 = {v: k for k, v in V2_TO_NUMPY.items()} | {"string": "BYTES", "bytes": "BYTES", "bfloat16": "BF16"}


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """One entry of the request's `outputs`: binary or JSON, and top-K classes instead of values."""

    name: str
    binary: bool
    classification: int | None = None


@dataclass(frozen=True, slots=True)
class InferOptions:
    """What the answer should look like: the request id, requested outputs, binary by default."""

    id: str | None = None
    outputs: tuple[RequestedOutput, ...] | None = None
    binary_default: bool = False
    raw_binary: bool = False
    extra: Mapping[str, object] = field(default_factory=dict)


def v2_datatype(dtype: str) -> str:
    """Map a TensorInfo dtype to its v2 datatype name."""
    return NUMPY_TO_V2.get(dtype, dtype.upper())


def parse_version(name: str, version: str | None) -> ServableRequest:
    """The version a v2 URL names: the latest when absent; ASCII digits otherwise.

    Raises:
        ModelNotFound: a version that is not a positive integer in ASCII digits names no version.
    """
    if version is None or version == "":
        return ServableRequest.latest(name)
    number = parse_int(version)
    if number is None or number < 1:
        raise ModelNotFound(name)
    return ServableRequest.specific(name, number)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """Split a request body into its JSON header and the binary tensor data after it.

    Raises:
        InvalidInput: a header length that is not ASCII digits or is longer than the body.
    """
    if header_length is None:
        return body, b""
    length = parse_int(header_length.strip(" \t"))
    if length is None:
        raise InvalidInput(f"{HEADER_LENGTH} '{header_length}' is not a number")
    if length > len(body):
        raise InvalidInput(f"{HEADER_LENGTH} {length} is outside the body of {len(body)} bytes")
    return body[:length], body[length:]


def _parameters(value: object, where: str) -> dict:
    """Check an optional `parameters` object."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} 'parameters' must be an object")
    return value


def decode_bytes_elements(data: bytes, count: int, name: str) -> list[bytes]:
    """Read `count` BYTES elements, each a little-endian uint32 length followed by the bytes."""
    items: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(data):
            raise InvalidTensor(f"input '{name}': binary BYTES data ends before element {len(items)}")
        (size,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + size > len(data):
            raise InvalidTensor(f"input '{name}': binary BYTES element {len(items)} is longer than the data")
        items.append(data[offset : offset + size])
        offset += size
    if offset != len(data):
        raise InvalidTensor(
            f"input '{name}': binary BYTES data holds {len(data) - offset} bytes beyond {count} elements"
        )
    return items


def encode_bytes_elements(array: np.ndarray) -> bytes:
    """Write BYTES elements as a little-endian uint32 length followed by the bytes, row-major."""
    parts = []
    for value in array.reshape(-1):
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _shape(value: object, name: str) -> tuple[int, ...]:
    """Check a request shape before anything is allocated for it: a list of non-negative integers,
    bounded by `protocols.check_shape`.

    Raises:
        InvalidInput: not a list of non-negative integers, or out of `check_shape`'s bounds.
    """
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers")
    return check_shape(value, name)


def _decode_input(entry: object, binary: bytes, offset: int) -> tuple[str, np.ndarray, int]:
    """Decode one request input (JSON data or a slice of the binary data); return the new offset."""
    if not isinstance(entry, dict):
        raise InvalidInput("every entry of 'inputs' must be an object with name, shape, datatype and data")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("every input needs a 'name'")
    datatype = entry.get("datatype")
    if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
        raise InvalidInput(
            f"input '{name}': datatype '{datatype}' is not supported; use one of {', '.join(V2_TO_NUMPY)}"
        )
    shape = _shape(entry.get("shape"), name)
    count = math.prod(shape)  # bounded by _shape
    params = _parameters(entry.get("parameters"), f"input '{name}'")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidInput(f"input '{name}': binary_data_size {size} does not fit the binary data after the header")
        chunk = binary[offset : offset + size]
        offset += size
        if datatype == "BYTES":
            if count * 4 > len(chunk):  # every element needs at least its 4-byte length
                raise InvalidTensor(f"input '{name}': {size} bytes cannot hold {count} BYTES elements")
            array = np.empty(count, dtype=object)
            array[:] = decode_bytes_elements(chunk, count, name)
            return name, array.reshape(shape), offset
        dtype = np.dtype(V2_TO_NUMPY[datatype]).newbyteorder("<")
        if size != count * dtype.itemsize:
            raise InvalidTensor(f"input '{name}': {size} bytes do not hold {count} {datatype} values")
        return (
            name,
            np.frombuffer(chunk, dtype=dtype).astype(dtype.newbyteorder("="), copy=False).reshape(shape),
            offset,
        )
    if "data" not in entry:
        raise InvalidInput(f"input '{name}' has neither 'data' nor a binary_data_size parameter")
    data = entry["data"]
    if datatype == "BYTES":
        flat = list(leaves(data))
        array = np.empty(len(flat), dtype=object)
        for i, value in enumerate(flat):
            if not isinstance(value, str):
                raise InvalidTensor(f"input '{name}': BYTES data must be strings")
            array[i] = value.encode("utf-8")
    else:
        array = _numbers(name, datatype, data)
    if array.size != count:
        raise InvalidTensor(f"input '{name}': shape {list(shape)} needs {count} values, got {array.size}")
    return name, array.reshape(shape), offset


def _numbers(name: str, datatype: str, data: object) -> np.ndarray:
    """JSON data of a numeric datatype as a flat array: numbers only (numpy would also read '1' or '\u0661' as 1)."""
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as err:
        raise InvalidTensor(f"input '{name}': data does not hold {datatype} values of one shape") from err
    if raw.dtype.kind not in "biuf":
        if raw.dtype.kind in "US" or any(isinstance(v, str) or v is None for v in leaves(data)):
            raise InvalidTensor(f"input '{name}': {datatype} data must be numbers, not strings or null")
        raise InvalidTensor(f"input '{name}': data does not hold {datatype} values of one shape")
    return cast_tensor(raw.reshape(-1), TensorInfo(name, V2_TO_NUMPY[datatype], (None,)))


def decode_infer(header: bytes, binary: bytes, target: ServableRequest) -> tuple[PredictRequest, InferOptions]:
    """Turn an infer request (JSON header plus binary data) into a PredictRequest and answer options.

    Raises:
        InvalidInput: malformed JSON, inputs or outputs.
        InvalidTensor: data that does not match its shape or datatype.
    """
    body = parse_json_object(header, what="inference request header")
    entries = body.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise InvalidInput("'inputs' must be a non-empty list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for entry in entries:
        name, array, offset = _decode_input(entry, binary, offset)
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears twice")
        inputs[name] = array
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    params = _parameters(body.get("parameters"), "request")
    binary_default = bool(params.get("binary_data_output", False))
    requested = None
    if body.get("outputs") is not None:
        if not isinstance(body["outputs"], list):
            raise InvalidInput("'outputs' must be a list")
        outs = []
        for entry in body["outputs"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise InvalidInput("every entry of 'outputs' must be an object with a 'name'")
            oparams = _parameters(entry.get("parameters"), f"output '{entry['name']}'")
            k = oparams.get("classification")
            if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
                raise InvalidInput(f"output '{entry['name']}': classification must be a positive integer")
            outs.append(RequestedOutput(entry["name"], bool(oparams.get("binary_data", binary_default)), k))
        requested = tuple(outs)
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    options = InferOptions(id=request_id, outputs=requested or None, binary_default=binary_default)
    names = tuple(o.name for o in requested) if requested else None
    return PredictRequest(target, inputs, outputs=names), options


def decode_raw_infer(body: bytes, target: ServableRequest) -> tuple[PredictRequest, InferOptions]:
    """Raw binary request (header length 0): the body is the only input's bytes, batch 1.

    The body is shaped by `raw_inputs` for the signature of the version the data plane borrows for the
    request, so one borrow serves both shaping and running (a swap in between cannot mix two versions).
    """
    shape = functools.partial(raw_inputs, body)
    return PredictRequest(target, inputs_for=shape), InferOptions(binary_default=True, raw_binary=True)


def raw_inputs(body: bytes, signature: Signature) -> dict[str, np.ndarray]:
    """The inputs of a raw binary body for `signature`: its only input, one row, filled from the byte count.

    Raises:
        InvalidInput: the model has several inputs or more than one variable dimension.
        InvalidTensor: the byte count does not fit the input.
    """
    if len(signature.inputs) != 1:
        raise InvalidInput("a raw binary request needs a model with exactly one input")
    tensor = signature.inputs[0]
    dims = list(tensor.shape[1:]) if (signature.batched or signature.fixed_batch_size) else list(tensor.shape)
    if tensor.dtype in STRING_DTYPES:
        array = np.empty(1, dtype=object)
        array[0] = body
        return {tensor.name: array}
    dtype = np.dtype(tensor.dtype)
    unknown = [i for i, d in enumerate(dims) if d is None]
    if len(unknown) > 1:
        raise InvalidInput("a raw binary request needs an input with at most one variable dimension")
    known = int(np.prod([d for d in dims if d is not None])) if dims else 1
    count, rest = divmod(len(body), dtype.itemsize)
    if rest or (unknown and count % known) or (not unknown and count != known):
        raise InvalidTensor(f"{len(body)} bytes do not hold a {tensor.dtype} tensor of shape {dims}")
    shape = [1, *(count // known if d is None else d for d in dims)]  # at most one None, filled from the size
    batch = np.frombuffer(body, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    return {tensor.name: batch}


def encode_infer(response: PredictResponse, options: InferOptions) -> tuple[dict, bytes]:
    """Build the infer answer: the JSON header and the binary data that follows it (maybe empty)."""
    wanted = options.outputs or tuple(RequestedOutput(name, options.binary_default) for name in response.outputs)
    outputs, chunks = [], []
    for requested in wanted:
        array = response.outputs[requested.name]
        if requested.classification is not None:
            array = triton_classes(array, requested.classification, response.labels)
        entry: dict = {"name": requested.name, "datatype": _datatype_of(array), "shape": list(array.shape)}
        if requested.binary or options.raw_binary:
            raw = (
                encode_bytes_elements(array)
                if array.dtype == object
                else np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif array.dtype == object:
            entry["data"] = [
                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)
            ]
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    header: dict = {"model_name": response.servable_id.name, "model_version": str(response.servable_id.version)}
    if options.id is not None:
        header["id"] = options.id
    header["outputs"] = outputs
    return header, b"".join(chunks)


def _datatype_of(array: np.ndarray) -> str:
    """The v2 datatype of an output array."""
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    return NUMPY_TO_V2.get(array.dtype.name, array.dtype.name.upper())


def tensor_metadata(tensor: TensorInfo) -> dict:
    """One tensor in v2 metadata: name, v2 datatype, shape with -1 for variable dimensions."""
    return {
        "name": tensor.name,
        "datatype": v2_datatype(tensor.dtype),
        "shape": [-1 if d is None else d for d in tensor.shape],
    }


def encode_model_metadata(metadata: ModelMetadata, versions: list[int], format_: str) -> dict:
    """Model metadata: name, versions, platform, and the default signature's inputs and outputs."""
    signature = metadata.signatures[metadata.default_signature]
    return {
        "name": metadata.servable_id.name,
        "versions": [str(v) for v in versions],
        "platform": "tensorflow_savedmodel" if "savedmodel" in format_.lower() else "keras",
        "inputs": [tensor_metadata(t) for t in signature.inputs],
        "outputs": [tensor_metadata(t) for t in signature.outputs],
    }


def server_metadata() -> dict:
    """`GET /v2`: server name, version and extensions."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


# --- the model repository extension ----------------------------------------------------------------
INDEX_STATES = {
    ServableState.START: "LOADING",
    ServableState.LOADING: "LOADING",
    ServableState.AVAILABLE: "READY",
    ServableState.UNLOADING: "UNLOADING",
    ServableState.END: "UNAVAILABLE",
}
"""Triton's model states for the manager's version states (a version waiting to load is LOADING)."""
EVICTED_REASON = (
    "not loaded: the loaded models fill MAX_LOADED_MODELS or MAX_LOADED_BYTES; the next request for it loads it"
)


def _optional_body(body: bytes, what: str) -> dict:
    """An optional JSON object body (tritonclient sends an empty one to the index)."""
    return parse_json_object(body, what=what) if body.strip() else {}


def decode_repository_index(body: bytes) -> bool:
    """`POST /v2/repository/index`: empty, or `{"ready": bool}`; return `ready` (only models ready for inference).

    Raises:
        InvalidInput: not a JSON object, or `ready` not a boolean.
    """
    ready = _optional_body(body, "repository index request").get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("repository index request: 'ready' must be true or false")
    return ready


def decode_repository_load(body: bytes) -> None:
    """`POST /v2/repository/models/<name>/load`: empty, or `{"parameters": {...}}`.

    Raises:
        InvalidInput: not a JSON object, `parameters` not an object, or Triton's `config` and
            `file:` overrides, which this server does not take (a model's config file sits beside it).
    """
    parameters = _parameters(_optional_body(body, "load request").get("parameters"), "load request")
    overrides = sorted(k for k in parameters if k == "config" or str(k).startswith("file:"))
    if overrides:
        raise InvalidInput(
            f"load request: parameter '{overrides[0]}' (a Triton model config or file override) is not supported; "
            "put the model's files and config file (docs/model-config.md) in the models folder"
        )


def decode_repository_unload(body: bytes) -> None:
    """`POST /v2/repository/models/<name>/unload`: empty, or `{"parameters": {"unload_dependents": bool}}`.

    `unload_dependents` is accepted and has nothing to act on (no ensembles here).

    Raises:
        InvalidInput: not a JSON object, `parameters` not an object, `unload_dependents` not a boolean.
    """
    parameters = _parameters(_optional_body(body, "unload request").get("parameters"), "unload request")
    if not isinstance(parameters.get("unload_dependents", False), bool):
        raise InvalidInput("unload request: 'unload_dependents' must be true or false")


def encode_repository_index(entries: list[IndexEntry]) -> list[dict]:
    """Triton's index: `[{"name", "version"?, "state"?, "reason"?}]`; a model never loaded is listed by name alone."""
    index: list[dict] = []
    for entry in entries:
        if entry.state is None:
            index.append(
                {"name": entry.name, "state": "UNAVAILABLE", "reason": "unloaded"}
                if entry.unloaded
                else {"name": entry.name}
            )
            continue
        state = INDEX_STATES[entry.state]
        reason = entry.reason
        if entry.evicted and entry.state in (ServableState.START, ServableState.END):
            state, reason = "UNAVAILABLE", reason or EVICTED_REASON
        elif entry.state is ServableState.END and not reason:
            reason = "unloaded"
        index.append({"name": entry.name, "version": str(entry.version), "state": state, "reason": reason})
    return index
