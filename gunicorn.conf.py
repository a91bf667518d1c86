"""gunicorn settings for kerasserve: only what differs from gunicorn's defaults.

`gunicorn wsgi:app` from the repo root reads this file. Values come from `service.settings.Settings`
(environment variables), which imports neither Flask nor TensorFlow, so the master process never
starts TensorFlow: every worker builds its own app, and loads its models, after the fork.
"""

import os as _os
import shutil as _shutil
import tempfile as _tempfile

from service import gpus as _gpus
from service.settings import Settings as _Settings  # underscore: gunicorn treats globals as settings

_settings = _Settings()
# Found once, in the master, without TensorFlow (service/gpus.py); none asked for with DEVICE=cpu.
_visible_gpus = () if _settings.device == "cpu" else _gpus.visible_gpus(_os.environ)

wsgi_app = "wsgi:app"
bind = f"{_settings.host}:{_settings.port}"
# gunicorn's gthread worker (threads of one worker share its servables and batchers) that spreads
# keep-alive connections evenly over the workers; see service/worker.py.
worker_class = "service.worker.BalancedThreadWorker"
workers = _settings.workers or _gpus.default_workers(_visible_gpus, _settings.device)
threads = _settings.threads
preload_app = False  # TensorFlow starts in each worker, after the fork
graceful_timeout = _settings.graceful_timeout_s
# Heartbeat timeout of a worker. Loads run on a background thread, but TensorFlow start-up and big
# loads can hold the GIL for a while; killing a worker for that would turn a slow load into a crash loop.
timeout = 120
keepalive = 5  # load balancers and benchmark clients reuse connections
worker_tmp_dir = "/dev/shm" if _os.path.isdir("/dev/shm") else None
loglevel = _settings.log_level.lower()


def on_starting(server):
    """Give the workers a fresh prometheus multiprocess folder (metrics of dead workers are dropped)."""
    folder = _os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        folder = _tempfile.mkdtemp(prefix="kerasserve-metrics-")
        _os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # inherited by every worker
    else:
        _shutil.rmtree(folder, ignore_errors=True)
        _os.makedirs(folder, exist_ok=True)
    server.log.info("prometheus multiprocess folder: %s", folder)
    # MODEL_CONTROL=explicit: the workers share their load/unload decisions through one file that
    # lives as long as this server (service/model_control.py); the first worker writes STARTUP_MODELS.
    if _settings.model_control == "explicit":
        control_file = _os.environ.get("MODEL_CONTROL_FILE")
        if not control_file:
            control_file = _os.path.join(_tempfile.mkdtemp(prefix="kerasserve-control-"), "model-control.json")
            _os.environ["MODEL_CONTROL_FILE"] = control_file  # inherited by every worker
        for stale in (control_file, control_file + ".lock"):
            if _os.path.exists(stale):
                _os.remove(stale)  # decisions last as long as the server, as in Triton
    # Once, in the master: a server reachable from other hosts without a token should say so at start.
    if _settings.auth_token is None and _settings.host not in {"127.0.0.1", "localhost", "::1"}:
        server.log.warning(
            "AUTH_TOKEN is not set: every route answers without a token on %s:%s; set AUTH_TOKEN "
            "(docs/security.md) unless a proxy in front authenticates",
            _settings.host,
            _settings.port,
        )


def pre_fork(server, worker):
    """Give the new worker the lowest slot no living worker holds: a replacement keeps its predecessor's GPU."""
    taken = {getattr(w, "kerasserve_slot", -1) for w in server.WORKERS.values()}
    worker.kerasserve_slot = _gpus.free_slot(taken)


def post_fork(server, worker):
    """Pin the worker to GPU (slot mod N) before TensorFlow starts in it (the app is built after this hook)."""
    changes = _gpus.worker_environment(_visible_gpus, worker.kerasserve_slot, _settings.device)
    _os.environ.update(changes)
    if changes.get("CUDA_VISIBLE_DEVICES"):
        server.log.info(
            "worker %d (pid %d) runs on GPU %s of %d visible (%s)",
            worker.kerasserve_slot,
            worker.pid,
            changes["CUDA_VISIBLE_DEVICES"],
            len(_visible_gpus),
            ", ".join(_visible_gpus),
        )


def child_exit(server, worker):
    """Drop a dead worker's live gauges, so `livesum` counts only living workers."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """Start the worker's gRPC server (GRPC_PORT) after the fork, beside its HTTP one; SIGTERM starts its drain.

    The worker's own SIGTERM handler (gunicorn's graceful exit) still runs: HTTP stops accepting and
    finishes its requests while gRPC refuses new calls and finishes the ones in flight, both within
    GRACEFUL_TIMEOUT_S. `worker_exit` then waits for gRPC, before the models are unloaded at exit.
    """
    import signal

    from service.app import serve_grpc

    grpc_server = serve_grpc(worker.wsgi)
    if grpc_server is None:
        return
    worker.kerasserve_grpc = grpc_server
    graceful_exit = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        grpc_server.begin_stop(_settings.graceful_timeout_s)
        if callable(graceful_exit):
            graceful_exit(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def worker_exit(server, worker):
    """Wait for the worker's gRPC calls in flight (a quick exit, SIGINT or SIGQUIT, stops gRPC at once)."""
    grpc_server = getattr(worker, "kerasserve_grpc", None)
    if grpc_server is not None:
        grpc_server.wait_stopped(_settings.graceful_timeout_s)
