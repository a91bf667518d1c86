"""gRPC: the adapters' tensor conversions, the error table, and the real gRPC server in-process over fake models.

The server tests start `service.app.serve_grpc` on a free loopback port over the app `create_app`
builds with `FakeBuilder` (no TensorFlow models, no gunicorn) and call it through the stubs the
packages ship, comparing every answer and error with what the REST API says for the same request.
The generated messages import the `tensorflow` package, so this module starts TensorFlow (no model).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from flask.testing import FlaskClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    input_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service import errors, grpc_errors, grpc_services
from service.api import EXTENSION
from service.api.errors import HTTP_STATUS
from service.app import serve_grpc
from service.protocols import kserve_v2, kserve_v2_grpc, tfserving_grpc
from tests.conftest import wait_until
from tests.e2e.conftest import free_port
from tests.unit.conftest import Records
from tests.unit.fakes import DOUBLE, HALF
from tests.unit.test_api import make_app

TOKEN = "unit-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
BEARER = {"Authorization": f"Bearer {TOKEN}"}
MAX_BYTES = 1 << 20


# --- the error table ----------------------------------------------------------------------------


def test_grpc_table_lists_the_same_error_classes_as_the_http_table() -> None:
    assert set(grpc_errors.GRPC_STATUS) == set(HTTP_STATUS)


@pytest.mark.parametrize(
    "error, code",
    [
        (errors.InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.InvalidTensor("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ModelNotFound("m"), grpc.StatusCode.NOT_FOUND),
        (errors.ModelNotReady("m"), grpc.StatusCode.UNAVAILABLE),
        (errors.Overloaded("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.PayloadTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unauthorized("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.InferenceError("x"), grpc.StatusCode.INTERNAL),
        (errors.Unimplemented("x"), grpc.StatusCode.UNIMPLEMENTED),
        (errors.ServingError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_error_maps_to_its_status_code(error: errors.ServingError, code: grpc.StatusCode) -> None:
    assert grpc_errors.status_for(error) == code


def test_a_bare_inference_error_gets_rests_generic_message() -> None:
    assert errors.client_message(errors.InferenceError()) == "the model failed while computing"
    assert errors.client_message(errors.ModelNotFound("m", 3)) == "version 3 of model 'm' does not exist"


# --- TensorProto conversion, against TensorFlow's own ---------------------------------------------


@pytest.mark.parametrize(
    "values, dtype",
    [
        ([[1.5, -2.0], [3.0, 4.25]], tf.float32),
        ([1.0, 2.0], tf.float64),
        ([1, -2, 3], tf.int32),
        ([1, 2], tf.int64),
        ([7, 255], tf.uint8),
        ([-3, 4], tf.int8),
        ([True, False], tf.bool),
        ([0.5, 1.5], tf.float16),
        ([[b"a", b"bc"]], tf.string),
        ([40000], tf.uint16),
    ],
)
def test_tensor_to_array_reads_what_make_tensor_proto_writes(values: list, dtype: tf.DType) -> None:
    proto = tf.make_tensor_proto(values, dtype=dtype)
    array = tfserving_grpc.tensor_to_array("x", proto, max_bytes=MAX_BYTES)
    expected = tf.make_ndarray(proto)
    assert array.shape == expected.shape and array.tolist() == expected.tolist()


@pytest.mark.parametrize(
    "array",
    [
        np.array([[1.5, 2.5]], np.float32),
        np.array([1.0], np.float64),
        np.array([[1, 2, 3]], np.int32),
        np.array([5], np.int64),
        np.array([True]),
        np.array([0.25], np.float16),
        np.array([9], np.uint8),
        np.array([b"x", b"yz"], dtype=object),
    ],
)
def test_array_to_tensor_is_read_back_by_make_ndarray(array: np.ndarray) -> None:
    proto = tfserving_grpc.array_to_tensor("y", array)
    assert tf.make_ndarray(proto).tolist() == array.tolist()
    assert not proto.tensor_content  # typed *_val fields, as TF Serving answers


def test_typed_values_fewer_than_the_shape_are_padded_with_the_last_as_tensorflow_does() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0])
    proto.tensor_shape.dim.add(size=4)
    assert tfserving_grpc.tensor_to_array("x", proto, max_bytes=MAX_BYTES).tolist() == [1.0, 2.0, 2.0, 2.0]


def test_a_small_message_cannot_expand_into_an_array_beyond_max_request_bytes() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    proto.tensor_shape.dim.add(size=10**9)
    with pytest.raises(errors.PayloadTooLarge, match="MAX_REQUEST_BYTES"):
        tfserving_grpc.tensor_to_array("x", proto, max_bytes=MAX_BYTES)


def test_tensor_errors_name_the_input() -> None:
    too_many = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0, 3.0])
    too_many.tensor_shape.dim.add(size=2)
    with pytest.raises(errors.InvalidTensor, match="input 'x': shape \\[2\\] needs 2 values, got 3"):
        tfserving_grpc.tensor_to_array("x", too_many, max_bytes=MAX_BYTES)
    with pytest.raises(errors.InvalidInput, match="input 'x': dtype DT_COMPLEX64 is not supported"):
        tfserving_grpc.tensor_to_array("x", tensor_pb2.TensorProto(dtype=types_pb2.DT_COMPLEX64), max_bytes=MAX_BYTES)
    short = tf.make_tensor_proto(np.zeros((2, 2), np.float32))
    short.tensor_content = short.tensor_content[:-1]
    with pytest.raises(errors.InvalidTensor, match="tensor_content"):
        tfserving_grpc.tensor_to_array("x", short, max_bytes=MAX_BYTES)


def test_model_spec_names_latest_version_or_label() -> None:
    assert tfserving_grpc.decode_model_spec(model_pb2.ModelSpec(name="m")).version is None
    spec = model_pb2.ModelSpec(name="m")
    spec.version.value = 3
    assert tfserving_grpc.decode_model_spec(spec).version == 3
    assert tfserving_grpc.decode_model_spec(model_pb2.ModelSpec(name="m", version_label="stable")).label == "stable"
    with pytest.raises(errors.InvalidInput, match="version label 'no-dash'"):
        tfserving_grpc.decode_model_spec(model_pb2.ModelSpec(name="m", version_label="no-dash"))
    spec.version.value = 0
    with pytest.raises(errors.InvalidInput, match="not a positive integer"):
        tfserving_grpc.decode_model_spec(spec)


# --- v2 ModelInferRequest ---------------------------------------------------------------------------


def infer_request(**tensor) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", **tensor)
    return request


def test_v2_inputs_from_typed_contents_and_from_raw_contents_are_the_same_array() -> None:
    values = np.array([[1.5, 2.0, -3.0]], np.float32)
    typed = infer_request(datatype="FP32", shape=[1, 3])
    typed.inputs[0].contents.fp32_contents.extend(values.reshape(-1).tolist())
    raw = infer_request(datatype="FP32", shape=[1, 3])
    raw.raw_input_contents.append(values.astype("<f4").tobytes())
    for request in (typed, raw):
        decoded, _ = kserve_v2_grpc.decode_infer(request)
        np.testing.assert_array_equal(decoded.inputs["x"], values)


def test_v2_raw_bytes_elements_are_length_prefixed() -> None:
    request = infer_request(datatype="BYTES", shape=[2])
    request.raw_input_contents.append(b"\x01\x00\x00\x00a\x02\x00\x00\x00bc")
    assert kserve_v2_grpc.decode_infer(request)[0].inputs["x"].tolist() == [b"a", b"bc"]


def _too_few_values(request: service_pb2.ModelInferRequest) -> None:
    request.inputs[0].contents.fp32_contents.extend([1.0])


def _raw_too_short(request: service_pb2.ModelInferRequest) -> None:
    request.raw_input_contents.append(b"\x00" * 5)


def _raw_entry_per_input(request: service_pb2.ModelInferRequest) -> None:
    request.raw_input_contents.extend([b"", b""])


def _classification_zero(request: service_pb2.ModelInferRequest) -> None:
    request.inputs[0].contents.fp32_contents.extend([1.0, 2.0, 3.0])
    request.outputs.add(name="y").parameters["classification"].int64_param = 0


def _classification_string(request: service_pb2.ModelInferRequest) -> None:
    request.inputs[0].contents.fp32_contents.extend([1.0, 2.0, 3.0])
    request.outputs.add(name="y").parameters["classification"].string_param = "2"


@pytest.mark.parametrize(
    "build, error, message",
    [
        (_too_few_values, errors.InvalidTensor, "shape [1, 3] needs 3 values, got 1"),
        (_raw_too_short, errors.InvalidTensor, "5 bytes do not hold 3 FP32 values"),
        (_raw_entry_per_input, errors.InvalidInput, "raw_input_contents holds 2 entries for 1 inputs"),
        (_classification_zero, errors.InvalidInput, "output 'y': classification must be a positive integer"),
        (_classification_string, errors.InvalidInput, "output 'y': classification must be a positive integer"),
    ],
)
def test_v2_decoding_errors(build, error: type[Exception], message: str) -> None:
    request = infer_request(datatype="FP32", shape=[1, 3])
    build(request)
    with pytest.raises(error) as raised:
        kserve_v2_grpc.decode_infer(request)
    assert message in str(raised.value)


def test_v2_fp16_must_travel_raw_and_a_wordy_version_does_not_exist() -> None:
    with pytest.raises(errors.InvalidInput, match="FP16 data must be sent in raw_input_contents"):
        kserve_v2_grpc.decode_infer(infer_request(datatype="FP16", shape=[1]))
    request = infer_request(datatype="FP32", shape=[1])
    request.model_version = "latest"
    with pytest.raises(errors.ModelNotFound):
        kserve_v2_grpc.decode_infer(request)


def test_v2_answers_carry_raw_output_contents() -> None:
    from service.dataplane import PredictResponse
    from service.servable import ServableId

    scores = np.array([[0.25, 0.75]], np.float32)
    message = kserve_v2_grpc.encode_infer(PredictResponse(ServableId("m", 2), {"y": scores}), "req-1")
    assert (message.model_name, message.model_version, message.id) == ("m", "2", "req-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in message.outputs] == [("y", "FP32", [1, 2])]
    assert message.raw_output_contents[0] == scores.astype("<f4").tobytes()


def test_v2_classification_extension_answers_the_k_best_as_rest_does() -> None:
    from service.dataplane import PredictResponse
    from service.servable import ServableId

    request = infer_request(datatype="FP32", shape=[1, 3])
    request.inputs[0].contents.fp32_contents.extend([1.0, 2.0, 3.0])
    request.outputs.add(name="y").parameters["classification"].int64_param = 2
    _, classes = kserve_v2_grpc.decode_infer(request)
    assert classes == {"y": 2}
    scores = np.array([[0.1, 0.7, 0.2]], np.float32)
    response = PredictResponse(ServableId("m", 1), {"y": scores}, labels=("a", "b", "c"))
    message = kserve_v2_grpc.encode_infer(response, "", classes)
    assert [(o.name, o.datatype, list(o.shape)) for o in message.outputs] == [("y", "BYTES", [1, 2])]
    assert message.raw_output_contents[0] == kserve_v2.encode_bytes_elements(
        np.array([[b"0.700000:1:b", b"0.200000:2:c"]], dtype=object)
    )


# --- the server, in-process over fake models ----------------------------------------------------------


class Served:
    def __init__(self, client: FlaskClient, channel: grpc.Channel) -> None:
        self.client = client
        self.channel = channel
        self.predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(channel)
        self.v2 = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    def rest_error(self, path: str, body: dict, headers: dict | None = None) -> str:
        return self.client.post(path, json=body, headers=BEARER if headers is None else headers).get_json()["error"]


def start(models_dir: Path, *, gate: threading.Event | None = None, **options):
    port = free_port()
    app = make_app(models_dir, gate=gate, host="127.0.0.1", grpc_port=port, **options)
    server = serve_grpc(app)
    assert server is not None
    return app, server, grpc.insecure_channel(f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    app, server, channel = start(
        tmp_path_factory.mktemp("grpc") / "models", auth_token=TOKEN, max_request_bytes=64 * 1024
    )
    yield Served(app.test_client(), channel)
    channel.close()
    server.wait_stopped(5)
    app.extensions[EXTENSION].stop()


def double_request(rows: list[list[float]], model: str = "double") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model))
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(rows, dtype=tf.float32))
    return request


def test_no_grpc_server_when_grpc_port_is_zero(tmp_path: Path) -> None:
    app = make_app(tmp_path / "models", grpc_port=0)
    try:
        assert serve_grpc(app) is None
    finally:
        app.extensions[EXTENSION].stop()


def test_predict_answers_the_rest_values(served: Served) -> None:
    response, call = served.predict.Predict.with_call(
        double_request([[1.0, 2.0], [3.0, 4.5]]), metadata=(*AUTH, ("x-request-id", "abc-1")), timeout=10
    )
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[2.0, 4.0], [6.0, 9.0]]
    assert (response.model_spec.name, response.model_spec.version.value) == ("double", 1)
    rest = served.client.post(
        "/v1/models/double:predict", json={"inputs": {"x": [[1.0, 2.0], [3.0, 4.5]]}}, headers=BEARER
    )
    assert rest.get_json() == {"outputs": tf.make_ndarray(response.outputs["y"]).tolist()}
    assert ("x-request-id", "abc-1") in call.initial_metadata()


def test_encoded_image_bytes_are_decoded_as_rests_b64_images(served: Served) -> None:
    import base64

    from tests.unit.test_api import THREE_QUARTERS_WHITE

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="digits"))
    request.inputs["image"].CopyFrom(tf.make_tensor_proto([THREE_QUARTERS_WHITE]))
    response = served.predict.Predict(request, metadata=AUTH, timeout=10)
    rest = served.client.post(
        "/v1/models/digits:predict",
        headers=BEARER,
        json={"instances": [{"b64": base64.b64encode(THREE_QUARTERS_WHITE).decode()}]},
    )
    assert tf.make_ndarray(response.outputs["probs"]).tolist() == rest.get_json()["predictions"]
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probs"]), [[0.75, 0.25, 0.0]])


@pytest.mark.parametrize(
    "request_, rest_path, rest_body, code",
    [
        (
            double_request([[1.0, 2.0]], model="nope"),
            "/v1/models/nope:predict",
            {"inputs": {"x": [[1.0, 2.0]]}},
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            double_request([[1.0, 2.0, 3.0]]),
            "/v1/models/double:predict",
            {"inputs": {"x": [[1.0, 2.0, 3.0]]}},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            double_request([[1.0, 2.0]], model="broken"),
            "/v1/models/broken:predict",
            {"inputs": {"x": [[1.0, 2.0]]}},
            grpc.StatusCode.UNAVAILABLE,
        ),
        (
            double_request([[1.0, 2.0]], model="../etc"),
            "/v1/models/..%2Fetc:predict",
            {"inputs": {"x": [[1.0, 2.0]]}},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
)
def test_predict_errors_get_their_status_code_and_rests_message(
    served: Served,
    request_: predict_pb2.PredictRequest,
    rest_path: str,
    rest_body: dict,
    code: grpc.StatusCode,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        served.predict.Predict(request_, metadata=AUTH, timeout=10)
    assert raised.value.code() == code
    if "%2F" not in rest_path:
        assert raised.value.details() == served.rest_error(rest_path, rest_body)
    else:
        assert "is not valid" in raised.value.details()


def test_garbage_image_bytes_are_invalid_argument_with_rests_message(served: Served) -> None:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="digits"))
    request.inputs["image"].CopyFrom(tf.make_tensor_proto([b"not an image"]))
    with pytest.raises(grpc.RpcError) as raised:
        served.predict.Predict(request, metadata=AUTH, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == served.rest_error(
        "/v1/models/digits:predict", {"instances": [{"b64": "bm90IGFuIGltYWdl"}]}
    )


def test_v2_infer_and_its_errors_match_rest(served: Served) -> None:
    request = service_pb2.ModelInferRequest(model_name="sum", id="r1")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 2])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    response = served.v2.ModelInfer(request, metadata=AUTH, timeout=10)
    assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [3.0, 7.0]
    assert (response.model_name, response.model_version, response.id, list(response.outputs[0].shape)) == (
        "sum",
        "1",
        "r1",
        [2, 1],
    )
    tensor.shape[:] = [1, 4]
    with pytest.raises(grpc.RpcError) as raised:
        served.v2.ModelInfer(request, metadata=AUTH, timeout=10)
    rest = served.rest_error(
        "/v2/models/sum/infer", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    )
    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, rest)


def test_tf_servings_unit_axis_and_classify_regress_shapes_match_rest_and_v2_gets_none(tmp_path: Path) -> None:
    # `half`: y = x / 2 on an input of shape (None, 1). The TF Serving adapters add the unit axis to
    # one value per row and drop it from the answer (the data plane does neither); KServe v2 does not.
    app, server, channel = start(tmp_path / "models", models={"half": HALF, "double": DOUBLE})
    client, predict = app.test_client(), prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        for rows in ([1.0, 2.0], [[1.0], [2.0]]):
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="half"))
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(rows, dtype=tf.float32))
            answer = tf.make_ndarray(predict.Predict(request, timeout=10).outputs["y"]).tolist()
            rest = client.post("/v1/models/half:predict", json={"inputs": {"x": rows}}).get_json()
            assert answer == rest["outputs"] == ([0.5, 1.0] if rows == [1.0, 2.0] else [[0.5], [1.0]])

        examples = input_pb2.Input()
        for value in (1.0, 3.0):
            examples.example_list.examples.add().features.feature["x"].float_list.value.append(value)
        spec = model_pb2.ModelSpec(name="half")
        regress = predict.Regress(regression_pb2.RegressionRequest(model_spec=spec, input=examples), timeout=10)
        classify = predict.Classify(
            classification_pb2.ClassificationRequest(model_spec=spec, input=examples), timeout=10
        )
        body = {"examples": [{"x": 1.0}, {"x": 3.0}]}
        assert (
            [r.value for r in regress.result.regressions]
            == client.post("/v1/models/half:regress", json=body).get_json()["results"]
            == [0.5, 1.5]
        )
        assert (
            [[[c.label, c.score] for c in row.classes] for row in classify.result.classifications]
            == client.post("/v1/models/half:classify", json=body).get_json()["results"]
            == [[["", 0.5]], [["", 1.5]]]
        )

        v2 = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        infer = service_pb2.ModelInferRequest(model_name="half")
        tensor = infer.inputs.add(name="x", datatype="FP32", shape=[2, 1])
        tensor.contents.fp32_contents.extend([1.0, 2.0])
        response = v2.ModelInfer(infer, timeout=10)
        assert list(response.outputs[0].shape) == [2, 1]
        assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [0.5, 1.0]
        tensor.shape[:] = [2]
        with pytest.raises(grpc.RpcError) as raised:
            v2.ModelInfer(infer, timeout=10)
        assert (raised.value.code(), raised.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "input 'x' has shape [None, 1], got [2]",
        )
    finally:
        channel.close()
        server.wait_stopped(5)
        app.extensions[EXTENSION].stop()


def test_without_the_token_calls_are_unauthenticated_with_rests_message_and_probes_stay_open(served: Served) -> None:
    for metadata in ((), (("authorization", "Bearer wrong"),)):
        with pytest.raises(grpc.RpcError) as raised:
            served.predict.Predict(double_request([[1.0, 2.0]]), metadata=metadata, timeout=10)
        rest = served.rest_error(
            "/v1/models/double:predict",
            {"inputs": {"x": [[1.0, 2.0]]}},
            headers=dict(metadata and [("Authorization", "Bearer wrong")]),
        )
        assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, rest)
    assert (
        served.health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    assert served.v2.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
    assert served.v2.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready


class _WithToken(grpc.StreamStreamClientInterceptor):
    """Adds the bearer token to streaming calls (the reflection client takes a channel, not metadata)."""

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        details = client_call_details._replace(metadata=(*(client_call_details.metadata or ()), *AUTH))
        return continuation(details, request_iterator)


def test_reflection_lists_every_hosted_service_and_describes_their_messages(served: Served) -> None:
    database = ProtoReflectionDescriptorDatabase(grpc.intercept_channel(served.channel, _WithToken()))
    assert sorted(database.get_services()) == sorted(grpc_services.SERVICE_NAMES)
    for name in grpc_services.SERVICE_NAMES:  # each is described (what `grpcurl describe` needs)
        declared = database.FindFileContainingSymbol(name)
        assert name in {f"{declared.package}.{service.name}" for service in declared.service}
    infer = database.FindFileContainingSymbol("inference.GRPCInferenceService")
    assert "ModelInfer" in {m.name for s in infer.service for m in s.method}


def test_reflection_needs_the_token_like_every_other_method(served: Served) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    with pytest.raises(grpc.RpcError) as raised:
        list(answers)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_message_over_max_request_bytes_is_resource_exhausted(served: Served) -> None:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="double"))
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros((20_000, 2), np.float32)))  # 160 kB > 64 kB
    with pytest.raises(grpc.RpcError) as raised:
        served.predict.Predict(request, metadata=AUTH, timeout=10)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_health_knows_the_hosted_services_and_reload_config_is_unimplemented(served: Served) -> None:
    check = served.health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=10)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as raised:
        served.health.Check(health_pb2.HealthCheckRequest(service="nope.Service"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    # A model name is a service too: SERVING with an AVAILABLE version; an unknown model is NOT_FOUND.
    check = served.health.Check(health_pb2.HealthCheckRequest(service="double"), timeout=10)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as raised:
        served.health.Check(health_pb2.HealthCheckRequest(service="nomodel"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    unknown = served.health.Watch(health_pb2.HealthCheckRequest(service="nomodel"), timeout=10)
    assert [r.status for r in unknown] == [health_pb2.HealthCheckResponse.SERVICE_UNKNOWN]
    with pytest.raises(grpc.RpcError) as raised:
        served.models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), metadata=AUTH, timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED and "MODELS_DIR" in raised.value.details()


def test_health_is_serving_exactly_when_readyz_is_200(tmp_path: Path) -> None:
    gate = threading.Event()
    app, server, channel = start(tmp_path / "models", gate=gate)
    health = health_pb2_grpc.HealthStub(channel)
    client = app.test_client()
    try:
        assert client.get("/readyz").status_code == 503
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        model = health_pb2.HealthCheckRequest(service="double")
        assert health.Check(model, timeout=10).status == health_pb2.HealthCheckResponse.NOT_SERVING  # still loading
        gate.set()
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout_s=10)
        assert health.Check(model, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        server.begin_stop(5)  # Watch streams end with NOT_SERVING at once, so they do not hold the drain up
        assert [r.status for r in watch] == [health_pb2.HealthCheckResponse.NOT_SERVING]
        assert server.wait_stopped(5)
    finally:
        gate.set()
        channel.close()
        server.wait_stopped(5)
        app.extensions[EXTENSION].stop()


def test_grpc_port_must_differ_from_port_and_zero_turns_it_off() -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="GRPC_PORT and PORT are both 9000"):
        Settings(port=9000, grpc_port=9000)
    assert Settings(port=9000, grpc_port=0).grpc_port == 0
    assert Settings().grpc_port == 8500


# --- the model repository extension over gRPC (tritonclient's own grpc client) ------------------


def test_repository_index_load_and_unload_over_grpc_match_rest(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    port = free_port()
    app = make_app(
        tmp_path / "models", host="127.0.0.1", grpc_port=port, model_control="explicit", startup_models=["double"]
    )
    server = serve_grpc(app)
    assert server is not None
    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    rest = app.test_client()

    def rest_index() -> list[dict]:  # proto3 JSON leaves out empty strings (an empty reason)
        return [{k: v for k, v in e.items() if v != ""} for e in rest.post("/v2/repository/index").get_json()]

    try:
        assert client.get_model_repository_index(as_json=True)["models"] == rest_index()
        client.load_model("sum")
        assert client.is_model_ready("sum")
        with pytest.raises(InferenceServerException, match="load failed for model 'broken': version 1: "):
            client.load_model("broken")
        with pytest.raises(InferenceServerException, match="failed to load 'nope', failed to poll"):
            client.load_model("nope")
        with pytest.raises(InferenceServerException, match="parameter 'config' .* is not supported"):
            client.load_model("sum", config="{}")
        client.unload_model("sum")
        assert not client.is_model_ready("sum")
        index = client.get_model_repository_index(as_json=True)["models"]
        assert {"name": "sum", "state": "UNAVAILABLE", "reason": "unloaded"} in index
        assert index == rest_index()
        assert "model_repository" in client.get_server_metadata(as_json=True)["extensions"]
    finally:
        client.close()
        server.wait_stopped(5)
        app.extensions[EXTENSION].stop()


def test_grpc_load_is_refused_under_poll_with_tritons_message(served: Served) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        served.v2.RepositoryModelLoad(
            service_pb2.RepositoryModelLoadRequest(model_name="double"), metadata=AUTH, timeout=10
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.details().startswith("explicit model load / unload is not allowed if polling is enabled")
    with pytest.raises(grpc.RpcError) as raised:
        served.v2.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=10)  # no token
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- access log and tracing ---------------------------------------------------------------------------


def test_each_call_writes_one_access_record_and_probes_none(served: Served, records: Records) -> None:
    request = double_request([[1.0, 2.0], [3.0, 4.5]])
    response, _ = served.predict.Predict.with_call(request, metadata=(*AUTH, ("x-request-id", "g-1")), timeout=10)
    with pytest.raises(grpc.RpcError):
        served.predict.Predict(double_request([[1.0]], model="nope"), metadata=AUTH, timeout=10)
    served.v2.ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
    served.health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    first, second = records.fields()
    assert {k: first[k] for k in first if not k.endswith("_ms") and k != "client"} == {
        "protocol": "grpc",
        "method": "grpc",
        "path": "/tensorflow.serving.PredictionService/Predict",
        "route": "PredictionService/Predict",
        "model": "double",
        "version": 1,
        "rows": 2,
        "status": "OK",
        "batch_rows": 2,
        "bytes_in": request.ByteSize(),
        "bytes_out": response.ByteSize(),
        "request_id": "g-1",
        "trace_id": "",
    }
    assert first["client"].startswith("ipv4:127.0.0.1:") and first["compute_ms"] > 0 and first["queue_ms"] >= 0
    assert (second["model"], second["status"], second["rows"]) == ("_unknown", "NOT_FOUND", None)


def test_a_traceparent_in_the_metadata_is_the_calls_trace(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from service import tracing
    from service.settings import Settings

    exporter = InMemorySpanExporter()
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    port = free_port()
    app = make_app(tmp_path / "models", host="127.0.0.1", grpc_port=port)
    tracing.configure(Settings(), exporter=exporter)  # after create_app, which sets tracing from its settings
    server = serve_grpc(app)
    assert server is not None
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        _, call = stub.Predict.with_call(
            double_request([[1.0, 2.0]]), metadata=(("traceparent", f"00-{trace_id}-{parent}-01"),), timeout=10
        )
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerReady(service_pb2.ServerReadyRequest(), timeout=10)
        spans = {span.name: span for span in exporter.get_finished_spans()}
    finally:
        channel.close()
        server.wait_stopped(5)
        app.extensions[EXTENSION].stop()
        tracing.configure(Settings())
    assert dict(call.initial_metadata())["traceresponse"].split("-")[1] == trace_id
    assert set(spans) == {"PredictionService/Predict", "preprocess", "queue", "batch", "encode"}  # no probe span
    server_span = spans["PredictionService/Predict"]
    assert (format(server_span.context.trace_id, "032x"), format(server_span.parent.span_id, "016x")) == (
        trace_id,
        parent,
    )
    assert [link.context.span_id for link in spans["queue"].links] == [spans["batch"].context.span_id]
