"""`run_server`: the real gunicorn, started from the repo root on a free loopback port."""

from __future__ import annotations

import os
import shutil
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


def worker_pids(master: int) -> list[int]:
    """Process ids of the gunicorn workers of `master` (its children, from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                pids.append(int(entry.name))
    return pids


def rss_mb(pid: int) -> float:
    """Resident set size (VmRSS) of process `pid`, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@contextmanager
def serve(
    command: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    url: str,
    log_path: Path,
    ready: bool = True,
    timeout_s: float = 120,
    **popen: object,
) -> Iterator[Server]:
    """Run `command` (a server) in its own process group, wait until `url` answers, stop it afterwards.

    Ready means `/readyz` answers 200 (`ready=False`: `/healthz`). The whole process group gets
    SIGTERM on the way out (then SIGKILL after 30 s), so `make run` and its gunicorn stop together.
    `popen` goes to `subprocess.Popen` (e.g. `user=`/`group=` to run as a manifest's user id).
    """
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )
    server = Server(url, process, log_path)
    try:

        def up() -> bool:
            if process.poll() is not None:
                pytest.fail(f"{command} exited with {process.returncode}:\n{server.log()[-4000:]}")
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


@contextmanager
def start_server(
    models_dir: Path, log_dir: Path, *, ready: bool = True, timeout_s: float = 120, **env: str
) -> Iterator[Server]:
    """Start `gunicorn wsgi:app` with MODELS_DIR/PORT (and `env`), wait for it, stop it afterwards."""
    port = free_port()
    environment = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODELS_DIR": str(models_dir),
        "WORKERS": env.pop("WORKERS", "1"),
        "POLL_INTERVAL_S": env.pop("POLL_INTERVAL_S", "0.5"),
        # gRPC stays on, as by default, but never on the machine-wide 8500 another server may hold.
        "GRPC_PORT": env.pop("GRPC_PORT", str(free_port())),
        "SETTLE_S": env.pop("SETTLE_S", "0.5"),
        # Each server remembers crashed files in its own folder: one test's quarantine is not another's.
        "STATE_DIR": env.pop("STATE_DIR", str(log_dir / f"state-{port}")),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PROMETHEUS_MULTIPROC_DIR": "",
        **env,
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR")
    with serve(
        [GUNICORN, "wsgi:app"],
        cwd=REPO,
        env=environment,
        url=f"http://127.0.0.1:{port}",
        log_path=log_dir / f"gunicorn-{port}.log",
        ready=ready,
        timeout_s=timeout_s,
    ) as server:
        yield server


@pytest.fixture
def run_server(tmp_path: Path):
    """Factory fixture: `with run_server(models_dir, **env) as server: ...`."""

    def factory(models_dir: Path, **kwargs):
        return start_server(models_dir, tmp_path, **kwargs)

    return factory


# --- the Quickstart, literally: a fresh clone and `make run` ----------------------------------------


def clone_repository(dest: Path) -> Path:
    """Clone the repository's committed HEAD into `dest`, sharing this virtualenv (so nothing reinstalls).

    The clone gets `.venv` as a symlink to the virtualenv running the tests: the Makefile's install
    stamps name a hash of the requirements, so `make` in the clone finds them and installs nothing.
    Uncommitted changes are not in the clone: commit before trusting these tests locally.
    """
    if sys.prefix == sys.base_prefix:
        pytest.fail("run the suite from the project's virtualenv (`make test`): the clone shares it")
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(dest)], check=True, timeout=120)
    (dest / ".venv").symlink_to(Path(sys.prefix))
    stale = subprocess.run(["make", "-q", "venv"], cwd=dest, capture_output=True).returncode
    if stale:
        pytest.fail(
            "this virtualenv has no install stamp for the committed requirements (make would reinstall "
            "into it from the clone): run `make test`, which installs them and writes the stamps"
        )
    return dest


def user_environment(**changes: str) -> dict[str, str]:
    """This process's environment without the service's settings and make's own variables, plus `changes`.

    What a user's shell would pass: nothing the suite set for itself leaks into the command under test.
    """
    from service.settings import Settings

    ours = {name.upper() for name in Settings.model_fields} | {
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
        "PROMETHEUS_MULTIPROC_DIR",
    }
    return {**{k: v for k, v in os.environ.items() if k not in ours}, **changes}


@dataclass
class Quickstart:
    clone: Path
    server: Server
    port: int


def copy_trained_digits(quickstart: Quickstart, models: Path) -> None:
    """Copy the digits model `make run` trained in the Quickstart clone (model, config, labels, plugin) into `models`."""
    trained = quickstart.clone / "models"
    for name in ("digits.keras", "digits.yaml", "digits.labels.txt"):
        shutil.copy2(trained / name, models / name)
    shutil.copytree(trained / "plugins", models / "plugins", ignore=shutil.ignore_patterns("__pycache__"))


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    """`make run` in a fresh clone, exactly as the README says (only PORT and GRPC_PORT changed), ready to serve."""
    clone = clone_repository(tmp_path_factory.mktemp("quickstart") / "kerasserve")
    port = free_port()
    # Only the ports differ from the README's command (8000 and gRPC's 8500 may be taken on this machine).
    environment = user_environment(PORT=str(port), GRPC_PORT=str(free_port()))
    with serve(
        ["make", "run"],
        cwd=clone,
        env=environment,
        url=f"http://127.0.0.1:{port}",
        log_path=clone.parent / "make-run.log",
        timeout_s=900,
    ) as server:
        yield Quickstart(clone, server, port)
