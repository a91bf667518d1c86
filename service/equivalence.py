"""The equivalence gate: do two backends give the same answers for one signature?

Before a version may serve on a compiled backend (`service.backends`), the same inputs go through
TensorFlow (the reference) and the candidate, and this module decides whether the candidate's
outputs are close enough: max |Δ| relative to the reference output's range within a tolerance per
precision, and, for classifier-like outputs, the same top-1 class. It builds the seeded gate inputs
and compares outputs; it never calls a model and imports neither TensorFlow nor OpenVINO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.servable import Signature

DEFAULT_TOLERANCE = {"fp32": 1e-5, "bf16": 5e-2}
"""Largest max |Δ| allowed, relative to the range of the reference output, per precision."""
MIN_TOP1_AGREEMENT = {"fp32": 1.0, "bf16": 0.0}
"""Share of rows whose top-1 class must match on classifier-like outputs, per precision. bf16 only
reports it: random gate inputs give near-ties whose order bf16's 8-bit mantissa may swap."""
VARIABLE_DIM = 8
"""Size given to variable non-batch dimensions in the seeded inputs (warm-up inputs use 1)."""


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
