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

from tests.conftest import REPO, wait_until
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


def save_tiny_dense(path: Path) -> None:
    """The guide's base: one tiny Dense model (no model worth counting)."""
    import keras

    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(2, name="y")])
    model.save(path)


def all_available(server, names: list[str]) -> bool:
    for name in names:
        response = server.get(f"/v1/models/{name}", timeout=10)
        if response.status_code != 200:
            return False
        states = [v["state"] for v in response.json()["model_version_status"]]
        if "AVAILABLE" not in states:
            return False
    return True


def test_ten_small_image_models_in_one_worker_stay_within_the_sizing_guide(run_server, tmp_path: Path) -> None:
    """The guide's per-model cost holds over this worker's own base, measured in the same worker first.

    The base depends on the host (Python, TensorFlow and oneDNN's kernels for its CPU): 684 MiB
    here, more on CI's machine. So the worker starts with the guide's base alone (one tiny Dense
    model), its RSS is read, then the ten image models are dropped into the watched folder, and
    what they add — loaded, warmed up, then after each served its largest batch — must stay within
    ten times the guide's per-model figure. The base itself must stay within half again the guide's.
    """
    base_guide_mib, per_model_mib = sizing_guide()
    built = tmp_path / "small_cnn.keras"
    save_small_image_cnn(built)
    models = tmp_path / "models"
    models.mkdir()
    save_tiny_dense(models / "base.keras")
    names = [f"image{i}" for i in range(MODELS)]
    rows = np.random.default_rng(0).uniform(0, 1, (BATCH, SIZE, SIZE, 3)).round(3).tolist()

    with run_server(models, WORKERS="1", timeout_s=600) as server:
        (worker,) = worker_pids(server.process.pid)
        base_mib = rss_mb(worker)
        for name in names:  # each appears whole: copied beside the folder, then renamed into it
            shutil.copy(built, tmp_path / f"{name}.keras")
            (tmp_path / f"{name}.keras").rename(models / f"{name}.keras")
        wait_until(lambda: all_available(server, names), timeout_s=600, interval_s=0.5)
        ready_mib = rss_mb(worker)
        for name in names:
            response = server.post(f"/v1/models/{name}:predict", json={"instances": rows}, timeout=120)
            assert response.status_code == 200, response.text
            assert np.asarray(response.json()["predictions"]).shape == (BATCH, 10)
        served_mib = rss_mb(worker)

    bound_mib = MODELS * per_model_mib
    print(
        f"worker RSS: base {base_mib:.0f} MiB; {MODELS} models +{ready_mib - base_mib:.0f} MiB ready, "
        f"+{served_mib - base_mib:.0f} MiB after a batch of {BATCH} per model (guide: +{bound_mib:.0f})"
    )
    assert base_mib <= 1.5 * base_guide_mib, f"base {base_mib:.0f} MiB; the guide says about {base_guide_mib:.0f}"
    assert ready_mib - base_mib <= bound_mib, (
        f"+{ready_mib - base_mib:.0f} MiB once ready; the guide says {bound_mib:.0f}"
    )
    assert served_mib - base_mib <= bound_mib, (
        f"+{served_mib - base_mib:.0f} MiB after serving; the guide says at most {bound_mib:.0f}"
    )
