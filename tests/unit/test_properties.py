"""Property tests (hypothesis) for what clients control: image bytes and JSON tensors.

Whatever arrives, preprocessing and the JSON tensor parsers either return well-formed arrays or
raise a `ServingError` (a 4xx answer); any other exception would be a 500. Valid inputs come back
with the shapes, dtypes and values they describe.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from service import preprocessing, protocols
from service.errors import InvalidInput, PayloadTooLarge, ServingError
from service.model_config import PreprocessingConfig
from service.protocols import kserve_v2, tfserving
from service.servable import ServableRequest, Signature, TensorInfo

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TARGET = ServableRequest.latest("m")
MAX_PIXELS = 1_000_000


def spec(
    height: int | None, width: int | None, channels: int, *, resize: str = "stretch", scale: str = "unit"
) -> preprocessing.ImageSpec:
    return preprocessing.ImageSpec(
        input="image",
        height=height,
        width=width,
        channels=channels,
        channels_first=False,
        keep_channel_axis=True,
        resize=resize,
        scale=scale,
        mean=(0.0,),
        std=(1.0,),
        dtype="float32",
    )


@st.composite
def images(draw: st.DrawFn) -> tuple[np.ndarray, str, bytes]:
    """A random image array, its Pillow mode, and its encoding in a lossless format."""
    height, width = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    mode = draw(st.sampled_from(["L", "RGB", "RGBA"]))
    shape = (height, width) if mode == "L" else (height, width, len(mode))
    pixels = draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 255)))
    fmt = draw(st.sampled_from(["PNG", "BMP", "WEBP", "TIFF"] if mode != "RGBA" else ["PNG", "WEBP", "TIFF"]))
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, fmt, **({"lossless": True, "exact": True} if fmt == "WEBP" else {}))
    return pixels, mode, buffer.getvalue()


# --- image preprocessing ---------------------------------------------------------------------------
@PROPERTY
@given(data=st.binary(max_size=2048), channels=st.sampled_from([1, 3, 4]))
def test_any_bytes_decode_or_raise_a_client_error(data: bytes, channels: int) -> None:
    try:
        array = preprocessing.decode_image(data, spec(8, 8, channels), max_pixels=MAX_PIXELS)
    except (InvalidInput, PayloadTooLarge):
        return
    assert array.shape == (8, 8, channels) and array.dtype == np.uint8


@PROPERTY
@given(
    image=images(),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
)
def test_truncated_or_corrupted_images_decode_or_raise_a_client_error(
    image: tuple[np.ndarray, str, bytes], cut: float, flips: list
) -> None:
    _, _, data = image
    damaged = bytearray(data[: max(1, int(len(data) * cut))])
    for position, value in flips:
        if damaged:
            damaged[position % len(damaged)] = value
    try:
        array = preprocessing.decode_image(bytes(damaged), spec(16, 16, 3), max_pixels=MAX_PIXELS)
    except (InvalidInput, PayloadTooLarge):
        return
    assert array.shape == (16, 16, 3)


@PROPERTY
@given(
    image=images(),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    channels=st.sampled_from([1, 3, 4]),
    resize=st.sampled_from(["stretch", "crop", "letterbox"]),
)
def test_valid_images_come_out_in_the_requested_size_and_channels(
    image: tuple[np.ndarray, str, bytes], height: int, width: int, channels: int, resize: str
) -> None:
    _, _, data = image
    array = preprocessing.decode_image(data, spec(height, width, channels, resize=resize), max_pixels=MAX_PIXELS)
    assert array.shape == (height, width, channels) and array.dtype == np.uint8


@PROPERTY
@given(image=images())
def test_lossless_images_of_the_target_size_keep_their_pixels(image: tuple[np.ndarray, str, bytes]) -> None:
    pixels, mode, data = image
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    array = preprocessing.decode_image(data, spec(pixels.shape[0], pixels.shape[1], channels), max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(array.reshape(pixels.shape), pixels)


@PROPERTY
@given(width=st.integers(1, 3000), height=st.integers(1, 3000), limit=st.integers(1, 2_000_000))
def test_pixel_limit_is_enforced_from_the_header_before_decoding(width: int, height: int, limit: int) -> None:
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR: declared size (CRC left stale)
    try:
        preprocessing.open_image(bytes(data), max_pixels=limit)
    except PayloadTooLarge as err:
        assert width * height > limit and "MAX_IMAGE_PIXELS" in str(err)
    except InvalidInput:
        pass  # Pillow refused the stale CRC: still a client error
    else:
        assert width * height <= limit


@PROPERTY
@given(
    pixels=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=4, max_dims=4, max_side=5)),
    scale=st.sampled_from(["unit", "symmetric", "raw"]),
)
def test_scaled_pixels_stay_in_their_range(pixels: np.ndarray, scale: str) -> None:
    out = preprocessing.scale_pixels(pixels, spec(None, None, pixels.shape[-1], scale=scale))
    assert out.dtype == np.float32 and out.shape == pixels.shape
    low, high = {"unit": (0.0, 1.0), "symmetric": (-1.0, 1.0), "raw": (0.0, 255.0)}[scale]
    assert out.min() >= low - 1e-6 and out.max() <= high + 1e-6


# --- JSON tensors ----------------------------------------------------------------------------------
JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.fixed_dictionaries({"b64": st.text(max_size=12)}),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=30,
)


@PROPERTY
@given(value=JSON_VALUES)
def test_any_json_tensor_parses_or_raises_a_client_error(value: object) -> None:
    try:
        array = tfserving.json_to_array("x", value)
    except ServingError:
        return
    assert isinstance(array, np.ndarray)
    assert array.dtype == object or array.dtype.kind in "biuf"


@PROPERTY
@given(body=JSON_VALUES)
def test_any_predict_body_decodes_or_raises_a_client_error(body: object) -> None:
    raw = json.dumps({"instances": body} if not isinstance(body, dict) else body).encode()
    try:
        parsed = protocols.parse_json_object(raw)
        request, _ = tfserving.decode_predict_body(parsed, TARGET)
    except ServingError:
        return
    assert all(isinstance(a, np.ndarray) for a in request.inputs.values())


@PROPERTY
@given(raw=st.binary(max_size=512))
def test_any_body_bytes_parse_or_raise_a_client_error(raw: bytes) -> None:
    try:
        assert isinstance(protocols.parse_json_object(raw), dict)
    except ServingError:
        pass


@PROPERTY
@given(
    array=hnp.arrays(
        st.sampled_from([np.float64, np.int64, np.bool_]),
        hnp.array_shapes(min_dims=1, max_dims=4, max_side=4),
        elements=None,
    )
)
def test_rectangular_json_tensors_round_trip(array: np.ndarray) -> None:
    assume(array.dtype != np.float64 or np.isfinite(array).all())
    parsed = tfserving.json_to_array("x", json.loads(json.dumps(array.tolist())))
    assert parsed.shape == array.shape
    np.testing.assert_array_equal(parsed, array)


@PROPERTY
@given(header=JSON_VALUES, binary=st.binary(max_size=64))
def test_any_kserve_infer_request_decodes_or_raises_a_client_error(header: object, binary: bytes) -> None:
    try:
        request, _ = kserve_v2.decode_infer(json.dumps(header).encode(), binary, TARGET)
    except ServingError:
        return
    assert all(isinstance(a, np.ndarray) for a in request.inputs.values())


@st.composite
def kserve_inputs(draw: st.DrawFn) -> dict:
    shape = draw(st.lists(st.integers(0, 4), min_size=1, max_size=3))
    datatype = draw(st.sampled_from(["FP32", "FP64", "INT32", "INT64", "UINT8", "BOOL", "BYTES"]))
    count = draw(st.sampled_from([math.prod(shape), math.prod(shape) + 1, max(0, math.prod(shape) - 1)]))
    leaf = {"BYTES": st.text(max_size=4), "BOOL": st.booleans()}.get(
        datatype, st.integers(-300, 300) | st.floats(-1e3, 1e3)
    )
    return {
        "name": "x",
        "shape": shape,
        "datatype": datatype,
        "data": draw(st.lists(leaf, min_size=count, max_size=count)),
    }


@PROPERTY
@given(entry=kserve_inputs())
def test_kserve_inputs_match_their_declared_shape_or_raise_a_client_error(entry: dict) -> None:
    try:
        request, _ = kserve_v2.decode_infer(json.dumps({"inputs": [entry]}).encode(), b"", TARGET)
    except ServingError:
        return
    assert request.inputs["x"].shape == tuple(entry["shape"])


SIGNATURE = Signature(
    name="serving_default",
    inputs=(TensorInfo("features", "float32", (None, 4)), TensorInfo("count", "int32", (None,))),
    outputs=(TensorInfo("y", "float32", (None, 1)),),
)


@PROPERTY
@given(features=JSON_VALUES, count=JSON_VALUES)
def test_model_inputs_fit_the_signature_exactly_or_raise_a_client_error(features: object, count: object) -> None:
    try:
        arrays = {
            "features": tfserving.json_to_array("features", features),
            "count": tfserving.json_to_array("count", count),
        }
        checked = preprocessing.to_model_inputs(
            arrays, (), SIGNATURE, PreprocessingConfig(), max_pixels=MAX_PIXELS, max_rows=64
        )
    except ServingError:
        return
    inputs = checked.arrays
    assert 1 <= checked.rows <= 64 and all(len(a) == checked.rows for a in inputs.values())
    assert inputs["features"].dtype == np.float32 and inputs["features"].shape[1:] == (4,)
    assert inputs["count"].dtype == np.int32 and inputs["count"].shape == (inputs["features"].shape[0],)
    np.testing.assert_array_equal(
        inputs["count"], np.asarray(count, dtype=np.float64)
    )  # no silent rounding or wrap-around
