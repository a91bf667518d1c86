"""ONNX Runtime beside OpenVINO: which converts more of our models, passes the gate, and runs faster?

Issue 19 asks to choose the compiled backend by measurement. The service ships OpenVINO
and ONNX Runtime (`backend: onnxruntime`, tf2onnx + ONNX Runtime, both pinned in requirements.txt);
this script measures both on the same models, the same way:

    .venv/bin/python bench/onnx_compare.py --corpus ../shared/corpus --out bench-onnx.md

Per model (every artifact `bench/backends.py` covers, the default digits model, and the benchmark's
small CNN and MobileNetV2 with random weights, the latter also without its softmax): OpenVINO fp32
and ONNX Runtime each exactly as a worker chooses them (`service.backends.choose` with one thread:
the service's conversion rules, the same traced function converted, the equivalence gate's warm-up
zeros and 256 seeded rows at the fp32 tolerance). Engines that pass their gate are timed on the same seeded inputs, one thread
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, beside this script

import backends as bench  # noqa: E402 - bench/backends.py: sets TensorFlow's pools to one thread first
import onnxruntime as ort  # noqa: E402
import openvino  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
from benchmark import small_cnn  # noqa: E402

from service import backends, default_model  # noqa: E402
from service.loader import Loader  # noqa: E402
from service.model_config import ModelConfig  # noqa: E402

OPSET = backends.ONNX_OPSET
DIGITS, SMALL_CNN, MOBILENET = "default digits", "bench small CNN", "bench MobileNetV2 224"
MOBILENET_LOGITS = "bench MobileNetV2 224 (logits)"
"""The benchmark's MobileNetV2 without its softmax: with random weights its pooled features are about
1e-11, so the softmax answers exactly 1/1000 everywhere and its gate compares constants; the logits
are not constant, so their gate says something."""


def measure(loader: Loader, name: str, path: Path, config: ModelConfig | None, cache: Path, budget_s: float) -> str:
    """One table row: OpenVINO and ONNX Runtime each as a worker chooses them, then both timed beside TF."""
    config = config or ModelConfig()
    try:
        tf_loaded = loader.load(path, config)
    except Exception as err:  # noqa: BLE001 - a report row, whatever failed
        return f"| {name} | - | load failed: {cell(str(err)[:80])} | - | - | - | - |"
    calls = {"TF": bench.default_call(tf_loaded)}
    cells: dict[str, str] = {}
    engines = {"OpenVINO": backends.OPENVINO, "ORT": backends.ONNXRUNTIME}
    opened = [tf_loaded]
    for shown, engine in engines.items():
        loaded = loader.load(path, config)
        opened.append(loaded)
        report = bench.choose(loaded, name, config.model_copy(update={"backend": engine}), cache)
        rel = f"{report.max_abs_diff:.2g} ({report.max_rel_diff:.2g})" if report.gate_rows else ""
        if report.backend == engine:
            cells[shown] = f"passed, {rel}"
            calls[shown] = bench.default_call(loaded)
        elif report.gate_rows:
            cells[shown] = f"failed, {rel}"
        else:
            cells[shown] = "not converted: " + cell(report.reason.split(": ", 1)[-1][:120])
        if engine == backends.ONNXRUNTIME:
            cells["converted"] = f"yes ({report.convert_s:.1f} s)" if report.gate_rows else "no"
    speed = ["-", "-"]
    if len(calls) > 1:
        rates = bench.speed(tf_loaded.signature, list(calls.values()), budget_s)
        speed = [rates_cell(dict(zip(calls, rates[batch]))) for batch in (1, 8)]
    for loaded in opened:
        loaded.close()
    row = (
        f"| {name} | {tf_loaded.loader} | {cells['converted']} | {cells['ORT']} | {cells['OpenVINO']} "
        f"| {speed[0]} | {speed[1]} |"
    )
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
