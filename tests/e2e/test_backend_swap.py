"""Hot swap across backends against the real gunicorn server: TensorFlow -> OpenVINO, ONNX Runtime or XLA -> TensorFlow, no request lost.

v1 serves on TensorFlow (the default); v2 lands with `backend: openvino` (or `onnxruntime`, or `xla`) in its
version folder's config, is converted (or compiled for every allowed batch size) and gated at load, and takes over
while clients keep sending requests; v3
(no config) takes over on TensorFlow again. Every request is answered 200 by the version serving
at that moment, and the status views say which backend each version runs.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import requests

from tests.conftest import wait_until
from tests.e2e.scaled_models import copy_then_mv, save_scaled_model

SETTLE_S = 0.5
POLL_INTERVAL_S = 0.3


def predict(url: str, session: requests.Session) -> requests.Response:
    return session.post(f"{url}/models/m/predict", json={"instances": [[1.0], [2.0]]}, timeout=30)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime", "xla"])
def test_swaps_from_tensorflow_to_a_compiled_backend_and_back_lose_no_request(
    run_server, tmp_path: Path, backend: str
) -> None:
    models, staging = tmp_path / "models", tmp_path / "staging"
    versions = tmp_path / "versions"
    for k in (1, 2, 3):
        save_scaled_model(versions / str(k) / "model.keras", float(k))
    (versions / "2" / "config.yaml").write_text(f"backend: {backend}\ngate:\n  samples: 64\n")
    copy_then_mv(versions / "1", models / "m" / "1", staging)
    env = {
        "SETTLE_S": str(SETTLE_S),
        "POLL_INTERVAL_S": str(POLL_INTERVAL_S),
        "BACKEND_CACHE_DIR": str(tmp_path / "cache"),
    }
    with run_server(models, **env) as server:
        assert server.get("/models/m").json()["backend"] == "tensorflow"
        answers: list[tuple[int, list]] = []
        failures: list[str] = []
        stop = threading.Event()

        def client() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    try:
                        response = predict(server.url, session)
                    except requests.RequestException as err:
                        failures.append(repr(err))
                        continue
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text}")
                        continue
                    body = response.json()
                    answers.append((body["version"], body["predictions"]))

        threads = [threading.Thread(target=client) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(answers) >= 20, timeout_s=30)
            copy_then_mv(versions / "2", models / "m" / "2", staging)
            wait_until(lambda: answers[-1][0] == 2, timeout_s=120)
            model = server.get("/models/m").json()
            v2 = next(v for v in model["versions"] if v["version"] == 2)
            assert (model["backend"], model["precision"]) == (backend, "fp32")
            assert v2["backend"]["name"] == backend and "reason" not in v2["backend"]
            assert v2["backend"]["gate"]["rows"] >= 64 and v2["backend"]["gate"]["max_rel_diff"] <= 1e-5
            metadata = server.get("/v1/models/m/metadata").json()["metadata"]
            assert metadata["backend"]["name"] == backend
            assert (
                f'kerasserve_backend_max_abs_diff{{backend="{backend}",model="m",precision="fp32"}}'
                in server.get("/metrics").text
            )
            count = len(answers)
            wait_until(lambda: len(answers) >= count + 20, timeout_s=30)
            copy_then_mv(versions / "3", models / "m" / "3", staging)
            wait_until(lambda: answers[-1][0] == 3, timeout_s=60)
            count = len(answers)
            wait_until(lambda: len(answers) >= count + 20, timeout_s=30)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert failures == []
        assert {version for version, _ in answers} == {1, 2, 3}
        assert all(predictions == [[k * 1.0], [k * 2.0]] for k, predictions in answers)
        model = server.get("/models/m").json()
        assert (model["serving_version"], model["backend"]) == (3, "tensorflow")
        assert "backend" not in server.get("/v1/models/m/metadata").json()["metadata"]


def save_image_classifier(path: Path) -> Path:
    """Save a tiny `.keras` CNN of 8x8 RGB images -> 3 softmax scores."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def write_pngs(folder: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (10 + i, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_gate_inputs_run_at_load_and_a_bad_folder_serves_on_tensorflow_with_the_reason(
    run_server, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    for name in ("good", "bad"):
        save_image_classifier(models / name / "1" / "model.keras")
        (models / name / "config.yaml").write_text("backend: openvino\ngate:\n  samples: 16\n  inputs: samples\n")
        write_pngs(models / name / "samples", 3)
    (models / "bad" / "samples" / "notes.txt").write_text("not an image")
    with run_server(models, BACKEND_CACHE_DIR=str(tmp_path / "cache")) as server:
        good = server.get("/models/good").json()
        assert good["backend"] == "openvino"
        gate = good["versions"][0]["backend"]["gate"]
        assert gate["inputs"]["folder"] == "samples" and gate["inputs"]["rows"] == 3
        assert gate["inputs"]["max_rel_diff"] <= 1e-5 and gate["inputs"]["top1_agreement"] == 1.0
        assert (
            'kerasserve_backend_gate_inputs_max_abs_diff{backend="openvino",model="good",precision="fp32"}'
            in server.get("/metrics").text
        )
        bad = server.get("/models/bad").json()
        assert (bad["backend"], bad["versions"][0]["state"]) == ("tensorflow", "AVAILABLE")
        assert bad["versions"][0]["backend"]["reason"] == (
            "gate.inputs 'samples' cannot be used: notes.txt: cannot decode image: not a JPEG, PNG, GIF, BMP, WebP or TIFF file"
        )
        for name in ("good", "bad"):
            with (models / name / "samples" / "0.png").open("rb") as image:
                response = server.post(f"/models/{name}/predict", files={"image": image})
            assert response.status_code == 200, response.text
