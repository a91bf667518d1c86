"""The newcomer's first run, literally: a fresh clone of the repository, `make run` as the README
says (only the port changed), and the README's and the examples' clients against it.

`make run` on the clone's empty models folder (a relative MODELS_DIR, as the Makefile passes it)
trains the default model, and gunicorn serves it well enough to classify held-out digits uploaded
as PNG files. The clone shares this virtualenv (see `clone_repository`), so nothing reinstalls.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from service.default_model import has_model, heldout_digits
from service.model_config import ModelConfig, read_labels
from tests.conftest import REPO
from tests.e2e.conftest import Quickstart, Server, user_environment

HELDOUT_SAMPLE = 100
REQUIRED_CORRECT = 95


@pytest.fixture(scope="module")
def server(quickstart: Quickstart) -> Server:
    return quickstart.server


def png(image) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_make_run_writes_the_model_its_config_and_its_plugin_into_the_clone(quickstart: Quickstart) -> None:
    models_dir = quickstart.clone / "models"
    assert (models_dir / "digits.keras").read_bytes()[:4] == b"PK\x03\x04"  # a normal .keras zip
    config = ModelConfig.model_validate(yaml.safe_load((models_dir / "digits.yaml").read_text()))
    assert read_labels(models_dir / "digits.labels.txt") == tuple(str(d) for d in range(10))
    assert config.preprocessing.size == (28, 28) and config.preprocessing.scale == "raw"
    assert (models_dir / "plugins" / "digits.py").read_bytes() == (
        REPO / "models" / "plugins" / "digits.py"
    ).read_bytes()
    assert {"digits.keras", "digits.labels.txt", "digits.yaml", "plugins"} <= {p.name for p in models_dir.iterdir()}
    assert "held-out accuracy" in quickstart.server.log()
    # The README's server binds 0.0.0.0 without a token: it says so once, at start.
    assert quickstart.server.log().count("AUTH_TOKEN is not set: every route answers without a token on 0.0.0.0") == 1


def test_second_run_keeps_the_trained_model(quickstart: Quickstart) -> None:
    models_dir = quickstart.clone / "models"
    before = (models_dir / "digits.keras").stat().st_mtime_ns
    # make run's first step, as the Makefile runs it (relative MODELS_DIR, from the clone's root).
    result = subprocess.run(
        [".venv/bin/python", "-m", "service", "default-model", "--if-empty"],
        cwd=quickstart.clone,
        env=user_environment(MODELS_DIR="models"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "already holds a model" in result.stderr
    assert (models_dir / "digits.keras").stat().st_mtime_ns == before
    assert has_model(models_dir)


def test_served_default_model_classifies_heldout_png_uploads(server: Server) -> None:
    images, labels = heldout_digits()
    correct, wrong = 0, []
    for index in range(HELDOUT_SAMPLE):
        response = server.post("/predict_classes", files={"image": (f"{index}.png", png(images[index]), "image/png")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "digits" and body["version"] == 1
        (prediction,) = body["predictions"]
        assert prediction["label"] == str(prediction["class_id"])
        if prediction["class_id"] == int(labels[index]):
            correct += 1
        else:
            wrong.append((index, int(labels[index]), prediction["label"]))
    assert correct >= REQUIRED_CORRECT, f"{correct}/{HELDOUT_SAMPLE} correct; wrong (index, true, predicted): {wrong}"


@pytest.mark.parametrize("digit", range(10))
def test_example_png_is_classified_as_its_digit(server: Server, digit: int) -> None:
    path = REPO / "examples" / f"{digit}.png"
    with path.open("rb") as file:
        response = server.post("/predict_classes", files={"image": (path.name, file, "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == str(digit)


def test_example_client_prints_the_predicted_digits(quickstart: Quickstart) -> None:
    result = subprocess.run(
        [sys.executable, "examples/client.py", "--url", quickstart.server.url, "examples/7.png", "examples/3.png"],
        cwd=quickstart.clone,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["examples/7.png: 7", "examples/3.png: 3"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_example_curl_script_gets_the_digit_from_every_route_it_shows(quickstart: Quickstart) -> None:
    result = subprocess.run(
        ["sh", "examples/predict.sh", "examples/4.png", quickstart.server.url],
        cwd=quickstart.clone,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    answers = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == 4, result.stdout
    for answer in answers[:2]:
        assert json.loads(answer)["predictions"][0]["label"] == "4"
    assert json.loads(answers[2])["ready"] is True
    assert json.loads(answers[3])["model_version_status"][0]["state"] == "AVAILABLE"
