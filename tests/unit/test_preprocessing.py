"""Unit tests of service.preprocessing: image decoding, resizing, scaling and request-array checks."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import pytest
from PIL import Image

from service import preprocessing
from service.applications import FAMILIES, Architecture, Family, LayerNode, Recognition
from service.errors import InvalidInput, InvalidTensor, PayloadTooLarge
from service.model_config import PreprocessingConfig
from service.preprocessing import UNNAMED, decode_image, decode_images, image_spec, scale_pixels, to_model_inputs
from service.servable import Signature, TensorInfo

DEFAULT = PreprocessingConfig()


def signature(*inputs: TensorInfo, batched: bool = True) -> Signature:
    return Signature("serving_default", inputs, (TensorInfo("y", "float32", (None, 1)),), batched=batched)


def encode(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


GRAY28 = signature(TensorInfo("image", "float32", (None, 28, 28, 1)))


# --- image_spec ---------------------------------------------------------------------------------


def test_image_spec_reads_size_and_channels_from_the_signature() -> None:
    spec = image_spec(GRAY28, DEFAULT)
    assert (spec.input, spec.height, spec.width, spec.channels, spec.dtype) == ("image", 28, 28, 1, "float32")
    assert spec.keep_channel_axis and not spec.channels_first


def test_image_spec_handles_no_channel_axis_and_channels_first() -> None:
    flat = image_spec(signature(TensorInfo("x", "float32", (None, 28, 28))), DEFAULT)
    assert (flat.channels, flat.keep_channel_axis) == (1, False)
    first = image_spec(signature(TensorInfo("x", "float32", (None, 3, 32, 16))), DEFAULT)
    assert (first.channels, first.height, first.width, first.channels_first) == (3, 32, 16, True)


def test_image_spec_config_overrides_input_size_and_colour() -> None:
    sig = signature(TensorInfo("meta", "float32", (None, 4)), TensorInfo("pic", "uint8", (None, None, None, 3)))
    config = PreprocessingConfig(input="pic", size=(64, 48), color_mode="grayscale", resize="letterbox")
    spec = image_spec(sig, config)
    assert (spec.input, spec.height, spec.width, spec.channels, spec.resize, spec.dtype) == (
        "pic",
        64,
        48,
        1,
        "letterbox",
        "uint8",
    )


def test_image_spec_without_an_image_input_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="no image input"):
        image_spec(signature(TensorInfo("x", "float32", (None, 4))), DEFAULT)


# --- decoding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,options", [("PNG", {}), ("BMP", {}), ("WEBP", {"lossless": True}), ("GIF", {}), ("TIFF", {})]
)
def test_lossless_formats_decode_to_the_exact_pixels(fmt: str, options: dict) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    if fmt == "GIF":
        pixels = (pixels // 64 * 64).astype(np.uint8)  # few grey levels survive the palette exactly
    out = decode_image(encode(pixels, fmt, **options), image_spec(GRAY28, DEFAULT), max_pixels=10**6)
    np.testing.assert_array_equal(out[:, :, 0], pixels)


def test_gif_uses_the_first_frame() -> None:
    frames = [Image.fromarray(np.full((28, 28), v, np.uint8)) for v in (10, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buffer.getvalue(), image_spec(GRAY28, DEFAULT), max_pixels=10**6)
    assert out.shape == (28, 28, 1) and int(out.mean()) == 10


def test_exif_orientation_is_applied() -> None:
    image = Image.fromarray(np.zeros((10, 20, 3), np.uint8))  # 20 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    spec = image_spec(signature(TensorInfo("x", "float32", (None, None, None, 3))), DEFAULT)
    assert decode_image(buffer.getvalue(), spec, max_pixels=10**6).shape == (20, 10, 3)


def test_transparent_png_is_flattened_on_black_for_rgb() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent
    spec = image_spec(signature(TensorInfo("x", "float32", (None, 4, 4, 3))), DEFAULT)
    np.testing.assert_array_equal(decode_image(encode(rgba), spec, max_pixels=100), 0)


def test_large_jpeg_is_decoded_small_with_draft_mode() -> None:
    photo = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = decode_image(encode(photo, "JPEG"), image_spec(GRAY28, DEFAULT), max_pixels=10**6)
    assert out.shape == (28, 28, 1) and out.dtype == np.uint8


def test_resize_modes() -> None:
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, 10:30] = 255  # a white middle half
    spec = image_spec(signature(TensorInfo("x", "float32", (None, 20, 20, 1))), PreprocessingConfig(resize="crop"))
    cropped = decode_image(encode(pixels), spec, max_pixels=10**6)[:, :, 0]
    assert cropped.min() == 255  # the center crop is the white half
    spec = image_spec(signature(TensorInfo("x", "float32", (None, 20, 20, 1))), PreprocessingConfig(resize="letterbox"))
    boxed = decode_image(encode(pixels), spec, max_pixels=10**6)[:, :, 0]
    assert boxed[:5].max() == 0 and boxed[-5:].max() == 0 and boxed[10, 10] == 255  # bars above and below
    spec = image_spec(signature(TensorInfo("x", "float32", (None, 20, 20, 1))), DEFAULT)
    stretched = decode_image(encode(pixels), spec, max_pixels=10**6)[:, :, 0]
    assert stretched[:, 0].max() == 0 and stretched[:, 10].min() == 255


@pytest.mark.parametrize(("image_hw", "target_hw"), [((7, 1), (17, 1)), ((7, 1), (34, 3)), ((1, 7), (1, 17))])
def test_center_crop_works_where_float_rounding_puts_the_box_at_the_edge(image_hw: tuple, target_hw: tuple) -> None:
    # Found by hypothesis: for these sizes float rounding put the crop box outside the image and Pillow
    # refused it ("box offset can't be negative").
    pixels = np.full(image_hw, 200, np.uint8)
    spec = image_spec(signature(TensorInfo("x", "float32", (None, *target_hw, 1))), PreprocessingConfig(resize="crop"))
    assert decode_image(encode(pixels), spec, max_pixels=10**6).shape == (*target_hw, 1)


def test_too_many_pixels_is_payload_too_large_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge, match="exceeds the limit of 100 pixels"):
        decode_image(encode(np.zeros((20, 20), np.uint8)), image_spec(GRAY28, DEFAULT), max_pixels=100)


def test_decompression_bomb_guard_is_payload_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow raises above twice this
    with pytest.raises(PayloadTooLarge):
        decode_image(encode(np.zeros((20, 20), np.uint8)), image_spec(GRAY28, DEFAULT), max_pixels=10**6)


@pytest.mark.parametrize(
    "data", [b"", b"not an image", encode(np.random.default_rng(3).integers(0, 256, (28, 28), dtype=np.uint8))[:300]]
)
def test_garbage_and_truncated_images_are_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="cannot decode image"):
        decode_image(data, image_spec(GRAY28, DEFAULT), max_pixels=10**6)


def test_decode_images_names_the_bad_image_and_refuses_unequal_sizes() -> None:
    good = encode(np.zeros((28, 28), np.uint8))
    with pytest.raises(InvalidInput, match="image 1"):
        decode_images([good, b"junk"], image_spec(GRAY28, DEFAULT), max_pixels=10**6)
    free = image_spec(signature(TensorInfo("x", "float32", (None, None, None, 1))), DEFAULT)
    with pytest.raises(InvalidInput, match="different sizes"):
        decode_images([good, encode(np.zeros((10, 10), np.uint8))], free, max_pixels=10**6)


def test_decode_images_stacks_channels_first_and_without_channel_axis() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    spec = image_spec(signature(TensorInfo("x", "uint8", (None, 3, 8, 6))), PreprocessingConfig(scale="raw"))
    batch = decode_images([encode(rgb), encode(rgb)], spec, max_pixels=10**6)
    assert batch.shape == (2, 3, 8, 6) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[1], rgb.transpose(2, 0, 1))
    flat = image_spec(signature(TensorInfo("x", "float32", (None, 8, 6))), DEFAULT)
    assert decode_images([encode(rgb[..., 0])], flat, max_pixels=10**6).shape == (1, 8, 6)


# --- scaling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scale,expected",
    [
        ("unit", [0.0, 1.0]),
        ("symmetric", [-1.0, 1.0]),
        ("raw", [0.0, 255.0]),
        ("mean_std", [-1.0, 1.0]),
    ],
)
def test_scale_modes(scale: str, expected: list[float]) -> None:
    config = PreprocessingConfig(scale=scale, mean=(0.5,), std=(0.5,))
    spec = image_spec(GRAY28, config)
    out = scale_pixels(np.array([[[[0]], [[255]]]], np.uint8), spec)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(-1), expected, atol=1e-6)


# --- to_model_inputs ----------------------------------------------------------------------------------

TWO = signature(TensorInfo("a", "float32", (None, 2)), TensorInfo("b", "int64", (None,)))
ONE = signature(TensorInfo("x", "float32", (None, 2)))


def prepare(inputs: dict, sig: Signature = ONE, images: tuple[bytes, ...] = (), max_rows: int = 64) -> Mapping:
    """The arrays of the `ModelInputs` the boundary builds."""
    checked = to_model_inputs(inputs, images, sig, DEFAULT, max_pixels=10**6, max_rows=max_rows)
    assert all(len(a) == checked.rows for a in checked.arrays.values())
    return checked.arrays


def test_unnamed_input_goes_to_the_only_input_and_is_cast() -> None:
    out = prepare({UNNAMED: np.array([[1, 2], [3, 4]])})
    assert list(out) == ["x"] and out["x"].dtype == np.float32


def test_unnamed_input_for_a_model_with_several_inputs_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="2 inputs"):
        prepare({UNNAMED: np.array([[1, 2]])}, TWO)


def test_unknown_missing_and_unequal_rows_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="unknown input 'c'"):
        prepare({"a": np.ones((1, 2)), "b": np.ones(1), "c": np.ones(1)}, TWO)
    with pytest.raises(InvalidInput, match="missing input 'b'"):
        prepare({"a": np.ones((1, 2))}, TWO)
    with pytest.raises(InvalidInput, match="different batch sizes"):
        prepare({"a": np.ones((2, 2)), "b": np.ones(3)}, TWO)


def test_dtype_and_shape_mismatches_are_invalid_tensor() -> None:
    with pytest.raises(InvalidTensor, match="fractions"):
        prepare({"a": np.ones((1, 2)), "b": np.array([1.5])}, TWO)
    with pytest.raises(InvalidTensor, match="strings or bytes"):
        prepare({UNNAMED: np.array([["a", "b"]])})
    with pytest.raises(InvalidTensor, match=r"shape \[None, 2\], got \[1, 3\]"):
        prepare({UNNAMED: np.ones((1, 3))})
    with pytest.raises(InvalidTensor, match="out of range"):
        prepare({"a": np.ones((1, 2)), "b": np.array([2.0**70])}, TWO)


def test_too_many_rows_or_images_is_payload_too_large() -> None:
    with pytest.raises(PayloadTooLarge, match="MAX_IMAGES_PER_REQUEST"):
        prepare({UNNAMED: np.ones((5, 2))}, max_rows=4)
    png = encode(np.zeros((28, 28), np.uint8))
    with pytest.raises(PayloadTooLarge):
        prepare({}, GRAY28, images=(png,) * 3, max_rows=2)


def test_images_and_b64_bytes_go_to_the_image_input() -> None:
    pixels = np.full((28, 28), 51, np.uint8)
    from_upload = prepare({}, GRAY28, images=(encode(pixels),))
    encoded = np.empty(1, dtype=object)
    encoded[0] = encode(pixels)
    from_json = prepare({UNNAMED: encoded}, GRAY28)
    np.testing.assert_array_equal(from_upload["image"], from_json["image"])
    assert from_upload["image"].shape == (1, 28, 28, 1)
    np.testing.assert_allclose(from_upload["image"], 0.2, atol=1e-6)


def test_bytes_for_a_numeric_non_image_input_are_invalid_tensor() -> None:
    encoded = np.empty(1, dtype=object)
    encoded[0] = b"abc"
    with pytest.raises(InvalidTensor, match="not encoded bytes"):
        prepare({UNNAMED: encoded})


def test_string_inputs_pass_bytes_through() -> None:
    sig = signature(TensorInfo("text", "string", (None,)))
    encoded = np.array([b"a", b"bc"], dtype=object)
    assert prepare({UNNAMED: encoded}, sig)["text"].tolist() == [b"a", b"bc"]
    assert preprocessing.is_encoded(encoded)


# --- Keras Applications modes and how a version's mode is chosen ---------------------------------

RGB8 = signature(TensorInfo("image", "float32", (None, 1, 1, 3)))
PIXEL = np.array([[[[255, 0, 51]]]], np.uint8)  # one RGB pixel: R=255, G=0, B=51


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("caffe", [51 - 103.939, 0 - 116.779, 255 - 123.68]),  # BGR order, ImageNet mean subtracted
        ("tf", [1.0, -1.0, 51 / 127.5 - 1.0]),
        ("torch", [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]),
        ("none", [255.0, 0.0, 51.0]),
    ],
)
def test_keras_modes_compute_preprocess_input_on_a_known_pixel(mode: str, expected: list[float]) -> None:
    out = scale_pixels(PIXEL, image_spec(RGB8, PreprocessingConfig(mode=mode)))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(-1), expected, rtol=1e-6)


def test_torch_mode_on_a_channels_first_input_scales_each_channel() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    config = PreprocessingConfig(mode="torch")
    last = decode_images(
        [encode(rgb)], image_spec(signature(TensorInfo("x", "float32", (None, 8, 6, 3))), config), max_pixels=10**6
    )
    first = decode_images(
        [encode(rgb)], image_spec(signature(TensorInfo("x", "float32", (None, 3, 8, 6))), config), max_pixels=10**6
    )
    assert first.shape == (1, 3, 8, 6) and first.flags.c_contiguous
    np.testing.assert_array_equal(first, last.transpose(0, 3, 1, 2))


def test_rgb_only_modes_refuse_a_grayscale_input() -> None:
    with pytest.raises(InvalidInput, match="mode 'caffe' needs RGB images"):
        image_spec(GRAY28, PreprocessingConfig(mode="caffe"))
    assert image_spec(GRAY28, PreprocessingConfig(mode="tf")).mode == "tf"


def test_mode_and_scale_together_are_refused_but_scale_alone_still_works(tmp_path) -> None:
    from service.model_config import ModelConfigError, read_model_config

    both = tmp_path / "both.yaml"
    both.write_text("preprocessing:\n  mode: caffe\n  scale: unit\n")
    with pytest.raises(ModelConfigError, match="mode or preprocessing.scale, not both"):
        read_model_config(both)
    old = tmp_path / "old.yaml"
    old.write_text("preprocessing:\n  scale: symmetric\n")
    config = read_model_config(old).preprocessing
    assert (config.mode, config.scale) == ("auto", "symmetric")
    np.testing.assert_allclose(
        scale_pixels(PIXEL, image_spec(RGB8, config)).reshape(-1), [1.0, -1.0, 51 / 127.5 - 1.0], rtol=1e-6
    )


def family(name: str) -> Family:
    return next(f for f in FAMILIES if f.name == name)


RESNET_NESTED = Recognition((Architecture(family("ResNet"), "nested model 'resnet50'", "resnet50"),))


def test_choose_takes_the_recognised_family_mode_and_says_why() -> None:
    choice = preprocessing.choose(DEFAULT, RESNET_NESTED)
    assert (choice.pixels, choice.chosen_by, choice.config.mode) == (("mode", "caffe"), "auto", "caffe")
    assert "ResNet" in choice.reason and "nested model 'resnet50'" in choice.reason
    assert str(choice).startswith("mode caffe (auto: ")


def test_explicit_config_wins_over_auto_detection() -> None:
    by_mode = preprocessing.choose(PreprocessingConfig(mode="tf"), RESNET_NESTED)
    assert (by_mode.pixels, by_mode.chosen_by) == (("mode", "tf"), "config")
    by_scale = preprocessing.choose(PreprocessingConfig(scale="unit"), RESNET_NESTED)
    assert (by_scale.pixels, by_scale.chosen_by, by_scale.config.mode) == (("scale", "unit"), "config", "auto")


def test_without_a_recognised_family_images_keep_the_unit_default() -> None:
    for recognition in (None, Recognition()):
        choice = preprocessing.choose(DEFAULT, recognition)
        assert (choice.pixels, choice.chosen_by) == (("scale", "unit"), "default")
        assert image_spec(RGB8, choice.config).mode == "" and image_spec(RGB8, choice.config).scale == "unit"


def test_a_model_that_preprocesses_its_own_input_gets_raw_pixels() -> None:
    inside = Recognition(RESNET_NESTED.architectures, LayerNode("lambda", "Lambda"))
    choice = preprocessing.choose(DEFAULT, inside)
    assert (choice.pixels, choice.chosen_by) == (("mode", "none"), "auto")
    assert "Lambda layer ('lambda')" in choice.reason
    rescaling_only = preprocessing.choose(DEFAULT, Recognition((), LayerNode("rescaling", "Rescaling")))
    assert (rescaling_only.pixels, rescaling_only.chosen_by) == (("mode", "none"), "auto")
    unknown_lambda = preprocessing.choose(DEFAULT, Recognition((), LayerNode("lambda", "Lambda")))
    assert unknown_lambda.pixels == ("scale", "unit")


def test_architectures_wanting_different_modes_fall_back_to_the_default_naming_both() -> None:
    both = Recognition(
        (
            Architecture(family("ResNet"), "nested model 'resnet50'", "resnet50"),
            Architecture(family("DenseNet"), "nested model 'densenet121'", "densenet121"),
        )
    )
    choice = preprocessing.choose(DEFAULT, both)
    assert (choice.pixels, choice.chosen_by) == (("scale", "unit"), "default")
    assert "caffe" in choice.reason and "torch" in choice.reason and "set preprocessing.mode" in choice.reason
