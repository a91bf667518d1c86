"""The documentation's examples are tests: every shell example in README.md and docs/*.md is run as
written against a real server holding the models it names, or listed below as not runnable here
with the reason; every endpoint and setting the documents name must exist.

The server holds the digits model that `make run` trained in the Quickstart clone (copied) and a
small two-output `two_heads` model, with DEFAULT_MODEL=digits. Commands run from the repository root
(so `examples/7.png` resolves) with only `localhost:8000` pointed at the test server's port.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.docs_examples import (
    DOCUMENTED_GRPC,
    DOCUMENTS,
    Example,
    all_examples,
    client_snippets,
    printed_expectations,
    same_shape,
    shown_json,
)
from tests.e2e.conftest import Quickstart, Server, copy_trained_digits, free_port, start_server

# Commands that cannot run on this machine, by prefix, with the reason (and where they are covered).
NOT_RUNNABLE = {
    "make run": "run literally, in a fresh clone, by tests/e2e/test_first_run.py (the `quickstart` fixture)",
    "make test": "the suite itself; its entry point is checked by tests/test_ci_entry.py",
    "make screenshot": "reruns tests/e2e/test_console.py's screenshot test, which the suite runs (into a temporary folder)",
    "make bench": "the benchmark (about 30 minutes); `make bench` is the documented way to run it; its pieces are tested at tiny size in tests/unit/test_benchmark.py",
    ".venv/bin/python bench/benchmark.py": "the benchmark (about 30 minutes), what `make bench` runs",
    "make profile": "py-spy on the service under wrk load (about a minute, needs ptrace rights); its summary is tested in tests/unit/test_benchmark.py",
    ".venv/bin/python bench/profile.py": "what `make profile` runs",
    ".venv/bin/python bench/lru_budget.py": "the MAX_LOADED_MODELS bench (minutes); tests/e2e/test_model_budget.py runs it at a small scale",
    ".venv/bin/python bench/backends.py": "the compiled-backend measurement (minutes: the corpus, twice, and training the digits model); its conversion, cache and gate are tested in tests/unit/test_backends.py",
    ".venv/bin/python bench/onnx_compare.py": "the OpenVINO / ONNX Runtime comparison (about 6 minutes: the corpus through both engines); both engines' conversion, cache and gate are tested in tests/unit/test_backends.py",
    "docker ": "no Docker engine here; the Dockerfile is checked by hadolint and against `make run` in tests/test_deploy.py",
    "kubectl ": "no Kubernetes cluster here; the manifests are validated and started as contracts in tests/test_deploy.py and tests/e2e/test_manifests.py",
    "POD=$(kubectl ": "no Kubernetes cluster here",
    "cp ": "copies the user's own model files; landing files by rename in a watched folder is tested in tests/e2e/test_hot_swap.py",
    "curl -F image=@rose.jpg": "the worked fine-tuned ResNet50 example (the user's flowers model and photo); the same requests (caffe auto-detected, extra outputs, ?outputs=) run against a fine-tuned ResNet50 in tests/e2e/test_transfer_learning.py",
    "curl -s -X POST localhost:8000/v2/repository/models/": "needs MODEL_CONTROL=explicit (the docs server polls); load and unload run through tritonclient against two workers in tests/e2e/test_model_control.py and through every answer in tests/unit/test_api.py",
    "MODELS_DIR=models python -m service inspect": "needs the user's flowers.keras; `python -m service inspect` is tested in tests/unit/test_inspect.py",
    "ACCESS_LOG=": "the benchmark with the access log or tracing switched (docs/benchmarks-history.md), about 3 minutes a run",
    "python examples/telemetry_sink.py": "a receiver that runs until stopped; tests/e2e/test_observability.py runs it the same way and points a server at it",
    "OTEL_TRACES_EXPORTER=otlp ": "a second `make run` with tracing and payload logging on; tests/e2e/test_observability.py starts gunicorn with these variables against the example receiver",
}
# Values in shown answers that depend on the trained weights beyond the top class (compared by type only).
MODEL_DEPENDENT = re.compile(r"\.top_k\[[1-9]\d*\]\.(class_id|label)$")


def reason_not_runnable(example: Example) -> str | None:
    return next((why for prefix, why in NOT_RUNNABLE.items() if example.command.startswith(prefix)), None)


def is_runnable(example: Example) -> bool:
    return example.command.startswith(("curl ", "python examples/")) and reason_not_runnable(example) is None


EXAMPLES = all_examples()
RUNNABLE = [example for example in EXAMPLES if is_runnable(example)]


def build_two_heads(path: Path) -> None:
    """The docs' multi-output model: 4 features in, `kind` (3-way softmax) and `size` (1 unit) out."""
    import keras

    inputs = keras.Input((4,), name="features")
    kind = keras.layers.Dense(3, activation="softmax", name="kind")(inputs)
    size = keras.layers.Dense(1, name="size")(inputs)
    keras.Model(inputs, {"kind": kind, "size": size}).save(path)


@dataclass
class DocsServer:
    http: Server
    grpc_port: int


@pytest.fixture(scope="module")
def docs_grpc_server(
    quickstart: Quickstart, corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DocsServer]:
    """The docs' gRPC client snippets' server: digits and the corpus half_plus_two, gRPC on a free port."""
    models = tmp_path_factory.mktemp("docs-grpc-models")
    copy_trained_digits(quickstart, models)
    (models / "half_plus_two").symlink_to(corpus / "half_plus_two_cpu")
    grpc_port = free_port()
    with start_server(
        models, tmp_path_factory.mktemp("docs-grpc-logs"), GRPC_PORT=str(grpc_port), timeout_s=240
    ) as server:
        yield DocsServer(server, grpc_port)


SNIPPETS = client_snippets()


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.where for s in SNIPPETS])
def test_documented_client_snippet_prints_what_it_shows(snippet: Example, docs_grpc_server: DocsServer) -> None:
    code = snippet.command.replace(DOCUMENTED_GRPC, f"localhost:{docs_grpc_server.grpc_port}").replace(
        "localhost:8000", docs_server_url(docs_grpc_server.http)
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{snippet.where}:\n{result.stderr[-3000:]}"
    printed = result.stdout.splitlines()
    expected = printed_expectations(snippet.command)
    assert len(printed) >= len(expected), result.stdout
    for shown, line in zip(expected, printed[-len(expected) :]):
        if shown is not None:
            assert line.startswith(shown), f"{snippet.where}: printed {line!r}, the document shows {shown!r}"


def docs_server_url(server: Server) -> str:
    return "localhost:" + server.url.rsplit(":", 1)[1]


def test_client_snippets_were_found() -> None:
    assert len(SNIPPETS) >= 2  # the gRPC examples of docs/api.md


@pytest.fixture(scope="module")
def docs_server(quickstart: Quickstart, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("docs-models")
    copy_trained_digits(quickstart, models)
    build_two_heads(models / "two_heads.keras")
    with start_server(models, tmp_path_factory.mktemp("docs-logs"), DEFAULT_MODEL="digits", timeout_s=240) as server:
        yield server


def test_every_documented_command_is_run_or_says_why_not() -> None:
    unclassified = [
        f"{e.where}: {e.command}" for e in EXAMPLES if not is_runnable(e) and reason_not_runnable(e) is None
    ]
    assert not unclassified, "documented commands neither run by this test nor listed in NOT_RUNNABLE:\n" + "\n".join(
        unclassified
    )
    assert len(RUNNABLE) >= 8  # the extraction found the examples (guards against a parser that finds none)


@pytest.mark.parametrize("example", RUNNABLE, ids=[e.where for e in RUNNABLE])
def test_documented_example_answers_as_shown(example: Example, docs_server: Server) -> None:
    port = int(docs_server.url.rsplit(":", 1)[1])
    command = example.for_port(port)
    if command.startswith("python examples/client.py"):
        # The client's default URL is localhost:8000; point it at the test server (the only change).
        command = command.replace("examples/client.py", f"examples/client.py --url http://localhost:{port}", 1)
    result = subprocess.run(
        ["sh", "-c", command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},  # `python` is the project's venv
    )
    assert result.returncode == 0, f"{example.where}: {command}\n{result.stderr}"
    if command.startswith("python examples/client.py"):
        digits = [line for line in result.stdout.splitlines() if line.startswith("examples/")]
        assert digits and all(line == f"examples/{n}.png: {n}" for line, n in zip(digits, range(10))), result.stdout
        return
    answer = json.loads(result.stdout)
    if example.shown:
        problems = [p for p in same_shape(shown_json(example), answer) if not MODEL_DEPENDENT.search(p.split(":")[0])]
        assert not problems, f"{example.where}: the answer differs from the document:\n" + "\n".join(problems)
    else:
        assert "error" not in answer, f"{example.where}: {answer}"


# --- names the documents mention: routes and settings -------------------------------------------

# `/v1/...`, `/v2...`, `/models...`, ... written as a route: in backticks, after an HTTP method, or in a URL.
ROUTE = re.compile(
    r"(?:`|\b(?:GET|POST|PUT|DELETE|HEAD) |localhost:\d+)"
    r"(/(?:v1|v2|models|predict|predict_classes|healthz|readyz|metrics|openapi\.json)(?:[^`\s\"')]*))"
)
PLACEHOLDERS = {"name": "digits", "v": "1", "N": "1", "version": "1", "L": "stable", "label": "stable"}
# Backticked upper-case words in the documents that are not Settings, and what they are.
NOT_SETTINGS = {
    **dict.fromkeys(["START", "LOADING", "AVAILABLE", "UNLOADING", "END", "FAILED", "UNKNOWN"], "version states"),
    **dict.fromkeys(["INT64", "FP32", "BYTES"], "KServe v2 datatypes"),
    "READY": "a Triton model state in the repository index (UNAVAILABLE, LOADING and UNLOADING are listed elsewhere)",
    "INFO": "a log level",
    "BENCH_ARGS": "the Makefile's variable for `make bench` options (e.g. `BENCH_ARGS=--quick`)",
    "PROFILE_ARGS": "the Makefile's variable for `make profile` options",
    "OPTIONS": "an HTTP method",
    "SIGTERM": "a signal",
    "HEALTHCHECK": "a Dockerfile instruction",
    "SCALE": "a model-config value in a table",
    "PROMETHEUS_MULTIPROC_DIR": "prometheus_client's own variable",
    "TF_CPP_MIN_LOG_LEVEL": "TensorFlow's own variable",
    "TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "TensorFlow's own variable (set by service/memory.py)",
    **dict.fromkeys(["MALLOC_ARENA_MAX", "M_ARENA_MAX"], "glibc malloc's tunables"),
    "CUDA_VISIBLE_DEVICES": "CUDA's own variable",
    "KERAS_HOME": "Keras' own variable",
    "STORAGE_URI": "the object-storage sync container's variable",
    "SYNC_INTERVAL_S": "the object-storage sync container's variable",
    "SOAK_S": "the soak test's variable",
    "MAX_CONTENT_LENGTH": "a Flask config key",
    "ELOOP": "an errno name",
    "ST_RDONLY": "a statvfs flag (a read-only mount)",
    **dict.fromkeys(
        ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS"]
        + ["OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_BSP_SCHEDULE_DELAY"]
        + ["OTEL_SDK_DISABLED"],
        "OpenTelemetry's standard variables, read by its SDK (docs/operations.md)",
    ),
    **dict.fromkeys(
        ["OK", "INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL"]
        + ["UNIMPLEMENTED", "DEADLINE_EXCEEDED", "UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"],
        "gRPC status codes and health states",
    ),
    **dict.fromkeys(
        ["PATH", "PYTHONPATH", "PYTHONHOME", "LD_LIBRARY_PATH", "HOME", "TMPDIR", "TMP", "TEMP", "LANG", "LANGUAGE"]
        + ["LC_", "TF_", "KERAS_", "CUDA_", "XLA_", "OMP_", "MKL_"]
        + ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY", "PRIVATE"],
        "environment names (or parts of names) the Lambda probe's child keeps or drops (docs/security.md)",
    ),
}


def expand(path: str) -> list[str]:
    """Concrete paths for a documented pattern: `[optional]` parts, `{a,b}` and `a\\|b` alternatives, `<placeholders>`."""
    match = re.search(r"\[([^\[\]]*)\]", path)
    if match:
        options = ["", *re.split(r"\\?\|", match.group(1))]
        return [p for option in options for p in expand(path[: match.start()] + option + path[match.end() :])]
    match = re.search(r"\{([^{}]*,[^{}]*)\}", path)
    if match:
        return [
            p
            for option in match.group(1).split(",")
            for p in expand(path[: match.start()] + option + path[match.end() :])
        ]
    if path.endswith("...") or path in {"/v1", "/v2"}:  # a family of routes (`/v2/...`, `/v1`): a prefix
        return [re.sub(r"<(\w+)>", lambda m: PLACEHOLDERS.get(m.group(1), "x"), path.removesuffix("...")) + "..."]
    return [re.sub(r"<(\w+)>", lambda m: PLACEHOLDERS.get(m.group(1), "x"), path).split("?")[0].rstrip(".,;:")]


# Documents that show malformed requests on purpose (the bad requests the suite sends).
BAD_REQUEST_CATALOGUES = {"docs/reliability.md"}


def documented_routes() -> set[tuple[str, str]]:
    found = set()
    for document in DOCUMENTS:
        if str(document.relative_to(REPO)) in BAD_REQUEST_CATALOGUES:
            continue
        for match in ROUTE.finditer(document.read_text(encoding="utf-8")):
            for path in expand(match.group(1)):
                found.add((str(document.relative_to(REPO)), path))
    return found


def route_exists(app, path: str) -> bool:
    from werkzeug.exceptions import MethodNotAllowed, NotFound

    if path.endswith("..."):
        prefix = path.removesuffix("...")
        return any(rule.rule.startswith(prefix) for rule in app.url_map.iter_rules()) or route_exists(app, prefix)
    adapter = app.url_map.bind("localhost")
    try:
        adapter.match(path, method="GET")
    except MethodNotAllowed:
        return True
    except NotFound:
        return False
    return True


def test_every_endpoint_the_documents_name_exists() -> None:
    from flask import Flask

    from service.api import register_blueprints
    from service.errors import ServingError
    from service.protocols.tfserving import parse_url

    def tfserving_path(path: str) -> bool:
        try:
            parse_url(path.removeprefix("/v1/models/"), post=":" in path)
        except ServingError:
            return False
        return True

    app = Flask(__name__)
    register_blueprints(app)
    routes = documented_routes()
    assert len(routes) > 20  # the scan found the documents' routes
    missing = []
    for document, path in sorted(routes):
        if not route_exists(app, path):
            missing.append(f"{document}: {path}")
        elif path.startswith("/v1/models/") and not path.endswith("...") and not tfserving_path(path):
            missing.append(f"{document}: {path} (not a TensorFlow Serving path)")
    assert not missing, "documented endpoints that do not exist:\n" + "\n".join(missing)


def test_every_setting_the_documents_name_exists() -> None:
    from service.settings import Settings

    settings = {name.upper() for name in Settings.model_fields}
    named = {
        word
        for document in DOCUMENTS
        for word in re.findall(r"`([A-Z][A-Z0-9_]{2,})(?:=[^`]*)?`", document.read_text(encoding="utf-8"))
    }
    constants = {  # module-level constants of the code (`PLUGINS_FOLDER`, `ZIP_MAGIC`): named as code, not settings
        name
        for path in (REPO / "service").rglob("*.py")
        for name in re.findall(r"^([A-Z][A-Z0-9_]+)\s*[:=]", path.read_text(encoding="utf-8"), re.MULTILINE)
    }
    unknown = sorted(named - settings - set(NOT_SETTINGS) - constants)
    assert not unknown, (
        f"the documents name settings that do not exist (or add them to NOT_SETTINGS with what they are): {unknown}"
    )
    assert named & settings  # the scan found settings at all
