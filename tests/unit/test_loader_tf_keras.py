"""Keras 2 (tf_keras) files: .h5 with a Lambda and a custom layer, a tf_keras SavedModel, and
architecture JSON + legacy weights loaded by layer name into a model with one extra layer."""

from __future__ import annotations

import numpy as np
import pytest

from service.custom_objects import CustomObjectRegistry
from service.formats import ModelFormat, detect_format
from service.loader import Loader
from service.settings import Settings
from tests.unit.tutorial_models import BLOG_MODULE

H = 6  # the training script's global, read by the Lambda below (the plugin has the same H)


@pytest.fixture(scope="module")
def tfk(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import tf_keras

    class MyLayer(tf_keras.layers.Layer):
        """The Keras 2 twin of the plugin's MyLayer (same name, config and weights)."""

        def __init__(self, units: int = 3, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape: object) -> None:
            self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="random_normal", name="w")

        def call(self, x: object) -> object:
            return tf_keras.backend.dot(x, self.w)

        def get_config(self) -> dict:
            return {**super().get_config(), "units": self.units}

    tf_keras.utils.set_random_seed(3)
    root = tmp_path_factory.mktemp("tfk")
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)

    inp = tf_keras.Input((4,), name="x")
    scaled = tf_keras.layers.Lambda(lambda t: t * H + 1.0, name="scale")(inp)
    model = tf_keras.Model(inp, MyLayer(3, name="my_layer")(tf_keras.layers.Dense(4, name="dense")(scaled)))
    model.compile(optimizer="adam", loss="mse")
    model.save(root / "lambda_custom.h5")
    lambda_custom = np.asarray(model(x, training=False))

    inp = tf_keras.Input((4,), name="x")
    lambda_only = tf_keras.Model(
        inp, tf_keras.layers.Dense(2, name="out")(tf_keras.layers.Lambda(lambda t: t * H + 1.0, name="scale")(inp))
    )
    lambda_only.save(root / "lambda_only.h5")
    lambda_only_out = np.asarray(lambda_only(x, training=False))

    import tensorflow as tf

    inp = tf_keras.Input((4,), name="x")
    op_layers = tf_keras.Model(inp, tf_keras.layers.Dense(2, name="out")(tf.math.multiply(inp, 2.0) + 1.0))
    op_layers.save(root / "tf_op_layers.h5")
    op_layers_out = np.asarray(op_layers(x, training=False))

    seq = tf_keras.Input((5, 2), name="seq")
    lstm = tf_keras.Model(seq, tf_keras.layers.LSTM(3, recurrent_activation="hard_sigmoid", name="lstm")(seq))
    lstm.save(root / "lstm.h5")
    seq_x = np.random.default_rng(2).standard_normal((2, 5, 2)).astype(np.float32) * 3
    lstm_out = np.asarray(lstm(seq_x, training=False))

    inp = tf_keras.Input((4,), name="x")
    plain = tf_keras.Model(
        inp, tf_keras.layers.Dense(2, activation="softmax", name="probs")(tf_keras.layers.Dense(5, name="d1")(inp))
    )
    plain.save(str(root / "savedmodel"), save_format="tf")
    plain_out = np.asarray(plain(x, training=False))

    # JSON + legacy weights: weights from A, architecture B = A plus one extra (deterministic) layer.
    inp = tf_keras.Input((4,), name="x")
    hidden = tf_keras.layers.Dense(3, name="d1")(inp)
    a = tf_keras.Model(inp, tf_keras.layers.Dense(2, name="d2")(hidden))
    weights_dir = root / "json_by_name"
    weights_dir.mkdir()
    a.save_weights(str(weights_dir / "model_weights.h5"))
    inp = tf_keras.Input((4,), name="x")
    hidden = tf_keras.layers.Dense(3, name="d1")(inp)
    out = tf_keras.layers.Dense(2, name="d2")(hidden)
    extra = tf_keras.layers.Dense(2, name="extra", kernel_initializer="identity", bias_initializer="ones")(out)
    b = tf_keras.Model(inp, extra)
    (weights_dir / "model.json").write_text(b.to_json())
    b.load_weights(str(weights_dir / "model_weights.h5"), by_name=True)
    by_name_out = np.asarray(b(x, training=False))

    models_dir = root / "models"
    (models_dir / "plugins").mkdir(parents=True)
    (models_dir / "plugins" / "blog.py").write_text(BLOG_MODULE)
    settings = Settings(models_dir=models_dir)
    loader = Loader(CustomObjectRegistry.from_plugins(settings), settings)
    return {
        "root": root,
        "x": x,
        "loader": loader,
        "lambda_custom": lambda_custom,
        "lambda_only": lambda_only_out,
        "lstm": (seq_x, lstm_out),
        "op_layers": op_layers_out,
        "plain": plain_out,
        "by_name": by_name_out,
    }


def test_tf_keras_h5_with_lambda_and_custom_layer_serves_the_same_outputs(tfk: dict) -> None:
    loaded = tfk["loader"].load(tfk["root"] / "lambda_custom.h5")
    assert loaded.format == "h5"
    assert loaded.loader.startswith("keras3")
    out = loaded.call("serving_default", {"x": tfk["x"]})
    np.testing.assert_allclose(out["my_layer"], tfk["lambda_custom"], rtol=1e-5, atol=1e-6)


def test_tf_keras_savedmodel_serves_through_its_signature(tfk: dict) -> None:
    loaded = tfk["loader"].load(tfk["root"] / "savedmodel")
    assert (loaded.format, loaded.loader) == ("saved_model", "saved_model")
    sig = loaded.signature
    assert [t.name for t in sig.inputs] == ["x"] and [t.name for t in sig.outputs] == ["probs"]
    out = loaded.call("serving_default", {"x": tfk["x"]})
    np.testing.assert_allclose(out["probs"], tfk["plain"], rtol=1e-5, atol=1e-6)


def test_json_with_legacy_weights_loads_by_layer_name_into_a_model_with_an_extra_layer(tfk: dict) -> None:
    folder = tfk["root"] / "json_by_name"
    detected = detect_format(folder)
    assert detected.format is ModelFormat.JSON_WEIGHTS
    assert detected.weights is not None and detected.weights.name == "model_weights.h5"
    loaded = tfk["loader"].load(folder)
    out = loaded.call("serving_default", {"x": tfk["x"]})
    np.testing.assert_allclose(out["extra"], tfk["by_name"], rtol=1e-5, atol=1e-6)
    assert any("by layer name" in w for w in loaded.warnings)


def test_tf_keras_lambda_reads_per_model_globals(tfk: dict) -> None:
    from service.model_config import ModelConfig

    zeros, ones = np.zeros((1, 4), np.float32), np.ones((1, 4), np.float32)
    default = tfk["loader"].load(tfk["root"] / "lambda_custom.h5")  # the plugin's H = 6
    h_zero = tfk["loader"].load(tfk["root"] / "lambda_custom.h5", ModelConfig(globals={"H": 0}))
    # The Lambda computes x * H + 1: with H = 0, ones give what zeros give with any H.
    np.testing.assert_allclose(
        h_zero.call("serving_default", {"x": ones})["my_layer"],
        default.call("serving_default", {"x": zeros})["my_layer"],
        rtol=1e-6,
    )
    assert not np.allclose(
        default.call("serving_default", {"x": ones})["my_layer"],
        default.call("serving_default", {"x": zeros})["my_layer"],
    )


def test_tf_keras_path_gives_lambda_code_the_registry_globals(tfk: dict, tmp_path) -> None:
    """A file tagged Keras 1 goes to tf_keras first; its Lambda must still see the plugin's H."""
    import shutil

    import h5py

    target = tmp_path / "keras1.h5"
    shutil.copyfile(tfk["root"] / "lambda_only.h5", target)
    with h5py.File(target, "r+") as f:
        f.attrs["keras_version"] = "1.2.2"
    loaded = tfk["loader"].load(target)
    assert loaded.loader == "tf_keras"
    out = loaded.call("serving_default", {"x": tfk["x"]})
    np.testing.assert_allclose(out["out"], tfk["lambda_only"], rtol=1e-5, atol=1e-6)


def test_keras2_hard_sigmoid_keeps_its_keras2_meaning(tfk: dict) -> None:
    """Keras 2's hard_sigmoid is 0.2x+0.5, Keras 3's x/6+0.5 (LOADING.md finding 13)."""
    x, expected = tfk["lstm"]
    loaded = tfk["loader"].load(tfk["root"] / "lstm.h5")
    assert loaded.loader == "keras3-repaired"
    np.testing.assert_allclose(loaded.call("serving_default", {"seq": x})["lstm"], expected, rtol=1e-5, atol=1e-6)


def test_tf_keras_auto_wrapped_tf_ops_fall_back_to_tf_keras(tfk: dict) -> None:
    """tf.keras 2 wraps tf functions called on Keras tensors in TFOpLambda layers, unknown to Keras 3."""
    loaded = tfk["loader"].load(tfk["root"] / "tf_op_layers.h5")
    assert loaded.loader == "tf_keras"
    assert any("keras3" in w and "failed" in w for w in loaded.warnings)
    out = loaded.call("serving_default", {"x": tfk["x"]})
    np.testing.assert_allclose(out["out"], tfk["op_layers"], rtol=1e-5, atol=1e-6)
