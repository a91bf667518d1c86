"""TensorFlow Serving gRPC messages (the `tensorflow-serving-api` package's classes) to and from the data plane's values.

`tensorflow.serving.PredictionService` (Predict, Classify, Regress, GetModelMetadata) and
`ModelService.GetModelStatus` carry the same requests as TF Serving's REST API, in protobuf: a
`ModelSpec` instead of the URL, `TensorProto`s instead of JSON tensors, `tf.Example` protos instead
of JSON features. Predict requests become the same `PredictRequest` REST builds (a DT_STRING tensor
sent to a numeric image input is a batch of encoded images, exactly as REST's `{"b64": ...}`);
status and metadata answers are REST's own JSON (`protocols.tfserving`) parsed into the messages,
so the two transports cannot drift apart. Tensors are converted with numpy, as TensorFlow's
`make_ndarray` / `make_tensor_proto` would (typed `*_val` fields in answers, as TF Serving writes
them). The generated messages import the `tensorflow` package; import this module only where
TensorFlow may start (a serving worker). Never calls a model or the manager.
"""

from __future__ import annotations

import base64
import math
from typing import TYPE_CHECKING

import numpy as np
from google.protobuf import json_format
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

from service.dataplane import ExamplesRequest, ExamplesResponse, ModelMetadata, PredictRequest, PredictResponse
from service.errors import InferenceError, InvalidInput, InvalidTensor, PayloadTooLarge
from service.protocols import check_shape, tfserving, unit_axis_inputs
from service.servable import ServableId, ServableRequest

if TYPE_CHECKING:  # pragma: no cover
    from service.status import ModelStatus

SIGNATURE_DEF = "signature_def"
"""The one metadata field TF Serving (and this server) answers in GetModelMetadata."""

# DataType -> (numpy dtype, the TensorProto field holding its values). DT_HALF travels as the
# float16 bits in `half_val`, as TensorFlow writes it.
_DTYPES: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype("float32"), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype("float64"), "double_val"),
    types_pb2.DT_HALF: (np.dtype("float16"), "half_val"),
    types_pb2.DT_INT8: (np.dtype("int8"), "int_val"),
    types_pb2.DT_INT16: (np.dtype("int16"), "int_val"),
    types_pb2.DT_INT32: (np.dtype("int32"), "int_val"),
    types_pb2.DT_INT64: (np.dtype("int64"), "int64_val"),
    types_pb2.DT_UINT8: (np.dtype("uint8"), "int_val"),
    types_pb2.DT_UINT16: (np.dtype("uint16"), "int_val"),
    types_pb2.DT_UINT32: (np.dtype("uint32"), "uint32_val"),
    types_pb2.DT_UINT64: (np.dtype("uint64"), "uint64_val"),
    types_pb2.DT_BOOL: (np.dtype("bool"), "bool_val"),
}
_DT_OF_NUMPY = {dtype: dt for dt, (dtype, _) in _DTYPES.items()}


# --- ModelSpec ------------------------------------------------------------------------------------


def decode_model_spec(spec: model_pb2.ModelSpec) -> ServableRequest:
    """The version a `ModelSpec` names: a version, a label, or (neither) the latest.

    Raises:
        InvalidInput: no model name, a version below 1, or a malformed label (REST's messages).
    """
    if not spec.name:
        raise InvalidInput("model_spec.name is empty; name the model to call")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        version = spec.version.value
        if version < 1:
            raise InvalidInput(f"version '{version}' is not a positive integer")
        return ServableRequest.specific(spec.name, version)
    if choice == "version_label":
        if not tfserving.LABEL.match(spec.version_label):
            raise InvalidInput(f"version label '{spec.version_label}' may only contain letters, digits and '_'")
        return ServableRequest.labelled(spec.name, spec.version_label)
    return ServableRequest.latest(spec.name)


def model_spec(servable_id: ServableId, signature_name: str = "") -> model_pb2.ModelSpec:
    """The `ModelSpec` of an answer: the model and the version that computed it."""
    spec = model_pb2.ModelSpec(name=servable_id.name, signature_name=signature_name)
    spec.version.value = servable_id.version
    return spec


# --- tensors ----------------------------------------------------------------------------------------


def tensor_to_array(name: str, tensor: tensor_pb2.TensorProto, *, max_bytes: int) -> np.ndarray:
    """Turn one request `TensorProto` into an array (DT_STRING: an object array of bytes).

    Values come from `tensor_content` (little-endian) or the typed `*_val` field; fewer typed values
    than the shape holds are padded with the last one, as TensorFlow does, up to `max_bytes` (the
    request size limit, MAX_REQUEST_BYTES: a small message must not expand into a huge array).

    Raises:
        InvalidInput: an unsupported dtype, an unknown rank or a negative dimension.
        InvalidTensor: values that do not fill the shape.
        PayloadTooLarge: padding would make the array larger than `max_bytes`.
    """
    if tensor.tensor_shape.unknown_rank:
        raise InvalidInput(f"input '{name}': the tensor's shape has unknown rank; send its dimensions")
    dims = [int(d.size) for d in tensor.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise InvalidInput(f"input '{name}': shape {dims} has a negative dimension")
    shape = check_shape(dims, name)
    count = math.prod(shape)
    if tensor.dtype == types_pb2.DT_STRING:
        values: list = list(tensor.string_val)
        array = np.empty(count, dtype=object)
        array[:] = _fill(name, values, count, shape, max_bytes, zero=b"")
        return array.reshape(shape)
    if tensor.dtype not in _DTYPES:
        shown = (
            types_pb2.DataType.Name(tensor.dtype) if tensor.dtype in types_pb2.DataType.values() else str(tensor.dtype)
        )
        raise InvalidInput(f"input '{name}': dtype {shown} is not supported")
    dtype, field = _DTYPES[tensor.dtype]
    if tensor.tensor_content:
        content = tensor.tensor_content
        if len(content) != count * dtype.itemsize:
            raise InvalidTensor(
                f"input '{name}': {len(content)} bytes of tensor_content do not hold a tensor of shape {list(shape)}"
            )
        little = dtype.newbyteorder("<")
        return np.frombuffer(content, dtype=little).astype(dtype, copy=False).reshape(shape)
    values = list(getattr(tensor, field))
    if field == "half_val":
        filled = np.asarray(_fill(name, values, count, shape, max_bytes), dtype=np.uint16).view(np.float16)
        return filled.reshape(shape)
    try:
        return np.asarray(_fill(name, values, count, shape, max_bytes), dtype=dtype).reshape(shape)
    except OverflowError as err:
        raise InvalidTensor(f"input '{name}': a value is outside the range of {dtype.name}") from err


def _fill(name: str, values: list, count: int, shape: tuple[int, ...], max_bytes: int, *, zero: object = 0) -> list:
    """`values` for `count` elements: as many, or padded with the last (no values at all: `zero`s)."""
    if len(values) == count:
        return values
    if len(values) > count:
        raise InvalidTensor(f"input '{name}': shape {list(shape)} needs {count} values, got {len(values)}")
    if count * 8 > max_bytes:
        raise PayloadTooLarge(
            f"input '{name}': shape {list(shape)} holds {count} values, more than the limit of {max_bytes} bytes "
            "(MAX_REQUEST_BYTES) allows"
        )
    return values + [values[-1] if values else zero] * (count - len(values))


def array_to_tensor(name: str, array: np.ndarray) -> tensor_pb2.TensorProto:
    """Turn one output array into a `TensorProto` with its typed `*_val` field, as TF Serving answers.

    Raises:
        InferenceError: a dtype TensorProto cannot carry (e.g. complex outputs).
    """
    tensor = tensor_pb2.TensorProto()
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    if array.dtype == object or array.dtype.kind in "SU":
        tensor.dtype = types_pb2.DT_STRING
        tensor.string_val.extend(
            v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.reshape(-1).tolist()
        )
        return tensor
    dt = _DT_OF_NUMPY.get(array.dtype.newbyteorder("="))
    if dt is None:
        raise InferenceError(f"output '{name}' has dtype {array.dtype.name}, which this server cannot send over gRPC")
    tensor.dtype = dt
    _, field = _DTYPES[dt]
    flat = array.reshape(-1)
    getattr(tensor, field).extend((flat.view(np.uint16) if field == "half_val" else flat).tolist())
    return tensor


# --- Predict ----------------------------------------------------------------------------------------


def decode_predict(request: predict_pb2.PredictRequest, *, max_bytes: int) -> PredictRequest:
    """Turn a `PredictRequest` message into the data plane's PredictRequest (`max_bytes`: MAX_REQUEST_BYTES).

    Raises:
        InvalidInput: see `decode_model_spec` and `tensor_to_array`; no inputs; an output named twice.
        InvalidTensor / PayloadTooLarge: see `tensor_to_array`.
    """
    target = decode_model_spec(request.model_spec)
    if not request.inputs:
        raise InvalidInput("the request has no inputs; send one TensorProto per input of the signature")
    inputs = {name: tensor_to_array(name, tensor, max_bytes=max_bytes) for name, tensor in request.inputs.items()}
    outputs = tuple(request.output_filter) or None
    if outputs is not None and len(set(outputs)) != len(outputs):
        raise InvalidInput("'output_filter' names an output twice")
    return PredictRequest(
        target,
        inputs,
        signature_name=request.model_spec.signature_name or None,
        outputs=outputs,
        inputs_for=unit_axis_inputs(inputs),
    )


def encode_predict(
    request: PredictRequest, response: PredictResponse, signature_name: str = ""
) -> predict_pb2.PredictResponse:
    """The `PredictResponse` message answering `request`: one TensorProto per output (REST's unit axis rule)."""
    message = predict_pb2.PredictResponse(model_spec=model_spec(response.servable_id, signature_name))
    for name, array in tfserving.predict_outputs(request, response).items():
        message.outputs[name].CopyFrom(array_to_tensor(name, np.asarray(array)))
    return message


# --- Classify and Regress -----------------------------------------------------------------------------


def example_features(example: example_pb2.Example) -> dict[str, object]:
    """One `tf.Example` as the JSON features REST's `:classify`/`:regress` take (bytes as `{"b64"}`)."""
    features: dict[str, object] = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            features[key] = [{"b64": base64.b64encode(v).decode("ascii")} for v in feature.bytes_list.value]
        elif kind == "float_list":
            features[key] = list(feature.float_list.value)
        elif kind == "int64_list":
            features[key] = list(feature.int64_list.value)
        else:
            features[key] = []
    return features


def decode_examples(spec: model_pb2.ModelSpec, input_: input_pb2.Input, method: str) -> ExamplesRequest:
    """Turn a `ClassificationRequest` / `RegressionRequest` (its spec and input) into an ExamplesRequest.

    Raises:
        InvalidInput: see `decode_model_spec`; an input without examples.
    """
    target = decode_model_spec(spec)
    kind = input_.WhichOneof("kind")
    if kind == "example_list":
        examples, context = input_.example_list.examples, {}
    elif kind == "example_list_with_context":
        examples = input_.example_list_with_context.examples
        context = example_features(input_.example_list_with_context.context)
    else:
        raise InvalidInput(
            "the request's input holds no examples; set input.example_list or input.example_list_with_context"
        )
    if not examples:
        raise InvalidInput("'examples' must be a non-empty list of tf.Example")
    return tfserving.examples_request(
        target, method, [example_features(e) for e in examples], context, spec.signature_name or None
    )


def encode_classify(response: ExamplesResponse, signature_name: str = "") -> classification_pb2.ClassificationResponse:
    """The `ClassificationResponse` message: per example, its classes with labels and scores (REST's results)."""
    message = classification_pb2.ClassificationResponse(model_spec=model_spec(response.servable_id, signature_name))
    for row in tfserving.examples_results(response, "classify"):
        classes = message.result.classifications.add()
        for label, score in row:
            classes.classes.add(label=label, score=score)
    return message


def encode_regress(response: ExamplesResponse, signature_name: str = "") -> regression_pb2.RegressionResponse:
    """The `RegressionResponse` message: one value per example (REST's results)."""
    message = regression_pb2.RegressionResponse(model_spec=model_spec(response.servable_id, signature_name))
    for value in tfserving.examples_results(response, "regress"):
        message.result.regressions.add(value=value)
    return message


# --- status and metadata (REST's JSON, parsed into the messages) ------------------------------------


def check_metadata_fields(fields: list[str]) -> None:
    """Refuse a GetModelMetadataRequest asking for no field or one other than `signature_def` (TF Serving's messages).

    Raises:
        InvalidInput: no field, or an unsupported one.
    """
    if not fields:
        raise InvalidInput("GetModelMetadataRequest must specify at least one metadata_field")
    for field in fields:
        if field != SIGNATURE_DEF:
            raise InvalidInput(f"Metadata field {field} is not supported")


def encode_metadata(metadata: ModelMetadata) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The `GetModelMetadataResponse` message: REST's metadata, `signature_def` packed into an Any."""
    rest = tfserving.encode_metadata(metadata)
    message = get_model_metadata_pb2.GetModelMetadataResponse()
    json_format.ParseDict(rest["model_spec"], message.model_spec)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    json_format.ParseDict(rest["metadata"][SIGNATURE_DEF], signatures)
    message.metadata[SIGNATURE_DEF].Pack(signatures)
    return message


def encode_status(status: ModelStatus, target: ServableRequest) -> get_model_status_pb2.GetModelStatusResponse:
    """The `GetModelStatusResponse` message: REST's status answer (raises ModelNotFound as REST does)."""
    return json_format.ParseDict(tfserving.encode_status(status, target), get_model_status_pb2.GetModelStatusResponse())
