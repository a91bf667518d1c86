"""A fine-tuned Keras Applications model end to end, in real gunicorn: 224x224 JPEG uploads get
ResNet50's own preprocessing without any config (auto-detected `caffe`), and `extra_outputs` serves
the backbone's pooled features beside the scores over the native, TF Serving and KServe v2 APIs,
batched across concurrent requests.

The model is `Sequential([ResNet50(weights=None, include_top=False, pooling="avg"), Dense(5)])`; the
test keeps it in-process and computes every expected answer with `preprocess_input` applied to the
JPEG's pixels as Pillow decodes them (what the service decodes at the model's own size).
"""

from __future__ import annotations

import base64
import io
import json
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Server, start_server

keras = pytest.importorskip("keras")

MODEL = "finetuned"
FEATURES = "resnet50/avg_pool"
SIZE = 224
CONCURRENT = 9


@dataclass
class Served:
    server: Server
    model: keras.Model
    features: keras.Model


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    keras.utils.set_random_seed(21)
    base = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg", input_shape=(SIZE, SIZE, 3))
    model = keras.Sequential([base, keras.layers.Dense(5, name="scores")])
    models = tmp_path_factory.mktemp("transfer_models")
    model.save(models / f"{MODEL}.keras")
    # No preprocessing key: the mode must come from auto-detection.
    (models / f"{MODEL}.yaml").write_text(
        f"extra_outputs: [{FEATURES}]\nbatching:\n  max_batch_size: 4\n  batch_timeout_ms: 50\n"
    )
    features = keras.Model(base.input, base.get_layer("avg_pool").output)
    # A batch timeout, so that concurrent requests surely share device calls (the default, 0, batches
    # only what queues during a call).
    with start_server(models, tmp_path_factory.mktemp("transfer_logs"), timeout_s=300, BATCH_TIMEOUT_MS="50") as server:
        yield Served(server, model, features)


def jpeg(seed: int) -> bytes:
    """A 224x224 colour JPEG: gradients that differ per channel (so RGB/BGR order matters), plus noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, SIZE, dtype=np.float32)
    base = np.stack(
        [
            np.add.outer(ramp, ramp) * 120,
            np.add.outer(ramp, 1 - ramp) * 90 + 40,
            np.add.outer(1 - ramp, ramp) * 60 + 100 * rng.random(),
        ],
        axis=-1,
    )
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def expected(served: Served, image: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(scores, pooled features) in-process: the model on preprocess_input of the decoded pixels."""
    pixels = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))[np.newaxis].astype(np.float32)
    x = keras.applications.resnet50.preprocess_input(pixels)
    return np.asarray(served.model(x, training=False))[0], np.asarray(served.features(x, training=False))[0]


def metric(server: Server, name: str, **labels: str) -> float:
    text = server.get("/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_status_and_log_name_the_auto_detected_mode_and_metadata_lists_the_features(served: Served) -> None:
    model = served.server.get(f"/models/{MODEL}").json()
    (version,) = model["versions"]
    assert version["preprocessing"]["mode"] == "caffe" and version["preprocessing"]["chosen_by"] == "auto"
    assert "nested model 'resnet50'" in version["preprocessing"]["reason"]
    assert model["outputs"] == [
        {"name": "scores", "dtype": "float32", "shape": [None, 5]},
        {"name": FEATURES, "dtype": "float32", "shape": [None, 2048]},
    ]
    assert f"{MODEL}:1 image preprocessing: mode caffe (auto: Keras Applications ResNet" in served.server.log()
    tfs = served.server.get(f"/v1/models/{MODEL}/metadata").json()
    assert set(tfs["metadata"]["signature_def"]["signature_def"]["serving_default"]["outputs"]) == {"scores", FEATURES}
    v2 = served.server.get(f"/v2/models/{MODEL}").json()
    assert [o["name"] for o in v2["outputs"]] == ["scores", FEATURES]


def test_an_uploaded_jpeg_gets_resnet50_preprocessing_and_the_pooled_features(served: Served) -> None:
    image = jpeg(0)
    response = served.server.post(f"/models/{MODEL}/predict", files={"image": ("x.jpg", image, "image/jpeg")})
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    scores, features = expected(served, image)
    np.testing.assert_allclose(prediction["scores"], scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(prediction[FEATURES], features, rtol=1e-5, atol=1e-5)
    # What the service answered before auto-detection (RGB 0..1) is far from it: the check can fail.
    pixels = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))[np.newaxis].astype(np.float32)
    assert np.abs(np.asarray(served.model(pixels / 255.0))[0] - scores).max() > 1e-2


def native(server: Server, image: bytes) -> np.ndarray:
    response = server.post(
        f"/models/{MODEL}/predict?outputs={FEATURES}", data=image, headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    return np.asarray(prediction)  # one output chosen: the row is bare


def tf_serving(server: Server, image: bytes) -> np.ndarray:
    body = {"instances": [{"b64": base64.b64encode(image).decode()}], "output_filter": [FEATURES]}
    response = server.post(f"/v1/models/{MODEL}:predict", json=body)
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    return np.asarray(prediction)


def kserve_v2(server: Server, image: bytes, input_name: str) -> np.ndarray:
    element = struct.pack("<I", len(image)) + image
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(element)},
                }
            ],
            "outputs": [{"name": FEATURES}],
        }
    ).encode()
    response = requests.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        data=header + element,
        timeout=60,
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == FEATURES and output["shape"] == [1, 2048]
    return np.asarray(output["data"]).reshape(2048)


def test_concurrent_requests_over_three_protocols_batch_and_get_each_its_own_features(served: Served) -> None:
    server = served.server
    input_name = server.get(f"/v2/models/{MODEL}").json()["inputs"][0]["name"]
    images = [jpeg(seed) for seed in range(1, CONCURRENT + 1)]
    calls = [native, tf_serving, lambda s, i: kserve_v2(s, i, input_name)]
    batches_before = metric(server, "kerasserve_batches_total", model=MODEL)
    rows_before = metric(server, "kerasserve_batch_rows_sum", model=MODEL)
    with ThreadPoolExecutor(CONCURRENT) as pool:
        futures = [pool.submit(calls[i % len(calls)], server, image) for i, image in enumerate(images)]
        answers = [future.result(timeout=120) for future in futures]
    for image, answer in zip(images, answers):
        np.testing.assert_allclose(answer, expected(served, image)[1], rtol=1e-5, atol=1e-5)
    assert metric(server, "kerasserve_batch_rows_sum", model=MODEL) - rows_before == CONCURRENT
    # Fewer device calls than requests: some rows shared a batch with others.
    assert metric(server, "kerasserve_batches_total", model=MODEL) - batches_before < CONCURRENT


def test_an_unknown_requested_output_is_a_400_naming_close_names(served: Served) -> None:
    response = served.server.post(
        f"/models/{MODEL}/predict?outputs=resnet50/avgpool", data=jpeg(0), headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 400
    assert "unknown output 'resnet50/avgpool'" in response.json()["error"] and FEATURES in response.json()["error"]
