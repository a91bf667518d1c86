"""KServe v2 / Triton HTTP end to end, through the real `tritonclient[http]` client and raw requests."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

import numpy as np
import pytest

from tests.e2e.api_models import (
    DIGIT_LABELS,
    binary_scores,
    build_api_models,
    digit_image,
    digits_scores,
    encode,
    two_heads,
)
from tests.e2e.conftest import Server, start_server

httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = build_api_models(tmp_path_factory.getbasetemp() / "api_models")
    with start_server(models, tmp_path_factory.mktemp("v2_logs")) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server):
    triton = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield triton
    triton.close()


def test_health_server_and_model_readiness(client, server: Server) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("digits", "9")
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/digits/ready"):
        response = server.get(path)
        assert response.status_code == 200 and response.content == b""
    missing = server.get("/v2/models/nope/ready")
    assert missing.status_code == 400 and missing.content == b""


def test_server_metadata_declares_the_extensions(client) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "kerasserve"
    assert {"binary_tensor_data", "classification"} <= set(metadata["extensions"])


def test_model_metadata_uses_v2_datatypes_and_minus_one_for_dynamic_dims(client) -> None:
    metadata = client.get_model_metadata("digits")
    assert metadata["name"] == "digits"
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    assert metadata["outputs"][0]["datatype"] == "FP32" and metadata["outputs"][0]["shape"] == [-1, 10]
    assert client.get_model_metadata("digits", "1") == metadata


@pytest.mark.parametrize("binary", [False, True])
def test_infer_json_and_binary_modes(client, binary: bool) -> None:
    rows = np.array([[0.2, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    tensor = httpclient.InferInput("features", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    output = httpclient.InferRequestedOutput("probability", binary_data=binary)
    result = client.infer("binary", [tensor], outputs=[output], request_id="req-7")
    np.testing.assert_allclose(result.as_numpy("probability"), binary_scores(rows), atol=1e-6)
    response = result.get_response()
    assert response["model_name"] == "binary" and response["model_version"] == "1" and response["id"] == "req-7"


def test_infer_all_outputs_of_a_two_output_model(client) -> None:
    rows = np.array([[0.0, 1.0, 0.0, 2.0]], dtype=np.float32)
    tensor = httpclient.InferInput("features", [1, 4], "FP32")
    tensor.set_data_from_numpy(rows)
    result = client.infer("two_heads", [tensor])
    kind, size = two_heads(rows)
    np.testing.assert_allclose(result.as_numpy("kind"), kind, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("size"), size, atol=1e-5)


def test_infer_with_a_version_and_bytes_images_for_an_image_input(client) -> None:
    pixels = digit_image(12)
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([encode(pixels)], dtype=object))
    result = client.infer("digits", [tensor], model_version="1")
    np.testing.assert_allclose(result.as_numpy("digit"), digits_scores(pixels[None]), atol=1e-5)


@pytest.mark.parametrize("binary", [False, True])
def test_classification_extension_answers_tritons_strings(client, binary: bool) -> None:
    pixels = digit_image(13)
    x = (pixels.astype(np.float32) / 255.0).reshape(1, 28, 28, 1)
    tensor = httpclient.InferInput("image", [1, 28, 28, 1], "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    output = httpclient.InferRequestedOutput("digit", binary_data=binary, class_count=3)
    result = client.infer("digits", [tensor], outputs=[output])
    classes = result.as_numpy("digit")
    assert classes.shape == (1, 3)
    scores = digits_scores(pixels[None])[0]
    best = np.argsort(-scores)[:3]
    parsed = [(v.decode() if isinstance(v, bytes) else v).split(":") for v in classes[0]]
    assert [int(index) for _, index, _ in parsed] == [int(i) for i in best]
    assert [label for _, _, label in parsed] == [DIGIT_LABELS[i] for i in best]
    assert all(len(value.split(".")[1]) == 6 for value, _, _ in parsed)  # "%f", as Triton's std::to_string
    np.testing.assert_allclose([float(v) for v, _, _ in parsed], scores[best], atol=1e-5)


def test_raw_binary_request_with_header_length_zero(server: Server) -> None:
    rows = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    response = server.post(
        "/v2/models/binary/infer",
        data=rows.tobytes(),
        headers={"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.content[:length])
    (output,) = header["outputs"]
    assert output["shape"] == [1, 1] and output["datatype"] == "FP32"
    value = np.frombuffer(response.content[length:], dtype="<f4")
    np.testing.assert_allclose(value, binary_scores(rows)[0], atol=1e-6)


def test_binary_bytes_outputs_are_length_prefixed(server: Server) -> None:
    body = {
        "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [[1, 0, 0, 0]]}],
        "outputs": [{"name": "probability", "parameters": {"classification": 2, "binary_data": True}}],
    }
    response = server.post("/v2/models/binary/infer", json=body)
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.content[:length])
    assert header["outputs"][0]["datatype"] == "BYTES"
    data = response.content[length:]
    (size,) = struct.unpack_from("<I", data)
    assert data[4 : 4 + size].decode().split(":")[1] == "0"  # one unit: only index 0 exists


def test_errors_are_json_with_the_right_status(server: Server) -> None:
    def check(response, status: int, fragment: str) -> None:
        assert response.status_code == status, response.text
        assert fragment in response.json()["error"]

    check(
        server.post(
            "/v2/models/nope/infer", json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
        ),
        404,
        "nope",
    )
    check(server.post("/v2/models/binary/infer", json={"inputs": []}), 400, "inputs")
    check(
        server.post(
            "/v2/models/binary/infer",
            json={"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]},
        ),
        422,
        "needs 4 values",
    )
    check(
        server.post(
            "/v2/models/binary/infer",
            json={"inputs": [{"name": "features", "shape": [1, 4], "datatype": "COMPLEX", "data": [1, 2, 3, 4]}]},
        ),
        400,
        "datatype",
    )
    check(
        server.post("/v2/models/binary/infer", data=b"{}", headers={"Inference-Header-Content-Length": "99"}),
        400,
        "outside",
    )
    check(
        server.post(
            "/v2/models/binary/infer",
            json={
                "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
                "outputs": [{"name": "nope"}],
            },
        ),
        400,
        "nope",
    )
