"""KServe v2 / Open Inference Protocol gRPC messages (`inference.GRPCInferenceService`, the classes
`tritonclient` ships) to and from the data plane's values.

ModelInfer inputs arrive typed (`contents.fp32_contents`, ...) or as `raw_input_contents`: one
little-endian, row-major bytes entry per input, BYTES elements each behind a 4-byte length (the
layout of the HTTP binary extension, decoded by the same helpers). Answers always carry
`raw_output_contents`, as Triton's do. Metadata answers are REST's JSON (`protocols.kserve_v2`)
parsed into the messages, so the two transports cannot drift apart. The classification extension
(`parameters["classification"].int64_param = K` on a requested output, as tritonclient's
`InferRequestedOutput(name, class_count=K)` sends it) answers that output as REST does: the K best
values as `"value:index[:label]"` BYTES. Never calls a model or the manager.
"""

from __future__ import annotations

import math

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2

from service.classification import triton_classes
from service.dataplane import IndexEntry, ModelMetadata, PredictRequest, PredictResponse
from service.errors import InvalidInput, InvalidTensor, ModelNotFound
from service.protocols import check_shape, kserve_v2, parse_int
from service.servable import ServableRequest

EXTENSIONS: tuple[str, ...] = ("classification", "model_repository")
"""Extensions offered over gRPC (ServerMetadata); raw tensors are part of the gRPC protocol itself."""

# v2 datatype -> the InferTensorContents field carrying it (FP16 and BF16 only travel raw).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_target(name: str, version: str) -> ServableRequest:
    """The version a request names: `version` empty for the latest; a non-numeric one does not exist (as REST)."""
    if not version:
        return ServableRequest.latest(name)
    number = parse_int(version)
    if number is None or number < 1:
        raise ModelNotFound(name)
    return ServableRequest.specific(name, number)


def _decode_input(tensor: service_pb2.ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    """One input's array, from its typed contents or its `raw_input_contents` entry."""
    name, datatype = tensor.name, tensor.datatype
    if not name:
        raise InvalidInput("every input needs a 'name'")
    if datatype not in kserve_v2.V2_TO_NUMPY:
        raise InvalidInput(
            f"input '{name}': datatype '{datatype}' is not supported; use one of {', '.join(kserve_v2.V2_TO_NUMPY)}"
        )
    if any(d < 0 for d in tensor.shape):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers")
    shape = check_shape(tensor.shape, name)
    count = math.prod(shape)
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidInput(f"input '{name}' has both contents and raw_input_contents; send one")
        if datatype == "BYTES":
            if count * 4 > len(raw):  # every element needs at least its 4-byte length
                raise InvalidTensor(f"input '{name}': {len(raw)} bytes cannot hold {count} BYTES elements")
            array = np.empty(count, dtype=object)
            array[:] = kserve_v2.decode_bytes_elements(raw, count, name)
            return array.reshape(shape)
        dtype = np.dtype(kserve_v2.V2_TO_NUMPY[datatype]).newbyteorder("<")
        if len(raw) != count * dtype.itemsize:
            raise InvalidTensor(f"input '{name}': {len(raw)} bytes do not hold {count} {datatype} values")
        return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False).reshape(shape)
    field = _CONTENTS.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': {datatype} data must be sent in raw_input_contents")
    values = list(getattr(tensor.contents, field))
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = values
    else:
        try:
            array = np.asarray(values, dtype=kserve_v2.V2_TO_NUMPY[datatype])
        except (ValueError, TypeError, OverflowError) as err:
            raise InvalidTensor(f"input '{name}': data does not hold {datatype} values of one shape") from err
    if array.size != count:
        raise InvalidTensor(f"input '{name}': shape {list(shape)} needs {count} values, got {array.size}")
    return array.reshape(shape)


def _classification(output: service_pb2.ModelInferRequest.InferRequestedOutputTensor) -> int | None:
    """The K of the classification extension on a requested output, or None when not asked."""
    if "classification" not in output.parameters:
        return None
    param = output.parameters["classification"]
    k = param.int64_param if param.WhichOneof("parameter_choice") == "int64_param" else None
    if k is None or k < 1:
        raise InvalidInput(f"output '{output.name}': classification must be a positive integer (int64_param)")
    return k


def decode_infer(request: service_pb2.ModelInferRequest) -> tuple[PredictRequest, dict[str, int]]:
    """Turn a `ModelInferRequest` into the data plane's PredictRequest, and the classification
    extension's K per requested output that asks for it.

    Raises:
        ModelNotFound: a version that is not a positive integer.
        InvalidInput: no inputs, an input twice, a bad datatype, shape or raw entry count, a
            requested output twice, or a classification parameter that is not a positive int64.
        InvalidTensor: data that does not match its shape or datatype.
    """
    target = decode_target(request.model_name, request.model_version)
    if not request.inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs; send one per input, in order"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise InvalidInput(f"input '{tensor.name}' appears twice")
        inputs[tensor.name] = _decode_input(tensor, raw[index] if raw else None)
    outputs: list[str] = []
    classes: dict[str, int] = {}
    for output in request.outputs:
        if output.name in outputs:
            raise InvalidInput(f"output '{output.name}' is requested twice")
        outputs.append(output.name)
        k = _classification(output)
        if k is not None:
            classes[output.name] = k
    return PredictRequest(target, inputs, outputs=tuple(outputs) or None), classes


def _datatype_of(array: np.ndarray) -> str:
    """The v2 datatype of an output array."""
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    return kserve_v2.NUMPY_TO_V2.get(array.dtype.name, array.dtype.name.upper())


def encode_infer(
    response: PredictResponse, request_id: str = "", classes: dict[str, int] | None = None
) -> service_pb2.ModelInferResponse:
    """The `ModelInferResponse`: every output's name, datatype and shape, its data in
    `raw_output_contents`; an output named in `classes` as the classification extension's K best."""
    message = service_pb2.ModelInferResponse(
        model_name=response.servable_id.name,
        model_version=str(response.servable_id.version),
        id=request_id,
    )
    for name, array in response.outputs.items():
        array = np.asarray(array)
        if classes and name in classes:
            array = triton_classes(array, classes[name], response.labels)
        message.outputs.add(name=name, datatype=_datatype_of(array), shape=list(array.shape))
        if array.dtype == object or array.dtype.kind in "SU":
            message.raw_output_contents.append(kserve_v2.encode_bytes_elements(array))
        else:
            message.raw_output_contents.append(
                np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            )
    return message


def encode_model_metadata(
    metadata: ModelMetadata, versions: list[int], format_: str
) -> service_pb2.ModelMetadataResponse:
    """The `ModelMetadataResponse`: REST's model metadata, parsed into the message."""
    rest = kserve_v2.encode_model_metadata(metadata, versions, format_)
    return json_format.ParseDict(rest, service_pb2.ModelMetadataResponse())


def encode_server_metadata() -> service_pb2.ServerMetadataResponse:
    """The `ServerMetadataResponse`: REST's server name and version, and the extensions offered over gRPC."""
    rest = kserve_v2.server_metadata()
    return service_pb2.ServerMetadataResponse(name=rest["name"], version=rest["version"], extensions=list(EXTENSIONS))


def encode_repository_index(entries: list[IndexEntry]) -> service_pb2.RepositoryIndexResponse:
    """The `RepositoryIndexResponse`: REST's index entries (a model never loaded: its name alone)."""
    response = service_pb2.RepositoryIndexResponse()
    for entry in kserve_v2.encode_repository_index(entries):
        response.models.add(**entry)
    return response


def check_load_parameters(request: service_pb2.RepositoryModelLoadRequest) -> None:
    """Refuse Triton's `config` and `file:` overrides, as REST does.

    Raises:
        InvalidInput: the request carries either.
    """
    overrides = sorted(k for k in request.parameters if k == "config" or k.startswith("file:"))
    if overrides:
        raise InvalidInput(
            f"load request: parameter '{overrides[0]}' (a Triton model config or file override) is not supported; "
            "put the model's files and config file (docs/model-config.md) in the models folder"
        )
