"""Property tests (hypothesis) over gRPC request messages: whatever a client sends, no INTERNAL.

Messages are built field by field from the same kinds of values that made REST answer 500 once
(Unicode digits, lone surrogates, huge and negative dimensions, garbage bytes, wrong dtypes) and sent
over a real channel to the in-process gRPC server over the fake models of `tests.unit.fakes`, to
every unary method of the three services. A status of INTERNAL or UNKNOWN is a bug: the fake models
never fail (the failing one is not served here), so only a server-side error could produce either.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.api import EXTENSION
from tests.unit.test_fuzz_decoders import TEXT, UNICODE_DIGIT
from tests.unit.test_grpc import AUTH, TOKEN, start

FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

# --- strategies ------------------------------------------------------------------------------------
NAME = st.one_of(st.sampled_from(["double", "digits", "sum", "broken", "nope", ""]), TEXT)
"""Model names: the served fakes, a failed load, an unknown one, and any text (surrogates included)."""
VERSION_TEXT = st.one_of(st.sampled_from(["", "1", "2", "0", "-1", "latest"]), st.text(UNICODE_DIGIT, max_size=4), TEXT)
INT64 = st.one_of(
    st.integers(-3, 5),
    st.sampled_from([2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63)]),
    st.integers(-(2**63), 2**63 - 1),
)
SHAPE = st.one_of(st.lists(INT64, max_size=6), st.lists(st.sampled_from([0, 1, 2]), min_size=30, max_size=70))
DATATYPE = st.one_of(
    st.sampled_from(["FP32", "FP64", "FP16", "BF16", "INT8", "INT32", "INT64", "UINT8", "BOOL", "BYTES"]), TEXT
)
BYTES = st.binary(max_size=64)


def _proto_text(value: str) -> str:
    """Proto string fields must be valid UTF-8 on the wire: the client library refuses lone surrogates."""
    return value.encode("utf-8", "replace").decode("utf-8")


@st.composite
def infer_requests(draw: st.DrawFn) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(
        model_name=_proto_text(draw(NAME)), model_version=_proto_text(draw(VERSION_TEXT)), id=_proto_text(draw(TEXT))
    )
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=_proto_text(draw(st.one_of(st.sampled_from(["x", "image", "a", "b"]), TEXT))),
            datatype=_proto_text(draw(DATATYPE)),
            shape=draw(SHAPE),
        )
        kind = draw(st.sampled_from(["fp32", "int64", "bytes", "bool", "none"]))
        if kind == "fp32":
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
        elif kind == "int64":
            tensor.contents.int64_contents.extend(draw(st.lists(INT64, max_size=8)))
        elif kind == "bytes":
            tensor.contents.bytes_contents.extend(draw(st.lists(BYTES, max_size=4)))
        elif kind == "bool":
            tensor.contents.bool_contents.extend(draw(st.lists(st.booleans(), max_size=8)))
    if draw(st.booleans()):
        request.raw_input_contents.extend(draw(st.lists(BYTES, max_size=4)))
    for _ in range(draw(st.integers(0, 2))):
        output = request.outputs.add(name=_proto_text(draw(st.one_of(st.sampled_from(["y", "scores"]), TEXT))))
        choice = draw(st.sampled_from(["none", "int", "string", "bool"]))
        if choice == "int":
            output.parameters["classification"].int64_param = draw(INT64)
        elif choice == "string":
            output.parameters["classification"].string_param = _proto_text(draw(TEXT))
        elif choice == "bool":
            output.parameters["classification"].bool_param = draw(st.booleans())
    return request


@st.composite
def tensor_protos(draw: st.DrawFn) -> tensor_pb2.TensorProto:
    dtype = draw(
        st.sampled_from(
            [
                types_pb2.DT_FLOAT,
                types_pb2.DT_DOUBLE,
                types_pb2.DT_INT32,
                types_pb2.DT_INT64,
                types_pb2.DT_STRING,
                types_pb2.DT_BOOL,
                types_pb2.DT_HALF,
                types_pb2.DT_UINT8,
                types_pb2.DT_COMPLEX64,
                types_pb2.DT_VARIANT,
                types_pb2.DT_INVALID,
            ]
        )
    )
    dims = draw(st.one_of(st.none(), SHAPE))
    tensor = tensor_pb2.TensorProto(dtype=dtype)
    if dims is None:
        tensor.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(unknown_rank=True))
    else:
        for size in dims:
            tensor.tensor_shape.dim.add(size=size)
    kind = draw(st.sampled_from(["content", "float", "int", "string", "half", "none"]))
    if kind == "content":
        tensor.tensor_content = draw(BYTES)
    elif kind == "float":
        tensor.float_val.extend(draw(st.lists(st.floats(width=32), max_size=8)))
    elif kind == "int":
        tensor.int_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8)))
    elif kind == "string":
        tensor.string_val.extend(draw(st.lists(BYTES, max_size=4)))
    elif kind == "half":
        tensor.half_val.extend(draw(st.lists(st.integers(0, 2**31 - 1), max_size=8)))
    return tensor


@st.composite
def model_specs(draw: st.DrawFn) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(
        name=_proto_text(draw(NAME)),
        signature_name=_proto_text(draw(st.one_of(st.just(""), st.just("serving_default"), TEXT))),
    )
    choice = draw(st.sampled_from(["none", "version", "label"]))
    if choice == "version":
        spec.version.value = draw(INT64)
    elif choice == "label":
        spec.version_label = _proto_text(draw(TEXT))
    return spec


@st.composite
def predict_requests(draw: st.DrawFn) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec=draw(model_specs()))
    for _ in range(draw(st.integers(0, 3))):
        request.inputs[_proto_text(draw(st.one_of(st.sampled_from(["x", "image"]), TEXT)))].CopyFrom(
            draw(tensor_protos())
        )
    request.output_filter.extend(_proto_text(v) for v in draw(st.lists(TEXT, max_size=2)))
    return request


@st.composite
def feature_values(draw: st.DrawFn) -> feature_pb2.Feature:
    choice = draw(st.sampled_from(["float", "int", "bytes", "empty"]))
    if choice == "float":
        return feature_pb2.Feature(
            float_list=feature_pb2.FloatList(value=draw(st.lists(st.floats(width=32), max_size=6)))
        )
    if choice == "int":
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=draw(st.lists(INT64, max_size=6))))
    if choice == "bytes":
        return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=draw(st.lists(BYTES, max_size=3))))
    return feature_pb2.Feature()


@st.composite
def examples(draw: st.DrawFn) -> example_pb2.Example:
    example = example_pb2.Example()
    for _ in range(draw(st.integers(0, 3))):
        key = _proto_text(draw(st.one_of(st.sampled_from(["x", "image"]), TEXT)))
        example.features.feature[key].CopyFrom(draw(feature_values()))
    return example


@st.composite
def inputs(draw: st.DrawFn) -> input_pb2.Input:
    rows = draw(st.lists(examples(), max_size=4))
    if draw(st.booleans()):
        return input_pb2.Input(example_list=input_pb2.ExampleList(examples=rows))
    return input_pb2.Input(
        example_list_with_context=input_pb2.ExampleListWithContext(examples=rows, context=draw(examples()))
    )


# --- the server ------------------------------------------------------------------------------------


class Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(channel)
        self.v2 = service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stubs]:
    app, server, channel = start(tmp_path_factory.mktemp("grpc-fuzz") / "models", auth_token=TOKEN)
    yield Stubs(channel)
    channel.close()
    server.wait_stopped(5)
    app.extensions[EXTENSION].stop()


def no_server_fault(method, request) -> None:
    """Call `method`; an OK answer or any status but INTERNAL/UNKNOWN passes."""
    try:
        method(request, metadata=AUTH, timeout=30)
    except grpc.RpcError as err:
        assert err.code() not in SERVER_FAULTS, f"{err.code()}: {err.details()} for {request}"
        assert err.details(), f"{err.code()} without a message for {request}"


@FUZZ
@given(request=infer_requests())
def test_model_infer_never_answers_internal(stubs: Stubs, request: service_pb2.ModelInferRequest) -> None:
    no_server_fault(stubs.v2.ModelInfer, request)


@FUZZ
@given(name=NAME, version=VERSION_TEXT)
def test_v2_model_metadata_and_ready_never_answer_internal(stubs: Stubs, name: str, version: str) -> None:
    name, version = _proto_text(name), _proto_text(version)
    no_server_fault(stubs.v2.ModelMetadata, service_pb2.ModelMetadataRequest(name=name, version=version))
    no_server_fault(stubs.v2.ModelReady, service_pb2.ModelReadyRequest(name=name, version=version))


@FUZZ
@given(request=predict_requests())
def test_tfserving_predict_never_answers_internal(stubs: Stubs, request: predict_pb2.PredictRequest) -> None:
    no_server_fault(stubs.prediction.Predict, request)


@FUZZ
@given(spec=model_specs(), input_=inputs())
def test_classify_and_regress_never_answer_internal(
    stubs: Stubs, spec: model_pb2.ModelSpec, input_: input_pb2.Input
) -> None:
    no_server_fault(stubs.prediction.Classify, classification_pb2.ClassificationRequest(model_spec=spec, input=input_))
    no_server_fault(stubs.prediction.Regress, regression_pb2.RegressionRequest(model_spec=spec, input=input_))


@FUZZ
@given(spec=model_specs(), fields=st.lists(st.one_of(st.just("signature_def"), TEXT), max_size=3))
def test_metadata_and_status_never_answer_internal(stubs: Stubs, spec: model_pb2.ModelSpec, fields: list[str]) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec, metadata_field=[_proto_text(f) for f in fields]
    )
    no_server_fault(stubs.prediction.GetModelMetadata, request)
    no_server_fault(stubs.models.GetModelStatus, get_model_status_pb2.GetModelStatusRequest(model_spec=spec))


def test_bytes_that_are_no_message_get_an_error_and_the_server_keeps_serving(stubs: Stubs) -> None:
    """Bytes that do not parse as the method's message never reach our code: grpcio answers them
    itself (INTERNAL, "Exception deserializing request!"). What we own: the server keeps serving."""
    garbage = stubs.channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda b: b,
        response_deserializer=service_pb2.ModelInferResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as raised:
        garbage(b"\xff\xff\xff\xff garbage", metadata=AUTH, timeout=10)
    assert raised.value.code() is not grpc.StatusCode.OK
    live = stubs.v2.ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
    assert live.live
