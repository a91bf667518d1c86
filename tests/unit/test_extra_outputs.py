"""extra_outputs: layers' outputs (a nested model's too, as `outer/inner`) served beside a model's own.

Small real Keras models saved to `.keras` and loaded by the real loader; every extra output is
compared with `keras.Model(<input>, layer.output)` computed in-process on the same inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.custom_objects import CustomObjectRegistry
from service.errors import ModelLoadError
from service.loader import Loader
from service.model_config import ModelConfig, ModelConfigError, read_model_config
from service.settings import Settings

keras = pytest.importorskip("keras")


def backbone() -> keras.Model:
    """A small functional 'application': conv -> conv -> global average pool, named like Keras' own."""
    image = keras.Input((8, 8, 3), name="image_in")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(image)
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv2")(x)
    return keras.Model(image, keras.layers.GlobalAveragePooling2D(name="avg_pool")(x), name="backbone")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """name -> (path, in-process model)."""
    folder = tmp_path_factory.mktemp("extra_outputs")
    keras.utils.set_random_seed(5)
    wrapper = keras.Sequential(
        [keras.Input((8, 8, 3)), backbone(), keras.layers.Dense(3, name="scores")], name="wrapper"
    )
    # Two levels: outer -> middle (a Sequential) -> backbone.
    middle = keras.Sequential([keras.Input((8, 8, 3)), backbone(), keras.layers.Dense(5, name="embed")], name="middle")
    deep_in = keras.Input((8, 8, 3), name="pixels")
    deep = keras.Model(deep_in, keras.layers.Dense(2, name="head")(middle(deep_in)), name="deep")
    # Two inputs, a direct layer, and a layer used twice.
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    shared = keras.layers.Dense(3, name="shared")
    hidden = keras.layers.Dense(4, name="hidden")(keras.layers.Concatenate(name="both")([shared(a), shared(b)]))
    two = keras.Model([a, b], keras.layers.Dense(1, name="out")(hidden), name="two")
    models = {"wrapper": wrapper, "deep": deep, "two": two}
    paths = {}
    for name, model in models.items():
        paths[name] = folder / f"{name}.keras"
        model.save(paths[name])
    return {name: (paths[name], models[name]) for name in models}


@pytest.fixture(scope="module")
def loader(tmp_path_factory: pytest.TempPathFactory) -> Loader:
    settings = Settings(models_dir=tmp_path_factory.mktemp("models"))
    return Loader(CustomObjectRegistry.from_plugins(settings), settings)


def rows(shape: tuple[int, ...], n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def test_nested_layer_and_nested_model_outputs_come_after_the_models_own(saved: dict, loader: Loader) -> None:
    path, model = saved["wrapper"]
    loaded = loader.load(path, ModelConfig(extra_outputs=("backbone/avg_pool", "backbone/conv1", "backbone")))
    signature = loaded.signature
    assert [(t.name, t.shape) for t in signature.outputs] == [
        ("scores", (None, 3)),
        ("backbone/avg_pool", (None, 6)),
        ("backbone/conv1", (None, 6, 6, 4)),
        ("backbone", (None, 6)),
    ]
    x = rows((8, 8, 3))
    out = loaded.call("serving_default", {signature.inputs[0].name: x})
    inner = model.get_layer("backbone")
    np.testing.assert_allclose(out["scores"], model(x), rtol=1e-5, atol=1e-5)
    for name, layer in (("backbone/avg_pool", "avg_pool"), ("backbone/conv1", "conv1")):
        expected = keras.Model(inner.input, inner.get_layer(layer).output)(x)
        np.testing.assert_allclose(out[name], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["backbone"], inner(x), rtol=1e-5, atol=1e-5)
    assert np.abs(out["backbone/avg_pool"]).max() > 1e-3  # not a trivially zero comparison


def test_layers_two_models_deep_are_addressed_with_two_slashes(saved: dict, loader: Loader) -> None:
    path, model = saved["deep"]
    loaded = loader.load(path, ModelConfig(extra_outputs=("middle/backbone/conv2", "middle/embed")))
    x = rows((8, 8, 3), seed=1)
    out = loaded.call("serving_default", {"pixels": x})
    middle = model.get_layer("middle")
    inner = middle.get_layer("backbone")
    np.testing.assert_allclose(out["head"], model(x), rtol=1e-5, atol=1e-5)
    conv2 = keras.Model(inner.input, inner.get_layer("conv2").output)(x)
    np.testing.assert_allclose(out["middle/backbone/conv2"], conv2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["middle/embed"], middle(x), rtol=1e-5, atol=1e-5)


def test_a_direct_layer_of_a_two_input_model(saved: dict, loader: Loader) -> None:
    path, model = saved["two"]
    loaded = loader.load(path, ModelConfig(extra_outputs=("hidden",)))
    assert [t.name for t in loaded.signature.inputs] == ["a", "b"]
    a, b = rows((4,), seed=2), rows((4,), seed=3)
    out = loaded.call("serving_default", {"a": a, "b": b})
    expected = keras.Model(model.inputs, model.get_layer("hidden").output)([a, b])
    np.testing.assert_allclose(out["hidden"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["out"], model([a, b]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name,reason",
    [
        ("backbone/avgpool", "no layer 'backbone/avgpool'; close names: 'backbone/avg_pool'"),
        ("scorez", "no layer 'scorez'; close names: 'scores'"),
        ("nothing_like_it", "its layers are: 'backbone', 'scores'"),
        ("scores/kernel", "'scores' is a Dense layer, not a model"),
        ("scores", "'scores' is already an output of the model"),
    ],
)
def test_a_name_that_cannot_be_served_fails_the_version_saying_why(
    saved: dict, loader: Loader, name: str, reason: str
) -> None:
    path, _ = saved["wrapper"]
    with pytest.raises(ModelLoadError, match="extra_outputs") as failure:
        loader.load(path, ModelConfig(extra_outputs=(name,)))
    assert reason in str(failure.value)


def test_a_shared_layer_has_no_single_output(saved: dict, loader: Loader) -> None:
    path, _ = saved["two"]
    with pytest.raises(ModelLoadError, match="'shared' is called 2 times"):
        loader.load(path, ModelConfig(extra_outputs=("shared",)))


def test_a_saved_model_cannot_serve_layer_outputs(saved: dict, loader: Loader, tmp_path: Path) -> None:
    _, model = saved["two"]
    model.export(tmp_path / "exported", verbose=False)
    with pytest.raises(ModelLoadError, match="extra_outputs needs a Keras model file"):
        loader.load(tmp_path / "exported", ModelConfig(extra_outputs=("hidden",)))


def test_config_refuses_empty_malformed_or_repeated_names(tmp_path: Path) -> None:
    for listed, reason in (
        ('["a", "a"]', "listed twice"),
        ('["a/"]', "not a layer name"),
        ('[""]', "not a layer name"),
    ):
        path = tmp_path / "m.yaml"
        path.write_text(f"extra_outputs: {listed}\n")
        with pytest.raises(ModelConfigError, match=reason):
            read_model_config(path)
