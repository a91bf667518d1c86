"""Tiny models for the API tests, with known weights so tests compute the expected answers in numpy.

`build_api_models(root)` writes, once per session:
  digits.keras        (None, 28, 28, 1) -> Flatten -> Dense(10, softmax)   labels: zero..nine
  binary.keras        (None, 4) -> Dense(1, sigmoid)                        labels: cat, dog
  two_heads.keras     (None, 4) -> {"kind": Dense(3, softmax), "size": Dense(1)}
  half_plus_two   ->  corpus half_plus_two_cpu (TF1 SavedModel, version 123)
  half_plus_three ->  corpus half_plus_three (TF1 SavedModel, version 123)
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from tests.conftest import CORPUS

DIGIT_LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
BINARY_LABELS = ("cat", "dog")
DIGITS_KERNEL = np.random.default_rng(0).normal(0.0, 0.05, size=(784, 10)).astype(np.float32)
BINARY_KERNEL = np.array([[1.0], [-1.0], [0.5], [0.0]], dtype=np.float32)
KIND_KERNEL = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5]], dtype=np.float32)
SIZE_KERNEL = np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32)

# Limits of the servers the predict and bad-request tests run (small, so tests can cross them).
MAX_IMAGE_PIXELS = 100_000
MAX_REQUEST_BYTES = 1_000_000
MAX_IMAGES = 8
LIMITS_ENV = {
    "MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS),
    "MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
    "MAX_IMAGES_PER_REQUEST": str(MAX_IMAGES),
}


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def digits_scores(pixels: np.ndarray) -> np.ndarray:
    """Expected digits output for uint8 images (N, 28, 28): softmax(x/255 @ W)."""
    x = pixels.reshape(len(pixels), -1).astype(np.float32) / 255.0
    return softmax(x @ DIGITS_KERNEL)


def binary_scores(rows: np.ndarray) -> np.ndarray:
    return sigmoid(np.asarray(rows, dtype=np.float32) @ BINARY_KERNEL)


def two_heads(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(rows, dtype=np.float32)
    return softmax(x @ KIND_KERNEL), x @ SIZE_KERNEL


def digit_image(seed: int) -> np.ndarray:
    """A deterministic 28x28 grayscale image."""
    return np.random.default_rng(seed).integers(0, 256, size=(28, 28), dtype=np.uint8)


def encode(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def build_api_models(root: Path) -> Path:
    """Write the models above into `root` (once; later calls reuse them) and return it."""
    done = root.with_name(root.name + ".built")  # beside the folder: the repository must not see it
    if done.exists():
        return root
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    root.mkdir(parents=True, exist_ok=True)
    zeros = keras.initializers.Zeros()

    inputs = keras.Input((28, 28, 1), name="image")
    dense = keras.layers.Dense(10, activation="softmax", name="digit", bias_initializer=zeros)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    dense.set_weights([DIGITS_KERNEL, np.zeros(10, np.float32)])
    model.save(root / "digits.keras")
    (root / "digits.labels.txt").write_text("\n".join(DIGIT_LABELS) + "\n")

    inputs = keras.Input((4,), name="features")
    dense = keras.layers.Dense(1, activation="sigmoid", name="probability")
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([BINARY_KERNEL, np.zeros(1, np.float32)])
    model.save(root / "binary.keras")
    (root / "binary.labels.txt").write_text("\n".join(BINARY_LABELS) + "\n")

    inputs = keras.Input((4,), name="features")
    kind = keras.layers.Dense(3, activation="softmax", name="kind")
    size = keras.layers.Dense(1, name="size")
    model = keras.Model(inputs, {"kind": kind(inputs), "size": size(inputs)})
    kind.set_weights([KIND_KERNEL, np.zeros(3, np.float32)])
    size.set_weights([SIZE_KERNEL, np.zeros(1, np.float32)])
    model.save(root / "two_heads.keras")

    if CORPUS.is_dir():
        (root / "half_plus_two").symlink_to(CORPUS / "half_plus_two_cpu")
        (root / "half_plus_three").symlink_to(CORPUS / "half_plus_three")
    done.write_text("")
    return root
