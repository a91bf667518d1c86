"""`run_server`: the real gunicorn, started from the repo root on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, wait_until

GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=kwargs.pop("timeout", 60), **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def start_server(models_dir: Path, log_dir: Path, *, ready: bool = True, timeout_s: float = 120, **env: str) -> Iterator[Server]:
    """Start `gunicorn wsgi:app` with MODELS_DIR/PORT (and `env`), wait for it, stop it afterwards."""
    port = free_port()
    environment = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODELS_DIR": str(models_dir),
        "WORKERS": env.pop("WORKERS", "1"),
        "POLL_INTERVAL_S": env.pop("POLL_INTERVAL_S", "0.5"),
        "SETTLE_S": env.pop("SETTLE_S", "0.5"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PROMETHEUS_MULTIPROC_DIR": "",
        **env,
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR")
    log_path = log_dir / f"gunicorn-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [GUNICORN, "wsgi:app"], cwd=REPO, env=environment, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        def up() -> bool:
            if process.poll() is not None:
                pytest.fail(f"gunicorn exited with {process.returncode}:\n{server.log()[-4000:]}")
            path = "/readyz" if ready else "/healthz"
            return requests.get(server.url + path, timeout=2).status_code == 200
        wait_until(up, timeout_s=timeout_s, interval_s=0.2)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def run_server(tmp_path: Path):
    """Factory fixture: `with run_server(models_dir, **env) as server: ...`."""
    def factory(models_dir: Path, **kwargs):
        return start_server(models_dir, tmp_path, **kwargs)
    return factory
