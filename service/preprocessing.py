"""Preprocessing: encoded images and loosely typed arrays -> tensors shaped and scaled for a Signature.

Owns image decoding (Pillow: JPEG, PNG, GIF first frame, BMP, WebP, TIFF; no other format), EXIF orientation, channel
conversion, resizing (stretch, center-crop, letterbox), pixel scaling and dtype casts, plus the
checks that turn a request's arrays into exactly the dtypes and shapes a signature declares.

Pixel scaling is either one of Keras Applications' `preprocess_input` modes (`caffe`, `tf`, `torch`,
`none`), computed exactly as Keras computes them, or one of the older RGB-only scales (`unit`,
`symmetric`, `raw`, `mean_std`). `choose()` decides which one a version gets, once at load: the
model config's `mode` or `scale` when set, else the mode of the Keras Applications architecture the
loader recognised (`service.applications`), else `unit`. Decoding runs in the request thread
(Pillow releases the GIL while decoding). It never imports Flask or TensorFlow and never calls a model.
"""

from __future__ import annotations

import functools
import io
import logging
import struct
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.applications import RAW_PIXEL_LAYERS, Recognition
from service.errors import ClientGone, InvalidInput, InvalidTensor, PayloadTooLarge, strip_paths
from service.model_config import PreprocessingChoice, PreprocessingConfig
from service.servable import ModelInputs, Signature, TensorInfo

log = logging.getLogger(__name__)

UNNAMED = ""
"""Key of a request tensor sent without a name (TF Serving's single-input shorthand)."""

CHANNELS_BY_MODE = {"grayscale": 1, "rgb": 3, "rgba": 4}
PIL_MODE_BY_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}
STRING_DTYPES = ("string", "object", "bytes")

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
"""ImageNet mean that Keras' `caffe` mode subtracts, in BGR order, on the 0..255 scale."""
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
"""ImageNet mean and standard deviation of Keras' `torch` mode, RGB order, on the 0..1 scale."""
RGB_ONLY_MODES = ("caffe", "torch")

IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
"""The formats Pillow may open (docs/api.md): its other plugins (ICO, TGA, EPS, ...) are not offered to clients."""
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError)
"""What Pillow raises for files it cannot read (truncated, corrupt, unsupported modes)."""
MALFORMED = (TypeError, struct.error, IndexError, KeyError, ZeroDivisionError, zlib.error)
"""What escapes Pillow's parsers on malformed fields of a file it did recognise (EXIF and TIFF tags above all)."""
JPEG_NORMAL_SCANS = 10
"""Scans of an ordinary progressive colour JPEG (libjpeg's and Pillow's `progressive=True` script). libjpeg walks every
block of a progressive JPEG once per scan, even an empty one, so a JPEG of S scans is charged its pixels x S / 10 (at
least its pixels) against MAX_REQUEST_PIXELS: ordinary files cost their pixels, a file of many empty scans its real work."""


class DecodeBudget:
    """What one request may spend decoding images, across all its image inputs: pixels and CPU seconds.

    Pixels are charged from the headers, for every image, before any is decoded (`charge`); time is the request
    thread's CPU time, checked after each image (`check_time`). Neither is enforced anywhere else. After each
    image, `client_gone()` (when given) says whether the client closed its connection: decoding then stops.
    """

    def __init__(
        self, *, max_pixels: int | None, max_seconds: float | None, client_gone: Callable[[], bool] | None = None
    ) -> None:
        self.max_pixels = max_pixels
        self.max_seconds = max_seconds
        self.client_gone = client_gone
        self.pixels = 0
        self._start = time.thread_time() if max_seconds is not None else 0.0  # a system call: only when enforced

    def charge(self, image: Image.Image, data: bytes) -> None:
        """Add an opened image's decode cost (its pixels, more for a JPEG of many scans); 413 past the budget."""
        width, height = image.size
        cost = width * height
        # SOS markers (0xFF in scan data is stuffed), counted in progressive JPEGs only: a baseline one has one scan per
        # colour component at most, and libjpeg stops at a repeated one ("broken data stream"). Counting walks the whole
        # body: 2.6 ms for a 3 MB photo.
        progressive = image.format == "JPEG" and image.info.get("progressive")
        scans = data.count(b"\xff\xda") if progressive else 1
        if scans > JPEG_NORMAL_SCANS:
            cost = cost * scans // JPEG_NORMAL_SCANS
        self.pixels += cost
        if self.max_pixels is not None and self.pixels > self.max_pixels:
            what = f"a JPEG of {scans} scans counts {cost} pixels; " if scans > JPEG_NORMAL_SCANS else ""
            raise PayloadTooLarge(
                f"{what}the request's images need {self.pixels} pixels of decoding, over the limit of "
                f"{self.max_pixels} per request (MAX_REQUEST_PIXELS)"
            )

    def check_client(self, decoded: int, total: int) -> None:
        """Raise `ClientGone` when the client closed its connection: the images left are not decoded."""
        if self.client_gone is not None and decoded < total and self.client_gone():
            log.info("client gone: decoding stopped after image %d of %d", decoded, total)
            raise ClientGone(f"the client closed the connection; decoding stopped after image {decoded} of {total}")

    def check_time(self) -> None:
        """Raise 413 once the request thread has spent more CPU time decoding than allowed."""
        if self.max_seconds is None:
            return
        spent = time.thread_time() - self._start
        if spent > self.max_seconds:
            raise PayloadTooLarge(
                f"decoding the request's images took {spent:.2f}s of CPU, over the limit of "
                f"{self.max_seconds:g}s per request (MAX_REQUEST_DECODE_S)"
            )


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """How images become one input tensor: where it goes, its size, channels, scaling and dtype."""

    input: str
    height: int | None
    width: int | None
    channels: int
    channels_first: bool
    keep_channel_axis: bool
    resize: str
    scale: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: str
    mode: str = ""
    """Keras `preprocess_input` mode (caffe, tf, torch, none); "" applies `scale` instead."""


def choose(config: PreprocessingConfig, recognition: Recognition | None) -> PreprocessingChoice:
    """Decide the pixel scaling of a version: explicit config, else auto-detection, else `unit`.

    Args:
        config: the model's `preprocessing` section.
        recognition: what the loader recognised in the model (None when it cannot tell, e.g. a SavedModel).
    """
    if config.mode != "auto":
        return PreprocessingChoice(config, "config", "preprocessing.mode is set in the model config")
    if config.scale is not None:
        return PreprocessingChoice(config, "config", "preprocessing.scale is set in the model config")
    if recognition is None:
        return PreprocessingChoice(config, "default", "the model's layers cannot be read to recognise an architecture")
    first = recognition.preprocessed_by
    found = recognition.architectures
    if not found:
        if first is not None and first.class_name in RAW_PIXEL_LAYERS:
            reason = f"no Keras Applications architecture recognised; the model starts with a {first.class_name} layer ('{first.path}') that takes raw 0..255 pixels"
            return PreprocessingChoice(config.model_copy(update={"mode": "none"}), "auto", reason)
        return PreprocessingChoice(config, "default", "no Keras Applications architecture recognised")
    modes = {a.family.mode for a in found}
    if len(modes) > 1:
        shown = ", ".join(f"{a.family.name} ({a.evidence}): {a.family.mode}" for a in found)
        return PreprocessingChoice(
            config, "default", f"architectures that want different modes: {shown}; set preprocessing.mode"
        )
    architecture = found[0]
    family = architecture.family
    recognised = f"Keras Applications {family.name} recognised by {architecture.evidence}"
    if family.mode != "none" and first is not None:
        what = f"a {first.class_name} {'layer' if first.is_layer else 'op'} ('{first.path}')"
        reason = f"{recognised}, but the model preprocesses its own input first with {what}"
        return PreprocessingChoice(config.model_copy(update={"mode": "none"}), "auto", reason)
    reason = f"{recognised}; keras.applications.{family.module}.preprocess_input uses mode '{family.mode}'"
    return PreprocessingChoice(config.model_copy(update={"mode": family.mode}), "auto", reason)


def image_input(signature: Signature, config: PreprocessingConfig) -> TensorInfo | None:
    """Return the input that receives images: the configured one, else the first of rank 3 or 4."""
    if config.input is not None:
        for tensor in signature.inputs:
            if tensor.name == config.input:
                return tensor
        return None
    return next((t for t in signature.inputs if len(t.shape) in (3, 4) and t.dtype not in STRING_DTYPES), None)


@functools.lru_cache(maxsize=256)
def image_spec(signature: Signature, config: PreprocessingConfig) -> ImageSpec:
    """Derive how images are prepared for `signature`, from its shapes and the model's config.

    Raises:
        InvalidInput: the model has no input that can take images.
    """
    tensor = image_input(signature, config)
    if tensor is None:
        wanted = f"input '{config.input}'" if config.input else "an input of rank 3 or 4"
        raise InvalidInput(f"the model has no image input ({wanted}); send tensors as JSON instead")
    dims = tensor.shape[1:]  # drop the batch dimension
    channels_first = False
    keep_channel_axis = True
    height: int | None
    width: int | None
    channels: int | None
    if len(dims) == 2:  # (H, W): grayscale without a channel axis, e.g. MNIST (None, 28, 28)
        height, width = dims
        channels = 1
        keep_channel_axis = False
    elif dims[-1] in (1, 3, 4) or dims[0] not in (1, 3, 4):
        height, width, channels = dims
    else:  # (C, H, W)
        channels, height, width = dims
        channels_first = True
    if config.color_mode is not None:
        channels = CHANNELS_BY_MODE[config.color_mode]
    if channels not in PIL_MODE_BY_CHANNELS:
        channels = 3  # unknown channel count in the signature: RGB is the common case
    if config.size is not None:
        height, width = config.size
    dtype = tensor.dtype if tensor.dtype not in STRING_DTYPES else "float32"
    mode = config.mode if config.mode != "auto" else ""
    if mode in RGB_ONLY_MODES and channels != 3:
        raise InvalidInput(
            f"preprocessing mode '{mode}' needs RGB images, but input '{tensor.name}' takes {channels} channel(s)"
        )
    return ImageSpec(
        input=tensor.name,
        height=height,
        width=width,
        channels=channels,
        channels_first=channels_first,
        keep_channel_axis=keep_channel_axis,
        resize=config.resize,
        scale=config.scale or "unit",
        mean=tuple(config.mean),
        std=tuple(config.std),
        dtype=dtype,
        mode=mode,
    )


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Open an encoded image and check its size before any pixel is decoded.

    Raises:
        InvalidInput: the bytes are not an image Pillow can read.
        PayloadTooLarge: width x height exceeds `max_pixels` (or Pillow's decompression-bomb guard).
    """
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as err:
        raise PayloadTooLarge(f"image is too large to decode: {err}") from err
    except (UnidentifiedImageError, *UNREADABLE, *MALFORMED) as err:
        raise InvalidInput("cannot decode image: not a JPEG, PNG, GIF, BMP, WebP or TIFF file") from err
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels (MAX_IMAGE_PIXELS)"
        )
    return image


def decode_image(data: bytes, spec: ImageSpec, *, max_pixels: int) -> np.ndarray:
    """Decode one image into an uint8 array of shape (H, W, C) for `spec` (size may be the image's own).

    Raises:
        InvalidInput: not a readable image.
        PayloadTooLarge: the image has more pixels than allowed.
    """
    return _decode_opened(open_image(data, max_pixels=max_pixels), spec)


def _decode_opened(image: Image.Image, spec: ImageSpec) -> np.ndarray:
    """Decode an image `open_image` opened (and checked) into an uint8 array (H, W, C) for `spec`."""
    mode = PIL_MODE_BY_CHANNELS[spec.channels]
    try:
        if image.format == "JPEG" and spec.height and spec.width:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the target is much smaller. draft()
            # keeps both sides >= the requested size, so cropping and letterboxing still have pixels.
            image.draft("L" if mode == "L" else "RGB", (spec.width, spec.height))
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when there is nothing to turn
        if image.mode != mode:
            if image.mode in ("P", "LA", "PA", "RGBA") and mode in ("RGB", "L"):
                # Flatten transparency on black instead of exposing whatever colour hides under alpha=0.
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (0, 0, 0, 255))
                image = Image.alpha_composite(background, image)
            image = image.convert(mode)
        if spec.height and spec.width and image.size != (spec.width, spec.height):
            image = _resize(image, spec.width, spec.height, spec.resize)
        array = np.asarray(image, dtype=np.uint8)
    except Image.DecompressionBombError as err:
        raise PayloadTooLarge(f"image is too large to decode: {err}") from err
    except UNREADABLE as err:
        raise InvalidInput(f"cannot decode image: {_first_line(err)}") from err
    except MALFORMED as err:  # e.g. EXIF whose tags hold the wrong types: exif_transpose fails rewriting it
        raise InvalidInput(f"cannot decode image: {type(err).__name__}: {_first_line(err)}") from err
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    return array


def _first_line(err: Exception) -> str:
    """The first line of an error's text, without the server's paths (Pillow messages carry none, but be safe)."""
    return strip_paths(str(err).split("\n", 1)[0])


def _resize(image: Image.Image, width: int, height: int, how: str) -> Image.Image:
    """Resize to width x height: stretch, center-crop to the aspect ratio first, or letterbox."""
    if how == "crop":
        scale = max(width / image.width, height / image.height)
        # min/max: float rounding may put the box a hair outside the image, which Pillow refuses.
        crop_w, crop_h = min(image.width, width / scale), min(image.height, height / scale)
        left, top = max(0.0, (image.width - crop_w) / 2), max(0.0, (image.height - crop_h) / 2)
        return image.resize((width, height), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h))
    if how == "letterbox":
        scale = min(width / image.width, height / image.height)
        inner = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        resized = image.resize(inner, Image.Resampling.BILINEAR)
        canvas = Image.new(image.mode, (width, height))
        canvas.paste(resized, ((width - inner[0]) // 2, (height - inner[1]) // 2))
        return canvas
    return image.resize((width, height), Image.Resampling.BILINEAR)


def scale_pixels(pixels: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Scale an uint8 batch (N, H, W, C), RGB, as configured and cast it to the input's dtype."""
    dtype = np.dtype(spec.dtype)
    if not np.issubdtype(dtype, np.floating):
        return pixels.astype(dtype, copy=False)
    if spec.mode:
        return keras_preprocess(pixels, spec.mode, dtype)
    if spec.scale == "raw":
        return pixels.astype(dtype, copy=False)
    out = pixels.astype(dtype)
    if spec.scale == "unit":
        out *= dtype.type(1.0 / 255.0)
    elif spec.scale == "symmetric":
        out *= dtype.type(1.0 / 127.5)
        out -= dtype.type(1.0)
    else:  # mean_std
        out *= dtype.type(1.0 / 255.0)
        out -= np.asarray(spec.mean, dtype=dtype)
        out /= np.asarray(spec.std, dtype=dtype)
    return out


def keras_preprocess(pixels: np.ndarray, mode: str, dtype: np.dtype) -> np.ndarray:
    """Compute `keras.applications.<family>.preprocess_input` of RGB pixels (N, H, W, C), in `dtype`.

    The same operations in the same order as Keras' numpy path (`imagenet_utils._preprocess_numpy_input`,
    channels last), so the result is bit for bit Keras' own: caffe flips RGB to BGR and subtracts the
    ImageNet mean; tf divides by 127.5 and subtracts 1; torch divides by 255, subtracts the mean and
    divides by the standard deviation; none passes the 0..255 values through.
    """
    if mode == "none":
        return pixels.astype(dtype)
    if mode == "caffe":
        out = pixels[..., ::-1].astype(dtype)  # RGB -> BGR; astype makes it contiguous
        out -= np.asarray(CAFFE_MEAN_BGR, dtype=dtype)
        return out
    out = pixels.astype(dtype)
    if mode == "tf":
        out /= dtype.type(127.5)
        out -= dtype.type(1.0)
    else:  # torch
        out /= dtype.type(255.0)
        out -= np.asarray(TORCH_MEAN, dtype=dtype)
        out /= np.asarray(TORCH_STD, dtype=dtype)
    return out


def decode_images(
    images: Sequence[bytes], spec: ImageSpec, *, max_pixels: int, budget: DecodeBudget | None = None
) -> np.ndarray:
    """Decode several encoded images into one batch tensor for `spec`'s input.

    Every image is opened (headers only) and charged to `budget` before the first is decoded, so a request whose
    images together declare too many pixels costs no decoding; the budget's time is checked after each image.

    Raises:
        InvalidInput: an image cannot be decoded, or images of different sizes go to an input
            whose size is not fixed.
        PayloadTooLarge: an image has more pixels than allowed, or the request is over its budget.
    """
    budget = budget or DecodeBudget(max_pixels=None, max_seconds=None)
    opened = []
    for index, data in enumerate(images):
        try:
            image = open_image(data, max_pixels=max_pixels)
            budget.charge(image, data)
        except (InvalidInput, PayloadTooLarge) as err:
            if len(images) == 1:
                raise
            raise type(err)(f"image {index}: {err}") from err
        opened.append(image)
    arrays = []
    for index, image in enumerate(opened):
        try:
            arrays.append(_decode_opened(image, spec))
        except (InvalidInput, PayloadTooLarge) as err:
            if len(images) == 1:
                raise
            raise type(err)(f"image {index}: {err}") from err
        budget.check_time()
        budget.check_client(index + 1, len(opened))
    if len({a.shape for a in arrays}) > 1:
        raise InvalidInput(
            f"images of different sizes for input '{spec.input}', whose size is not fixed; "
            "send one image per request or set preprocessing.size in the model config"
        )
    batch = np.stack(arrays) if len(arrays) > 1 else arrays[0][np.newaxis]
    # Scale while channels are last (per-channel means and BGR order index the last axis), then lay out.
    batch = scale_pixels(batch, spec)
    if not spec.keep_channel_axis:
        batch = batch[..., 0]
    elif spec.channels_first:
        batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    return batch


def is_encoded(array: np.ndarray) -> bool:
    """Tell whether a request array holds encoded bytes (b64 values) rather than numbers."""
    return array.dtype == object or array.dtype.kind == "S"


def check_rows(count: int, max_rows: int, what: str = "rows") -> None:
    """The rule on a request's rows (`what`: rows, images, examples), before anything is decoded, cast or merged.

    Raises:
        PayloadTooLarge: more than `max_rows` (MAX_IMAGES_PER_REQUEST).
    """
    if count > max_rows:
        raise PayloadTooLarge(f"{count} {what} exceed the limit of {max_rows} per request (MAX_IMAGES_PER_REQUEST)")


def to_model_inputs(
    inputs: Mapping[str, np.ndarray],
    images: Sequence[bytes],
    signature: Signature,
    config: PreprocessingConfig,
    *,
    max_pixels: int,
    max_rows: int,
    max_request_pixels: int | None = None,
    max_decode_s: float | None = None,
    client_gone: Callable[[], bool] | None = None,
) -> ModelInputs:
    """Turn a request's arrays and images into exactly the tensors `signature` takes: the one boundary.

    Every request rule on inputs is checked here, once: names, rows (at least one, equal across inputs, at
    most `max_rows`, counted before anything is decoded or cast), dtypes and row shapes. What comes out is a
    `ModelInputs` the batcher, the runner and the model call trust. An `UNNAMED` array goes to the only input.
    `images` (multipart files, raw bodies) go to the image input; bytes sent to a numeric input of rank 3 or 4
    are decoded as images too.

    Raises:
        InvalidInput: unknown or missing inputs, undecodable images, unequal row counts; the rows of an
            unbatched signature's input do not have its shape.
        InvalidTensor: no row axis, no rows, values that do not fit an input's dtype or shape.
        PayloadTooLarge: more rows than `max_rows`, too many pixels in an image, or the request's images over
            `max_request_pixels` or `max_decode_s` of CPU (one `DecodeBudget` for all its image inputs; None: no limit).
        ClientGone: `client_gone()` turned true between two images.
    """
    named: dict[str, np.ndarray | Sequence[bytes]] = dict(inputs)
    if UNNAMED in named:
        if len(signature.inputs) != 1:
            names = ", ".join(t.name for t in signature.inputs)
            raise InvalidInput(f"the model has {len(signature.inputs)} inputs ({names}); name each input")
        named[signature.inputs[0].name] = named.pop(UNNAMED)
    if images:
        named[image_spec(signature, config).input] = images
    expected = {t.name for t in signature.inputs}
    unknown = sorted(set(named) - expected)
    if unknown:
        raise InvalidInput(f"unknown input '{unknown[0]}'; the model's inputs are: {', '.join(sorted(expected))}")
    missing = [t.name for t in signature.inputs if t.name not in named]
    if missing:
        raise InvalidInput(f"missing input '{missing[0]}'; the model's inputs are: {', '.join(sorted(expected))}")
    # Rows first, from the shapes alone: nothing is decoded or cast for a request over its limits.
    rows = 0
    for tensor in signature.inputs:
        value = named[tensor.name]
        if isinstance(value, np.ndarray) and not (is_encoded(value) and tensor.dtype not in STRING_DTYPES):
            if value.ndim == 0:
                raise InvalidTensor(f"input '{tensor.name}' needs a batch dimension, got a scalar")
            count, what = value.shape[0], "rows"
        else:
            if isinstance(value, np.ndarray) and len(tensor.shape) not in (3, 4):
                raise InvalidTensor(
                    f"input '{tensor.name}' takes {tensor.dtype} values of shape {list(tensor.shape)}, not encoded bytes"
                )
            count, what = (len(value) if not isinstance(value, np.ndarray) else value.size), "images"
        check_rows(count, max_rows, what)
        if rows and count != rows:
            raise InvalidInput(f"inputs have different batch sizes ({rows} and {count} for '{tensor.name}')")
        if count == 0:
            raise InvalidTensor(f"input '{tensor.name}' is empty")
        rows = count
    budget = DecodeBudget(max_pixels=max_request_pixels, max_seconds=max_decode_s, client_gone=client_gone)
    # A fixed-batch signature (shape (1,) ...) still has rows on dimension 0; the runner splits them.
    has_batch = signature.batched or signature.fixed_batch_size is not None
    result: dict[str, np.ndarray] = {}
    for tensor in signature.inputs:
        value = named[tensor.name]
        if not isinstance(value, np.ndarray):  # images sent as files: straight to decoding, never packed
            array = decode_images(value, image_spec(signature, config), max_pixels=max_pixels, budget=budget)
        elif is_encoded(value) and tensor.dtype not in STRING_DTYPES:
            spec = image_spec(signature, config.model_copy(update={"input": tensor.name}))
            array = decode_images([bytes(v) for v in value.reshape(-1)], spec, max_pixels=max_pixels, budget=budget)
        else:
            array = cast_tensor(value, tensor)
        if has_batch:
            check_shape(array, tensor, batched=True)
        else:
            _check_row_shape(array, tensor)
        result[tensor.name] = array
    return ModelInputs(MappingProxyType(result), rows)


def _check_row_shape(array: np.ndarray, tensor: TensorInfo) -> None:
    """Check the rows of an unbatched signature's input (called once per row) against the input's shape."""
    expected, row_shape = tensor.shape, array.shape[1:]
    if not expected and tensor.unknown_rank:
        return
    if len(row_shape) != len(expected) or any(e is not None and e != d for e, d in zip(expected, row_shape)):
        raise InvalidInput(
            f"input '{tensor.name}' has rows of shape {tuple(row_shape)}; the model expects "
            f"{tuple('?' if d is None else d for d in expected)}"
        )


def cast_tensor(array: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """Cast request values to `tensor`'s dtype, refusing lossy or meaningless casts.

    Raises:
        InvalidTensor: strings for a numeric input, numbers for a string input, fractions or
            out-of-range values for an integer input, or non-boolean values for a bool input.
    """
    if tensor.dtype in STRING_DTYPES:
        if array.dtype == object or array.dtype.kind in "SU":
            return array.astype(object, copy=False)
        raise InvalidTensor(f"input '{tensor.name}' takes strings, got {_kind(array)}")
    if array.dtype == object or array.dtype.kind in "SU":
        raise InvalidTensor(f"input '{tensor.name}' takes {tensor.dtype} values, got {_kind(array)}")
    target = np.dtype(tensor.dtype)
    if array.dtype == target:
        return array
    if target.kind == "b":
        if array.dtype.kind != "b" and not np.isin(array, (0, 1)).all():
            raise InvalidTensor(f"input '{tensor.name}' takes booleans, got {_kind(array)}")
        return array.astype(bool)
    if target.kind in "iu":
        if array.dtype.kind == "f":
            if not np.isfinite(array).all() or (array != np.round(array)).any():
                raise InvalidTensor(f"input '{tensor.name}' takes {tensor.dtype} values, got fractions")
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise InvalidTensor(f"input '{tensor.name}' takes {tensor.dtype} values, got values out of range")
    return array.astype(target)


def _kind(array: np.ndarray) -> str:
    if array.dtype == object or array.dtype.kind in "SU":
        return "strings or bytes"
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}.get(array.dtype.kind, str(array.dtype))


def check_shape(array: np.ndarray, tensor: TensorInfo, *, batched: bool) -> None:
    """Check `array` against `tensor.shape` (None matches any size; the batch dimension when batched).

    Raises:
        InvalidTensor: the rank or a fixed dimension differs.
    """
    expected = tensor.shape
    if not expected and tensor.dtype in STRING_DTYPES:
        return  # unknown rank (e.g. a serialized tf.Example input)
    actual = array.shape
    if len(actual) != len(expected) or any(
        e is not None and e != a and not (batched and i == 0) for i, (e, a) in enumerate(zip(expected, actual))
    ):
        shown = ["None" if d is None else str(d) for d in expected]
        raise InvalidTensor(
            f"input '{tensor.name}' has shape [{', '.join(shown)}], got [{', '.join(map(str, actual))}]"
        )
