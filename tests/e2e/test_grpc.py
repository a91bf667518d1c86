"""gRPC end to end: the unmodified `tensorflow-serving-api` stubs and `tritonclient.grpc` against real gunicorn.

The server runs two workers that both serve gRPC on one port (SO_REUSEPORT), with a bearer token
and small size limits; every answer is compared with what the REST API answers for the same request
(TF Serving's documented examples on the corpus SavedModels, the KServe v2 results on the api
models), and every error with REST's message. A second server shows the graceful drain: a call in
flight when SIGTERM arrives still gets its answer; a new one is refused.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.conftest import CORPUS, wait_until
from tests.e2e.api_models import (
    LIMITS_ENV,
    binary_scores,
    build_api_models,
    digit_image,
    digits_scores,
    encode,
    two_heads,
)
from tests.e2e.conftest import Server, free_port, start_server

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2  # noqa: E402 - after the importorskip

TOKEN = "grpc-e2e-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
TRITON_HEADERS = {"authorization": f"Bearer {TOKEN}"}
EXPECTED_METADATA = CORPUS / "expected" / "half_plus_two_cpu" / "half_plus_two_model_metadata.json"


@dataclass
class Served:
    http: Server
    target: str
    channel: grpc.Channel

    @property
    def prediction(self) -> prediction_service_pb2_grpc.PredictionServiceStub:
        return prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def rest(self, path: str, body: dict) -> dict:
        return self.http.post(path, json=body, headers=HEADERS).json()


def serving(channel: grpc.Channel) -> bool:
    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return check.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    models = build_api_models(tmp_path_factory.getbasetemp() / "api_models")
    port = free_port()
    with start_server(
        models, tmp_path_factory.mktemp("grpc_logs"), WORKERS="2", GRPC_PORT=str(port), AUTH_TOKEN=TOKEN, **LIMITS_ENV
    ) as http:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        wait_until(lambda: serving(channel), timeout_s=60)
        yield Served(http, f"127.0.0.1:{port}", channel)
        channel.close()


@pytest.fixture(scope="module")
def triton(served: Served):
    client = grpcclient.InferenceServerClient(url=served.target)
    yield client
    client.close()


def spec(name: str, signature_name: str = "") -> model_pb2.ModelSpec:
    return model_pb2.ModelSpec(name=name, signature_name=signature_name)


def examples(*rows: dict[str, float]) -> list[example_pb2.Example]:
    out = []
    for row in rows:
        example = example_pb2.Example()
        for key, value in row.items():
            example.features.feature[key].float_list.value.append(value)
        out.append(example)
    return out


def error_of(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, **kwargs)
    return raised.value


def test_every_worker_serves_grpc_on_the_one_port(served: Served) -> None:
    workers = {
        line.split(" in worker ")[1].split()[0]
        for line in served.http.log().splitlines()
        if f"gRPC serving on {served.target} in worker" in line
    }
    assert len(workers) == 2, served.http.log()[-3000:]
    # New connections are spread by the kernel: a few fresh channels all get answers.
    for _ in range(6):
        with grpc.insecure_channel(served.target) as channel:
            assert serving(channel)


# --- tensorflow.serving.PredictionService / ModelService -------------------------------------------


def test_predict_half_plus_two_documented_example(served: Served, corpus: Path) -> None:
    request = predict_pb2.PredictRequest(model_spec=spec("half_plus_two"))
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0, 5.0], dtype=tf.float32))
    response = served.prediction.Predict(request, metadata=AUTH, timeout=30)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [2.5, 3.0, 4.5]
    assert (response.model_spec.name, response.model_spec.version.value) == ("half_plus_two", 123)
    assert served.rest("/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0, 5.0]}) == {
        "predictions": [2.5, 3.0, 4.5]
    }


def test_regress_half_plus_three_documented_example(served: Served, corpus: Path) -> None:
    request = regression_pb2.RegressionRequest(model_spec=spec("half_plus_three", "tensorflow/serving/regress"))
    request.input.example_list.examples.extend(examples({"x": 1.0}, {"x": 2.0}))
    response = served.prediction.Regress(request, metadata=AUTH, timeout=30)
    assert [r.value for r in response.result.regressions] == [3.5, 4.0]
    rest = served.rest(
        "/v1/models/half_plus_three:regress",
        {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]},
    )
    assert rest == {"results": [3.5, 4.0]}


def test_classify_and_regress_with_context_on_half_plus_two(served: Served, corpus: Path) -> None:
    classify = classification_pb2.ClassificationRequest(model_spec=spec("half_plus_two", "classify_x_to_y"))
    classify.input.example_list.examples.extend(examples({"x": 2.0}))
    result = served.prediction.Classify(classify, metadata=AUTH, timeout=30).result
    assert [[(c.label, c.score) for c in row.classes] for row in result.classifications] == [[("", 3.0)]]
    regress = regression_pb2.RegressionRequest(model_spec=spec("half_plus_two", "regress_x_to_y2"))
    regress.input.example_list_with_context.context.CopyFrom(examples({"x": 4.0})[0])
    regress.input.example_list_with_context.examples.extend([example_pb2.Example(), *examples({"x": 2.0})])
    response = served.prediction.Regress(regress, metadata=AUTH, timeout=30)
    assert [r.value for r in response.result.regressions] == [5.0, 4.0]  # as REST: y2 = 0.5 x + 3


def test_get_model_metadata_equals_the_rest_metadata(served: Served, corpus: Path) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec("half_plus_two"), metadata_field=["signature_def"]
    )
    response = served.prediction.GetModelMetadata(request, metadata=AUTH, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    as_json = {
        "model_spec": json_format.MessageToDict(
            response.model_spec, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        ),
        "metadata": {
            "signature_def": json_format.MessageToDict(
                signatures, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        },
    }
    rest = served.http.get("/v1/models/half_plus_two/metadata", headers=HEADERS).json()
    assert as_json == rest
    expected = json.loads(EXPECTED_METADATA.read_text())
    assert as_json["metadata"] == expected["metadata"]  # TF Serving's own answer
    missing = error_of(
        served.prediction.GetModelMetadata,
        get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec("half_plus_two")),
        metadata=AUTH,
        timeout=30,
    )
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT and "metadata_field" in missing.details()


def test_get_model_status_shows_available(served: Served, corpus: Path) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(served.channel)
    response = stub.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec=spec("half_plus_three")), metadata=AUTH, timeout=30
    )
    (status,) = response.model_version_status
    assert (status.version, status.state) == (123, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    assert (
        json_format.MessageToDict(response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        == served.http.get("/v1/models/half_plus_three", headers=HEADERS).json()
    )


def test_a_string_tensor_of_png_bytes_is_decoded_as_rests_b64_image(served: Served) -> None:
    pixels = digit_image(21)
    request = predict_pb2.PredictRequest(model_spec=spec("digits"))
    request.inputs["image"].CopyFrom(tf.make_tensor_proto([encode(pixels)]))
    response = served.prediction.Predict(request, metadata=AUTH, timeout=30)
    scores = tf.make_ndarray(response.outputs["digit"])
    rest = served.rest("/v1/models/digits:predict", {"instances": [{"b64": base64.b64encode(encode(pixels)).decode()}]})
    assert scores.tolist() == rest["predictions"]
    np.testing.assert_allclose(scores, digits_scores(pixels[None]), atol=1e-5)


# --- inference.GRPCInferenceService through tritonclient.grpc ---------------------------------------


def test_health_and_readiness(triton) -> None:
    assert triton.is_server_live()  # open without the token, as /v2/health/live is
    assert triton.is_server_ready()
    assert triton.is_model_ready("binary", headers=TRITON_HEADERS)
    assert triton.is_model_ready("binary", "1", headers=TRITON_HEADERS)
    assert not triton.is_model_ready("nope", headers=TRITON_HEADERS)
    assert not triton.is_model_ready("binary", "9", headers=TRITON_HEADERS)


def test_model_metadata_equals_the_rest_metadata(served: Served, triton) -> None:
    for name in ("digits", "two_heads"):
        rest = served.http.get(f"/v2/models/{name}", headers=HEADERS).json()
        assert triton.get_model_metadata(name, headers=TRITON_HEADERS) == json_format.ParseDict(
            rest, service_pb2.ModelMetadataResponse()
        )
    assert triton.get_server_metadata(headers=TRITON_HEADERS).name == "kerasserve"


def test_infer_fp32_equals_the_rest_results(served: Served, triton) -> None:
    rows = np.array([[0.2, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    tensor = grpcclient.InferInput("features", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    result = triton.infer(
        "binary",
        [tensor],
        outputs=[grpcclient.InferRequestedOutput("probability")],
        request_id="g-7",
        headers=TRITON_HEADERS,
    )
    rest = served.rest(
        "/v2/models/binary/infer",
        {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": rows.reshape(-1).tolist()}]},
    )
    (output,) = rest["outputs"]
    assert result.as_numpy("probability").reshape(-1).tolist() == output["data"]
    assert (
        result.get_output("probability").datatype == output["datatype"]
        and list(result.get_output("probability").shape) == output["shape"]
    )
    np.testing.assert_allclose(result.as_numpy("probability"), binary_scores(rows), atol=1e-6)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("binary", "1", "g-7")


def test_infer_every_output_of_a_two_output_model(triton) -> None:
    rows = np.array([[0.0, 1.0, 0.0, 2.0]], dtype=np.float32)
    tensor = grpcclient.InferInput("features", [1, 4], "FP32")
    tensor.set_data_from_numpy(rows)
    result = triton.infer("two_heads", [tensor], headers=TRITON_HEADERS)
    kind, size = two_heads(rows)
    np.testing.assert_allclose(result.as_numpy("kind"), kind, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("size"), size, atol=1e-5)


def test_bytes_images_are_decoded_as_rests(served: Served, triton) -> None:
    pixels = digit_image(22)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([encode(pixels)], dtype=object))
    result = triton.infer("digits", [tensor], model_version="1", headers=TRITON_HEADERS)
    np.testing.assert_allclose(result.as_numpy("digit"), digits_scores(pixels[None]), atol=1e-5)


def test_classification_extension_equals_rests(served: Served, triton) -> None:
    rows = np.array([[0.0, 1.0, 0.0, 2.0], [3.0, 0.5, -1.0, 0.0]], dtype=np.float32)
    tensor = grpcclient.InferInput("features", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    result = triton.infer(
        "two_heads",
        [tensor],
        outputs=[grpcclient.InferRequestedOutput("kind", class_count=2)],
        headers=TRITON_HEADERS,
    )
    rest = served.rest(
        "/v2/models/two_heads/infer",
        {
            "inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": rows.reshape(-1).tolist()}],
            "outputs": [{"name": "kind", "parameters": {"classification": 2}}],
        },
    )
    (output,) = rest["outputs"]
    got = result.as_numpy("kind")
    assert list(got.shape) == output["shape"] == [2, 2]
    assert result.get_output("kind").datatype == output["datatype"] == "BYTES"
    assert [v.decode() for v in got.reshape(-1)] == output["data"]
    best = np.argmax(two_heads(rows)[0], axis=-1)
    assert [int(row[0].decode().split(":")[1]) for row in got] == best.tolist()
    assert "classification" in triton.get_server_metadata(headers=TRITON_HEADERS).extensions


# --- errors: the status code, and REST's message -------------------------------------------------------


def test_unknown_model_is_not_found(served: Served, triton) -> None:
    request = predict_pb2.PredictRequest(model_spec=spec("nope"))
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0]))
    error = error_of(served.prediction.Predict, request, metadata=AUTH, timeout=30)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        served.rest("/v1/models/nope:predict", {"instances": [1.0]})["error"],
    )
    tensor = grpcclient.InferInput("x", [1], "FP32")
    tensor.set_data_from_numpy(np.array([1.0], np.float32))
    with pytest.raises(grpcclient.InferenceServerException) as raised:
        triton.infer("nope", [tensor], headers=TRITON_HEADERS)
    assert raised.value.status() == "StatusCode.NOT_FOUND" and "model 'nope' does not exist" in raised.value.message()


def v2_error(triton, model: str, tensor) -> tuple[str, str]:
    with pytest.raises(grpcclient.InferenceServerException) as raised:
        triton.infer(model, [tensor], headers=TRITON_HEADERS)
    return raised.value.status(), raised.value.message()


def test_wrong_shape_wrong_dtype_and_garbage_image_are_invalid_argument_with_rests_message(
    served: Served, triton
) -> None:
    shape = grpcclient.InferInput("features", [1, 3], "FP32")
    shape.set_data_from_numpy(np.zeros((1, 3), np.float32))
    rest = served.rest(
        "/v2/models/binary/infer",
        {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]}]},
    )
    assert v2_error(triton, "binary", shape) == ("StatusCode.INVALID_ARGUMENT", rest["error"])

    dtype = grpcclient.InferInput("features", [1, 4], "BYTES")
    dtype.set_data_from_numpy(np.array([[b"a", b"b", b"c", b"d"]], dtype=object))
    rest = served.rest(
        "/v2/models/binary/infer",
        {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]},
    )
    assert v2_error(triton, "binary", dtype) == ("StatusCode.INVALID_ARGUMENT", rest["error"])

    garbage = grpcclient.InferInput("image", [1], "BYTES")
    garbage.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    rest = served.rest(
        "/v2/models/digits/infer",
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["not an image"]}]},
    )
    assert v2_error(triton, "digits", garbage) == ("StatusCode.INVALID_ARGUMENT", rest["error"])

    request = predict_pb2.PredictRequest(model_spec=spec("digits"))
    request.inputs["image"].CopyFrom(tf.make_tensor_proto([b"not an image"]))
    error = error_of(served.prediction.Predict, request, metadata=AUTH, timeout=30)
    rest = served.rest(
        "/v1/models/digits:predict", {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}
    )
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, rest["error"])


def test_no_token_is_unauthenticated_and_health_stays_open(served: Served, triton) -> None:
    request = predict_pb2.PredictRequest(model_spec=spec("binary"))
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 4), np.float32)))
    error = error_of(served.prediction.Predict, request, timeout=30)
    rest = served.http.post("/v1/models/binary:predict", json={"instances": [[0, 0, 0, 0]]})
    assert rest.status_code == 401
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, rest.json()["error"])
    with pytest.raises(grpcclient.InferenceServerException) as raised:
        triton.get_model_metadata("binary")
    assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
    assert serving(served.channel)


def test_a_message_larger_than_max_request_bytes_is_resource_exhausted(served: Served) -> None:
    request = predict_pb2.PredictRequest(model_spec=spec("binary"))
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(np.zeros((100_000, 4), np.float32)))  # 1.6 MB > 1 MB
    assert (
        error_of(served.prediction.Predict, request, metadata=AUTH, timeout=30).code()
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )


# --- graceful shutdown -----------------------------------------------------------------------------------


def test_sigterm_drains_the_call_in_flight_and_refuses_new_ones(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    api_models = build_api_models(tmp_path_factory.getbasetemp() / "api_models")
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy2(api_models / "binary.keras", models / "binary.keras")
    port = free_port()
    # A request waits up to BATCH_TIMEOUT_MS for others to join its batch: a call that stays in flight.
    with start_server(
        models, tmp_path, GRPC_PORT=str(port), BATCH_TIMEOUT_MS="3000", MAX_BATCH_SIZE="64", GRACEFUL_TIMEOUT_S="20"
    ) as http:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        wait_until(lambda: serving(channel), timeout_s=60)
        rows = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
        request = predict_pb2.PredictRequest(model_spec=spec("binary"))
        request.inputs["features"].CopyFrom(tf.make_tensor_proto(rows))
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        started = time.monotonic()
        future = stub.Predict.future(request, timeout=30)
        time.sleep(1.0)
        assert not future.done()
        http.process.send_signal(signal.SIGTERM)  # the master: every worker exits gracefully
        refused = threading.Event()

        def new_call_refused() -> bool:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as fresh:
                try:
                    prediction_service_pb2_grpc.PredictionServiceStub(fresh).Predict(request, timeout=2)
                except grpc.RpcError as err:
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        refused.set()
                        return True
            return False

        wait_until(new_call_refused, timeout_s=10, interval_s=0.1)
        response = future.result(timeout=30)
        assert time.monotonic() - started >= 2.5  # it waited in the batcher, and was answered all the same
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["probability"]), binary_scores(rows), atol=1e-6)
        assert http.process.wait(timeout=60) == 0
        assert refused.is_set()
        channel.close()


def test_concurrent_grpc_and_rest_requests_share_device_calls(served: Served) -> None:
    # The same batchers serve both transports: 64 one-row requests, half over gRPC, half over REST,
    # sent at once, become fewer device calls than requests (read from /metrics, both workers).
    from concurrent.futures import ThreadPoolExecutor

    from tests.e2e.test_metrics import samples, value

    requests_sent = 64
    rows = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    expected = binary_scores(rows).reshape(-1).tolist()

    def via_grpc() -> list[float]:
        request = predict_pb2.PredictRequest(model_spec=spec("binary"))
        request.inputs["features"].CopyFrom(tf.make_tensor_proto(rows))
        response = served.prediction.Predict(request, metadata=AUTH, timeout=30)
        return tf.make_ndarray(response.outputs["probability"]).reshape(-1).tolist()

    def via_rest() -> list[float]:
        return (
            np.asarray(served.rest("/v1/models/binary:predict", {"instances": rows.tolist()})["predictions"])
            .reshape(-1)
            .tolist()
        )

    before = samples(served.http)
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda i: via_grpc() if i % 2 else via_rest(), range(requests_sent)))
    after = samples(served.http)
    for answer in answers:
        np.testing.assert_allclose(answer, expected, atol=1e-6)
    batches = value(after, "kerasserve_batches_total", model="binary") - value(
        before, "kerasserve_batches_total", model="binary"
    )
    batch_rows = value(after, "kerasserve_batch_rows_sum", model="binary") - value(
        before, "kerasserve_batch_rows_sum", model="binary"
    )
    assert batch_rows == requests_sent
    assert 1 <= batches < requests_sent
