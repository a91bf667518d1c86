"""Keras Applications recognised in real models (built with weights=None), and their images served
exactly as `keras.applications.<family>.preprocess_input` prepares them.

Recognition tests read the layer outline the loader makes (`loader.layer_outline`); the serving tests
go through the real manager (loader, runner, batcher) and data plane, with the default `mode: auto`.
Input shapes are small (32x32, 64x64): the preprocessing does not depend on the size.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service import preprocessing
from service.applications import recognise
from service.builder import ServableBuilder
from service.dataplane import DataPlane, PredictRequest
from service.loader import layer_outline
from service.manager import ServableManager
from service.model_config import PreprocessingConfig
from service.servable import ServableRequest
from service.settings import Settings
from tests.conftest import wait_until
from tests.unit.fakes import serve

keras = pytest.importorskip("keras")
APPS = keras.applications
SMALL = (32, 32, 3)


def backbone(name: str, shape: tuple[int, int, int] = SMALL, **kwargs) -> keras.Model:
    return getattr(APPS, name)(weights=None, include_top=False, input_shape=shape, **kwargs)


def choice_for(model: keras.Model) -> preprocessing.PreprocessingChoice:
    return preprocessing.choose(PreprocessingConfig(), recognise(model.name, layer_outline(model)))


# --- recognition --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,family,mode",
    [
        ("ResNet50", "ResNet", "caffe"),
        ("VGG16", "VGG", "caffe"),
        ("MobileNetV2", "MobileNetV2", "tf"),
        ("DenseNet121", "DenseNet", "torch"),
        ("EfficientNetB0", "EfficientNet", "none"),
    ],
)
def test_each_family_is_recognised_by_the_name_keras_gives_it(name: str, family: str, mode: str) -> None:
    model = backbone(name)
    recognition = recognise(model.name, layer_outline(model))
    assert [a.family.name for a in recognition.architectures] == [family]
    choice = preprocessing.choose(PreprocessingConfig(), recognition)
    assert (choice.pixels, choice.chosen_by) == (("mode", mode), "auto")


def test_a_fine_tuned_wrapper_is_recognised_by_its_nested_model() -> None:
    model = keras.Sequential([backbone("ResNet50", pooling="avg"), keras.layers.Dense(5)])
    choice = choice_for(model)
    assert (choice.pixels, choice.chosen_by) == (("mode", "caffe"), "auto")
    assert "nested model 'resnet50'" in choice.reason


def test_a_backbone_flattened_into_a_functional_model_is_recognised_by_its_layer_names() -> None:
    base = backbone("MobileNetV2")
    head = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(base.output))
    model = keras.Model(base.input, head, name="my_classifier")
    choice = choice_for(model)
    assert choice.pixels == ("mode", "tf") and "its layers" in choice.reason


def test_augmentation_before_the_backbone_changes_nothing_but_preprocess_input_inside_gives_none() -> None:
    image = keras.Input(SMALL)
    augment = keras.Sequential([keras.layers.RandomFlip(), keras.layers.RandomRotation(0.1)])
    features = backbone("DenseNet121", pooling="avg")
    augmented = keras.Model(image, keras.layers.Dense(2)(features(augment(image))))
    assert choice_for(augmented).pixels == ("mode", "torch")

    image = keras.Input(SMALL)
    resnet = backbone("ResNet50", pooling="avg")
    inside = keras.Model(image, keras.layers.Dense(2)(resnet(APPS.resnet50.preprocess_input(image))))
    choice = choice_for(inside)
    assert (choice.pixels, choice.chosen_by) == (("mode", "none"), "auto")
    assert "preprocesses its own input" in choice.reason


def test_a_model_of_no_family_starting_with_rescaling_takes_raw_pixels_and_a_plain_one_unit() -> None:
    rescaling = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Conv2D(2, 3)])
    assert choice_for(rescaling).pixels == ("mode", "none")
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3)])
    assert (choice_for(plain).pixels, choice_for(plain).chosen_by) == (("scale", "unit"), "default")


@pytest.mark.parametrize(
    "module,mode",
    [
        ("resnet50", "caffe"),
        ("vgg16", "caffe"),
        ("mobilenet_v2", "tf"),
        ("inception_v3", "tf"),
        ("densenet", "torch"),
        ("efficientnet", "none"),
    ],
)
def test_modes_are_bit_for_bit_keras_preprocess_input(module: str, mode: str) -> None:
    pixels = np.random.default_rng(7).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    expected = getattr(APPS, module).preprocess_input(pixels.astype(np.float32))
    np.testing.assert_array_equal(preprocessing.keras_preprocess(pixels, mode, np.dtype("float32")), expected)


# --- served through the manager and the data plane, mode auto -----------------------------------------

SERVED = {
    # model name: (builder at 64x64, keras.applications module of its preprocess_input, mode)
    "resnet50": (lambda: backbone("ResNet50", (64, 64, 3), pooling="avg"), "resnet50", "caffe"),
    "mobilenetv2": (lambda: backbone("MobileNetV2", (64, 64, 3), pooling="avg"), "mobilenet_v2", "tf"),
    "densenet121": (lambda: backbone("DenseNet121", (64, 64, 3), pooling="avg"), "densenet", "torch"),
    "efficientnetb0": (lambda: backbone("EfficientNetB0", (64, 64, 3), pooling="avg"), "efficientnet", "none"),
    "finetuned": (
        lambda: keras.Sequential(
            [backbone("ResNet50", (64, 64, 3), pooling="avg"), keras.layers.Dense(5, name="scores")]
        ),
        "resnet50",
        "caffe",
    ),
}


def jpeg(seed: int, size: int) -> bytes:
    """A smooth colour JPEG (gradients plus noise): every channel differs, so channel order matters."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    base = np.stack(
        [
            np.add.outer(ramp, ramp) * 120,
            np.add.outer(ramp, 1 - ramp) * 90 + 40,
            np.add.outer(1 - ramp, ramp) * 60 + 100,
        ],
        axis=-1,
    )
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    """The JPEG's pixels as Pillow decodes them (what the service decodes at the model's own size)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[np.newaxis]


@dataclass
class Served:
    dataplane: DataPlane
    manager: ServableManager
    models: dict[str, keras.Model]
    models_dir: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    models_dir = tmp_path_factory.mktemp("applications")
    keras.utils.set_random_seed(21)
    built = {}
    for name, (build, _, _) in SERVED.items():
        built[name] = build()
        built[name].save(models_dir / f"{name}.keras")
    # workers=1: TensorFlow keeps every core of this test process (its thread share is cores / workers).
    settings = Settings(models_dir=models_dir, workers=1, max_batch_size=2, settle_s=0.1, poll_interval_s=0.2)
    builder = ServableBuilder(settings)
    builder.start()
    manager, stop = serve(settings, builder)  # wired as service.app.create_app wires them
    try:
        wait_until(lambda: manager.readiness().ready, timeout_s=300, interval_s=0.2)
        yield Served(DataPlane(manager, settings), manager, built, models_dir)
    finally:
        stop()


@pytest.mark.parametrize("name", list(SERVED))
def test_an_uploaded_jpeg_scores_like_preprocess_input_in_process(served: Served, name: str) -> None:
    _, module, mode = SERVED[name]
    image = jpeg(len(name), 64)
    response = served.dataplane.predict(PredictRequest(ServableRequest.latest(name), images=(image,)))
    pixels = decoded(image).astype(np.float32)
    model: Callable = served.models[name]
    expected = np.asarray(model(getattr(APPS, module).preprocess_input(pixels.copy()), training=False))
    (scores,) = response.outputs.values()
    # Within 1e-4, on the output's own scale when it is below 1: random weights (weights=None) shrink
    # some backbones' features to ~1e-12, where an absolute 1e-4 would compare nothing.
    scale = min(1.0, float(np.abs(expected).max()))
    assert scale > 0
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4 * scale)
    # The comparison can fail: the model answers differently to the old default (RGB 0..1).
    old_default = np.asarray(model(pixels / 255.0, training=False))
    assert np.abs(old_default - expected).max() > 1e-2 * scale
    (version,) = served.manager.status(name).versions
    assert version.info is not None and version.info.preprocessing is not None
    assert (version.info.preprocessing.pixels, version.info.preprocessing.chosen_by) == (("mode", mode), "auto")


def test_the_chosen_mode_is_logged_with_the_version(
    served: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.builder"):
        served.models["finetuned"].save(tmp_path / "finetuned.keras")
        (tmp_path / "finetuned.keras").replace(served.models_dir / "again.keras")
        wait_until(lambda: "again:1 image preprocessing" in caplog.text, timeout_s=120, interval_s=0.2)
    line = next(r.getMessage() for r in caplog.records if "again:1 image preprocessing" in r.getMessage())
    assert "mode caffe (auto: Keras Applications ResNet recognised by nested model 'resnet50'" in line
