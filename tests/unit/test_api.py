"""HTTP API through Flask's test client: every route, its status and its exact JSON body.

`create_app` wires the real repository, watcher, manager, data plane, adapters and error table; only
the servables come from `tests.unit.fakes.FakeBuilder` (numpy functions behind real batchers), so
these tests need neither gunicorn nor TensorFlow. What needs a real server (worker processes,
connection handling, real models) stays in tests/e2e.
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from service.api import EXTENSION
from service.app import create_app
from service.settings import Settings
from tests.conftest import wait_until
from tests.unit.fakes import DOUBLE, HALF, PIXEL_MEAN, SUM, FakeBuilder, FakeModel

DIGITS_TENSORS = {
    "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 2, 2, 1]}],
    "outputs": [{"name": "probs", "dtype": "float32", "shape": [None, 3]}],
}
BROKEN = {
    "name": "broken",
    "versions": [{"version": 1, "state": "FAILED", "error": "'broken.h5' is truncated or corrupt"}],
    "version_labels": {},
    "labels": [],
    "serving_version": None,
    "resident": False,
}
DIGITS = {
    "name": "digits",
    "versions": [
        {
            "version": 1,
            "state": "AVAILABLE",
            "format": "fake",
            "loader": "fake",
            "device": "/CPU:0",
            "load_s": 0.0,
            "warmup_s": 0.0,
            "backend": {"name": "tensorflow", "precision": "fp32", "requested": "tensorflow"},
            **DIGITS_TENSORS,
        }
    ],
    "version_labels": {},
    "labels": ["cat", "dog", "bird"],
    "serving_version": 1,
    "resident": True,
    "device": "/CPU:0",
    "backend": "tensorflow",
    "precision": "fp32",
    "default_signature": "serving_default",
    **DIGITS_TENSORS,
    "signatures": {"serving_default": {**DIGITS_TENSORS, "method_name": "tensorflow/serving/predict"}},
}


MODELS = {"double": DOUBLE, "digits": PIXEL_MEAN, "sum": SUM}


def make_app(
    models_dir: Path,
    *,
    gate: threading.Event | None = None,
    models: Mapping[str, FakeModel] = MODELS,
    **options,
) -> Flask:
    """Put the fake `models` (and a broken one) into `models_dir` and build the app over them; wait until
    it is ready (unless gated)."""
    models_dir.mkdir(exist_ok=True)
    for name in (*models, "broken"):
        (models_dir / f"{name}.h5").write_text("a fake model file")
    (models_dir / "digits.labels.txt").write_text("cat\ndog\nbird\n")
    settings = Settings(models_dir=models_dir, settle_s=0, poll_interval_s=60, **options)
    builder = FakeBuilder(models, settings, gate=gate)
    app = create_app(settings, builder=builder)
    if gate is None:
        client = app.test_client()
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout_s=10)
    return app


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskClient]:
    app = make_app(tmp_path_factory.mktemp("api") / "models", max_images_per_request=3)
    yield app.test_client()
    app.extensions[EXTENSION].stop()


def png(pixels: list[list[int]]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.array(pixels, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


THREE_QUARTERS_WHITE = png([[0, 255], [255, 255]])
"""Mean pixel 0.75 on the unit scale: PIXEL_MEAN scores it (0.75, 0.25, 0.0)."""


def assert_error(response, status: int, message: str) -> None:
    assert (response.status_code, response.get_json()) == (status, {"error": message})


# --- probes, metrics, OpenAPI ---------------------------------------------------------------------


def test_healthz_answers_alive(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"status": "alive"})


def test_readyz_lists_every_model_and_a_failed_one_does_not_hold_readiness(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert (response.status_code, response.get_json()) == (
        200,
        {"ready": True, "models": {"broken": False, "digits": True, "double": True, "sum": True}},
    )


def test_readyz_and_predict_are_503_while_the_start_up_models_load(tmp_path: Path) -> None:
    gate = threading.Event()
    app = make_app(tmp_path / "models", gate=gate)
    client = app.test_client()
    try:
        ready = client.get("/readyz")
        predict = client.post("/models/double/predict", json={"instances": [[1, 2]]})
        v2_ready = client.get("/v2/health/ready")
    finally:
        gate.set()
        app.extensions[EXTENSION].stop()
    reason = "loading broken, digits, double, sum"
    assert (ready.status_code, ready.headers["Retry-After"]) == (503, "5")
    assert ready.get_json() == {
        "ready": False,
        "models": {"broken": False, "digits": False, "double": False, "sum": False},
        "error": reason,
        "reason": reason,
    }
    assert_error(predict, 503, "model 'double' has no AVAILABLE version yet: version 1 is START")
    assert v2_ready.status_code == 400


def test_metrics_counts_answered_requests_in_prometheus_text(client: FlaskClient) -> None:
    client.get("/healthz")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert 'kerasserve_requests_total{code="200",model="",protocol="rest",route="health.healthz"}' in response.get_data(
        as_text=True
    )


def test_openapi_document_is_served_as_json(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    body = response.get_json()
    assert body["openapi"] == "3.0.3" and "/models/{name}/predict" in body["paths"]


def test_openapi_document_has_every_route_with_its_methods(client: FlaskClient) -> None:
    """Every Flask rule (its methods included) is an operation of /openapi.json, so the fuzzer
    (tests/e2e/test_fuzz_openapi.py), which reads that document, reaches every route. TF Serving's
    `/v1/models/<path:path>` is one rule for many documented paths: each of its methods must be
    documented under /v1/models/ at least once."""
    document = client.get("/openapi.json").get_json()["paths"]
    app = client.application
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
        if rule.rule == "/v1/models/<path:path>":
            for method in methods:
                assert any(p.startswith("/v1/models/") and method in ops for p, ops in document.items()), method
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        assert path in document, f"{rule.rule} is not in openapi.yaml"
        assert methods <= set(document[path]), f"{rule.rule}: {methods - set(document[path])} not documented"


# --- the web console -------------------------------------------------------------------------------

CONSOLE_FILES = ("index.html", "console.js", "console.css")


def test_console_page_and_its_files_are_served_under_a_strict_content_security_policy(client: FlaskClient) -> None:
    page = client.get("/")
    script = client.get("/ui/console.js")
    style = client.get("/ui/console.css")
    assert (page.status_code, page.mimetype) == (200, "text/html")
    assert '<script src="ui/console.js" defer></script>' in page.get_data(as_text=True)
    assert (script.status_code, script.mimetype) == (200, "text/javascript")
    assert (style.status_code, style.mimetype) == (200, "text/css")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"


def test_console_files_are_small_and_fetch_nothing_from_elsewhere() -> None:
    from service.api.console import CONSOLE_FOLDER

    texts = [(CONSOLE_FOLDER / name).read_text(encoding="utf-8") for name in CONSOLE_FILES]
    assert sorted(p.name for p in CONSOLE_FOLDER.iterdir()) == sorted(CONSOLE_FILES)
    assert sum(len(t.encode()) for t in texts) < 40_000  # a few tens of kB, no library
    assert not [t for t in texts if re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", t, re.IGNORECASE)]


def test_console_answers_404_for_unknown_files_and_paths_out_of_its_folder(client: FlaskClient) -> None:
    message = "no such URL; see /openapi.json for the native API, /v1/models/<name> and /v2 for the others"
    for path in ("/ui/nothing.js", "/ui/../settings.py", "/ui/%2e%2e/api/console.py", "/ui/"):
        assert_error(client.get(path), 404, message)


def test_console_off_answers_404_and_with_a_token_its_files_stay_open(tmp_path: Path) -> None:
    off = make_app(tmp_path / "off", console=False)
    guarded = make_app(tmp_path / "guarded", auth_token="s3cret")
    try:
        off_page, off_script = off.test_client().get("/"), off.test_client().get("/ui/console.js")
        client = guarded.test_client()
        page, script, data = client.get("/"), client.get("/ui/console.js"), client.get("/models")
    finally:
        off.extensions[EXTENSION].stop()
        guarded.extensions[EXTENSION].stop()
    assert (off_page.status_code, off_script.status_code) == (404, 404)
    assert off_page.get_json() == {
        "error": "no such URL; see /openapi.json for the native API, /v1/models/<name> and /v2 for the others"
    }
    assert (page.status_code, script.status_code) == (200, 200)
    assert data.status_code == 401  # the page asks for the token before it shows any data


# --- native model views ---------------------------------------------------------------------------


def test_models_lists_every_model_with_its_versions_and_serving_signature(client: FlaskClient) -> None:
    response = client.get("/models")
    assert response.status_code == 200
    models = response.get_json()["models"]
    assert [m["name"] for m in models] == ["broken", "digits", "double", "sum"]
    assert models[0] == BROKEN and models[1] == DIGITS


def test_model_detail_shows_versions_states_signature_labels_and_device(client: FlaskClient) -> None:
    response = client.get("/models/digits")
    assert (response.status_code, response.get_json()) == (200, DIGITS)


def test_model_detail_shows_a_failed_load_as_failed_with_its_error(client: FlaskClient) -> None:
    response = client.get("/models/broken")
    assert (response.status_code, response.get_json()) == (200, BROKEN)


def test_model_detail_of_an_unknown_model_is_404(client: FlaskClient) -> None:
    assert_error(client.get("/models/nope"), 404, "model 'nope' does not exist")


# --- native predict -------------------------------------------------------------------------------


def test_predict_json_instances(client: FlaskClient) -> None:
    response = client.post("/models/double/predict", json={"instances": [[1, 2], [3, 4]]})
    assert (response.status_code, response.get_json()) == (
        200,
        {"model": "double", "version": 1, "predictions": [[2.0, 4.0], [6.0, 8.0]]},
    )


def test_predict_multipart_image_is_decoded_and_scaled_for_the_model(client: FlaskClient) -> None:
    response = client.post("/models/digits/predict", data={"image": (io.BytesIO(THREE_QUARTERS_WHITE), "a.png")})
    assert (response.status_code, response.get_json()) == (
        200,
        {"model": "digits", "version": 1, "predictions": [[0.75, 0.25, 0.0]]},
    )


def test_predict_raw_image_body(client: FlaskClient) -> None:
    response = client.post("/models/digits/predict", data=THREE_QUARTERS_WHITE, headers={"Content-Type": "image/png"})
    assert (response.status_code, response.get_json()) == (
        200,
        {"model": "digits", "version": 1, "predictions": [[0.75, 0.25, 0.0]]},
    )


def test_predict_takes_the_model_from_the_query_and_the_version_from_the_path(client: FlaskClient) -> None:
    expected = {"model": "double", "version": 1, "predictions": [[2.0, 4.0]]}
    by_query = client.post("/predict?model=double", json={"instances": [[1, 2]]})
    by_version = client.post("/models/double/versions/1/predict", json={"inputs": [[1, 2]]})
    assert (by_query.status_code, by_query.get_json()) == (200, expected)
    assert (by_version.status_code, by_version.get_json()) == (200, expected)


def test_predict_without_a_model_name_is_404_when_several_models_are_served(client: FlaskClient) -> None:
    assert_error(
        client.post("/predict", json={"instances": [[1, 2]]}),
        404,
        "name the model in the URL, or set DEFAULT_MODEL: 4 models are served (broken, digits, double, sum)",
    )


def test_predict_on_a_model_that_failed_to_load_is_503_with_the_reason(client: FlaskClient) -> None:
    response = client.post("/models/broken/predict", json={"instances": [[1, 2]]})
    assert_error(
        response,
        503,
        "model 'broken' has no AVAILABLE version yet: version 1 failed to load: 'broken.h5' is truncated or corrupt",
    )
    assert response.headers["Retry-After"] == "5"


def test_predict_on_an_unknown_model_or_version_is_404(client: FlaskClient) -> None:
    assert_error(client.post("/models/nope/predict", json={"instances": [[1, 2]]}), 404, "model 'nope' does not exist")
    assert_error(
        client.post("/models/double/versions/7/predict", json={"instances": [[1, 2]]}),
        404,
        "version 7 of model 'double' does not exist",
    )


def test_predict_with_malformed_json_is_400(client: FlaskClient) -> None:
    assert_error(
        client.post("/models/double/predict", data="{", content_type="application/json"),
        400,
        "request body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    )


def test_predict_with_an_unsupported_content_type_is_415(client: FlaskClient) -> None:
    assert_error(
        client.post("/models/double/predict", data="1,2", content_type="text/csv"),
        415,
        "Content-Type 'text/csv' is not supported; send multipart/form-data, image/*, application/octet-stream or application/json",
    )


def test_predict_with_more_images_than_allowed_is_413(client: FlaskClient) -> None:
    files = [(io.BytesIO(THREE_QUARTERS_WHITE), f"{n}.png") for n in range(4)]
    assert_error(
        client.post("/models/digits/predict", data={"image": files}),
        413,
        "4 images exceed the limit of 3 per request (MAX_IMAGES_PER_REQUEST)",
    )


def test_predict_classes_top_k_gives_ids_labels_and_scores(client: FlaskClient) -> None:
    response = client.post(
        "/models/digits/predict_classes?top_k=2", data=THREE_QUARTERS_WHITE, headers={"Content-Type": "image/png"}
    )
    assert (response.status_code, response.get_json()) == (
        200,
        {
            "model": "digits",
            "version": 1,
            "predictions": [
                {
                    "class_id": 0,
                    "label": "cat",
                    "score": 0.75,
                    "top_k": [
                        {"class_id": 0, "label": "cat", "score": 0.75},
                        {"class_id": 1, "label": "dog", "score": 0.25},
                    ],
                }
            ],
        },
    )


def test_predict_classes_with_a_bad_top_k_is_400(client: FlaskClient) -> None:
    assert_error(
        client.post(
            "/models/digits/predict_classes?top_k=0", data=THREE_QUARTERS_WHITE, headers={"Content-Type": "image/png"}
        ),
        400,
        "top_k '0' is not a positive integer",
    )


# --- TensorFlow Serving REST ----------------------------------------------------------------------


def test_tfserving_model_status(client: FlaskClient) -> None:
    response = client.get("/v1/models/double")
    assert (response.status_code, response.get_json()) == (
        200,
        {
            "model_version_status": [
                {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        },
    )


def test_tfserving_metadata_lists_the_signature_defs(client: FlaskClient) -> None:
    dims = {"dim": [{"size": "-1", "name": ""}, {"size": "2", "name": ""}], "unknown_rank": False}
    response = client.get("/v1/models/double/metadata")
    assert (response.status_code, response.get_json()) == (
        200,
        {
            "model_spec": {"name": "double", "signature_name": "", "version": "1"},
            "metadata": {
                "signature_def": {
                    "signature_def": {
                        "serving_default": {
                            "inputs": {"x": {"dtype": "DT_FLOAT", "tensor_shape": dims, "name": "x:0"}},
                            "outputs": {"y": {"dtype": "DT_FLOAT", "tensor_shape": dims, "name": "y:0"}},
                            "method_name": "tensorflow/serving/predict",
                            "defaults": {},
                        }
                    }
                }
            },
        },
    )


def test_tfserving_predict_in_row_and_columnar_form(client: FlaskClient) -> None:
    rows = client.post("/v1/models/double:predict", json={"instances": [[1, 2]]})
    columns = client.post("/v1/models/double/versions/1:predict", json={"inputs": {"x": [[1, 2]]}})
    assert (rows.status_code, rows.get_json()) == (200, {"predictions": [[2.0, 4.0]]})
    assert (columns.status_code, columns.get_json()) == (200, {"outputs": [[2.0, 4.0]]})


def test_tfserving_classify_and_regress_feed_features_named_like_inputs(client: FlaskClient) -> None:
    classify = client.post("/v1/models/double:classify", json={"examples": [{"x": [1, 2]}]})
    regress = client.post("/v1/models/sum:regress", json={"examples": [{"x": [1, 2]}, {"x": [3, 4]}]})
    # Every class in index order; the label is "" for a model without labels, as TF Serving answers.
    assert (classify.status_code, classify.get_json()) == (200, {"results": [[["", 2.0], ["", 4.0]]]})
    assert (regress.status_code, regress.get_json()) == (200, {"results": [3.0, 7.0]})


@pytest.fixture(scope="module")
def half(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskClient]:
    """An app serving `half` (y = x / 2 on an input of shape (None, 1)) and `double`, `sum`."""
    app = make_app(tmp_path_factory.mktemp("half") / "models", models={"half": HALF, "double": DOUBLE, "sum": SUM})
    yield app.test_client()
    app.extensions[EXTENSION].stop()


@pytest.mark.parametrize(
    "body, answer",
    [
        ({"instances": [1.0, 2.0]}, {"predictions": [0.5, 1.0]}),
        ({"inputs": [1.0, 2.0]}, {"outputs": [0.5, 1.0]}),
        ({"inputs": {"x": [1.0, 2.0]}}, {"outputs": [0.5, 1.0]}),
        ({"instances": [{"x": 1.0}, {"x": 2.0}]}, {"predictions": [0.5, 1.0]}),
        # Sent with the unit axis: answered with it.
        ({"instances": [[1.0], [2.0]]}, {"predictions": [[0.5], [1.0]]}),
        ({"inputs": {"x": [[1.0], [2.0]]}}, {"outputs": [[0.5], [1.0]]}),
    ],
)
def test_tfserving_one_value_per_row_to_a_unit_axis_input_is_answered_one_value_per_row(
    half: FlaskClient, body: dict, answer: dict
) -> None:
    # TF Serving's rule (its adapter adds the unit axis and drops it from the answer; the data plane does neither).
    response = half.post("/v1/models/half:predict", json=body)
    assert (response.status_code, response.get_json()) == (200, answer)


def test_native_json_keeps_tf_servings_unit_axis_rule_and_predict_classes_keeps_the_class_axis(
    half: FlaskClient,
) -> None:
    predict = half.post("/models/half/predict", json={"instances": [1.0, 2.0]})
    with_axis = half.post("/models/half/predict", json={"instances": [[1.0], [2.0]]})
    classes = half.post("/models/half/predict_classes", json={"instances": [0.4, 2.0]})
    assert predict.get_json() == {"model": "half", "version": 1, "predictions": [0.5, 1.0]}
    assert with_axis.get_json()["predictions"] == [[0.5], [1.0]]
    # One sigmoid unit: threshold 0.5 on y = x / 2 (0.2 and 1.0).
    assert [p["class_id"] for p in classes.get_json()["predictions"]] == [0, 1]


def test_kserve_v2_shapes_are_the_models_own_and_get_no_unit_axis(half: FlaskClient) -> None:
    # KServe v2 declares every tensor's shape: the model's (None, 1) input takes [N, 1] and answers [N, 1].
    x = {"name": "x", "datatype": "FP32", "data": [1.0, 2.0]}
    ok = half.post("/v2/models/half/infer", json={"inputs": [{**x, "shape": [2, 1]}]})
    assert (ok.status_code, ok.get_json()["outputs"]) == (
        200,
        [{"name": "y", "datatype": "FP32", "shape": [2, 1], "data": [0.5, 1.0]}],
    )
    flat = half.post("/v2/models/half/infer", json={"inputs": [{**x, "shape": [2]}]})
    assert_error(flat, 422, "input 'x' has shape [None, 1], got [2]")


def test_tfserving_classify_and_regress_on_a_unit_axis_input_answer_as_before(half: FlaskClient) -> None:
    examples = {"examples": [{"x": 1.0}, {"x": 3.0}]}
    regress = half.post("/v1/models/half:regress", json=examples)
    classify = half.post("/v1/models/half:classify", json=examples)
    assert (regress.status_code, regress.get_json()) == (200, {"results": [0.5, 1.5]})
    assert (classify.status_code, classify.get_json()) == (200, {"results": [[["", 0.5]], [["", 1.5]]]})
    # Several values per example cannot be regressed: 400, after the model ran, from the adapter.
    assert_error(
        half.post("/v1/models/double:regress", json={"examples": [{"x": [1.0, 2.0]}]}),
        400,
        "regress needs one value per example; output 'y' has 2",
    )


def test_tfserving_predict_on_an_unknown_model_is_404(client: FlaskClient) -> None:
    assert_error(
        client.post("/v1/models/nope:predict", json={"instances": [[1, 2]]}), 404, "model 'nope' does not exist"
    )


# --- KServe v2 ------------------------------------------------------------------------------------


def test_v2_server_metadata(client: FlaskClient) -> None:
    response = client.get("/v2")
    assert (response.status_code, response.get_json()) == (
        200,
        {
            "name": "kerasserve",
            "version": "0.1.0",
            "extensions": ["binary_tensor_data", "classification", "model_repository"],
        },
    )


def test_v2_health_and_model_readiness_answer_with_empty_bodies(client: FlaskClient) -> None:
    answers = {
        url: (r.status_code, r.get_data())
        for url in (
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/double/ready",
            "/v2/models/double/versions/1/ready",
            "/v2/models/broken/ready",
            "/v2/models/nope/ready",
        )
        for r in [client.get(url)]
    }
    assert answers == {
        "/v2/health/live": (200, b""),
        "/v2/health/ready": (200, b""),
        "/v2/models/double/ready": (200, b""),
        "/v2/models/double/versions/1/ready": (200, b""),
        "/v2/models/broken/ready": (400, b""),
        "/v2/models/nope/ready": (400, b""),
    }


def test_v2_model_metadata(client: FlaskClient) -> None:
    expected = {
        "name": "double",
        "versions": ["1"],
        "platform": "keras",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    }
    for url in ("/v2/models/double", "/v2/models/double/versions/1"):
        response = client.get(url)
        assert (response.status_code, response.get_json()) == (200, expected)


def test_v2_infer_json(client: FlaskClient) -> None:
    response = client.post(
        "/v2/models/double/infer", json={"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    )
    assert (response.status_code, response.get_json()) == (
        200,
        {
            "model_name": "double",
            "model_version": "1",
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [2.0, 4.0]}],
        },
    )


def test_v2_infer_on_a_version_that_is_not_a_number_is_404(client: FlaskClient) -> None:
    assert_error(
        client.post("/v2/models/double/versions/latest/infer", json={"inputs": []}),
        404,
        "model 'double' does not exist",
    )


# --- what every route shares ----------------------------------------------------------------------


def test_unknown_url_and_wrong_method_answer_json_errors(client: FlaskClient) -> None:
    assert_error(
        client.get("/nowhere"),
        404,
        "no such URL; see /openapi.json for the native API, /v1/models/<name> and /v2 for the others",
    )
    response = client.delete("/healthz")
    assert_error(response, 405, "method not allowed on this URL")
    assert sorted(response.headers["Allow"].split(", ")) == ["GET", "HEAD", "OPTIONS"]


def test_a_plain_client_request_id_is_echoed_and_a_missing_one_generated(client: FlaskClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    generated = client.get("/healthz", headers={"X-Request-ID": "not plain!"}).headers["X-Request-ID"]
    assert len(generated) == 32 and generated != "not plain!"


def test_with_a_token_configured_predict_needs_it_and_probes_stay_open(tmp_path: Path) -> None:
    app = make_app(tmp_path / "models", auth_token="s3cret")
    client = app.test_client()
    try:
        refused = client.post("/models/double/predict", json={"instances": [[1, 2]]})
        allowed = client.post(
            "/models/double/predict", json={"instances": [[1, 2]]}, headers={"Authorization": "Bearer s3cret"}
        )
        probe = client.get("/healthz")
    finally:
        app.extensions[EXTENSION].stop()
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert (allowed.status_code, allowed.get_json()) == (
        200,
        {"model": "double", "version": 1, "predictions": [[2.0, 4.0]]},
    )
    assert (probe.status_code, probe.get_json()) == (200, {"status": "alive"})


@pytest.mark.parametrize(("need", "status"), [(False, 200), (True, 401)])
def test_metrics_need_the_token_only_when_configured(tmp_path: Path, need: bool, status: int) -> None:
    app = make_app(tmp_path / "models", auth_token="s3cret", metrics_need_token=need)
    client = app.test_client()
    try:
        without = client.get("/metrics")
        with_token = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    finally:
        app.extensions[EXTENSION].stop()
    assert without.status_code == status
    assert with_token.status_code == 200 and "kerasserve_" in with_token.get_data(as_text=True)


# --- hardening: requests of ordinary size that used to answer 500 -----------------------------------
# Numbers in URLs, headers and query strings are ASCII digits only ('²' passes str.isdigit() but not
# int(); int('١') is 1, yet a version is not written in Arabic-Indic digits).
UNICODE_DIGITS = ("²", "١", "３")


@pytest.mark.parametrize("digit", UNICODE_DIGITS)
def test_a_version_in_unicode_digits_is_400_on_tfserving_urls(client: FlaskClient, digit: str) -> None:
    message = f"version '{digit}' is not a positive integer"
    assert_error(client.get(f"/v1/models/double/versions/{digit}"), 400, message)
    assert_error(client.get(f"/v1/models/double/versions/{digit}/metadata"), 400, message)
    assert_error(client.post(f"/v1/models/double/versions/{digit}:predict", json={"instances": [[1, 2]]}), 400, message)


@pytest.mark.parametrize("digit", UNICODE_DIGITS)
def test_a_version_in_unicode_digits_is_an_unknown_version_on_kserve_and_native_urls(
    client: FlaskClient, digit: str
) -> None:
    assert_error(client.get(f"/v2/models/double/versions/{digit}"), 404, "model 'double' does not exist")
    assert_error(
        client.post(f"/v2/models/double/versions/{digit}/infer", json={"inputs": []}),
        404,
        "model 'double' does not exist",
    )
    ready = client.get(f"/v2/models/double/versions/{digit}/ready")
    assert (ready.status_code, ready.get_data()) == (400, b"")
    assert_error(
        client.post(f"/models/double/versions/{digit}/predict", json={"instances": [[1, 2]]}),
        404,
        "no such URL; see /openapi.json for the native API, /v1/models/<name> and /v2 for the others",
    )


@pytest.mark.parametrize("digit", UNICODE_DIGITS)
def test_query_numbers_in_unicode_digits_are_400(client: FlaskClient, digit: str) -> None:
    image = {"data": THREE_QUARTERS_WHITE, "headers": {"Content-Type": "image/png"}}
    assert_error(
        client.post(f"/models/digits/predict_classes?top_k={digit}", **image),
        400,
        f"top_k '{digit}' is not a positive integer",
    )
    assert_error(
        client.post(f"/models/digits/predict_classes?threshold=0.{digit}", **image),
        400,
        f"threshold '0.{digit}' is not a number",
    )


def test_query_numbers_take_no_spaces_underscores_or_signs_python_would_accept(client: FlaskClient) -> None:
    image = {"data": THREE_QUARTERS_WHITE, "headers": {"Content-Type": "image/png"}}
    for top_k in ("+2", " 2", "1_0"):
        assert_error(
            client.post("/models/digits/predict_classes", query_string={"top_k": top_k}, **image),
            400,
            f"top_k '{top_k}' is not a positive integer",
        )
    for threshold in ("1_0", " 0.5", "0x1p-1"):
        assert_error(
            client.post("/models/digits/predict_classes", query_string={"threshold": threshold}, **image),
            400,
            f"threshold '{threshold}' is not a number",
        )
    good = client.post("/models/digits/predict_classes", query_string={"threshold": "-1.5e-1", "top_k": "02"}, **image)
    assert good.status_code == 200


@pytest.mark.parametrize("length", ["²", "١", "+5", "-1", "0x5", "1_0"])
def test_a_kserve_header_length_in_anything_but_ascii_digits_is_400(client: FlaskClient, length: str) -> None:
    header = b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}'
    assert_error(
        client.post("/v2/models/double/infer", data=header, headers={"Inference-Header-Content-Length": length}),
        400,
        f"Inference-Header-Content-Length '{length}' is not a number",
    )


def test_kserve_numbers_sent_as_json_strings_are_422(client: FlaskClient) -> None:
    for data in (["١", "2"], ["1", "2"], [None, 2]):
        assert_error(
            client.post(
                "/v2/models/double/infer",
                json={"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": data}]},
            ),
            422,
            "input 'x': FP32 data must be numbers, not strings or null",
        )


def v2_input(shape: object, **fields: object) -> dict:
    return {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", **fields}]}


@pytest.mark.parametrize(
    "shape,message",
    [
        ([0, 2**63], "input 'x': shape dimension 9223372036854775808 is larger than 2147483647"),
        ([2**63], "input 'x': shape dimension 9223372036854775808 is larger than 2147483647"),
        ([2**64, 0], "input 'x': shape dimension 18446744073709551616 is larger than 2147483647"),
        (
            [2**20, 2**20],
            "input 'x': shape [1048576, 1048576] is too large: its dimensions multiply to more than 2147483647",
        ),
        (
            [2**31 - 1, 2**31 - 1, 0],
            "input 'x': shape [2147483647, 2147483647, 0] is too large: its dimensions multiply to more than 2147483647",
        ),
        ([1] * 33, "input 'x': shape has 33 dimensions; at most 32"),
        ([1] * 64, "input 'x': shape has 64 dimensions; at most 32"),
        ([0] * 65, "input 'x': shape has 65 dimensions; at most 32"),
        ([-1, 2], "input 'x': 'shape' must be a list of non-negative integers"),
    ],
)
def test_kserve_shapes_out_of_bounds_are_400_before_any_allocation(
    client: FlaskClient, shape: list, message: str
) -> None:
    as_json = client.post("/v2/models/double/infer", json=v2_input(shape, data=[]))
    binary_header = json.dumps(v2_input(shape, parameters={"binary_data_size": 0})).encode()
    as_binary = client.post(
        "/v2/models/double/infer",
        data=binary_header,
        headers={"Inference-Header-Content-Length": str(len(binary_header))},
    )
    assert_error(as_json, 400, message)
    assert_error(as_binary, 400, message)


SURROGATE_MESSAGE = (
    "request body holds a string with a lone UTF-16 surrogate ('\\ud800'); strings must be valid Unicode"
)


@pytest.mark.parametrize(
    "url,body",
    [
        ("/models/double/predict", b'{"instances": [["\\ud800", "a"]]}'),
        ("/v1/models/double:predict", b'{"instances": [["\\ud800", "a"]]}'),
        ("/v1/models/double:predict", b'{"inputs": {"x": [["a", "b\\ud800"]]}}'),
        ("/v1/models/double:predict", b'{"instances": [[1, 2]], "signature_name": "\\ud800"}'),
        ("/v1/models/double:predict", b'{"\\ud800": 1, "instances": [[1, 2]]}'),
        ("/v1/models/double:classify", b'{"examples": [{"x": "\\ud800"}]}'),
        ("/v1/models/double:classify", b'{"examples": [{"x": [1, 2]}], "context": {"\\ud800": 1}}'),
        ("/v1/models/digits:classify", b'{"examples": [{"image": "\\ud800"}]}'),
    ],
)
def test_a_lone_surrogate_in_a_json_string_is_400(client: FlaskClient, url: str, body: bytes) -> None:
    assert_error(client.post(url, data=body, content_type="application/json"), 400, SURROGATE_MESSAGE)


def test_a_lone_surrogate_in_a_kserve_header_is_400(client: FlaskClient) -> None:
    for body in (
        '{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["\\udfff\\ud800"]}]}',
        '{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}], "id": "\\uDBFF"}',
    ):
        response = client.post("/v2/models/double/infer", data=body, content_type="application/json")
        assert response.status_code == 400
        assert response.get_json()["error"].startswith(
            "inference request header holds a string with a lone UTF-16 surrogate"
        )


def test_a_surrogate_pair_is_one_character_and_stays_valid(client: FlaskClient) -> None:
    response = client.post(
        "/v2/models/double/infer",
        data='{"id": "\\ud83d\\ude00", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}',
        content_type="application/json",
    )
    assert (response.status_code, response.get_json()["id"]) == (200, "\N{GRINNING FACE}")


def test_a_kserve_datatype_that_is_not_a_string_is_400(client: FlaskClient) -> None:
    for datatype in (["FP32"], {"FP32": 1}, 32):
        assert_error(
            client.post("/v2/models/double/infer", json=v2_input([1, 2], datatype=datatype, data=[1, 2])),
            400,
            f"input 'x': datatype '{datatype}' is not supported; use one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, "
            "INT32, INT64, FP16, FP32, FP64, BYTES",
        )


@pytest.mark.parametrize("feature", ['"abc"', '["abc", "de"]', '[{"b64": "AAAA"}, "x"]'])
def test_string_features_sent_to_classify_for_an_image_input_are_400(client: FlaskClient, feature: str) -> None:
    response = client.post(
        "/v1/models/digits:classify", data=f'{{"examples": [{{"image": {feature}}}]}}', content_type="application/json"
    )
    assert response.status_code == 400
    assert "cannot decode image: not a JPEG, PNG, GIF, BMP, WebP or TIFF file" in response.get_json()["error"]


def test_features_that_mix_strings_and_numbers_are_422(client: FlaskClient) -> None:
    assert_error(
        client.post("/v1/models/double:classify", json={"examples": [{"x": [1, "a"]}]}),
        422,
        "feature 'x' mixes strings and numbers",
    )
    assert_error(
        client.post("/v1/models/double:classify", json={"examples": [{"x": [1, 2]}, {"x": "a"}]}),
        422,
        "feature 'x' mixes strings and numbers",
    )


def test_a_b64_image_feature_keeps_its_trailing_zero_bytes(client: FlaskClient) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(buffer, "BMP")  # black pixels: the file ends in zero bytes
    body = {"examples": [{"image": {"b64": base64.b64encode(buffer.getvalue()).decode()}}]}
    response = client.post("/v1/models/digits:classify", json=body)  # numpy's 'S' arrays would cut the zeros off
    assert (response.status_code, response.get_json()) == (
        200,
        {"results": [[["cat", 0.0], ["dog", 1.0], ["bird", 0.0]]]},
    )


def with_malformed_exif(fmt: str) -> bytes:
    """An image Pillow opens whose EXIF turns it (Orientation 6), with XResolution re-typed from RATIONAL to UNDEFINED.

    Pillow reads the image and the orientation, turns the pixels, then fails writing the EXIF back
    (`TypeError: bad operand type for abs(): 'bytes'`): a file it recognises but cannot decode.
    """
    exif = Image.Exif()
    exif[0x0112], exif[0x011A] = 6, 72.0  # Orientation, XResolution
    raw = bytearray(exif.tobytes())
    order = "<" if raw[6:8] == b"II" else ">"
    entry = raw.index(struct.pack(f"{order}HH", 0x011A, 5))
    raw[entry + 2 : entry + 4] = struct.pack(f"{order}H", 7)
    buffer = io.BytesIO()
    Image.new("L", (2, 2), 255).save(buffer, fmt, exif=bytes(raw))
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_an_image_with_malformed_exif_is_400(client: FlaskClient, fmt: str) -> None:
    assert_error(
        client.post("/models/digits/predict", data=with_malformed_exif(fmt), headers={"Content-Type": "image/png"}),
        400,
        "cannot decode image: TypeError: bad operand type for abs(): 'bytes'",
    )


def test_images_in_formats_outside_the_documented_ones_are_400(client: FlaskClient) -> None:
    for fmt in ("ICO", "TGA", "PCX", "PPM", "SGI"):
        buffer = io.BytesIO()
        Image.new("L", (2, 2), 255).save(buffer, fmt)
        assert_error(
            client.post("/models/digits/predict", data=buffer.getvalue(), headers={"Content-Type": "image/png"}),
            400,
            "cannot decode image: not a JPEG, PNG, GIF, BMP, WebP or TIFF file",
        )


# --- metrics labels: only models that exist --------------------------------------------------------


def test_made_up_model_names_never_become_metric_labels(client: FlaskClient) -> None:
    names = [f"madeup{n}" for n in range(6)]
    answers = set()
    for name in names:
        for response in (
            client.post(f"/models/{name}/predict", data="1,2", content_type="text/csv"),  # 415 before the lookup
            client.post(f"/models/{name}/predict_classes?top_k=x", json={"instances": [[1, 2]]}),  # 400 before it
            client.post(f"/v1/models/{name}:predict", data="{", content_type="application/json"),
            client.post(f"/v1/models/{name}/versions/x:predict", json={"instances": [[1, 2]]}),
            client.post(f"/v2/models/{name}/infer", data="{", content_type="application/json"),
            client.get(f"/v2/models/{name}"),  # 404 at the lookup
            client.post("/predict", query_string={"model": name}, data="1,2", content_type="text/csv"),
        ):
            answers.add(response.status_code)
    text = client.get("/metrics").get_data(as_text=True)
    assert answers == {400, 404, 415}
    assert [name for name in names if name in text] == []
    assert 'model="_unknown"' in text


def test_requests_for_a_model_that_exists_keep_its_label_when_they_fail_early(client: FlaskClient) -> None:
    client.post("/v1/models/double:predict", data="{", content_type="application/json")
    client.post("/models/double/versions/9/predict", json={"instances": [[1, 2]]})
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        'kerasserve_requests_total{code="400",model="double",protocol="rest",route="tfserving.predict_classify_regress"}'
        in text
    )
    assert 'kerasserve_requests_total{code="404",model="double",protocol="rest",route="predict.predict"}' in text


@pytest.mark.parametrize("path", ["..", ".hidden", "a%20b", "%ED%A0%80", "x" * 200, "²"])
def test_tfserving_model_names_are_validated_like_the_others(client: FlaskClient, path: str) -> None:
    for response in (
        client.get(f"/v1/models/{path}"),
        client.get(f"/v1/models/{path}/versions/1/metadata"),
        client.post(f"/v1/models/{path}:predict", json={"instances": [[1, 2]]}),
    ):
        assert response.status_code == 400
        assert response.get_json()["error"].startswith("model name '")


@pytest.mark.parametrize("leaf", ["null", '{"b64": "AAAA"}', "1", '"a"'])
def test_tfserving_tensors_deeper_than_32_dimensions_are_422(client: FlaskClient, leaf: str) -> None:
    for depth in (33, 65, 500):
        tensor = "[" * depth + leaf + "]" * depth
        for url, body in (
            ("/v1/models/double:predict", f'{{"instances": {tensor}}}'),
            ("/v1/models/double:predict", f'{{"inputs": {{"x": {tensor}}}}}'),
            ("/models/double/predict", f'{{"instances": {tensor}}}'),
        ):
            response = client.post(url, data=body, content_type="application/json")
            name = "x" if '"x"' in body else "instances"
            assert (response.status_code, response.get_json()) == (
                422,
                {"error": f"input '{name}' is nested {depth} lists deep; tensors have at most 32 dimensions"},
            ), (url, depth, leaf)


# --- KServe v2 model repository extension (Triton's index, load, unload) ------------------------

BROKEN_ERROR = "'broken.h5' is truncated or corrupt"


def test_repository_index_lists_every_model_with_its_triton_state(client: FlaskClient) -> None:
    everything = client.post("/v2/repository/index")
    ready = client.post("/v2/repository/index", json={"ready": True})
    assert (everything.status_code, everything.get_json()) == (
        200,
        [
            {"name": "broken", "version": "1", "state": "UNAVAILABLE", "reason": BROKEN_ERROR},
            {"name": "digits", "version": "1", "state": "READY", "reason": ""},
            {"name": "double", "version": "1", "state": "READY", "reason": ""},
            {"name": "sum", "version": "1", "state": "READY", "reason": ""},
        ],
    )
    assert [entry["name"] for entry in ready.get_json()] == ["digits", "double", "sum"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "repository index request must be a JSON object"),
        (b'{"ready": "yes"}', "repository index request: 'ready' must be true or false"),
    ],
)
def test_a_malformed_repository_index_request_is_400(client: FlaskClient, body: bytes, message: str) -> None:
    assert_error(client.post("/v2/repository/index", data=body), 400, message)


def test_load_and_unload_are_refused_with_tritons_answer_under_poll(client: FlaskClient) -> None:
    message = (
        "explicit model load / unload is not allowed if polling is enabled; "
        "start the server with MODEL_CONTROL=explicit to load and unload models through this API"
    )
    for action in ("load", "unload"):
        response = client.post(f"/v2/repository/models/double/{action}")
        assert_error(response, 503, message)
    assert client.post("/models/double/predict", json={"instances": [[1, 2]]}).status_code == 200


@pytest.fixture
def explicit(tmp_path: Path) -> Iterator[FlaskClient]:
    """An app with MODEL_CONTROL=explicit that loads only `double` at start."""
    app = make_app(tmp_path / "models", model_control="explicit", startup_models=["double"])
    yield app.test_client()
    app.extensions[EXTENSION].stop()


def test_explicit_control_serves_only_the_startup_models_and_lists_the_others_by_name(explicit: FlaskClient) -> None:
    index = explicit.post("/v2/repository/index").get_json()
    assert index == [
        {"name": "broken"},
        {"name": "digits"},
        {"name": "double", "version": "1", "state": "READY", "reason": ""},
        {"name": "sum"},
    ]
    assert explicit.post("/models/double/predict", json={"instances": [[1, 2]]}).status_code == 200
    assert_error(
        explicit.post("/models/sum/predict", json={"instances": [[1, 2]]}),
        404,
        "model 'sum' is not loaded (MODEL_CONTROL=explicit); load it with POST /v2/repository/models/sum/load",
    )
    assert_error(
        explicit.post("/models/nope/predict", json={"instances": [[1, 2]]}), 404, "model 'nope' does not exist"
    )


def test_load_answers_once_the_model_serves_and_unload_once_it_no_longer_does(explicit: FlaskClient) -> None:
    load = explicit.post("/v2/repository/models/sum/load")
    assert (load.status_code, load.data) == (200, b"")
    # No waiting: the answer came after the version became AVAILABLE.
    predict = explicit.post("/models/sum/predict", json={"instances": [[1, 2]]})
    assert (predict.status_code, predict.get_json()) == (200, {"model": "sum", "version": 1, "predictions": [[3.0]]})
    assert {"name": "sum", "version": "1", "state": "READY", "reason": ""} in explicit.post(
        "/v2/repository/index"
    ).get_json()
    # A second load of an unchanged model answers at once and loads nothing again.
    assert explicit.post("/v2/repository/models/sum/load", json={}).status_code == 200

    unload = explicit.post("/v2/repository/models/sum/unload", json={"parameters": {"unload_dependents": False}})
    assert (unload.status_code, unload.data) == (200, b"")
    assert explicit.post("/models/sum/predict", json={"instances": [[1, 2]]}).status_code == 404
    assert {"name": "sum", "state": "UNAVAILABLE", "reason": "unloaded"} in explicit.post(
        "/v2/repository/index"
    ).get_json()
    # Unloading twice, or a model that was never loaded, is not an error (as in Triton).
    assert explicit.post("/v2/repository/models/sum/unload").status_code == 200
    assert explicit.post("/v2/repository/models/digits/unload").status_code == 200


def test_load_of_a_model_that_fails_is_400_with_the_load_error(explicit: FlaskClient) -> None:
    response = explicit.post("/v2/repository/models/broken/load")
    assert_error(response, 400, f"load failed for model 'broken': version 1: {BROKEN_ERROR}")
    assert {"name": "broken", "version": "1", "state": "UNAVAILABLE", "reason": BROKEN_ERROR} in explicit.post(
        "/v2/repository/index"
    ).get_json()


def test_load_of_a_model_missing_from_the_folder_is_404(explicit: FlaskClient) -> None:
    response = explicit.post("/v2/repository/models/nope/load")
    assert_error(response, 404, "failed to load 'nope', failed to poll from model repository: no model 'nope' in it")
    assert "nope" not in [entry["name"] for entry in explicit.post("/v2/repository/index").get_json()]


def test_load_sees_a_model_copied_in_just_before_the_call(explicit: FlaskClient, tmp_path: Path) -> None:
    # The watcher polls every 60 s here: the load call itself rescans the folder.
    (tmp_path / "models" / "late.h5").write_text("a fake model file")
    response = explicit.post("/v2/repository/models/late/load")
    # 'late' is no model FakeBuilder knows, so it fails to load: what matters is that it was found.
    assert_error(response, 400, "load failed for model 'late': version 1: 'late.h5' is truncated or corrupt")


@pytest.mark.parametrize(
    ("action", "body", "message"),
    [
        ("load", b"not json", "load request is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        ("load", b'{"parameters": []}', "load request 'parameters' must be an object"),
        (
            "load",
            b'{"parameters": {"config": "{}"}}',
            "load request: parameter 'config' (a Triton model config or file override) is not supported; "
            "put the model's files and config file (docs/model-config.md) in the models folder",
        ),
        (
            "unload",
            b'{"parameters": {"unload_dependents": "no"}}',
            "unload request: 'unload_dependents' must be true or false",
        ),
    ],
)
def test_malformed_load_and_unload_requests_are_400(
    explicit: FlaskClient, action: str, body: bytes, message: str
) -> None:
    assert_error(explicit.post(f"/v2/repository/models/double/{action}", data=body), 400, message)


def test_an_unsafe_model_name_in_a_load_url_is_400(explicit: FlaskClient) -> None:
    response = explicit.post("/v2/repository/models/.hidden/load")
    assert response.status_code == 400
    assert response.get_json()["error"].startswith("model name '.hidden' is not valid")


def test_repository_routes_need_the_token(tmp_path: Path) -> None:
    app = make_app(tmp_path / "models", auth_token="s3cret", model_control="explicit")
    client = app.test_client()
    try:
        refused = [client.post(url).status_code for url in _REPOSITORY_URLS]
        allowed = [client.post(url, headers={"Authorization": "Bearer s3cret"}).status_code for url in _REPOSITORY_URLS]
    finally:
        app.extensions[EXTENSION].stop()
    assert refused == [401, 401, 401]
    assert allowed == [200, 200, 200]


_REPOSITORY_URLS = ("/v2/repository/index", "/v2/repository/models/sum/load", "/v2/repository/models/sum/unload")


def test_with_a_budget_the_index_and_listings_show_which_models_are_loaded(tmp_path: Path) -> None:
    app = make_app(tmp_path / "models", max_loaded_models=2)
    client = app.test_client()
    not_loaded = (
        "not loaded: the loaded models fill MAX_LOADED_MODELS or MAX_LOADED_BYTES; the next request for it loads it"
    )
    try:
        before = client.post("/v2/repository/index").get_json()
        listing = {m["name"]: m["resident"] for m in client.get("/models").get_json()["models"]}
        predict = client.post("/models/sum/predict", json={"instances": [[1, 2]]})
        after = client.post("/v2/repository/index").get_json()
        digits = client.get("/v1/models/digits").get_json()
    finally:
        app.extensions[EXTENSION].stop()
    assert before[1:] == [
        {"name": "digits", "version": "1", "state": "READY", "reason": ""},
        {"name": "double", "version": "1", "state": "READY", "reason": ""},
        {"name": "sum", "version": "1", "state": "UNAVAILABLE", "reason": not_loaded},
    ]
    assert listing == {"broken": False, "digits": True, "double": True, "sum": False}  # the listing loaded nothing
    assert (predict.status_code, predict.get_json()["predictions"]) == (200, [[3.0]])
    # sum took the place of the least recently used model: digits, loaded before double.
    assert after[1:] == [
        {"name": "digits", "version": "1", "state": "UNAVAILABLE", "reason": not_loaded},
        {"name": "double", "version": "1", "state": "READY", "reason": ""},
        {"name": "sum", "version": "1", "state": "READY", "reason": ""},
    ]
    assert digits["model_version_status"][0]["state"] == "END"


def test_explicit_load_under_a_budget_takes_the_place_of_the_least_recently_used(tmp_path: Path) -> None:
    app = make_app(tmp_path / "models", model_control="explicit", startup_models=["double"], max_loaded_models=1)
    client = app.test_client()
    try:
        load = client.post("/v2/repository/models/sum/load")
        index = {e["name"]: e.get("state") for e in client.post("/v2/repository/index").get_json()}
        double = client.post("/models/double/predict", json={"instances": [[1, 2]]})
        resident = {m["name"]: m["resident"] for m in client.get("/models").get_json()["models"]}
    finally:
        app.extensions[EXTENSION].stop()
    assert load.status_code == 200
    assert index == {"broken": None, "digits": None, "double": "UNAVAILABLE", "sum": "READY"}
    assert (double.status_code, double.get_json()["predictions"]) == (200, [[2.0, 4.0]])
    assert resident == {"double": True, "sum": False}  # both still loaded by decision, one in memory


def test_a_kserve_raw_binary_request_borrows_its_version_once(client: FlaskClient, monkeypatch) -> None:
    # Shaping the raw bytes needs the signature: it is read from the version borrowed to run the request,
    # so a swap between shaping and running cannot mix two versions (it borrowed twice before).
    manager = client.application.extensions[EXTENSION].dataplane._manager
    borrowed: list[object] = []
    real_handle = manager.handle

    def counting_handle(target, **options):
        borrowed.append(target)
        return real_handle(target, **options)

    monkeypatch.setattr(manager, "handle", counting_handle)
    response = client.post(
        "/v2/models/double/infer",
        data=np.array([1.5, 2.0], "<f4").tobytes(),
        headers={"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200
    assert np.frombuffer(response.data[int(response.headers["Inference-Header-Content-Length"]) :], "<f4").tolist() == [
        3.0,
        4.0,
    ]
    assert len(borrowed) == 1
