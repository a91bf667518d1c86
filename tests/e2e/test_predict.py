"""Native API end to end: predict and predict_classes over multipart, raw body and JSON, against real gunicorn."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from tests.e2e.api_models import (
    BINARY_LABELS,
    DIGIT_LABELS,
    LIMITS_ENV,
    MAX_IMAGES,
    MAX_REQUEST_BYTES,
    binary_scores,
    build_api_models,
    digit_image,
    digits_scores,
    encode,
    two_heads,
)
from tests.e2e.conftest import Server, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = build_api_models(tmp_path_factory.getbasetemp() / "api_models")
    with start_server(models, tmp_path_factory.mktemp("predict_logs"), **LIMITS_ENV) as running:
        yield running


def assert_error(response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"], body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    assert "/tmp/" not in body["error"] and "Traceback" not in body["error"]


# --- predict ----------------------------------------------------------------------------------------


def test_predict_multipart_one_image_matches_the_model(server: Server) -> None:
    pixels = digit_image(1)
    response = server.post("/models/digits/predict", files={"image": ("one.png", encode(pixels), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "digits" and body["version"] == 1
    np.testing.assert_allclose(body["predictions"], digits_scores(pixels[None]), atol=1e-5)


def test_predict_multipart_several_images_form_one_batch_in_order(server: Server) -> None:
    images = [digit_image(seed) for seed in (2, 3, 4)]
    files = [
        ("image", ("a.png", encode(images[0]), "image/png")),
        ("image", ("b.bmp", encode(images[1], "BMP"), "image/bmp")),
        ("other", ("c.webp", encode(images[2], "WEBP", lossless=True), "image/webp")),
    ]
    response = server.post("/models/digits/predict", files=files)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], digits_scores(np.stack(images)), atol=1e-5)


def test_predict_raw_image_body(server: Server) -> None:
    pixels = digit_image(5)
    response = server.post("/models/digits/predict", data=encode(pixels), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], digits_scores(pixels[None]), atol=1e-5)


def test_predict_base64_json_images(server: Server) -> None:
    images = [digit_image(6), digit_image(7)]
    instances = [{"b64": base64.b64encode(encode(p)).decode()} for p in images]
    response = server.post("/models/digits/predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], digits_scores(np.stack(images)), atol=1e-5)


def test_predict_colour_jpeg_is_converted_to_the_models_grayscale(server: Server) -> None:
    rgb = np.random.default_rng(8).integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
    jpeg = encode(rgb, "JPEG", quality=95)
    expected_pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"))
    response = server.post("/models/digits/predict", data=jpeg, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    # libjpeg decodes straight to luminance (draft mode), which rounds slightly differently from
    # Pillow's RGB -> L conversion: a pixel may differ by one level.
    np.testing.assert_allclose(response.json()["predictions"], digits_scores(expected_pixels[None]), atol=5e-4)


def test_predict_json_tensors_for_a_two_output_model_are_keyed_by_output_name(server: Server) -> None:
    rows = [[1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 1.0, 2.0]]
    response = server.post("/models/two_heads/predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    kind, size = two_heads(np.array(rows))
    predictions = response.json()["predictions"]
    assert [sorted(p) for p in predictions] == [["kind", "size"], ["kind", "size"]]
    np.testing.assert_allclose([p["kind"] for p in predictions], kind, atol=1e-5)
    np.testing.assert_allclose([p["size"] for p in predictions], size, atol=1e-5)


def test_predict_takes_the_model_from_the_query_and_the_version_from_the_path(server: Server) -> None:
    rows = [[0.2, 0.0, 0.0, 0.0]]
    by_query = server.post("/predict?model=binary", json={"instances": rows})
    by_version = server.post("/models/binary/versions/1/predict", json={"inputs": rows})
    assert by_query.status_code == by_version.status_code == 200
    assert by_query.json() == by_version.json()
    np.testing.assert_allclose(by_query.json()["predictions"], binary_scores(rows), atol=1e-6)


# --- predict_classes ------------------------------------------------------------------------------


def test_predict_classes_top_k_returns_ids_scores_and_labels(server: Server) -> None:
    pixels = digit_image(9)
    response = server.post(
        "/models/digits/predict_classes?top_k=3", files={"image": ("x.png", encode(pixels), "image/png")}
    )
    assert response.status_code == 200, response.text
    scores = digits_scores(pixels[None])[0]
    best = np.argsort(-scores)[:3]
    (entry,) = response.json()["predictions"]
    assert entry["class_id"] == int(best[0])
    assert entry["label"] == DIGIT_LABELS[best[0]]
    assert entry["score"] == pytest.approx(float(scores[best[0]]), abs=1e-5)
    assert [t["class_id"] for t in entry["top_k"]] == [int(i) for i in best]
    assert [t["label"] for t in entry["top_k"]] == [DIGIT_LABELS[i] for i in best]
    np.testing.assert_allclose([t["score"] for t in entry["top_k"]], scores[best], atol=1e-5)


def test_predict_classes_thresholds_a_single_sigmoid_unit(server: Server) -> None:
    rows = [[0.2, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]]  # sigmoid 0.55 and 0.27
    p = binary_scores(rows)[:, 0]
    default = server.post("/models/binary/predict_classes", json={"instances": rows}).json()["predictions"]
    assert [e["class_id"] for e in default] == [1, 0]
    assert [e["label"] for e in default] == [BINARY_LABELS[1], BINARY_LABELS[0]]
    np.testing.assert_allclose([e["score"] for e in default], [p[0], 1 - p[1]], atol=1e-6)
    strict = server.post("/models/binary/predict_classes?threshold=0.6", json={"instances": rows}).json()["predictions"]
    assert [e["class_id"] for e in strict] == [0, 0]
    lax = server.post("/models/binary/predict_classes?threshold=0.2&top_k=2", json={"instances": rows}).json()[
        "predictions"
    ]
    assert [e["class_id"] for e in lax] == [1, 1]
    assert [t["label"] for t in lax[0]["top_k"]] == ["dog", "cat"]


def test_predict_classes_of_a_two_output_model_per_output(server: Server) -> None:
    rows = [[0.0, 0.0, 3.0, 0.0]]
    response = server.post("/models/two_heads/predict_classes", json={"instances": rows})
    assert response.status_code == 200, response.text
    (entry,) = response.json()["predictions"]
    kind, size = two_heads(np.array(rows))
    assert entry["kind"]["class_id"] == 2
    assert entry["kind"]["score"] == pytest.approx(float(kind[0, 2]), abs=1e-5)
    assert entry["size"]["class_id"] == int(size[0, 0] > 0.5)


def test_predict_classes_rejects_bad_threshold_and_top_k(server: Server) -> None:
    assert_error(
        server.post("/models/binary/predict_classes?threshold=high", json={"instances": [[0, 0, 0, 0]]}),
        400,
        "threshold",
    )
    assert_error(
        server.post("/models/binary/predict_classes?top_k=0", json={"instances": [[0, 0, 0, 0]]}), 400, "top_k"
    )


# --- errors ---------------------------------------------------------------------------------------


def test_undecodable_image_is_400(server: Server) -> None:
    assert_error(
        server.post("/models/digits/predict", data=b"GIF89a-not-really", headers={"Content-Type": "image/gif"}),
        400,
        "decode",
    )


def test_unsupported_content_type_is_415(server: Server) -> None:
    assert_error(
        server.post("/models/digits/predict", data=b"hello", headers={"Content-Type": "text/plain"}), 415, "text/plain"
    )


def test_unknown_model_and_version_are_404(server: Server) -> None:
    assert_error(server.post("/models/nope/predict", json={"instances": [[1]]}), 404, "nope")
    assert_error(server.post("/models/digits/versions/7/predict", json={"instances": [[1]]}), 404, "version 7")


def test_predict_without_a_model_name_and_several_models_is_404_naming_the_fix(server: Server) -> None:
    assert_error(server.post("/predict", json={"instances": [[1]]}), 404, "DEFAULT_MODEL")


def test_wrong_shape_and_dtype_are_422(server: Server) -> None:
    assert_error(server.post("/models/binary/predict", json={"instances": [[1, 2, 3]]}), 422, "shape")
    assert_error(server.post("/models/binary/predict", json={"instances": [["a", "b", "c", "d"]]}), 422, "float32")
    assert_error(server.post("/models/binary/predict", json={"instances": [[1, 2], [3]]}), 422, "ragged")


def test_malformed_json_is_400(server: Server) -> None:
    bad = server.post("/models/binary/predict", data=b"{nope", headers={"Content-Type": "application/json"})
    assert_error(bad, 400, "JSON")
    assert_error(server.post("/models/binary/predict", json={"rows": []}), 400, "instances")
    assert_error(server.post("/models/binary/predict", json=[1, 2]), 400, "object")


def test_limits_are_413(server: Server) -> None:
    big = encode(np.zeros((400, 400), np.uint8))  # 160,000 pixels > MAX_IMAGE_PIXELS
    assert_error(
        server.post("/models/digits/predict", data=big, headers={"Content-Type": "image/png"}), 413, "MAX_IMAGE_PIXELS"
    )
    many = [("image", (f"{i}.png", encode(digit_image(i)), "image/png")) for i in range(MAX_IMAGES + 1)]
    assert_error(server.post("/models/digits/predict", files=many), 413, "MAX_IMAGES_PER_REQUEST")
    body = b"\0" * (MAX_REQUEST_BYTES + 10)
    assert_error(
        server.post("/models/digits/predict", data=body, headers={"Content-Type": "image/png"}),
        413,
        "MAX_REQUEST_BYTES",
    )


def test_request_id_is_echoed_or_generated_on_every_response(server: Server) -> None:
    echoed = server.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["X-Request-ID"] == "abc-123"
    generated = server.post("/models/nope/predict", json={"instances": [[1]]})
    assert len(generated.headers["X-Request-ID"]) == 32
    unsafe = server.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert unsafe.headers["X-Request-ID"] != "x" * 500


def test_unknown_route_and_method_are_json_errors(server: Server) -> None:
    assert_error(server.get("/no/such/route"), 404)
    assert_error(server.get("/models/digits/predict"), 405)


# --- models, health, OpenAPI ---------------------------------------------------------------------


def test_models_list_and_detail(server: Server) -> None:
    listing = server.get("/models").json()["models"]
    names = [m["name"] for m in listing]
    assert {"digits", "binary", "two_heads"} <= set(names)
    digits = server.get("/models/digits").json()
    assert digits["name"] == "digits"
    assert digits["versions"][0]["version"] == 1 and digits["versions"][0]["state"] == "AVAILABLE"
    assert digits["serving_version"] == 1
    assert digits["labels"] == list(DIGIT_LABELS)
    assert digits["inputs"] == [{"name": "image", "dtype": "float32", "shape": [None, 28, 28, 1]}]
    assert digits["outputs"][0]["shape"] == [None, 10]
    assert digits["device"]
    assert_error(server.get("/models/nope"), 404, "nope")


def test_health_and_readiness(server: Server) -> None:
    assert server.get("/healthz").json() == {"status": "alive"}
    ready = server.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True and ready.json()["models"]["digits"] is True


def test_openapi_document_is_valid_and_lists_the_native_routes(server: Server) -> None:
    from openapi_spec_validator import validate

    document = server.get("/openapi.json").json()
    validate(document)
    for path in (
        "/predict",
        "/models/{name}/predict",
        "/models/{name}/versions/{version}/predict",
        "/predict_classes",
        "/models/{name}/predict_classes",
        "/models",
        "/models/{name}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in document["paths"], path
