"""create_app: the composition root. Builds the serving components of one worker once, and the Flask app.

The only module that knows every other one, and the only one that wires them: settings -> servable
builder -> manager <- repository watcher; manager -> data plane -> API blueprints. Nobody else builds
a collaborator of the manager. Called in each gunicorn worker after the fork (no preload), so
TensorFlow and the models start in the worker that serves them.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from typing import TYPE_CHECKING

from flask import Flask

from service import access_log, multipart, pod_readiness, security, tracing
from service.api import EXTENSION, Runtime, register_blueprints
from service.api.errors import register_error_handlers
from service.api.json import FastJSONProvider
from service.builder import ServableBuilder
from service.dataplane import DataPlane
from service.logs import configure_logging
from service.manager import Builder, ServableManager
from service.model_control import ModelControl
from service.payload_log import PayloadLogger
from service.repository import ModelRepository, RepositoryWatcher
from service.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from service.grpc_server import GrpcServer

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, *, builder: Builder | None = None, span_exporter: object | None = None
) -> Flask:
    """Build the builder, the manager and its watcher (which start loading the models), the data plane and the app.

    Args:
        settings: default: read from the environment.
        builder: turns versions on disk into servables; default: a `ServableBuilder` (TensorFlow),
            started here. Tests pass a started fake to exercise the HTTP layer without TensorFlow.
        span_exporter: turns tracing on with this OpenTelemetry span exporter (tests: the SDK's
            `InMemorySpanExporter`); default: OTEL_TRACES_EXPORTER decides.
    """
    settings = settings or Settings()
    configure_logging(settings)
    access_log.configure(settings)
    tracing.configure(settings, exporter=span_exporter)
    if builder is None:
        builder = ServableBuilder(settings)
        builder.start()  # security gate on MODELS_DIR, TensorFlow configuration, gc.freeze
    manager = ServableManager(builder, settings, on_recycle=recycle_worker)
    repository = ModelRepository(settings.models_dir, settle_s=settings.settle_s, model_name=settings.model_name)
    if security.on_read_only_mount(settings.models_dir):
        # Nothing here can write it: versions change only when the mount's source changes (a
        # ConfigMap update, the writable side of a bind mount), which the watcher still sees.
        log.info("models folder %s is on a read-only mount; watching for changes made outside", settings.models_dir)
    # Which models serve (MODEL_CONTROL): decisions shared by every worker, read by the watcher on each scan.
    control = ModelControl(settings)
    watcher = RepositoryWatcher(repository, manager, settings, control=control)
    # The watcher scans once before returning, so the manager starts with the start-up models known
    # and builds its first registry from the plugins that scan saw.
    watcher.start()
    manager.start()
    # Keep this worker's readiness in the table its sibling workers read (service/pod_readiness.py).
    stopped = threading.Event()
    pod_readiness.start_publisher(lambda: manager.readiness().ready, stopped)

    payload_logger = PayloadLogger(settings) if settings.payload_log_url else None

    def stop() -> None:
        """Stop watching first (nothing sets aspired versions any more), then unload every version."""
        stopped.set()
        watcher.stop()
        manager.stop()
        if payload_logger is not None:
            payload_logger.close()  # what is queued gets PAYLOAD_LOG_TIMEOUT_S more

    # Unload on interpreter exit (gunicorn's graceful worker exit): batcher threads stop and
    # in-flight requests have finished by then.
    atexit.register(stop)
    multipart.install()
    app = Flask(__name__)
    app.request_class = multipart.ServiceRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json = FastJSONProvider(app)
    app.extensions[EXTENSION] = Runtime(settings, DataPlane(manager, settings, control), stop, payload_logger)
    register_blueprints(app)
    register_error_handlers(app)
    if settings.model_name:
        log.info("kerasserve app ready to serve %s as the one model '%s'", settings.models_dir, settings.model_name)
    else:
        log.info("kerasserve app ready to serve %s", settings.models_dir)
    return app


def serve_grpc(app: Flask) -> GrpcServer | None:
    """Start this worker's gRPC server over the app's data plane; None when GRPC_PORT is 0.

    Called by gunicorn.conf.py's `post_worker_init`, in the worker after the fork, once the app (and
    so the data plane) exists; tests that build apps start no gRPC server. Imported lazily: the gRPC
    messages import TensorFlow, which `import service.app` must not start.
    """
    runtime: Runtime = app.extensions[EXTENSION]
    if not runtime.settings.grpc_port:
        return None
    from service import grpc_server

    return grpc_server.start(runtime.settings, runtime.dataplane)


def recycle_worker() -> None:
    """Ask this worker process to exit gracefully, so the gunicorn master forks a fresh one.

    The manager calls it once after SWAPS_BEFORE_RECYCLE unloads: TensorFlow and the allocator keep
    some memory of every unloaded version, and only a new process gives it all back. It lives here,
    not in the manager, because it acts on the whole process: SIGTERM is gunicorn's graceful worker
    exit (in-flight requests finish, `stop()` above runs at exit).
    """
    os.kill(os.getpid(), signal.SIGTERM)
