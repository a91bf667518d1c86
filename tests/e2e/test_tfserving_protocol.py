"""TensorFlow Serving REST end to end: TF Serving's documented examples against the corpus SavedModels."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CORPUS
from tests.e2e.api_models import binary_scores, build_api_models, digit_image, digits_scores, encode
from tests.e2e.conftest import Server, start_server

EXPECTED_METADATA = CORPUS / "expected" / "half_plus_two_cpu" / "half_plus_two_model_metadata.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Iterator[Server]:
    models = build_api_models(tmp_path_factory.getbasetemp() / "api_models")
    with start_server(models, tmp_path_factory.mktemp("tfs_logs")) as running:
        yield running


def assert_error(response, status: int, fragment: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and fragment in body["error"], body


def test_predict_row_format_documented_example(server: Server) -> None:
    response = server.post("/v1/models/half_plus_two:predict", json={"instances": [1.0, 2.0, 5.0]})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_predict_half_plus_three_documented_example(server: Server) -> None:
    response = server.post("/v1/models/half_plus_three:predict", json={"instances": [1.0, 2.0, 5.0]})
    assert response.json() == {"predictions": [3.5, 4.0, 5.5]}


def test_predict_columnar_format_and_explicit_version_and_signature(server: Server) -> None:
    body = {"signature_name": "serving_default", "inputs": {"x": [[1.0], [2.0]]}}
    response = server.post("/v1/models/half_plus_two/versions/123:predict", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"outputs": [[2.5], [3.0]]}


def test_predict_named_row_format(server: Server) -> None:
    response = server.post("/v1/models/half_plus_two:predict", json={"instances": [{"x": [1.0]}, {"x": [3.0]}]})
    assert response.json() == {"predictions": [[2.5], [3.5]]}


def test_predict_multi_output_rows_are_objects_and_columns_an_object(server: Server) -> None:
    rows = server.post("/v1/models/two_heads:predict", json={"instances": [[1, 0, 0, 0]]}).json()["predictions"]
    assert sorted(rows[0]) == ["kind", "size"]
    columns = server.post("/v1/models/two_heads:predict", json={"inputs": [[1, 0, 0, 0]]}).json()["outputs"]
    assert sorted(columns) == ["kind", "size"] and columns["size"] == [[1.0]]


def test_predict_accepts_b64_images_for_float_image_inputs(server: Server) -> None:
    import base64

    pixels = digit_image(11)
    body = {"instances": [{"b64": base64.b64encode(encode(pixels)).decode()}]}
    response = server.post("/v1/models/digits:predict", json=body)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], digits_scores(pixels[None]), atol=1e-5)


def test_regress_half_plus_three_documented_example(server: Server) -> None:
    body = {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]}
    response = server.post("/v1/models/half_plus_three:regress", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [3.5, 4.0]}


def test_classify_and_regress_signatures_of_half_plus_two(server: Server) -> None:
    classify = server.post(
        "/v1/models/half_plus_two:classify", json={"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    )
    assert classify.status_code == 200, classify.text
    assert classify.json() == {"results": [[["", 3.0]]]}
    regress = server.post(
        "/v1/models/half_plus_two:regress", json={"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    )
    assert regress.json() == {"results": [3.0]}
    context = server.post(
        "/v1/models/half_plus_two:regress",
        json={"signature_name": "regress_x_to_y2", "context": {"x": 4.0}, "examples": [{}, {"x": 2.0}]},
    )
    assert context.status_code == 200, context.text
    assert context.json() == {"results": [5.0, 4.0]}  # y2 = 0.5 x + 3; the first example takes x from the context


def test_classify_half_plus_three_without_a_classify_signature_uses_its_scores(server: Server) -> None:
    response = server.post("/v1/models/half_plus_three:classify", json={"examples": [{"x": 2.0}, {"x": 4.0}]})
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [[["", 4.0]], [["", 5.0]]]}


def test_classify_a_keras_classifier_lists_every_class_with_its_label(server: Server) -> None:
    response = server.post("/v1/models/binary:classify", json={"examples": [{"features": [1.0, 0.0, 0.0, 0.0]}]})
    assert response.status_code == 200, response.text
    ((cat, dog),) = response.json()["results"]
    p = binary_scores([[1.0, 0.0, 0.0, 0.0]])[0, 0]
    assert cat[0] == "cat" and dog[0] == "dog"
    assert cat[1] == pytest.approx(1 - p, abs=1e-6) and dog[1] == pytest.approx(p, abs=1e-6)


def test_status_documented_shape(server: Server) -> None:
    for path in ("/v1/models/half_plus_three", "/v1/models/half_plus_three/versions/123"):
        response = server.get(path)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "model_version_status": [
                {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        }


def test_metadata_matches_tf_servings_own_answer(server: Server) -> None:
    response = server.get("/v1/models/half_plus_two/metadata")
    assert response.status_code == 200, response.text
    expected = json.loads(EXPECTED_METADATA.read_text())
    expected["model_spec"]["name"] = "half_plus_two"  # TF Serving's test served it as "default"
    assert response.json() == expected


def test_url_grammar_is_case_insensitive_and_rejects_version_with_label(server: Server) -> None:
    response = server.post("/v1/models/half_plus_two/Versions/123:PREDICT", json={"instances": [1.0]})
    assert response.json() == {"predictions": [2.5]}
    assert_error(
        server.post("/v1/models/half_plus_two/versions/123/labels/stable:predict", json={"instances": [1.0]}),
        400,
        "label",
    )
    assert_error(server.get("/v1/models/half_plus_two/labels/stable"), 404, "stable")


def test_errors_are_shaped_like_tf_servings(server: Server) -> None:
    assert_error(server.post("/v1/models/nope:predict", json={"instances": [1.0]}), 404, "nope")
    assert_error(
        server.post("/v1/models/half_plus_two:predict", json={"instances": [1.0], "inputs": [1.0]}), 400, "exactly one"
    )
    assert_error(
        server.post("/v1/models/half_plus_two:predict", data=b"[1,", headers={"Content-Type": "application/json"}),
        400,
        "JSON",
    )
    assert_error(server.post("/v1/models/half_plus_two:explain", json={}), 400, "malformed")
    assert_error(
        server.post("/v1/models/half_plus_two:predict", json={"signature_name": "nope", "instances": [1.0]}),
        400,
        "nope",
    )
    assert_error(server.post("/v1/models/half_plus_two:regress", json={"examples": "x"}), 400, "examples")
