"""Default model: the small `digits` CNN that `make run` trains and serves when MODELS_DIR holds no model.

`python -m service default-model [--if-empty] [--models-dir DIR] [--epochs N]` trains a CNN on
scikit-learn's bundled 8x8 digits (nothing is downloaded), upsampled to 28x28 grayscale, and writes

    <MODELS_DIR>/digits.keras        the model (a normal `.keras` file; delete it to retrain)
    <MODELS_DIR>/digits.labels.txt   its labels file: "0".."9", one per line
    <MODELS_DIR>/digits.yaml         its config: preprocessing (28x28 grayscale, raw pixels)
    <MODELS_DIR>/plugins/digits.py   its plugin (copied from the repository when missing)

The model is built the way the tutorials build models: a `Lambda` over a Python lambda that reads
the plugin's global `SCALE`, and the plugin's custom layer `ConvBlock`. Inputs are raw pixels
(0..255, `scale: raw`); the Lambda scales them. The held-out split (`heldout_digits()`) is fixed by
`SPLIT_SEED`, so `examples/` and the first-run test use digits the model never saw.

This module owns training and writing the default model; it never serves, and it imports
TensorFlow/Keras only inside the functions that train and save.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import yaml

from service.logs import configure_logging
from service.model_config import ModelConfig
from service.repository import ModelRepository
from service.settings import PLUGINS_FOLDER, Settings

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

MODEL_NAME = "digits"
"""Name of the default model: the file stem, so clients call `/models/digits/...`."""

IMAGE_SIZE = (28, 28)
"""(height, width) the 8x8 digits are upsampled to; the same as the plugin's `IMAGE_SIZE`."""

HOLDOUT_FRACTION = 0.25
"""Share of the 1797 digits kept out of training (450 digits)."""

SPLIT_SEED = 0
"""Seed of the train / held-out split: fixed, so examples and tests use held-out digits."""

TRAIN_SEED = 1
"""Seed of weight initialisation and shuffling, for repeatable training."""

DEFAULT_EPOCHS = 12
"""Epochs of a normal first run (a few seconds per epoch on 2 cores)."""

TARGET_ACCURACY = 0.95
"""Held-out accuracy the default model must reach; below it a warning is logged."""

PLUGIN_FILE = "digits.py"
PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "models" / PLUGINS_FOLDER / PLUGIN_FILE
"""The plugin in the repository (and in the image), copied into MODELS_DIR/plugins/ when missing."""

LABELS = tuple(str(digit) for digit in range(10))
"""Class labels in index order, written to `digits.labels.txt`."""


@dataclass(frozen=True, slots=True)
class DigitsSplit:
    """scikit-learn's digits as 28x28 uint8 images (0..255), split into training and held-out parts."""

    train_images: np.ndarray
    train_labels: np.ndarray
    heldout_images: np.ndarray
    heldout_labels: np.ndarray


def upsample(digits_8x8: np.ndarray) -> np.ndarray:
    """Turn 8x8 digits (values 0..16) into 28x28 uint8 images (0..255), as PNG files would hold them.

    Args:
        digits_8x8: array of shape (N, 8, 8) or (N, 64).

    Returns:
        uint8 array of shape (N, 28, 28): bright strokes on a dark background, like MNIST.
    """
    from PIL import Image

    pixels = np.rint(np.asarray(digits_8x8, dtype=np.float64).reshape(-1, 8, 8) * (255.0 / 16.0))
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    height, width = IMAGE_SIZE
    return np.stack([np.asarray(Image.fromarray(p).resize((width, height), Image.Resampling.BILINEAR)) for p in pixels])


@functools.cache
def digits_split() -> DigitsSplit:
    """Return the upsampled digits, split reproducibly (`SPLIT_SEED`, `HOLDOUT_FRACTION`, stratified).

    Computed once per process; the arrays are read-only because every caller shares them.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = upsample(data.images)
    labels = data.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=HOLDOUT_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    for array in (train_x, test_x, train_y, test_y):
        array.setflags(write=False)
    return DigitsSplit(train_x, train_y, test_x, test_y)


def heldout_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return the held-out digits as (uint8 images (N, 28, 28), int labels (N,)), never used in training."""
    split = digits_split()
    return split.heldout_images, split.heldout_labels


def has_model(models_dir: Path) -> bool:
    """Tell whether `models_dir` holds a model, as the server's repository sees the folder.

    Model files (`.keras`, `.h5`, `.hdf5`) and non-empty model folders count, complete or still
    arriving; `plugins/`, config and labels files, hidden and temporary entries do not. So deleting
    `digits.keras` alone is enough for the next `--if-empty` run to train again.
    """
    if not models_dir.is_dir():
        return False
    return bool(ModelRepository(models_dir, settle_s=0.0).scan())


def install_plugin(models_dir: Path) -> Path:
    """Copy the digits plugin into `<models_dir>/plugins/` unless it is already there; return its path."""
    target = models_dir / PLUGINS_FOLDER / PLUGIN_FILE
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(target, PLUGIN_SOURCE.read_bytes())
        log.info("copied the digits plugin to %s", target)
    return target


def import_plugin(path: Path) -> ModuleType:
    """Import the plugin file at `path` as a fresh module (the same file the server imports)."""
    spec = importlib.util.spec_from_file_location(f"kerasserve_default_model_plugin_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import plugin {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_model(plugin: ModuleType) -> keras.Model:
    """Build the digits CNN from the plugin's Lambda and custom layer; inputs are raw pixels (0..255)."""
    import keras

    height, width = IMAGE_SIZE
    inputs = keras.Input(shape=(height, width, 1), name="image")
    x = plugin.scale_pixels()(inputs)
    x = plugin.ConvBlock(16, name="block1")(x)
    x = plugin.ConvBlock(32, name="block2")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.25)(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=MODEL_NAME)


def train(plugin: ModuleType, split: DigitsSplit, *, epochs: int) -> tuple[keras.Model, float]:
    """Train the digits CNN on the training part of `split`; return it and its held-out accuracy."""
    import keras

    keras.utils.set_random_seed(TRAIN_SEED)
    model = build_model(plugin)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    train_x = split.train_images[..., np.newaxis].astype(np.float32)
    heldout_x = split.heldout_images[..., np.newaxis].astype(np.float32)
    epoch_log = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: log.info(
            "epoch %d/%d: loss %.3f, accuracy %.3f", epoch + 1, epochs, logs["loss"], logs["accuracy"]
        )
    )
    model.fit(train_x, split.train_labels, batch_size=32, epochs=epochs, verbose=0, callbacks=[epoch_log])
    probabilities = model.predict(heldout_x, batch_size=256, verbose=0)
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == split.heldout_labels))
    return model, accuracy


def model_config() -> ModelConfig:
    """Return the config written beside the model: the preprocessing its Lambda expects (raw pixels)."""
    return ModelConfig.model_validate(
        {"preprocessing": {"size": list(IMAGE_SIZE), "color_mode": "grayscale", "resize": "stretch", "scale": "raw"}}
    )


def save(model: keras.Model, models_dir: Path) -> Path:
    """Write `digits.yaml`, `digits.labels.txt`, then `digits.keras`, each by a rename (a watcher never sees half a file)."""
    config = model_config().model_dump(mode="json", exclude_unset=True)
    header = (
        "# Config of the default model, written by `python -m service default-model`.\n"
        "# Inputs are raw pixels (0..255): the model's Lambda multiplies them by SCALE (models/plugins/digits.py).\n"
    )
    _write_atomically(models_dir / f"{MODEL_NAME}.yaml", (header + yaml.safe_dump(config, sort_keys=False)).encode())
    _write_atomically(models_dir / f"{MODEL_NAME}.labels.txt", "".join(f"{label}\n" for label in LABELS).encode())
    target = models_dir / f"{MODEL_NAME}.keras"
    # Keras insists on the `.keras` suffix, so save into a hidden folder (which the repository
    # ignores) on the same file system, then rename into place.
    staging = Path(tempfile.mkdtemp(prefix=".default-model-", dir=models_dir))
    try:
        model.save(staging / target.name)
        os.replace(staging / target.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_atomically(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_default_model(models_dir: Path, *, epochs: int = DEFAULT_EPOCHS) -> tuple[Path, float]:
    """Install the plugin, train the digits CNN and save it into `models_dir`.

    Returns:
        The model file's path and the model's accuracy on the held-out digits.
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    plugin = import_plugin(install_plugin(models_dir))
    split = digits_split()
    log.info(
        "training the default model '%s' on %d digits (%d held out), %d epochs",
        MODEL_NAME,
        len(split.train_labels),
        len(split.heldout_labels),
        epochs,
    )
    model, accuracy = train(plugin, split, epochs=epochs)
    path = save(model, models_dir)
    log.info("saved %s: held-out accuracy %.4f, trained in %.1fs", path, accuracy, time.monotonic() - started)
    if accuracy < TARGET_ACCURACY:
        log.warning("held-out accuracy %.4f is below %.2f; run again with more --epochs", accuracy, TARGET_ACCURACY)
    return path, accuracy


def _is_writable_folder(path: Path) -> bool:
    """Create `path` if needed; tell whether this process may write into it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service default-model",
        description="Train the default 'digits' model (scikit-learn's bundled digits) and save it into MODELS_DIR.",
    )
    parser.add_argument("--if-empty", action="store_true", help="do nothing when MODELS_DIR already holds a model")
    parser.add_argument(
        "--models-dir", type=Path, default=None, help="target folder (default: MODELS_DIR, i.e. Settings)"
    )
    parser.add_argument(
        "--epochs", type=int, default=DEFAULT_EPOCHS, help=f"training epochs (default {DEFAULT_EPOCHS})"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    return args


def main(argv: list[str]) -> int:
    """Run `python -m service default-model ARGV`; return the process exit status."""
    args = _parse_args(argv)
    settings = Settings()
    configure_logging(settings)  # the same text / JSON (LOG_JSON) logs as the server's
    models_dir: Path = args.models_dir if args.models_dir is not None else settings.models_dir
    if args.if_empty and has_model(models_dir):
        log.info("%s already holds a model; not training the default model", models_dir)
        return 0
    if not _is_writable_folder(models_dir):
        log.error(
            "cannot train the default model: %s is not writable; put a model there, or point MODELS_DIR "
            "at a writable folder",
            models_dir,
        )
        return 1
    create_default_model(models_dir, epochs=args.epochs)
    return 0
