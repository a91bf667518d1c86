"""DataPlane: the protocol-independent operations, over a real manager serving fake servables.

The manager, repository and watcher are real (wired as `service.app` wires them); the servables come
from `tests.unit.fakes.FakeBuilder`, so every result below is exact and no TensorFlow starts.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.dataplane import DataPlane, ExamplesRequest, PredictRequest
from service.errors import InferenceError, InvalidInput, InvalidTensor, ModelNotFound, ModelNotReady, Overloaded
from service.servable import ServableId, ServableRequest, ServableState
from service.settings import Settings
from service.status import ModelStatus, Readiness
from tests.conftest import wait_until
from tests.unit.fakes import DOUBLE, FAILING, HALF, PIXEL_MEAN, SUM, FakeBuilder, FakeModel, serve

MODELS = {"double": DOUBLE, "digits": PIXEL_MEAN, "sum": SUM, "half": HALF, "failing": FAILING}


def start(models_dir: Path, models: dict[str, FakeModel], **options) -> tuple[DataPlane, Callable[[], None]]:
    """Serve one `<name>.h5` file per model in `models_dir` (plus a 'broken' one); wait until ready."""
    models_dir.mkdir()
    for name in (*models, "broken"):
        (models_dir / f"{name}.h5").write_text("a fake model file")
    (models_dir / "digits.labels.txt").write_text("cat\ndog\nbird\n")
    settings = Settings(models_dir=models_dir, settle_s=0, poll_interval_s=60, **options)
    manager, stop = serve(settings, FakeBuilder(models, settings))
    dataplane = DataPlane(manager, settings)
    wait_until(lambda: dataplane.readiness().ready, timeout_s=10)
    return dataplane, stop


@pytest.fixture(scope="module")
def dataplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    plane, stop = start(tmp_path_factory.mktemp("dataplane") / "models", MODELS)
    yield plane
    stop()


def latest(name: str) -> ServableRequest:
    return ServableRequest.latest(name)


def png(pixels: list[list[int]]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.array(pixels, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


# --- predict --------------------------------------------------------------------------------------


def test_predict_runs_the_rows_and_names_the_version_that_answered(dataplane: DataPlane) -> None:
    response = dataplane.predict(PredictRequest(latest("double"), {"x": np.array([[1, 2], [3, 4]])}))

    assert response.servable_id == ServableId("double", 1)
    assert list(response.outputs) == ["y"]
    np.testing.assert_array_equal(response.outputs["y"], np.array([[2, 4], [6, 8]], np.float32))
    assert response.outputs["y"].dtype == np.float32
    assert response.labels == ()


def test_predict_decodes_images_for_the_image_input(dataplane: DataPlane) -> None:
    images = (png([[0, 255], [255, 255]]), png([[0, 0], [0, 255]]))

    response = dataplane.predict(PredictRequest(latest("digits"), images=images))

    np.testing.assert_array_equal(
        response.outputs["probs"], np.array([[0.75, 0.25, 0.0], [0.25, 0.75, 0.0]], np.float32)
    )
    assert response.labels == ("cat", "dog", "bird")


def test_predict_feeds_the_arrays_as_they_are_and_adds_no_unit_axis(dataplane: DataPlane) -> None:
    # TF Serving's one value per row to an input of shape (None, 1) is its adapter's rule, not the data plane's.
    with pytest.raises(InvalidTensor, match=r"^input 'x' has shape \[None, 1\], got \[2\]$"):
        dataplane.predict(PredictRequest(latest("half"), {"x": np.array([2.0, 4.0])}))


def test_predict_answers_the_outputs_as_computed_and_squeezes_no_unit_axis(dataplane: DataPlane) -> None:
    sent = {"x": np.array([2.0, 4.0])}
    request = PredictRequest(latest("half"), sent, inputs_for=lambda signature: {"x": sent["x"][:, np.newaxis]})

    response = dataplane.predict(request)

    np.testing.assert_array_equal(response.outputs["y"], np.array([[1.0], [2.0]], np.float32))
    assert response.signature is not None and response.signature.inputs[0].shape == (None, 1)


def test_predict_returns_only_the_outputs_asked_for(dataplane: DataPlane) -> None:
    request = PredictRequest(latest("double"), {"x": np.array([[1, 2]])}, outputs=("y",))
    assert list(dataplane.predict(request).outputs) == ["y"]

    with pytest.raises(InvalidInput, match=r"^unknown output 'z'; the model's outputs are: y$"):
        dataplane.predict(PredictRequest(latest("double"), {"x": np.array([[1, 2]])}, outputs=("z",)))


def test_predict_refuses_an_unknown_signature(dataplane: DataPlane) -> None:
    request = PredictRequest(latest("double"), {"x": np.array([[1, 2]])}, signature_name="classify")

    with pytest.raises(InvalidInput, match=r"^model 'double' has no signature 'classify'; it has: serving_default$"):
        dataplane.predict(request)


def test_predict_refuses_rows_that_do_not_fit_the_signature(dataplane: DataPlane) -> None:
    with pytest.raises(InvalidInput):
        dataplane.predict(PredictRequest(latest("double"), {"x": np.array([[1, 2, 3]])}))


def test_predict_on_unknown_and_failed_models(dataplane: DataPlane) -> None:
    with pytest.raises(ModelNotFound, match=r"^model 'nope' does not exist$"):
        dataplane.predict(PredictRequest(latest("nope"), {"x": np.array([[1, 2]])}))
    with pytest.raises(ModelNotFound, match=r"^version 3 of model 'double' does not exist$"):
        dataplane.predict(PredictRequest(ServableRequest.specific("double", 3), {"x": np.array([[1, 2]])}))
    with pytest.raises(ModelNotReady, match="version 1 failed to load: 'broken.h5' is truncated or corrupt"):
        dataplane.predict(PredictRequest(latest("broken"), {"x": np.array([[1, 2]])}))


def test_a_model_that_raises_is_an_inference_error_naming_the_version(dataplane: DataPlane) -> None:
    with pytest.raises(InferenceError, match=r"^model 'failing:1' failed while computing$"):
        dataplane.predict(PredictRequest(latest("failing"), {"x": np.array([[1, 2]])}))


def test_a_model_that_does_not_answer_in_time_is_overloaded(tmp_path: Path) -> None:
    release = threading.Event()

    def slow(inputs):
        release.wait(10)
        return {"y": np.asarray(inputs["x"], np.float32)}

    plane, stop = start(tmp_path / "models", {"slow": FakeModel(DOUBLE.signature, slow)}, request_timeout_s=0.1)
    try:
        with pytest.raises(Overloaded, match=r"^model 'slow:1' did not answer within 0.1s; retry later$"):
            plane.predict(PredictRequest(latest("slow"), {"x": np.array([[1, 2]])}))
    finally:
        release.set()
        stop()


# --- predict_classes and tf.Example calls ------------------------------------------------------------


def test_predict_classes_gives_the_best_class_its_label_and_the_top_k(dataplane: DataPlane) -> None:
    response = dataplane.predict_classes(
        PredictRequest(latest("digits"), images=(png([[0, 255], [255, 255]]),)), top_k=2
    )

    assert response.servable_id == ServableId("digits", 1)
    (scores,) = response.classes.values()
    assert list(response.classes) == ["probs"]
    assert scores.ids.tolist() == [0] and scores.label(0) == "cat"
    assert scores.scores.tolist() == [0.75]
    assert scores.top_ids.tolist() == [[0, 1]] and scores.top_scores.tolist() == [[0.75, 0.25]]


def test_regress_feeds_features_named_like_inputs_and_answers_one_value_per_example(dataplane: DataPlane) -> None:
    request = ExamplesRequest(latest("sum"), "regress", ({"x": [1.0, 2.0]}, {"x": [3.0, 4.0]}))

    response = dataplane.classify_examples(request)

    assert (response.servable_id, response.signature_name, response.rows) == (
        ServableId("sum", 1),
        "serving_default",
        2,
    )
    assert not response.examples_signature
    assert list(response.outputs) == ["total"]
    np.testing.assert_array_equal(response.outputs["total"], np.array([[3.0], [7.0]], np.float32))


def test_classify_and_regress_answer_the_outputs_as_computed(dataplane: DataPlane) -> None:
    # [label, score] pairs and one value per example are the TF Serving adapter's shapes (tfserving.examples_results).
    for method in ("classify", "regress"):
        response = dataplane.classify_examples(ExamplesRequest(latest("double"), method, ({"x": [1.0, 2.0]},)))

        np.testing.assert_array_equal(response.outputs["y"], np.array([[2.0, 4.0]], np.float32))


def test_examples_take_the_adapters_inputs_when_it_gives_them(dataplane: DataPlane) -> None:
    seen = []

    def inputs_for(signature):
        seen.append(signature.name)
        return {"x": np.array([[1.0], [3.0]])}

    request = ExamplesRequest(latest("half"), "regress", ({"x": 0.0}, {"x": 0.0}), inputs_for=inputs_for)

    response = dataplane.classify_examples(request)

    assert seen == ["serving_default"]
    np.testing.assert_array_equal(response.outputs["y"], np.array([[0.5], [1.5]], np.float32))


def test_an_example_without_the_models_input_is_refused(dataplane: DataPlane) -> None:
    request = ExamplesRequest(latest("sum"), "regress", ({"y": [1.0, 2.0]},))

    with pytest.raises(InvalidInput, match=r"^example 0 has no feature 'x' \(the model's input\)$"):
        dataplane.classify_examples(request)


# --- metadata, status, readiness ------------------------------------------------------------------


def test_metadata_of_the_serving_version(dataplane: DataPlane) -> None:
    metadata = dataplane.metadata(latest("digits"))

    assert metadata.servable_id == ServableId("digits", 1)
    assert dict(metadata.signatures) == {"serving_default": PIXEL_MEAN.signature}
    assert (metadata.default_signature, metadata.labels, metadata.device) == (
        "serving_default",
        ("cat", "dog", "bird"),
        "/CPU:0",
    )


def test_model_status_shows_states_and_load_errors(dataplane: DataPlane) -> None:
    broken = dataplane.model_status("broken")
    double = dataplane.model_status("double")

    assert isinstance(broken, ModelStatus)
    assert [(v.version, v.state, v.error) for v in broken.versions] == [
        (1, ServableState.END, "'broken.h5' is truncated or corrupt")
    ]
    assert [(v.version, v.state, v.error) for v in double.versions] == [(1, ServableState.AVAILABLE, "")]
    assert [s.name for s in dataplane.model_statuses()] == ["broken", "digits", "double", "failing", "half", "sum"]
    with pytest.raises(ModelNotFound, match=r"^model 'nope' does not exist$"):
        dataplane.model_status("nope")


def test_readiness_names_every_model(dataplane: DataPlane) -> None:
    assert dataplane.readiness() == Readiness(
        ready=True, models={"broken": False, "digits": True, "double": True, "failing": True, "half": True, "sum": True}
    )


def test_default_model_is_the_only_one_or_the_configured_one(dataplane: DataPlane, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="^name the model in the URL, or set DEFAULT_MODEL: 6 models are served"):
        dataplane.default_model()
    single, stop = start(tmp_path / "single", {})
    try:
        assert single.default_model() == "broken"
    finally:
        stop()
    configured, stop = start(tmp_path / "configured", {"double": DOUBLE}, default_model="double")
    try:
        assert configured.default_model() == "double"
    finally:
        stop()
