"""The newcomer's first run: `make run` on an empty models folder trains the default model, and
gunicorn serves it well enough to classify held-out digits uploaded as PNG files.

Runs the same two commands as `make run` (`python -m service default-model --if-empty`, then
`gunicorn wsgi:app`) against a temporary MODELS_DIR, and the examples' Python client against it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image

from service.default_model import has_model, heldout_digits
from service.model_config import ModelConfig, read_labels
from tests.conftest import REPO
from tests.e2e.conftest import Server, start_server

HELDOUT_SAMPLE = 100
REQUIRED_CORRECT = 95


def first_run_step(models_dir: Path) -> subprocess.CompletedProcess:
    """Run `python -m service default-model --if-empty` the way the Makefile's `run` target does."""
    return subprocess.run(
        [sys.executable, "-m", "service", "default-model", "--if-empty"],
        cwd=REPO, env={**os.environ, "MODELS_DIR": str(models_dir), "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True, text=True, timeout=600,
    )


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    models_dir = tmp_path_factory.mktemp("first-run") / "models"  # does not exist yet, like a fresh clone's
    result = first_run_step(models_dir)
    assert result.returncode == 0, result.stderr[-4000:]
    return models_dir, result


@pytest.fixture(scope="module")
def server(first_run, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models_dir, _ = first_run
    with start_server(models_dir, tmp_path_factory.mktemp("first-run-logs"), timeout_s=180) as running:
        yield running


def png(image) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_first_run_writes_the_model_its_config_and_its_plugin(first_run) -> None:
    models_dir, result = first_run
    assert (models_dir / "digits.keras").read_bytes()[:4] == b"PK\x03\x04"  # a normal .keras zip
    config = ModelConfig.model_validate(yaml.safe_load((models_dir / "digits.yaml").read_text()))
    assert read_labels(models_dir / "digits.labels.txt") == tuple(str(d) for d in range(10))
    assert config.preprocessing.size == (28, 28) and config.preprocessing.scale == "raw"
    assert (models_dir / "plugins" / "digits.py").read_bytes() == (REPO / "models" / "plugins" / "digits.py").read_bytes()
    assert sorted(p.name for p in models_dir.iterdir()) == ["digits.keras", "digits.labels.txt", "digits.yaml", "plugins"]
    assert "held-out accuracy" in result.stderr


def test_second_run_keeps_the_trained_model(first_run) -> None:
    models_dir, _ = first_run
    before = (models_dir / "digits.keras").stat().st_mtime_ns
    result = first_run_step(models_dir)
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


def test_example_client_prints_the_predicted_digits(server: Server) -> None:
    result = subprocess.run(
        [sys.executable, "examples/client.py", "--url", server.url, "examples/7.png", "examples/3.png"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["examples/7.png: 7", "examples/3.png: 3"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_example_curl_script_gets_the_digit_from_every_route_it_shows(server: Server) -> None:
    result = subprocess.run(
        ["sh", "examples/predict.sh", "examples/4.png", server.url], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    answers = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == 4, result.stdout
    for answer in answers[:2]:
        assert json.loads(answer)["predictions"][0]["label"] == "4"
    assert json.loads(answers[2])["ready"] is True
    assert json.loads(answers[3])["model_version_status"][0]["state"] == "AVAILABLE"
