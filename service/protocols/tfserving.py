"""TensorFlow Serving REST shapes: URLs, row and columnar predict, classify/regress, status, metadata.

Converts TF Serving's JSON (as documented in api_rest.md and implemented in json_tensor.cc) to the
data plane's values and back. The JSON-tensor helpers here are shared with the native protocol,
whose JSON body is TF Serving's. TF Serving's shape rules live here, not in the data plane: one
value per row sent to an input of shape (None, 1) gets its unit axis on the way in and loses it on
the way out (`protocols.add_unit_axis` / `squeeze_unit_axis`, shared with gRPC and native), and
`:classify` / `:regress` outputs become `[label, score]` pairs or one value per row
(`examples_results`, shared with gRPC). Never imports TensorFlow; knows nothing of Flask requests.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service import classification
from service.dataplane import ExamplesRequest, ExamplesResponse, ModelMetadata, PredictRequest, PredictResponse
from service.errors import InferenceError, InvalidInput, InvalidTensor, ModelNotFound
from service.examples import decode_examples_request, feature_columns
from service.preprocessing import UNNAMED
from service.protocols import (
    MAX_RANK,
    add_unit_axis,
    backend_json,
    leaves,
    parse_int,
    squeeze_unit_axis,
    unit_axis_inputs,
)
from service.servable import ServableRequest, Signature, TensorInfo

if TYPE_CHECKING:  # pragma: no cover
    from service.status import ModelStatus

# URL grammar of TF Serving's REST API (http_rest_api_util.cc): case-insensitive, a version is
# digits, a label is [a-zA-Z0-9_]+. Both are matched here so the conflict can be reported.
_MODEL = r"(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?:/labels/(?P<label>[^/:]+))?"
POST_URL = re.compile(rf"^{_MODEL}:(?P<method>classify|regress|predict)$", re.IGNORECASE)
GET_URL = re.compile(rf"^{_MODEL}(?P<metadata>/metadata)?$", re.IGNORECASE)
LABEL = re.compile(r"^[a-zA-Z0-9_]+$")

DT_NAMES = {
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "float16": "DT_HALF",
    "bfloat16": "DT_BFLOAT16",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "bool": "DT_BOOL",
    "string": "DT_STRING",
    "complex64": "DT_COMPLEX64",
    "complex128": "DT_COMPLEX128",
}


@dataclass(frozen=True, slots=True)
class TfsTarget:
    """A parsed TF Serving URL: which version it names, and the verb or view."""

    request: ServableRequest
    method: str  # predict | classify | regress | status | metadata


def parse_url(path: str, *, post: bool) -> TfsTarget:
    """Parse the part of a `/v1/models/...` URL after `/v1/models/`.

    Raises:
        InvalidInput: the path is not one of TF Serving's model URLs; both a version and a label, a non-numeric version, or a malformed label.
    """
    match = (POST_URL if post else GET_URL).match(path)
    if match is None:
        # TF Serving answers InvalidArgument ("Malformed request") for URLs outside its grammar.
        if post:
            raise InvalidInput(
                "malformed request: POST /v1/models/<name>[/versions/<N>|/labels/<L>]:(predict|classify|regress)"
            )
        raise InvalidInput("malformed request: GET /v1/models/<name>[/versions/<N>|/labels/<L>][/metadata]")
    name, version, label = match.group("name"), match.group("version"), match.group("label")
    if version is not None and label is not None:
        raise InvalidInput("a request may not name both a version and a version label")
    if version is not None:
        number = parse_int(version)
        if number is None or number < 1:
            raise InvalidInput(f"version '{version}' is not a positive integer")
        request = ServableRequest.specific(name, number)
    elif label is not None:
        if not LABEL.match(label):
            raise InvalidInput(f"version label '{label}' may only contain letters, digits and '_'")
        request = ServableRequest.labelled(name, label)
    else:
        request = ServableRequest.latest(name)
    method = match.group("method").lower() if post else ("metadata" if match.group("metadata") else "status")
    return TfsTarget(request, method)


# --- JSON tensors ---------------------------------------------------------------------------------


def _is_b64(value: object) -> bool:
    """Tell whether a JSON value is a `{"b64": ...}` object."""
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _decode_leaf(name: str, value: object) -> object:
    """Turn one JSON leaf into bytes (strings, b64) or keep it (numbers); refuse nulls and objects."""
    if _is_b64(value):
        text = value["b64"]  # type: ignore[index]  # _is_b64 checked it is a dict holding "b64"
        if not isinstance(text, str):
            raise InvalidInput(f"input '{name or 'instances'}': \"b64\" must be a string")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise InvalidInput(f"input '{name or 'instances'}': invalid base64") from err
    if isinstance(value, str):
        return value.encode("utf-8")
    if value is None:
        raise InvalidTensor(f"input '{name or 'instances'}' holds null")
    if isinstance(value, (dict, list)):
        raise InvalidTensor(f"input '{name or 'instances'}' holds an object; only {{\"b64\": ...}} objects are values")
    return value


def json_to_array(name: str, value: object) -> np.ndarray:
    """Turn one JSON tensor (nested lists of numbers, bools, strings or `{"b64"}`) into an array.

    Numbers keep numpy's inference (float64 / int64 / bool); strings and b64 values become an object
    array of bytes. The data plane casts to the model's dtype.

    Raises:
        InvalidTensor: nested deeper than MAX_RANK, ragged lists, nulls, stray objects, strings mixed
            with numbers, integers outside 64 bits.
        InvalidInput: invalid base64.
    """
    shown = name or "instances"
    depth, first = 0, value
    while isinstance(first, list) and first:
        depth, first = depth + 1, first[0]
    if depth > MAX_RANK:  # before numpy builds it: some of its functions stop at 32 dimensions, all at 64
        raise InvalidTensor(f"input '{shown}' is nested {depth} lists deep; tensors have at most {MAX_RANK} dimensions")
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError) as err:
        raise InvalidTensor(f"input '{shown}' is ragged: every list at one depth must have the same length") from err
    if array.dtype.kind == "U":
        # numpy turns [1, "a"] into strings too: only all-string tensors are strings.
        if not all(isinstance(leaf, str) for leaf in leaves(value)):
            raise InvalidTensor(f"input '{shown}' mixes strings and numbers")
        out = np.empty(array.shape, dtype=object)
        out.reshape(-1)[:] = [s.encode("utf-8") for s in array.reshape(-1).tolist()]
        return out
    if array.dtype != object:
        return array
    out = np.empty(array.shape, dtype=object)
    for index, leaf in np.ndenumerate(array):
        out[index] = _decode_leaf(name, leaf)
    kinds = {isinstance(v, bytes) for v in out.flat}
    if kinds == {True}:
        return out
    if kinds == {True, False}:
        raise InvalidTensor(f"input '{shown}' mixes strings and numbers")
    # Only numbers, yet numpy kept objects: integers beyond 64 bits.
    raise InvalidTensor(f"input '{shown}' holds an integer outside the 64-bit range")


def decode_instances(instances: object) -> dict[str, np.ndarray]:
    """Row format: a list with one entry per row; rows are objects of named inputs or bare values.

    Raises:
        InvalidInput: not a list, empty, rows with different input names.
        InvalidTensor: see `json_to_array`.
    """
    if not isinstance(instances, list):
        raise InvalidInput("'instances' must be a list with one entry per row")
    if not instances:
        raise InvalidInput("'instances' is empty")
    first = instances[0]
    if isinstance(first, dict) and not _is_b64(first):
        keys = set(first)
        if not keys:
            raise InvalidInput("'instances' rows must name at least one input")
        columns: dict[str, list] = {key: [] for key in first}
        for index, row in enumerate(instances):
            if not isinstance(row, dict) or set(row) != keys:
                raise InvalidInput(
                    f"instance {index} must name the same inputs as instance 0: {', '.join(sorted(keys))}"
                )
            for key, value in row.items():
                columns[key].append(value)
        return {key: json_to_array(key, values) for key, values in columns.items()}
    return {UNNAMED: json_to_array("", instances)}


def decode_columnar(inputs: object) -> dict[str, np.ndarray]:
    """Columnar format: an object of named tensors, or one bare tensor for a single-input model."""
    if isinstance(inputs, dict) and not _is_b64(inputs):
        if not inputs:
            raise InvalidInput("'inputs' names no input")
        return {key: json_to_array(key, value) for key, value in inputs.items()}
    return {UNNAMED: json_to_array("", inputs)}


def decode_predict_body(body: Mapping[str, object], target: ServableRequest) -> tuple[PredictRequest, bool]:
    """Turn a TF Serving predict body into a PredictRequest; True when it used the columnar format.

    `output_filter` (the name TF Serving's PredictRequest gives it) lists the outputs to answer, in
    that order; absent, every output of the signature is answered. The request's `inputs_for` adds
    TF Serving's unit axis (`protocols.add_unit_axis`); `encode_predict` drops it from the outputs.

    Raises:
        InvalidInput: neither or both of `instances` and `inputs`, a bad `signature_name` or `output_filter`.
    """
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows == has_columns:
        raise InvalidInput(
            "the request must hold exactly one of 'instances' (row format) or 'inputs' (columnar format)"
        )
    signature_name = body.get("signature_name")
    if signature_name is not None and not isinstance(signature_name, str):
        raise InvalidInput("'signature_name' must be a string")
    outputs = decode_output_filter(body.get("output_filter"))
    inputs = decode_instances(body["instances"]) if has_rows else decode_columnar(body["inputs"])
    request = PredictRequest(
        target,
        inputs,
        signature_name=signature_name or None,
        outputs=outputs,
        inputs_for=unit_axis_inputs(inputs),
    )
    return request, has_columns


def decode_output_filter(value: object) -> tuple[str, ...] | None:
    """Read `output_filter`: a non-empty list of distinct output names (None when absent).

    Raises:
        InvalidInput: not a list of strings, empty, or naming an output twice.
    """
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise InvalidInput("'output_filter' must be a non-empty list of output names")
    if len(set(value)) != len(value):
        raise InvalidInput("'output_filter' names an output twice")
    return tuple(value)


def array_to_json(name: str, array: np.ndarray) -> object:
    """Turn an output array into JSON values; bytes become text, or `{"b64"}` for `*_bytes` outputs."""
    if array.dtype == object or array.dtype.kind == "S":
        as_b64 = name.endswith("_bytes")

        def convert(value: object) -> object:
            if isinstance(value, bytes):
                if as_b64:
                    return {"b64": base64.b64encode(value).decode("ascii")}
                try:
                    return value.decode("utf-8")
                except UnicodeDecodeError:
                    return {"b64": base64.b64encode(value).decode("ascii")}
            return value

        return np.vectorize(convert, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def rows_json(outputs: Mapping[str, np.ndarray]) -> list:
    """Row-shaped outputs: a list per row, bare for one output, else objects keyed by output name."""
    if len(outputs) == 1:
        name, array = next(iter(outputs.items()))
        value = array_to_json(name, array)
        return value if isinstance(value, list) else [value]
    columns = {name: array_to_json(name, array) for name, array in outputs.items()}
    first = next(iter(columns.values()))
    rows = len(first) if isinstance(first, list) else -1
    if any(not isinstance(c, list) or len(c) != rows for c in columns.values()):
        raise InvalidInput("the model's outputs have different batch sizes; use the columnar format ('inputs')")
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*columns.values())]


def predict_outputs(request: PredictRequest, response: PredictResponse) -> Mapping[str, np.ndarray]:
    """The outputs answered to a TF Serving-shaped request: one value per row where it sent one value
    per row to an input of shape (None, 1) (`protocols.squeeze_unit_axis`), else as computed."""
    return squeeze_unit_axis(response.outputs, request.inputs, response.signature)


def encode_predict(request: PredictRequest, response: PredictResponse, *, columnar: bool) -> dict:
    """TF Serving's predict answer to `request`: `predictions` (row format) or `outputs` (columnar)."""
    outputs = predict_outputs(request, response)
    if columnar:
        if len(outputs) == 1:
            name, array = next(iter(outputs.items()))
            return {"outputs": array_to_json(name, array)}
        return {"outputs": {name: array_to_json(name, array) for name, array in outputs.items()}}
    return {"predictions": rows_json(outputs)}


def decode_examples(body: Mapping[str, object], target: ServableRequest, method: str) -> ExamplesRequest:
    """Turn a `:classify`/`:regress` body into an ExamplesRequest."""
    examples, context = decode_examples_request(body)
    signature_name = body.get("signature_name")
    if signature_name is not None and not isinstance(signature_name, str):
        raise InvalidInput("'signature_name' must be a string")
    return examples_request(target, method, examples, context, signature_name or None)


def examples_request(
    target: ServableRequest,
    method: str,
    examples: Sequence[Mapping[str, object]],
    context: Mapping[str, object],
    signature_name: str | None,
) -> ExamplesRequest:
    """The ExamplesRequest of REST's and gRPC's `:classify`/`:regress`: a signature that takes the
    features as inputs gets them with TF Serving's unit axis (one value per example to an input of
    shape (None, 1)), as `:predict` does."""
    examples = tuple(examples)

    def inputs_for(signature: Signature) -> dict[str, np.ndarray]:
        return add_unit_axis(feature_columns(examples, context, signature), signature)

    return ExamplesRequest(target, method, examples, context, signature_name, inputs_for)  # type: ignore[arg-type]  # method: "classify" or "regress", from the URL grammar or the RPC


def examples_results(response: ExamplesResponse, method: str) -> list:
    """TF Serving's `:classify` / `:regress` results from the model's outputs (REST's and gRPC's one shaping).

    classify: per example, `[label, score]` for every class (a classify signature's `classes` and
    `scores`; else every class of the first output, with the model's labels or `""`). regress: one
    float per example (a regress signature's `outputs`; else the first output, one value per example).

    Raises:
        InvalidInput: a model with several values per example answering `:regress`.
        InferenceError: a classify signature that returned neither scores nor classes.
    """
    rows, outputs = response.rows, response.outputs
    if not response.examples_signature:
        name, first = next(iter(outputs.items()))
        flat = np.asarray(first).reshape(rows, -1)
        if method == "regress":
            if flat.shape[1] != 1:
                raise InvalidInput(f"regress needs one value per example; output '{name}' has {flat.shape[1]}")
            return flat[:, 0].astype(np.float64).tolist()
        return classification.tfserving_classes(flat, response.labels)
    if method == "regress":
        values = outputs.get("outputs", next(iter(outputs.values())))
        return np.asarray(values, dtype=np.float64).reshape(rows, -1)[:, 0].tolist()
    scores = outputs.get("scores")
    classes = outputs.get("classes")
    if scores is None and classes is None:
        raise InferenceError(f"classify signature '{response.signature_name}' returned neither scores nor classes")
    all_scores = [[]] * rows if scores is None else np.asarray(scores, dtype=np.float64).reshape(rows, -1).tolist()
    all_classes = (
        [[]] * rows
        if classes is None
        else [
            [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in row]
            for row in np.asarray(classes).reshape(rows, -1).tolist()
        ]
    )
    results = []
    for row_scores, row_classes in zip(all_scores, all_classes):
        count = max(len(row_scores), len(row_classes))
        results.append(
            [
                [row_classes[i] if i < len(row_classes) else "", row_scores[i] if i < len(row_scores) else 0.0]
                for i in range(count)
            ]
        )
    return results


def encode_examples(response: ExamplesResponse, method: str) -> dict:
    """TF Serving's classify/regress answer."""
    return {"results": examples_results(response, method)}


# --- status and metadata --------------------------------------------------------------------------


def encode_status(status: ModelStatus, request: ServableRequest) -> dict:
    """`GetModelStatusResponse` as JSON: one entry per version (or the one requested), latest first.

    Raises:
        ModelNotFound: the requested version or label does not exist.
    """
    versions = list(status.versions)
    if request.label is not None:
        if request.label not in status.version_labels:
            raise ModelNotFound(status.name, label=request.label)
        versions = [v for v in versions if v.version == status.version_labels[request.label]]
    elif request.version is not None:
        versions = [v for v in versions if v.version == request.version]
        if not versions:
            raise ModelNotFound(status.name, request.version)
    return {
        "model_version_status": [
            {
                "version": str(v.version),
                "state": v.state.value,
                "status": {"error_code": "UNKNOWN" if v.error else "OK", "error_message": v.error},
            }
            for v in sorted(versions, key=lambda v: v.version, reverse=True)
        ]
    }


def tensor_info_json(tensor: TensorInfo) -> dict:
    """One TensorInfo as TF Serving's metadata writes it."""
    unknown_rank = tensor.unknown_rank
    return {
        "dtype": DT_NAMES.get(tensor.dtype, "DT_INVALID"),
        "tensor_shape": {
            "dim": [] if unknown_rank else [{"size": str(-1 if d is None else d), "name": ""} for d in tensor.shape],
            "unknown_rank": unknown_rank,
        },
        "name": tensor.graph_name or f"{tensor.name}:0",
    }


def signature_def_json(signature: Signature) -> dict:
    """One SignatureDef as TF Serving's metadata writes it."""
    return {
        "inputs": {t.name: tensor_info_json(t) for t in signature.inputs},
        "outputs": {t.name: tensor_info_json(t) for t in signature.outputs},
        "method_name": signature.method_name,
        "defaults": {},
    }


def encode_metadata(metadata: ModelMetadata) -> dict:
    """`GetModelMetadataResponse` as JSON, with TF Serving's doubled `signature_def` key.

    A version whose config asked for a compiled backend also gets a `backend` entry in the
    `metadata` map (a map of any values in TF Serving's message); others answer exactly as TF Serving.
    """
    response: dict = {
        "model_spec": {
            "name": metadata.servable_id.name,
            "signature_name": "",
            "version": str(metadata.servable_id.version),
        },
        "metadata": {
            "signature_def": {
                "signature_def": {name: signature_def_json(sig) for name, sig in metadata.signatures.items()}
            }
        },
    }
    if metadata.backend.requested != "tensorflow":
        response["metadata"]["backend"] = backend_json(metadata.backend)
    return response
