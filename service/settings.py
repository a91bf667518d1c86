"""Settings: every knob of the service, typed, documented, read once from the environment.

Nothing else in the service reads `os.environ`. Field `foo_bar` is set by the environment variable
`FOO_BAR`. Units are in the names (`_s`, `_ms`, `_bytes`). A bad value stops start-up with a message
naming the variable. This module imports neither Flask nor TensorFlow, so `gunicorn.conf.py` can read
it in the master process.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLUGINS_FOLDER = "plugins"
"""Folder inside MODELS_DIR whose `*.py` files are plugins (imported by the registry, never a model)."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the service, read once at start-up and never changed."""

    model_config = SettingsConfigDict(
        frozen=True, use_attribute_docstrings=True, protected_namespaces=(), extra="ignore"
    )

    # --- server -------------------------------------------------------------------------------
    host: str = "0.0.0.0"
    """Address gunicorn binds to."""

    port: int = Field(8000, ge=0, le=65535)
    """TCP port gunicorn listens on."""

    grpc_port: int = Field(8500, ge=0, le=65535)
    """TCP port of the gRPC API (TF Serving's PredictionService and ModelService, KServe v2's GRPCInferenceService, grpc.health.v1); every worker listens on it (SO_REUSEPORT). 0 turns gRPC off."""

    workers: int | None = Field(None, ge=1)
    """gunicorn worker processes; each loads every model. Unset: one per visible GPU on a GPU host (worker i runs on GPU i mod N), else 2."""

    threads: int = Field(16, ge=1)
    """Request threads per worker (gthread); requests of one worker share its batchers."""

    graceful_timeout_s: int = Field(30, ge=1)
    """Seconds a worker gets to finish in-flight requests on shutdown or recycle."""

    request_timeout_s: float = Field(30.0, gt=0)
    """Longest a request waits for its batch result before failing with 503."""

    header_timeout_s: float = Field(10.0, gt=0)
    """Longest a client may take to send a request's headers (from its connection or first byte) before it gets 408 and is closed."""

    body_timeout_s: float = Field(60.0, gt=0)
    """Longest a client may take to send a request's body once its headers are in, before it gets 408 and is closed."""

    log_level: str = "INFO"
    """Python log level of the service's loggers."""

    log_json: bool = False
    """Write logs as one JSON object per line instead of plain text."""

    console: bool = True
    """Serve the web console at `/` (models and their states, a try-it form, health; its files under `/ui/`); off: `/` and `/ui/` answer 404."""

    access_log: bool = True
    """Write one access record per request (HTTP and gRPC: method, path, model, version, rows, status, latency with queue and compute times, bytes, request and trace ids, client) to the service's log, at INFO whatever LOG_LEVEL, plain or JSON (LOG_JSON)."""

    access_log_probes: bool = False
    """Also write access records for the probes (`/healthz`, `/readyz`, `/v2/health/live`, `/v2/health/ready`, gRPC health) and `/metrics`."""

    # --- tracing (OpenTelemetry; the SDK reads the other standard OTEL_* variables itself) ------
    otel_traces_exporter: Literal["none", "otlp", "console"] = "none"
    """OpenTelemetry tracing: `otlp` exports spans over OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER, ...; docs/operations.md), `console` prints them; `none` (the default) imports no OpenTelemetry at all."""

    otel_service_name: str = "kerasserve"
    """`service.name` of the exported spans."""

    # --- payload logging (KServe's CloudEvents logger format) ----------------------------------
    payload_log_url: str | None = None
    """Send request and response bodies as CloudEvents (KServe's logger format) to this http(s) URL, from a bounded background queue; unset turns payload logging off."""

    payload_log_rate: float = Field(1.0, ge=0, le=1)
    """Share of requests whose payloads are logged (1 = every request)."""

    payload_log_max_bytes: int = Field(1024 * 1024, ge=0)
    """Largest body sent in one event; a larger one is replaced by a JSON note of its size and type."""

    payload_log_images: bool = False
    """Send image bodies (multipart uploads, image/* bodies) as they are; off: a JSON note of their count, sizes and types."""

    payload_log_queue_events: int = Field(1000, ge=1)
    """Events waiting for the sink at most; beyond that events are dropped (kerasserve_payload_events_dropped_total), never the prediction."""

    payload_log_timeout_s: float = Field(2.0, gt=0)
    """Longest the sink may take to accept the connection, take an event or answer (each step) before the event is dropped."""

    # --- models -------------------------------------------------------------------------------
    models_dir: Path = Field(Path("models"), validate_default=True)
    """Folder watched for model files and version folders; `plugins/` inside it holds plugins. A relative path is taken from the directory the server starts in."""

    model_plugins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Extra plugin modules to import at start (comma-separated import paths), besides `<MODELS_DIR>/plugins/*.py`."""

    model_name: str | None = None
    """Single-model mode (KServe, TF Serving): MODELS_DIR is this one model's base path (a model file or SavedModel at its root, or numbered version folders) and every route serves it under this name. Unset: MODELS_DIR is a repository of models named by file or folder."""

    default_model: str | None = None
    """Model answering `/predict` without a model name; unset means the only model, if exactly one."""

    allow_lambda: bool = True
    """Load Lambda layers (Python code stored in model files) from MODELS_DIR; off refuses such files."""

    allow_world_writable_models: bool = False
    """Load from a world-writable MODELS_DIR; off refuses, since model files and plugins are code. A folder on a read-only mount is never refused, whatever its mode bits (KServe's /mnt/models)."""

    lambda_probe: bool = True
    """Load files whose Lambda layers hold Python code in a throw-away subprocess first; a crash there fails only that version."""

    lambda_probe_timeout_s: float = Field(180.0, gt=0)
    """Longest the Lambda probe subprocess may take to load and call a model before the version fails."""

    state_dir: Path | None = None
    """Folder where workers remember, by content hash, model files that crashed a worker or the Lambda probe; unset: `kerasserve-state-<uid>` in the system's temporary folder."""

    poll_interval_s: float = Field(2.0, gt=0)
    """How often the models folder is rescanned, besides file-system events."""

    settle_s: float = Field(1.0, ge=0)
    """How long a file's size and mtime must stay unchanged before it counts as complete."""

    swaps_before_recycle: int = Field(0, ge=0)
    """Recycle a worker (gracefully) after this many version swaps, to give memory back; 0 = never."""

    model_control: Literal["poll", "explicit"] = "poll"
    """Which models serve: `poll`, every model in MODELS_DIR (the repository API's load and unload answer 503); `explicit`, only those named by STARTUP_MODELS and loaded through `POST /v2/repository/models/<name>/load` (Triton's model control modes)."""

    startup_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """With MODEL_CONTROL=explicit, the models loaded at start (comma-separated names; `*`: every model in MODELS_DIR at start)."""

    model_control_file: Path | None = None
    """File where explicit load and unload decisions are kept, so every worker follows them; gunicorn.conf.py sets a fresh one per server start. Unset: the decisions stay in the process (one worker)."""

    max_loaded_models: int = Field(0, ge=0)
    """Most models one worker keeps loaded; beyond it the least recently used model is unloaded and loads again on its next request. 0: no limit."""

    max_loaded_bytes: int = Field(0, ge=0)
    """Most bytes of model files (as on disk) one worker keeps loaded; beyond it the least recently used model is unloaded, as with MAX_LOADED_MODELS (both may be set). A model larger than the budget still loads, alone. 0: no limit."""

    load_wait_s: float = Field(60.0, gt=0)
    """Longest a request waits for a model to load: a repository API `load`, or a request for a model not loaded because of MAX_LOADED_MODELS or MAX_LOADED_BYTES; then 503."""

    device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where models run: a GPU when there is one (`auto`), or forced. With several GPUs each worker gets its own (worker i: GPU i mod N)."""

    gpu_memory_limit_mb: int = Field(0, ge=0)
    """Most GPU memory one worker may allocate on its GPU, in MiB (several workers sharing a GPU); 0: no limit, memory grows as needed."""

    model_backend: Literal["tensorflow", "openvino", "onnxruntime", "xla", "auto"] = "tensorflow"
    """What computes models whose config names no `backend`: TensorFlow, or OpenVINO, ONNX Runtime or XLA (`jit_compile`) after the equivalence gate, or `auto`: the fastest of OpenVINO and ONNX Runtime that passes it, if faster than TensorFlow (docs/model-config.md)."""

    backend_cache_dir: Path = Path(tempfile.gettempdir()) / "kerasserve-backends"
    """Folder where models converted for a compiled backend are cached, keyed by their files' content and the backend's version; outside MODELS_DIR."""

    # --- batching (per-model config files override these) ------------------------------------
    max_batch_size: int = Field(32, ge=1)
    """Most rows one device call takes."""

    max_batch_input_bytes: int = Field(3 * 1024 * 1024, ge=0)
    """On CPU, the most input bytes one device call of a model takes by default: models with large rows get fewer rows per call than MAX_BATCH_SIZE (MobileNetV2's 224x224x3 float images: 4), which on one thread per worker costs no throughput and keeps the activations, paid in every worker, small (docs/operations.md, sizing guide). A model config's `max_batch_size` or `allowed_batch_sizes` wins; 0 turns the cap off."""

    batch_timeout_ms: float = Field(0.0, ge=0)
    """Longest the first request of a batch waits for others to join it. 0 (TF Serving's and Triton's default): a batch takes what is queued when the model is free, so a lone request never waits and, under load, requests that arrive during a call form the next batch; measured, 0 doubled the small CNN's throughput at 1 client (p50 6.0 -> 3.0 ms) and changed nothing measurable at 16 (docs/benchmarks.md). A few ms can help a GPU, whose call costs little more for more rows."""

    max_enqueued_batches: int = Field(16, ge=1)
    """Batches that may wait in a model's queue; beyond that requests get 503 with Retry-After."""

    tf_intra_op_threads: int = Field(0, ge=0)
    """TensorFlow intra-op threads per worker; 0: on CPU the usable cores (affinity, cgroup quota) divided by `workers`, at least 1; with a GPU TensorFlow's default."""

    tf_inter_op_threads: int = Field(0, ge=0)
    """TensorFlow inter-op threads per worker; 0: chosen as for `tf_intra_op_threads`."""

    # --- limits and security ------------------------------------------------------------------
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    """Largest request body; larger ones get 413 before being read."""

    max_images_per_request: int = Field(64, ge=1)
    """Most images (or rows) one request may carry."""

    max_image_pixels: int = Field(40_000_000, ge=1)
    """Largest decoded image (width x height); larger ones get 413."""

    max_request_pixels: int = Field(100_000_000, ge=1)
    """Most pixels one request's images may decode, all together, counted from their headers before any is decoded (a JPEG of over 10 scans counts its pixels x scans / 10); more gets 413. 100 million: 2.5 images of MAX_IMAGE_PIXELS or 64 of 1.5 Mpx, about 1 s of one core (docs/security.md)."""

    max_request_decode_s: float = Field(5.0, gt=0)
    """Most CPU seconds one request's image decoding may take, checked after each image; more gets 413."""

    auth_token: str | None = None
    """When set, predict and management routes need `Authorization: Bearer <token>`; probes stay open. Set but empty stops start-up (auth would silently be off)."""

    metrics_need_token: bool = False
    """With AUTH_TOKEN set, `/metrics` needs the token too (give Prometheus a bearer token); off: open like the probes."""

    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Origins allowed by CORS (comma-separated); empty turns CORS off."""

    @field_validator("model_plugins", "cors_origins", "startup_models", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("payload_log_url", mode="after")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"PAYLOAD_LOG_URL must be an http:// or https:// URL, not {value!r}")
        return value

    @field_validator("auth_token", mode="after")
    @classmethod
    def _token_not_blank(cls, value: str | None) -> str | None:
        # An empty secret (a mistyped Secret key, `AUTH_TOKEN=` in a shell) must not turn auth off unnoticed.
        if value is not None and not value.strip():
            raise ValueError("AUTH_TOKEN is set but empty; set a token, or unset AUTH_TOKEN to run without auth")
        return value

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(
                f"GRPC_PORT and PORT are both {self.port}; give gRPC its own port, or GRPC_PORT=0 to turn it off"
            )
        return self

    @field_validator("models_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Made absolute once, here, against the directory the server was started from: later code
        # (the Lambda probe's subprocess runs in a temporary folder) never depends on the working
        # directory. Lexical (abspath), so a symlinked MODELS_DIR keeps its name in logs and paths.
        return Path(os.path.abspath(value))
