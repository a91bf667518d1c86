"""Unit tests of the per-request decode budget (issue 13): pixels summed over a request's images, JPEG scans, CPU time."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest
from PIL import Image

from service import preprocessing
from service.errors import ClientGone, InvalidInput, PayloadTooLarge
from service.model_config import PreprocessingConfig
from service.preprocessing import DecodeBudget, decode_image, image_spec, to_model_inputs
from service.servable import Signature, TensorInfo
from service.settings import Settings

DEFAULT = PreprocessingConfig()
RGB32 = Signature(
    "serving_default",
    (TensorInfo("image", "float32", (None, 32, 32, 3)),),
    (TensorInfo("y", "float32", (None, 1)),),
    batched=True,
)
LIMITS = {"max_pixels": 40_000_000, "max_rows": 64, "max_request_pixels": 100_000_000, "max_decode_s": 5.0}


def gif_declaring(width: int, height: int) -> bytes:
    """A 1x1 GIF whose logical screen says width x height: 35 bytes that Pillow would decode as a full canvas."""
    buffer = io.BytesIO()
    Image.new("P", (1, 1)).save(buffer, "GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def empty_scan_jpeg(size: int, extra_scans: int) -> bytes:
    """A progressive JPEG of one flat colour whose last scan (a nearly empty AC refinement) repeats `extra_scans` times.

    libjpeg accepts it (a warning about the bogus progression) and walks every block once per scan.
    """
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (90, 120, 200)).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * extra_scans + b"\xff\xd9"


def test_defaults_are_settings() -> None:
    settings = Settings()
    assert (settings.max_request_pixels, settings.max_request_decode_s) == (100_000_000, 5.0)


def test_many_small_images_declaring_huge_canvases_are_refused_before_any_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[object] = []
    real = preprocessing._decode_opened
    monkeypatch.setattr(preprocessing, "_decode_opened", lambda *a: decoded.append(a) or real(*a))
    images = tuple(gif_declaring(4000, 4000) for _ in range(64))  # 16 Mpx each, under MAX_IMAGE_PIXELS
    assert sum(map(len, images)) < 64 * 100
    with pytest.raises(PayloadTooLarge, match="MAX_REQUEST_PIXELS") as err:
        to_model_inputs({}, images, RGB32, DEFAULT, **LIMITS)
    assert "image 6:" in str(err.value)  # 7 x 16 Mpx is the first sum over 100 M
    assert decoded == []


def test_the_budget_spans_every_image_input_of_a_request() -> None:
    two = Signature(
        "serving_default",
        (TensorInfo("a", "float32", (None, 8, 8, 3)), TensorInfo("b", "float32", (None, 8, 8, 3))),
        (TensorInfo("y", "float32", (None, 1)),),
        batched=True,
    )
    column = np.asarray([gif_declaring(100, 100)], dtype=object)  # 10,000 pixels per input
    limits = {**LIMITS, "max_request_pixels": 15_000}
    with pytest.raises(PayloadTooLarge, match="20000 pixels .* 15000 per request"):
        to_model_inputs({"a": column, "b": column}, (), two, DEFAULT, **limits)
    assert to_model_inputs({"a": column, "b": column}, (), two, DEFAULT, **{**limits, "max_request_pixels": 20_000})


def test_a_progressive_jpeg_of_many_empty_scans_is_refused_in_milliseconds() -> None:
    data = empty_scan_jpeg(2000, 500)  # 4 Mpx x 510 scans: about 1.2 s of one core to decode, 31 KB to send
    assert len(data) < 40_000 and data.count(b"\xff\xda") == 510
    start = time.thread_time()
    with pytest.raises(PayloadTooLarge, match="a JPEG of 510 scans counts 204000000 pixels.*MAX_REQUEST_PIXELS"):
        to_model_inputs({}, (data,), RGB32, DEFAULT, **LIMITS)
    assert time.thread_time() - start < 0.1


def test_the_crafted_jpeg_is_a_real_image_that_pillow_decodes() -> None:
    spec = image_spec(RGB32, DEFAULT)
    pixels = decode_image(empty_scan_jpeg(64, 100), spec, max_pixels=LIMITS["max_pixels"])
    assert pixels.shape == (32, 32, 3)
    assert np.allclose(pixels.reshape(-1, 3).mean(axis=0), (90, 120, 200), atol=3)


def test_ordinary_progressive_and_baseline_jpegs_cost_their_pixels() -> None:
    for options in ({"progressive": True}, {}):
        buffer = io.BytesIO()
        Image.new("RGB", (300, 200), (1, 2, 3)).save(buffer, "JPEG", **options)
        data = buffer.getvalue()
        budget = DecodeBudget(max_pixels=60_000, max_seconds=None)
        budget.charge(Image.open(io.BytesIO(data)), data)
        assert budget.pixels == 60_000


def test_decode_time_is_checked_between_images(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 0.1, 7.0])  # start, after image 0, after image 1: image 2 is never decoded
    monkeypatch.setattr(preprocessing.time, "thread_time", lambda: next(clock))
    images = tuple(gif_declaring(8, 8) for _ in range(3))
    with pytest.raises(
        PayloadTooLarge,
        match=r"^decoding the request.s images took 7\.00s of CPU.*5s per request \(MAX_REQUEST_DECODE_S\)",
    ):
        to_model_inputs({}, images, RGB32, DEFAULT, **LIMITS)


def test_decoding_stops_between_images_once_the_client_is_gone() -> None:
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(picture, "PNG")
    images = (picture.getvalue(),) * 3
    asked: list[int] = []

    def gone_after_two_questions() -> bool:
        asked.append(1)
        return len(asked) >= 2

    with pytest.raises(ClientGone, match="decoding stopped after image 2 of 3"):
        to_model_inputs({}, images, RGB32, DEFAULT, **LIMITS, client_gone=gone_after_two_questions)
    assert to_model_inputs({}, images, RGB32, DEFAULT, **LIMITS, client_gone=lambda: False).rows == 3


def test_a_baseline_jpeg_with_repeated_scans_is_not_walked_again_but_refused() -> None:
    """Scans are counted in progressive JPEGs only; a baseline one whose scans repeat is charged its pixels once,
    which is safe only because libjpeg refuses it at the first repeated scan instead of walking it again."""
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 2000), (90, 120, 200)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    first, end = data.find(b"\xff\xda"), data.rfind(b"\xff\xd9")
    crafted = data[:end] + data[first:end] * 500 + data[end:]
    budget = DecodeBudget(max_pixels=5_000_000, max_seconds=None)
    budget.charge(Image.open(io.BytesIO(crafted)), crafted)  # 4 Mpx, not 4 Mpx x 501
    assert budget.pixels == 4_000_000
    start = time.thread_time()
    with pytest.raises(InvalidInput, match="cannot decode image"):
        to_model_inputs({}, (crafted,), RGB32, DEFAULT, **LIMITS)
    assert time.thread_time() - start < 0.5
