"""Compiled backends on real models: does each convert, pass the equivalence gate, and how much faster is it?

    .venv/bin/python bench/backends.py --corpus ../shared/corpus --digits --out bench-backends.md
    .venv/bin/python bench/backends.py --backend xla --models [--device gpu]

For every Keras artifact of the corpus (the same files and plugin `tests/test_corpus.py` loads) it
loads the model twice through the service's `Loader`, asks `service.backends.choose` for the
`--backend` (OpenVINO by default; `xla`: TensorFlow's `jit_compile`) at fp32 on one copy
(conversion or compilation, cache, gate: exactly what a worker does at load) and times both copies'
compiled calls on the same seeded inputs, one thread each (TensorFlow's intra- and inter-op pools set
to 1, OpenVINO's INFERENCE_NUM_THREADS 1), interleaved, median of repeated calls. With `--models` it
does the same for the benchmark's two models (`bench/benchmark.py`: the small CNN and MobileNetV2,
random weights). With `--digits` it trains the default digits model (`service.default_model`) and
reports its held-out accuracy on TensorFlow and on the backend (OpenVINO: fp32 and bf16), with the
max |Δ| of the probabilities.

The numbers are noisy: the machine is shared, so each run prints its own and nothing asserts them.
Prints a Markdown report (and writes it to `--out` when given).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tensorflow as tf  # noqa: E402 - after the path, before anything starts TensorFlow's pools

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

from service import backends, equivalence  # noqa: E402
from service.custom_objects import CustomObjectRegistry  # noqa: E402
from service.loader import Loader  # noqa: E402
from service.model_config import ModelConfig  # noqa: E402
from service.runner import default_allowed_batch_sizes  # noqa: E402
from service.servable import ServableId  # noqa: E402
from service.settings import Settings  # noqa: E402

ALLOWED = default_allowed_batch_sizes(8)


def loader_for(models_dir: Path) -> Loader:
    settings = Settings(models_dir=models_dir)
    return Loader(CustomObjectRegistry.from_plugins(settings), settings)


TITLES = {"openvino": "OpenVINO", "xla": "XLA"}
DEVICE = "/CPU:0"
"""Where both copies run; `--device gpu` sets `/GPU:0` (XLA only: OpenVINO runs on the CPU here)."""


def choose(loaded, name: str, config: ModelConfig, cache: Path):  # noqa: ANN001, ANN201
    return backends.choose(
        loaded,
        ServableId(name, 1),
        config,
        default_backend="tensorflow",
        cache_dir=cache,
        threads=1,
        device=DEVICE,
        allowed_batch_sizes=ALLOWED,
    )


def per_second(call, inputs: dict[str, np.ndarray], rows: int, budget_s: float) -> float:  # noqa: ANN001
    """Rows per second of `call` on `inputs`: median of repeated calls within about `budget_s`."""
    for _ in range(3):
        call(inputs)
    times: list[float] = []
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline or len(times) < 5:
        started = time.perf_counter()
        call(inputs)
        times.append(time.perf_counter() - started)
    return rows / statistics.median(times)


def default_call(loaded):  # noqa: ANN001, ANN201
    """`loaded`'s default signature as a call on one input chunk (whatever backend computes it)."""
    return lambda x: loaded.call(loaded.default_signature, x)


def speed(signature, calls, budget_s: float) -> dict[int, list[float]]:  # noqa: ANN001
    """Per batch size (1 and 8): each call's rows/s on the same seeded inputs, measured in turn."""
    result = {}
    for batch in (1, 8):
        (inputs,) = equivalence.seeded_inputs(signature, samples=batch, chunk=batch, seed=3)
        rates: list[list[float]] = [[] for _ in calls]
        for _ in range(3):  # alternate, so a noisy neighbour slows every engine alike
            for call, measured in zip(calls, rates):
                measured.append(per_second(call, inputs, batch, budget_s))
        result[batch] = [statistics.median(measured) for measured in rates]
    return result


def corpus_loader() -> Loader:
    """A Loader over a fresh models folder holding the corpus' Lambda plugin (as tests/test_corpus.py)."""
    from tests.test_corpus import PLUGIN

    models_dir = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    (models_dir / "plugins").mkdir()
    (models_dir / "plugins" / "corpus_lambdas.py").write_text(PLUGIN)
    return loader_for(models_dir)


def corpus_rows(corpus: Path, cache: Path, budget_s: float, backend: str) -> list[str]:
    from tests.test_corpus import ARTIFACTS

    return compared_rows(
        corpus_loader(), {name: (corpus / a.path, a.config) for name, a in ARTIFACTS.items()}, cache, budget_s, backend
    )


def models_rows(cache: Path, budget_s: float, backend: str) -> list[str]:
    """The benchmark's two models (bench/benchmark.py, random weights; MobileNetV2's logits), saved as `.keras` files."""
    import keras

    from bench.benchmark import small_cnn

    models_dir = Path(tempfile.mkdtemp(prefix="bench-models-"))
    keras.utils.set_random_seed(0)
    small_cnn().save(models_dir / "cnn.keras")
    # Logits, not softmax: with random weights the softmax is 1/1000 everywhere and the gate would compare nothing.
    mobilenet = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classifier_activation=None)
    mobilenet.save(models_dir / "mobilenet.keras")
    models = {"small CNN": (models_dir / "cnn.keras", None), "MobileNetV2": (models_dir / "mobilenet.keras", None)}
    return compared_rows(loader_for(models_dir), models, cache, budget_s, backend)


def compared_rows(
    loader: Loader, models: dict[str, tuple[Path, ModelConfig | None]], cache: Path, budget_s: float, backend: str
) -> list[str]:
    """One row per model: loaded twice, one copy moved onto `backend` (gate and all), both timed."""
    title = TITLES[backend]
    rows = [
        f"| model | loader | converted | gate (fp32) | max \\|Δ\\| (rel. to range) | batch 1: TF → {title} rows/s | batch 8: TF → {title} rows/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (path, model_config) in models.items():
        config = (model_config or ModelConfig()).model_copy(update={"backend": backend})
        try:
            ov_loaded = loader.load(path, model_config)
        except Exception as err:  # noqa: BLE001 - a report row, whatever failed
            rows.append(f"| {name} | - | load failed: {str(err)[:80]} | - | - | - | - |")
            continue
        report = choose(ov_loaded, name, config, cache)
        failed = f"{title} {'compilation' if backend == 'xla' else 'conversion'} failed: "
        converted = (
            f"yes ({report.convert_s:.1f} s)" if report.gate_rows else f"no: {report.reason.removeprefix(failed)}"
        )
        if not report.gate_rows:
            rows.append(f"| {name} | {ov_loaded.loader} | {converted} | - | - | - | - |")
            ov_loaded.close()
            continue
        gate = "passed" if report.backend == backend else f"failed: {report.reason.split(': ', 1)[-1]}"
        diff = f"{report.max_abs_diff:.2g} ({report.max_rel_diff:.2g})"
        cells = ["-", "-"]
        if report.backend == backend:
            tf_loaded = loader.load(path, model_config)
            rates = speed(tf_loaded.signature, [default_call(tf_loaded), default_call(ov_loaded)], budget_s)
            cells = [f"{t:,.0f} → {o:,.0f} ({o / t:.2f}×)" for t, o in (rates[1], rates[8])]
            tf_loaded.close()
        rows.append(f"| {name} | {ov_loaded.loader} | {converted} | {gate} | {diff} | {cells[0]} | {cells[1]} |")
        ov_loaded.close()
        print(rows[-1], flush=True)
    return rows


def digits_rows(cache: Path, budget_s: float, backend: str) -> list[str]:
    from service import default_model

    models_dir = Path(tempfile.mkdtemp(prefix="bench-digits-"))
    path, _ = default_model.create_default_model(models_dir)
    loader = loader_for(models_dir)
    config = default_model.model_config()
    images, labels = default_model.heldout_digits()
    x = images[..., np.newaxis].astype(np.float32)
    tf_loaded = loader.load(path, config)
    name = tf_loaded.signature.inputs[0].name

    def predict(loaded) -> np.ndarray:  # noqa: ANN001
        outputs = [loaded.call(loaded.default_signature, {name: x[i : i + 8]}) for i in range(0, len(x), 8)]
        return np.concatenate([next(iter(o.values())) for o in outputs])

    reference = predict(tf_loaded)
    tf_accuracy = float(np.mean(reference.argmax(axis=1) == labels))
    rows = [
        f"Held-out digits: {len(labels)} images, never used in training.",
        "",
        "| backend | held-out accuracy | top-1 same as TF | max \\|Δ\\| of the probabilities (held-out) | gate max \\|Δ\\| (rel.) | batch 1 rows/s (TF → this) | batch 8 rows/s (TF → this) |",
        "|---|---|---|---|---|---|---|",
        f"| TensorFlow | {tf_accuracy:.4f} | - | - | - | - | - |",
    ]
    for precision in ("fp32", "bf16") if backend == "openvino" else ("fp32",):
        loaded = loader.load(path, config)
        report = choose(loaded, "digits", config.model_copy(update={"backend": backend, "precision": precision}), cache)
        got = predict(loaded)
        accuracy = float(np.mean(got.argmax(axis=1) == labels))
        same = float(np.mean(got.argmax(axis=1) == reference.argmax(axis=1)))
        calls = [default_call(tf_loaded), default_call(loaded)]
        rates = speed(tf_loaded.signature, calls, budget_s) if report.backend == backend else {}
        cells = [f"{t:,.0f} → {o:,.0f} ({o / t:.2f}×)" for t, o in rates.values()] or ["-", "-"]
        what = f"{TITLES[backend]} {report.precision}" if report.backend == backend else f"TensorFlow ({report.reason})"
        rows.append(
            f"| {what} | {accuracy:.4f} | {same:.4f} | {float(np.max(np.abs(got - reference))):.2g} | "
            f"{report.max_abs_diff:.2g} ({report.max_rel_diff:.2g}) | {cells[0]} | {cells[1]} |"
        )
        print(rows[-1], flush=True)
        loaded.close()
    tf_loaded.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="the model corpus folder (../shared/corpus)")
    parser.add_argument(
        "--backend", choices=sorted(TITLES), default="openvino", help="the backend compared with TensorFlow"
    )
    parser.add_argument("--models", action="store_true", help="the benchmark's small CNN and MobileNetV2")
    parser.add_argument("--digits", action="store_true", help="train the default digits model and compare accuracy")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where TensorFlow and XLA run")
    parser.add_argument("--budget-s", type=float, default=0.3, help="seconds of calls per timing (x3, alternated)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args()
    global DEVICE  # noqa: PLW0603 - one run, one device: set once, before anything is loaded
    DEVICE = "/GPU:0" if args.device == "gpu" else "/CPU:0"
    import openvino

    cache = Path(tempfile.mkdtemp(prefix="bench-backend-cache-"))
    lines = [
        f"TensorFlow {tf.__version__}, OpenVINO {openvino.get_version()}; {TITLES[args.backend]} against TensorFlow; {DEVICE}, one CPU thread each; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; shared 2-core machine, noisy.",
        "",
    ]
    with tf.device(DEVICE):
        if args.corpus:
            lines += [*corpus_rows(args.corpus, cache, args.budget_s, args.backend), ""]
        if args.models:
            lines += [*models_rows(cache, args.budget_s, args.backend), ""]
        if args.digits:
            lines += [*digits_rows(cache, args.budget_s, args.backend), ""]
    return publish(lines, args.out)


def publish(lines: list[str], out: Path | None) -> int:
    """Print the Markdown report, and write it to `out` when given; the exit status (0)."""
    report = "\n".join(lines)
    print(report)
    if out:
        out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
