"""Memory: ten small image models in one worker cost what the sizing guide says (docs/operations.md).

Real gunicorn, `WORKERS=1`, default settings. The worker's resident memory is read from /proc once
every model is AVAILABLE, and again after each model has answered a request of its largest batch
(so every model's largest call has run in this worker, not only its warm-up). Both must stay under
the guide's formula: base + models x per-model cost, with the guide's figures for a small image CNN.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from tests.conftest import REPO
from tests.e2e.conftest import rss_mb, worker_pids

MODELS = 10
SIZE = 64
"""The small image models take 64x64 RGB images (48 KiB of float32 per row: MAX_BATCH_INPUT_BYTES leaves batch 32)."""
BATCH = 32


def sizing_guide() -> tuple[float, float]:
    """The guide's base per worker and per-model cost of a small image CNN, in MiB (docs/operations.md)."""
    text = (REPO / "docs" / "operations.md").read_text()
    base = re.search(r"<!-- sizing: base_mib=(\d+) small_image_cnn_mib=(\d+) -->", text)
    assert base, "docs/operations.md lost its sizing figures (the `<!-- sizing: ... -->` line)"
    return float(base.group(1)), float(base.group(2))


def save_small_image_cnn(path: Path) -> None:
    """A small image CNN: two convolutions at 64x64 (about 20k weights), 10 classes."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3), name="image"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax", name="probs"),
        ]
    )
    model.save(path)


def test_ten_small_image_models_in_one_worker_stay_within_the_sizing_guide(run_server, tmp_path: Path) -> None:
    base_mib, per_model_mib = sizing_guide()
    bound_mib = base_mib + MODELS * per_model_mib
    built = tmp_path / "small_cnn.keras"
    save_small_image_cnn(built)
    models = tmp_path / "models"
    models.mkdir()
    for i in range(MODELS):
        shutil.copy(built, models / f"image{i}.keras")
    rows = np.random.default_rng(0).uniform(0, 1, (BATCH, SIZE, SIZE, 3)).round(3).tolist()

    with run_server(models, WORKERS="1", timeout_s=600) as server:
        (worker,) = worker_pids(server.process.pid)
        ready_mib = rss_mb(worker)
        for i in range(MODELS):
            response = server.post(f"/v1/models/image{i}:predict", json={"instances": rows}, timeout=120)
            assert response.status_code == 200, response.text
            assert np.asarray(response.json()["predictions"]).shape == (BATCH, 10)
        served_mib = rss_mb(worker)

    print(f"worker RSS: {ready_mib:.0f} MiB ready, {served_mib:.0f} MiB after a batch of {BATCH} per model")
    assert ready_mib <= bound_mib, f"{ready_mib:.0f} MiB once ready; the sizing guide says at most {bound_mib:.0f}"
    assert served_mib <= bound_mib, f"{served_mib:.0f} MiB after serving; the sizing guide says at most {bound_mib:.0f}"
