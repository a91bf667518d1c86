"""Tiny models built the way the popular Keras tutorials build them, saved in every format they allow.

`BLOG_MODULE` is the user's training module (custom layers, losses, Lambda globals). The tests write
it twice: as the "training script" they import to build models, and as `<MODELS_DIR>/plugins/blog.py`
from which the server's registry is built, exactly what a user does.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

BLOG_MODULE = textwrap.dedent(
    '''
    """A training script's module, as a blog post would write it."""
    import numpy as np
    import tensorflow as tf
    import keras
    from keras import ops

    H = 6
    W = 5
    SMOOTHING = keras.Variable(0.1, trainable=False, name="smoothing")   # a backend variable


    class MyLayer(keras.layers.Layer):
        """Custom layer saved by class name (not registered with Keras)."""

        def __init__(self, units=3, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="random_normal", name="w")

        def call(self, x):
            return ops.matmul(x, self.w)

        def get_config(self):
            return {**super().get_config(), "units": self.units}


    @keras.saving.register_keras_serializable(package="blog")
    class MyRegisteredLayer(MyLayer):
        """Custom layer saved as 'blog>MyRegisteredLayer'."""


    class SplitVector(keras.layers.Layer):
        """Two outputs from one layer."""

        def __init__(self, left=2, **kwargs):
            super().__init__(**kwargs)
            self.left = left

        def call(self, x):
            return [x[:, : self.left], x[:, self.left :]]

        def compute_output_shape(self, input_shape):
            return [(input_shape[0], self.left), (input_shape[0], input_shape[1] - self.left)]

        def get_config(self):
            return {**super().get_config(), "left": self.left}


    class Dense_with_Center_loss(keras.layers.Layer):
        """The center-loss blog layer: no get_config, a bound-method loss."""

        def __init__(self, output_dim, **kwargs):
            super().__init__(**kwargs)
            self.output_dim = output_dim

        def build(self, input_shape):
            self.kernel = self.add_weight(name="kernel", shape=(input_shape[1], self.output_dim), initializer="glorot_normal")
            self.bias = self.add_weight(name="bias", shape=(self.output_dim,), initializer="zeros")
            self.centers = self.add_weight(name="centers", shape=(self.output_dim, input_shape[1]), initializer="glorot_normal", trainable=False)

        def call(self, inputs):
            return ops.softmax(ops.matmul(inputs, self.kernel) + self.bias)

        def loss(self, y_true, y_pred):
            return keras.losses.categorical_crossentropy(y_true, y_pred)


    def mycrossentropy(y_true, y_pred, e=0.1):
        return (1 - e) * keras.losses.categorical_crossentropy(y_true, y_pred)


    def smoothed_crossentropy(y_true, y_pred):
        n = ops.cast(ops.shape(y_true)[-1], "float32")
        return keras.losses.categorical_crossentropy(y_true * (1.0 - SMOOTHING) + SMOOTHING / n, y_pred)


    def focal_loss(gamma=2.0, alpha=0.25):
        def focal_loss_fixed(y_true, y_pred):
            p = ops.clip(y_pred, 1e-7, 1 - 1e-7)
            pt = ops.where(ops.equal(y_true, 1), p, 1 - p)
            return -ops.mean(alpha * ops.power(1.0 - pt, gamma) * ops.log(pt))
        return focal_loss_fixed


    def resize_layer():
        return keras.layers.Lambda(lambda img: tf.image.resize(img, (H, W)), name="resize")


    def noise_layer():
        return keras.layers.Lambda(lambda x, training=None: x + tf.random.normal(tf.shape(x)) if training else x, name="noise")
    '''
)


def import_blog(path: Path, module_name: str = "blog") -> ModuleType:
    """Import the training module from `path` (what the user's training script did)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Built:
    """A tutorial model and the outputs it computed before saving."""

    name: str
    model: Any
    x: list[np.ndarray]
    expected: list[np.ndarray]


def _run(model: Any, x: list[np.ndarray]) -> list[np.ndarray]:
    y = model(x if len(x) > 1 else x[0], training=False)
    return [np.asarray(v) for v in (y if isinstance(y, (list, tuple)) else [y])]


def build_models(blog: ModuleType) -> dict[str, Built]:
    """Build every tutorial model with fixed seeds; return them with their pre-save outputs."""
    import keras

    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(0)
    x4 = rng.standard_normal((3, 4)).astype(np.float32)
    built: dict[str, Built] = {}

    def add(name: str, model: Any, x: list[np.ndarray]) -> None:
        built[name] = Built(name, model, x, _run(model, x))

    inp = keras.Input((4,), name="x")
    add(
        "lambda_add",
        keras.Model(inp, keras.layers.Dense(2)(keras.layers.Lambda(lambda t: t + 2, name="plus_two")(inp))),
        [x4],
    )

    img = keras.Input((4, 4, 1), name="image")
    add(
        "lambda_resize",
        keras.Model(img, blog.resize_layer()(img)),
        [rng.standard_normal((2, 4, 4, 1)).astype(np.float32)],
    )

    inp = keras.Input((4,), name="x")
    add("lambda_noise", keras.Model(inp, blog.noise_layer()(keras.layers.Dense(3)(inp))), [x4])

    inp = keras.Input((4,), name="x")
    add("custom_layer", keras.Model(inp, blog.MyLayer(3, name="my_layer")(inp)), [x4])

    inp = keras.Input((4,), name="x")
    add("registered_layer", keras.Model(inp, blog.MyRegisteredLayer(3, name="my_registered")(inp)), [x4])

    inp = keras.Input((4,), name="x")
    left, right = blog.SplitVector(1, name="split")(keras.layers.Dense(4)(inp))
    add("split_vector", keras.Model(inp, [left, right]), [x4])

    inp = keras.Input((4,), name="x")
    center = blog.Dense_with_Center_loss(3, name="center")
    model = keras.Model(inp, center(inp))
    model.compile(optimizer="adam", loss=center.loss)
    add("center_loss", model, [x4])

    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    model.compile(optimizer="adam", loss=blog.smoothed_crossentropy)
    add("label_smoothing", model, [x4])

    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(inp))
    model.compile(optimizer="adam", loss=blog.focal_loss(), metrics=["accuracy"])
    add("focal_loss", model, [x4])

    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    model.compile(optimizer="adam", loss=blog.mycrossentropy)
    add("mycrossentropy", model, [x4])

    model = keras.Sequential(
        [
            keras.Input((4,), name="x"),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    add("binary_classifier", model, [x4])

    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    merged = keras.layers.Concatenate()([a, b])
    add(
        "multi_input",
        keras.Model(
            [a, b], [keras.layers.Dense(2, name="first")(merged), keras.layers.Dense(1, name="second")(merged)]
        ),
        [rng.standard_normal((3, 3)).astype(np.float32), rng.standard_normal((3, 2)).astype(np.float32)],
    )
    return built


SAVERS: dict[str, Callable[[Any, Path], Path]] = {}


def saver(fmt: str) -> Callable[[Callable[[Any, Path], Path]], Callable[[Any, Path], Path]]:
    def decorate(fn: Callable[[Any, Path], Path]) -> Callable[[Any, Path], Path]:
        SAVERS[fmt] = fn
        return fn

    return decorate


@saver("keras")
def save_keras(model: Any, folder: Path) -> Path:
    model.save(folder / "model.keras")
    return folder / "model.keras"


@saver("h5")
def save_h5(model: Any, folder: Path) -> Path:
    model.save(folder / "model.h5")
    return folder / "model.h5"


@saver("json")
def save_json(model: Any, folder: Path) -> Path:
    (folder / "model.json").write_text(model.to_json())
    model.save_weights(folder / "model.weights.h5")
    return folder / "model.json"


@saver("export")
def save_export(model: Any, folder: Path) -> Path:
    model.export(folder / "exported", verbose=False)
    return folder / "exported"


@saver("tf_saved_model")
def save_tf_saved_model(model: Any, folder: Path) -> Path:
    import tensorflow as tf

    tf.saved_model.save(model, str(folder / "saved"))
    return folder / "saved"


@saver("keras_dir")
def save_keras_dir(model: Any, folder: Path) -> Path:
    """An unzipped `.keras` archive: config.json + model.weights.h5 + metadata.json in a folder."""
    import zipfile

    model.save(folder / "packed.keras")
    with zipfile.ZipFile(folder / "packed.keras") as archive:
        archive.extractall(folder / "unzipped")
    (folder / "packed.keras").unlink()
    return folder / "unzipped"
