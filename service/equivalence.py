"""The equivalence gate: do two backends give the same answers for one signature?

Before a version may serve on a compiled backend (`service.backends`), the same inputs go through
TensorFlow (the reference) and the candidate, and this module decides whether the candidate's
outputs are close enough: max |Δ| relative to the reference output's range within a tolerance per
precision, and, for classifier-like outputs, the same top-1 class. It builds the seeded gate inputs,
reads the real sample inputs a model config names (`gate.inputs`: images through the version's own
image preprocessing, exactly as `/predict` gets them, `.npy` and `.npz` arrays) and compares outputs;
it never calls a model and imports neither TensorFlow nor OpenVINO.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service import preprocessing
from service.errors import ServingError, strip_paths
from service.formats import walk_folder
from service.model_config import PreprocessingConfig
from service.servable import Signature, TensorInfo

DEFAULT_TOLERANCE = {"fp32": 1e-5, "bf16": 5e-2}
"""Largest max |Δ| allowed, relative to the range of the reference output, per precision."""
MIN_TOP1_AGREEMENT = {"fp32": 1.0, "bf16": 0.0}
"""Share of rows whose top-1 class must match on classifier-like outputs, per precision. bf16 only
reports it: random gate inputs give near-ties whose order bf16's 8-bit mantissa may swap."""
VARIABLE_DIM = 8
"""Size given to variable non-batch dimensions in the seeded inputs (warm-up inputs use 1)."""
GATE_INPUTS_MAX_FILES = 256
"""Most files a `gate.inputs` folder may hold (subfolders included); more is an error, not a silent cut."""
GATE_INPUTS_MAX_BYTES = 64 << 20
"""Most bytes its files may hold together on disk (a `.npz` counts its members' uncompressed sizes)."""
GATE_INPUTS_MAX_ROWS = 1024
"""Most rows its files may hold together (an image is one row; a `.npy` or `.npz` array one or a batch)."""
NUMPY_SUFFIXES = (".npy", ".npz")


@dataclass(frozen=True, slots=True)
class Comparison:
    """What the gate measured on one set of inputs, and whether it passed."""

    passed: bool
    rows: int
    max_abs_diff: float
    max_rel_diff: float
    """max |Δ| divided by the reference output's range (its largest |value| when the range is 0)."""
    tolerance: float
    top1_agreement: float | None
    """Share of rows with the same top-1 class over classifier-like outputs; None when there are none."""
    reason: str = ""
    """Why it failed; '' when it passed."""


class GateInputsError(ValueError):
    """A `gate.inputs` folder cannot be read, or one of its files does not fit the signature (the message names it)."""


@dataclass(frozen=True, slots=True)
class GateInputs:
    """Where a version's real sample inputs are, and how its images are prepared (as for `/predict`)."""

    folder: Path
    shown: str
    """The folder as the model config names it (messages and status views never show the server's paths)."""
    preprocessing: PreprocessingConfig
    """The version's image preprocessing, as chosen at load (`preprocessing.choose`)."""
    max_image_pixels: int
    """MAX_IMAGE_PIXELS: the same limit a request's image gets."""


def seeded_inputs(signature: Signature, *, samples: int, chunk: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Build `samples` seeded rows for `signature`'s inputs, in chunks of at most `chunk` rows.

    Float inputs alternate between uniform [0, 1) chunks (images scaled to unit range) and standard
    normal chunks; integer inputs get 0 or 1 (valid indices of any embedding); booleans are random.
    Variable non-batch dimensions get `VARIABLE_DIM`.
    """
    rng = np.random.default_rng(seed)
    chunks: list[dict[str, np.ndarray]] = []
    done = 0
    while done < samples:
        rows = min(chunk, samples - done)
        arrays: dict[str, np.ndarray] = {}
        for tensor in signature.inputs:
            shape = (rows, *(VARIABLE_DIM if d is None else d for d in tensor.shape[1:]))
            dtype = np.dtype(tensor.dtype)
            values: np.ndarray
            if dtype.kind == "f":
                values = rng.random(shape) if len(chunks) % 2 == 0 else rng.standard_normal(shape)
            elif dtype.kind == "b":
                values = rng.random(shape) < 0.5
            else:
                values = rng.integers(0, 2, size=shape)
            arrays[tensor.name] = values.astype(dtype)
        chunks.append(arrays)
        done += rows
    return chunks


def read_gate_inputs(inputs: GateInputs, signature: Signature, *, chunk: int) -> list[dict[str, np.ndarray]]:
    """Read every file of `inputs.folder` as the signature's inputs, in chunks of at most `chunk` rows.

    Files are read in path order, hidden names (`.x`) skipped, subfolders walked. An image (any format
    `preprocessing.IMAGE_FORMATS` covers) goes to the image input through `preprocessing.to_model_inputs`,
    the path of a `/predict` upload (decode, resize, scale, cast); a `.npy` array is one row or a batch
    for a single-input signature; a `.npz` maps every input name to one row or a batch. Consecutive
    rows of equal shapes share a chunk.

    Raises:
        GateInputsError: the folder is missing or empty, holds more than `GATE_INPUTS_MAX_FILES` files,
            `GATE_INPUTS_MAX_BYTES` bytes or `GATE_INPUTS_MAX_ROWS` rows, holds a FIFO, socket or device,
            or a file is unreadable or does not fit the signature (names, dtypes, shapes).
    """
    folder = inputs.folder
    if not folder.is_dir():
        raise GateInputsError("no such folder" if not folder.exists() else "not a folder")
    walk = walk_folder(folder, skip=lambda name: name.startswith("."))
    if walk.special:
        file, kind = walk.special[0]
        raise GateInputsError(f"{_relative(file, folder)}: {kind}; only regular files are read")
    files = sorted(walk.files)
    if not files:
        raise GateInputsError("holds no file (images, .npy or .npz)")
    if len(files) > GATE_INPUTS_MAX_FILES:
        raise GateInputsError(f"holds {len(files)} files, over the limit of {GATE_INPUTS_MAX_FILES}")
    try:
        sizes = {file: os.stat(file).st_size for file in files}
    except OSError as err:
        raise GateInputsError(f"unreadable: {strip_paths(str(err))}") from err
    if sum(sizes.values()) > GATE_INPUTS_MAX_BYTES:
        raise GateInputsError(
            f"holds {sum(sizes.values())} bytes, over the limit of {GATE_INPUTS_MAX_BYTES} ({GATE_INPUTS_MAX_BYTES >> 20} MiB)"
        )
    batches: list[dict[str, np.ndarray]] = []
    rows = 0
    for file in files:
        name = _relative(file, folder)
        try:
            with open(file, "rb") as handle:
                data = handle.read(sizes[file] + 1)
            if len(data) > sizes[file]:
                raise GateInputsError(f"{name}: changed while it was read")
            batch = _read_file(data, file.suffix.lower(), name, signature, inputs, rows)
        except GateInputsError:
            raise
        except ServingError as err:  # the same message a request would get
            raise GateInputsError(f"{name}: {err}") from err
        except (OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile) as err:
            # RuntimeError: an encrypted .npz member; NotImplementedError: a compression zipfile lacks
            first = (strip_paths(str(err)).splitlines() or [type(err).__name__])[0]
            raise GateInputsError(f"{name}: unreadable: {first[:200]}") from err
        rows += len(next(iter(batch.values())))
        batches.append(batch)
    return _chunked(batches, chunk)


def _relative(file: Path, folder: Path) -> str:
    try:
        return str(file.relative_to(folder))
    except ValueError:
        return file.name


def _read_file(
    data: bytes, suffix: str, name: str, signature: Signature, inputs: GateInputs, rows_before: int
) -> dict[str, np.ndarray]:
    """One file's rows, checked and cast exactly as a request's (`preprocessing.to_model_inputs`)."""
    arrays: dict[str, np.ndarray] = {}
    images: list[bytes] = []
    if suffix == ".npy":
        if len(signature.inputs) != 1:
            names = ", ".join(t.name for t in signature.inputs)
            raise GateInputsError(
                f"{name}: a .npy file feeds a model with one input; this one has {len(signature.inputs)} "
                f"({names}): use a .npz file with one array per input"
            )
        arrays[signature.inputs[0].name] = _load_npy(data, name)
    elif suffix == ".npz":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            declared = sum(info.file_size for info in members)
            if declared > GATE_INPUTS_MAX_BYTES:
                raise GateInputsError(
                    f"{name}: its arrays hold {declared} bytes uncompressed, over the limit of {GATE_INPUTS_MAX_BYTES}"
                )
            for info in members:  # zipfile never expands a member beyond its declared size
                key = info.filename.removesuffix(".npy")
                arrays[key] = _load_npy(archive.read(info), f"{name}: array '{key}'")
    else:
        images = [data]
    tensors = {t.name: t for t in signature.inputs}
    arrays = {key: _as_batch(value, tensors.get(key)) for key, value in arrays.items()}
    count = len(images) or max((len(a) if a.ndim else 1 for a in arrays.values()), default=0)
    if rows_before + count > GATE_INPUTS_MAX_ROWS:
        raise GateInputsError(f"{name}: the files hold more than {GATE_INPUTS_MAX_ROWS} rows together")
    checked = preprocessing.to_model_inputs(
        arrays,
        images,
        signature,
        inputs.preprocessing,
        max_pixels=inputs.max_image_pixels,
        max_rows=GATE_INPUTS_MAX_ROWS,
    )
    return dict(checked.arrays)


def _load_npy(data: bytes, name: str) -> np.ndarray:
    """An array from `.npy` bytes; its header's shape is checked against the bytes before anything is allocated."""
    stream = io.BytesIO(data)
    major, _ = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(stream)
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if dtype.hasobject or needed > len(data) - stream.tell():
        what = "Python objects" if dtype.hasobject else f"{needed} bytes of values in {len(data)} bytes"
        raise GateInputsError(f"{name}: a .npy header that declares {what}")
    return np.load(io.BytesIO(data), allow_pickle=False)


def _as_batch(array: np.ndarray, tensor: TensorInfo | None) -> np.ndarray:
    """`array` with a row axis: one row (a rank below the input's) gets one; a batch is kept as it is."""
    if tensor is not None and array.ndim == len(tensor.shape) - 1:
        return array[np.newaxis]
    return array


def _chunked(batches: list[dict[str, np.ndarray]], size: int) -> list[dict[str, np.ndarray]]:
    """Merge consecutive batches of equal row shapes and dtypes, split into chunks of at most `size` rows."""
    chunks: list[dict[str, np.ndarray]] = []
    pending: list[dict[str, np.ndarray]] = []
    pending_rows = 0

    def flush() -> None:
        nonlocal pending_rows
        if pending:
            chunks.append({key: np.concatenate([p[key] for p in pending]) for key in pending[0]})
            pending.clear()
            pending_rows = 0

    def key(batch: dict[str, np.ndarray]) -> tuple:
        return tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in batch.items()))

    for batch in batches:
        if pending and key(pending[0]) != key(batch):
            flush()
        rows = len(next(iter(batch.values())))
        start = 0
        while start < rows:
            take = min(size - pending_rows, rows - start)
            pending.append({k: v[start : start + take] for k, v in batch.items()})
            pending_rows += take
            start += take
            if pending_rows == size:
                flush()
    flush()
    return chunks


def compare(
    reference: list[dict[str, np.ndarray]],
    candidate: list[dict[str, np.ndarray]],
    *,
    precision: str,
    tolerance: float | None = None,
) -> Comparison:
    """Compare the outputs of the same input chunks from the reference and the candidate backend.

    Args:
        reference: per chunk, output name -> array (TensorFlow's answers).
        candidate: the same chunks' outputs from the candidate backend.
        precision: `fp32` or `bf16`: picks the default tolerance and the top-1 agreement required.
        tolerance: overrides `DEFAULT_TOLERANCE[precision]` (relative to each output's range).
    """
    limit = DEFAULT_TOLERANCE[precision] if tolerance is None else tolerance
    rows = sum(next(iter(chunk.values())).shape[0] for chunk in reference if chunk)
    max_abs = max_rel = 0.0
    agree = compared = 0
    problems: list[str] = []
    names = list(reference[0]) if reference else []
    for name in names:
        ref = np.concatenate(
            [np.asarray(chunk[name], dtype=np.float64).reshape(len(chunk[name]), -1) for chunk in reference]
        )
        try:
            got = np.concatenate(
                [np.asarray(chunk[name], dtype=np.float64).reshape(len(chunk[name]), -1) for chunk in candidate]
            )
        except (KeyError, ValueError) as err:
            return Comparison(
                False, rows, float("inf"), float("inf"), limit, None, f"output '{name}' differs in shape: {err}"
            )
        if got.shape != ref.shape:
            return Comparison(
                False,
                rows,
                float("inf"),
                float("inf"),
                limit,
                None,
                f"output '{name}' has shape {got.shape}, not {ref.shape}",
            )
        if not np.array_equal(np.isfinite(ref), np.isfinite(got)):
            problems.append(f"output '{name}' is not finite where the reference is (or the reverse)")
            max_abs = max_rel = float("inf")
            continue
        finite = np.isfinite(ref)
        diff = float(np.max(np.abs(ref[finite] - got[finite]))) if finite.any() else 0.0
        span = float(np.ptp(ref[finite])) if finite.any() else 0.0
        scale = span if span > 0 else max(float(np.max(np.abs(ref[finite]))) if finite.any() else 0.0, 1e-12)
        max_abs, max_rel = max(max_abs, diff), max(max_rel, diff / scale)
        if diff / scale > limit:
            problems.append(f"output '{name}': max |Δ| {diff:.3g} is {diff / scale:.3g} of its range, over {limit:g}")
        if _classifier_like(ref):
            agree += int(np.sum(np.argmax(ref, axis=1) == np.argmax(got, axis=1)))
            compared += ref.shape[0]
    top1 = agree / compared if compared else None
    if top1 is not None and top1 < MIN_TOP1_AGREEMENT[precision]:
        problems.append(f"top-1 class differs on {compared - agree} of {compared} rows")
    return Comparison(not problems, rows, max_abs, max_rel, limit, top1, "; ".join(problems))


def _classifier_like(values: np.ndarray) -> bool:
    """Rows of two or more non-negative scores summing to 1 (a softmax output)."""
    if values.ndim != 2 or values.shape[1] < 2 or not np.all(np.isfinite(values)):
        return False
    return bool(np.all(values >= 0) and np.allclose(values.sum(axis=1), 1.0, atol=1e-3))
