"""ONNX Runtime beside OpenVINO: which converts more of our models, passes the gate, and runs faster?

Issue 19 asks to choose the compiled backend by measurement. The service ships OpenVINO
(`service.backends`); this script measures the alternative, tf2onnx + ONNX Runtime, on the same
models, the same way. The converter and runtime are not in the pinned requirements; install them
beside the virtualenv, without touching it (their other requirements, numpy, protobuf, flatbuffers,
packaging, requests and ml_dtypes, are already there), and point PYTHONPATH at them:

    .venv/bin/pip install --target /work/onnx-deps --no-deps tf2onnx==1.17.0 onnx==1.23.2 onnxruntime==1.32.0
    PYTHONPATH=/work/onnx-deps .venv/bin/python bench/onnx_compare.py --corpus ../shared/corpus --out bench-onnx.md

Per model (every artifact `bench/backends.py` covers, the default digits model, and the benchmark's
small CNN and MobileNetV2 with random weights, the latter also without its softmax): OpenVINO fp32
exactly as a worker chooses it (`service.backends.choose`: the service's conversion rules,
conversion, gate); ONNX Runtime on the same traced function OpenVINO converts (the Keras model
traced over its serving signature, or the SavedModel's signature function), converted by
`tf2onnx.convert.from_function` after the same service rules (`_check_supported`), opened with one
intra- and one inter-op thread, and put through the same equivalence gate (`service.backends._gate`: warm-up zeros and 256 seeded rows,
fp32 tolerance). Engines that pass their gate are timed on the same seeded inputs, one thread
each, TensorFlow / OpenVINO / ONNX Runtime in turn, median of repeated calls (bench/backends.py's
timing). The numbers are noisy on a shared machine; read the ratios within one row.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, beside this script

INSTALL = ".venv/bin/pip install --target /work/onnx-deps --no-deps tf2onnx==1.17.0 onnx==1.23.2 onnxruntime==1.32.0"
try:
    import onnxruntime as ort
    import tf2onnx
except ImportError as missing:  # not in the pinned requirements: say how to get them
    raise SystemExit(
        f"bench/onnx_compare.py needs tf2onnx, onnx and onnxruntime ({missing}); install them beside the "
        f"virtualenv and run with PYTHONPATH:\n    {INSTALL}\n"
        "    PYTHONPATH=/work/onnx-deps .venv/bin/python bench/onnx_compare.py --corpus ../shared/corpus"
    ) from None

import backends as bench  # noqa: E402 - bench/backends.py: sets TensorFlow's pools to one thread first
import openvino  # noqa: E402
import tensorflow as tf  # noqa: E402
from benchmark import small_cnn  # noqa: E402

from service import backends, default_model  # noqa: E402
from service.loader import LoadedModel, Loader  # noqa: E402
from service.model_config import ModelConfig  # noqa: E402

OPSET = 17
DIGITS, SMALL_CNN, MOBILENET = "default digits", "bench small CNN", "bench MobileNetV2 224"
MOBILENET_LOGITS = "bench MobileNetV2 224 (logits)"
"""The benchmark's MobileNetV2 without its softmax: with random weights its pooled features are about
1e-11, so the softmax answers exactly 1/1000 everywhere and its gate compares constants; the logits
are not constant, so their gate says something."""


class _Traced:
    """What `tf2onnx.convert.from_function` asks of a tf.function, for an already traced concrete one."""

    def __init__(self, concrete: Any) -> None:
        self.concrete = concrete

    def get_concrete_function(self, *_: Any) -> Any:
        return self.concrete


class _Errors(logging.Handler):
    """tf2onnx's own error lines (an op it cannot convert is logged, and left in the graph)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage().splitlines()[0])


def onnx_call(loaded: LoadedModel, config: ModelConfig) -> backends.Call:
    """`loaded`'s default signature converted by tf2onnx and opened in ONNX Runtime (one thread).

    Raises:
        backends.ConversionFailed: a service rule refuses it, or tf2onnx or ONNX Runtime cannot take it.
    """
    backends._check_supported(loaded, "/CPU:0", config.extra_outputs)
    signature = loaded.signature
    function = backends._signature_function(loaded)
    errors = _Errors()
    logging.getLogger("tf2onnx").addHandler(errors)
    try:
        concrete = function if function is not None else backends._keras_function(loaded)
        proto, _ = tf2onnx.convert.from_function(_Traced(concrete), input_signature=[], opset=OPSET)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - a report row: say what the converter said first
        first = errors.lines[0] if errors.lines else backends._why(err)
        raise backends.ConversionFailed(first[:200]) from err
    finally:
        logging.getLogger("tf2onnx").removeHandler(errors)
    feeds = [i.name for i in session.get_inputs()]
    wanted = [backends._spec_of(concrete, t.name) if function is not None else t.name for t in signature.inputs]
    if sorted(n.split(":")[0] for n in wanted) != sorted(feeds):
        raise backends.ConversionFailed(f"the ONNX model's inputs are {feeds}, the signature's {wanted}")
    produced = [o.name for o in session.get_outputs()]
    fetches = [
        t.name if t.name in produced else concrete.outputs[index].name for index, t in enumerate(signature.outputs)
    ]
    outputs = [(t.name, np.dtype(t.dtype)) for t in signature.outputs]
    feed_of = dict(zip((t.name for t in signature.inputs), (n.split(":")[0] for n in wanted)))

    def call(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        answers = session.run(fetches, {feed_of[name]: np.ascontiguousarray(value) for name, value in values.items()})
        return {name: np.asarray(value).astype(dtype, copy=False) for (name, dtype), value in zip(outputs, answers)}

    return call


def measure(loader: Loader, name: str, path: Path, config: ModelConfig | None, cache: Path, budget_s: float) -> str:
    """One table row: OpenVINO as the service chooses it, ONNX Runtime the same way, then both timed beside TF."""
    config = config or ModelConfig()
    try:
        tf_loaded = loader.load(path, config)
    except Exception as err:  # noqa: BLE001 - a report row, whatever failed
        return f"| {name} | - | load failed: {cell(str(err)[:80])} | - | - | - | - |"
    ov_loaded = loader.load(path, config)
    report = bench.choose(ov_loaded, name, config.model_copy(update={"backend": "openvino"}), cache)
    if report.backend == "openvino":
        ov = f"passed, {report.max_abs_diff:.2g}"
    elif report.gate_rows:
        ov = f"failed, {report.max_abs_diff:.2g} ({report.max_rel_diff:.2g} of the range)"
    else:
        ov = "not converted"
    calls = {"TF": bench.default_call(tf_loaded)}
    if report.backend == "openvino":
        calls["OpenVINO"] = bench.default_call(ov_loaded)
    started = time.monotonic()
    try:
        candidate = onnx_call(tf_loaded, config)
        convert_s = time.monotonic() - started
        comparison, _ = backends._gate(
            tf_loaded, candidate, config, precision="fp32", allowed_batch_sizes=bench.ALLOWED
        )
    except backends.ConversionFailed as err:
        converted, gate = "no: " + cell(str(err)), "-"
    else:
        converted = f"yes ({convert_s:.1f} s)"
        rel = f"{comparison.max_abs_diff:.2g} ({comparison.max_rel_diff:.2g})"
        gate = f"passed, {rel}" if comparison.passed else f"failed, {rel}: " + cell(comparison.reason)
        if comparison.passed:
            calls["ORT"] = candidate
    cells = ["-", "-"]
    if len(calls) > 1:
        rates = bench.speed(tf_loaded.signature, list(calls.values()), budget_s)
        cells = [rates_cell(dict(zip(calls, rates[batch]))) for batch in (1, 8)]
    tf_loaded.close()
    ov_loaded.close()
    row = f"| {name} | {tf_loaded.loader} | {converted} | {gate} | {ov} | {cells[0]} | {cells[1]} |"
    print(row, flush=True)
    return row


def cell(text: str) -> str:
    """`text` inside a Markdown table cell."""
    return text.replace("|", "\\|")


def rates_cell(rates: dict[str, float]) -> str:
    """`TF / OpenVINO / ORT` rows/s ('-' where not timed), and ORT's ratio to OpenVINO (else to TF)."""
    shown = " / ".join(f"{rates[e]:,.0f}" if e in rates else "-" for e in ("TF", "OpenVINO", "ORT"))
    if "ORT" not in rates:
        return shown
    versus = "OpenVINO" if "OpenVINO" in rates else "TF"
    return f"{shown} (ORT {rates['ORT'] / rates[versus]:.2f}× {versus})"


def extra_models(wanted: Callable[[str], bool], cache: Path, budget_s: float) -> list[str]:
    """The default digits model (trained as `make run` trains it) and the benchmark's two models."""
    import keras

    folder = Path(tempfile.mkdtemp(prefix="bench-onnx-models-"))
    rows = []
    if wanted(DIGITS):
        path, _ = default_model.create_default_model(folder)
        rows.append(measure(bench.loader_for(folder), DIGITS, path, default_model.model_config(), cache, budget_s))
    keras.utils.set_random_seed(0)
    mobilenet = keras.applications.MobileNetV2
    built = {
        SMALL_CNN: small_cnn,
        MOBILENET: lambda: mobilenet(weights=None, input_shape=(224, 224, 3), classes=1000),
        MOBILENET_LOGITS: lambda: mobilenet(weights=None, input_shape=(224, 224, 3), classifier_activation=None),
    }
    loader = bench.loader_for(folder)
    for name, build in built.items():
        if wanted(name):
            path = folder / (re.sub(r"\W+", "_", name) + ".keras")
            build().save(path)
            rows.append(measure(loader, name, path, None, cache, budget_s))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="the model corpus folder (../shared/corpus)")
    parser.add_argument("--no-digits", action="store_true", help="skip training the default digits model")
    parser.add_argument("--only", help="comma-separated model names (corpus names or the extra ones) to run")
    parser.add_argument("--budget-s", type=float, default=0.3, help="seconds of calls per timing (x3, in turn)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args()
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    from tests.test_corpus import ARTIFACTS

    cache = Path(tempfile.mkdtemp(prefix="bench-onnx-cache-"))
    lines = [
        f"TensorFlow {tf.__version__}, OpenVINO {openvino.get_version()}, tf2onnx {tf2onnx.__version__} "
        f"(opset {OPSET}), ONNX Runtime {ort.__version__}; one thread each; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; shared 2-core machine, noisy.",
        "",
        "| model | loader | ONNX Runtime: converted (tf2onnx time) | ONNX Runtime gate (fp32), max \\|Δ\\| (rel.) "
        "| OpenVINO gate, max \\|Δ\\| | batch 1 rows/s: TF / OpenVINO / ORT | batch 8 rows/s: TF / OpenVINO / ORT |",
        "|---|---|---|---|---|---|---|",
    ]
    only = set(args.only.split(",")) if args.only else None

    def wanted(name: str) -> bool:
        return (only is None or name in only) and not (args.no_digits and name == DIGITS)

    if args.corpus:
        loader = bench.corpus_loader()
        for name, artifact in ARTIFACTS.items():
            if wanted(name):
                lines.append(measure(loader, name, args.corpus / artifact.path, artifact.config, cache, args.budget_s))
    lines += extra_models(wanted, cache, args.budget_s)
    return bench.publish([*lines, ""], args.out)


if __name__ == "__main__":
    raise SystemExit(main())
