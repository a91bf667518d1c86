"""Manifests as contracts: each manifest in deploy/ starts the server here the way Kubernetes would.

For every server container (a `kerasserve` image) in deploy/kubernetes/ (deploy/kserve/'s serving
runtime has its own contract test, tests/e2e/test_kserve_runtime.py), the test reads what Kubernetes would run: the container's command/args (else the image's CMD from the
Dockerfile), the image's ENV, the ConfigMap it loads and its own env (optional secrets absent, required ones a test value),
the pod's user and group ids, and the volume mounted at MODELS_DIR. It then runs that command from
the repository root (the image's /app) with the venv first on PATH (the image's /opt/venv), as that
user (when the suite runs as root), with MODELS_DIR pointing at a folder made the way Kubernetes
makes the mount: an emptyDir is mode 0777; a PVC with `fsGroup` is group-owned and setgid (2775).
Only PORT (and GRPC_PORT, where on) differ.
The server must become ready and answer a prediction, and must not write into a read-only mount.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, read_only_mount
from tests.e2e.conftest import Server, free_port, serve

DEPLOY = REPO / "deploy"
SECRETS = {("kerasserve-auth", "token"): "manifest-test-token"}
"""The values this test gives the Secrets a manifest requires (it cannot create Kubernetes Secrets)."""


@dataclass(frozen=True)
class ServerContainer:
    manifest: str
    command: list[str]
    env: dict[str, str]
    user: int | None
    group: int | None
    fs_group: int | None
    mount: str  # "emptyDir", "persistentVolumeClaim", ...
    read_only: bool
    gpus: int = 0


def dockerfile_runtime() -> tuple[list[str], dict[str, str]]:
    """The image's CMD and the runtime stage's ENV (PATH left out: the test puts the venv first)."""
    text = (REPO / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))
    stage = text[text.index("AS runtime") :]
    block = re.search(r"^ENV ((?:.*\\\n)*.*)$", stage, re.MULTILINE).group(1).replace("\\\n", " ")
    env = dict(pair.split("=", 1) for pair in block.split())
    env.pop("PATH")
    return cmd, env


def config_maps() -> dict[str, dict[str, str]]:
    maps = {}
    for path in DEPLOY.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ConfigMap":
                maps[doc["metadata"]["name"]] = {k: str(v) for k, v in (doc.get("data") or {}).items()}
    return maps


def server_containers() -> list[ServerContainer]:
    image_cmd, image_env = dockerfile_runtime()
    maps = config_maps()
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            pod = doc["spec"]["template"]["spec"]
            for container in pod["containers"]:
                if not container["image"].startswith("kerasserve"):
                    continue
                env = dict(image_env)
                for source in container.get("envFrom", []):
                    env.update(maps[source["configMapRef"]["name"]])
                for item in container.get("env", []):
                    if "value" in item:
                        env[item["name"]] = str(item["value"])
                    elif not item["valueFrom"].get("secretKeyRef", {}).get("optional", False):
                        ref = item["valueFrom"].get("secretKeyRef", {})
                        value = SECRETS.get((ref.get("name"), ref.get("key")))
                        if value is None:
                            raise AssertionError(f"{path}: {item['name']} needs a secret the test cannot provide")
                        env[item["name"]] = value
                security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
                models_dir = env["MODELS_DIR"]
                mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
                volumes = {v["name"]: v for v in pod.get("volumes", [])}
                if models_dir in mounts:
                    volume = volumes[mounts[models_dir]["name"]]
                    kind = next(k for k in volume if k != "name")
                    read_only = bool(mounts[models_dir].get("readOnly", False))
                else:
                    raise AssertionError(f"{path}: nothing is mounted at MODELS_DIR={models_dir}")
                limits = container.get("resources", {}).get("limits", {})
                found.append(
                    ServerContainer(
                        manifest=f"{path.relative_to(REPO)}",
                        command=container.get("command", image_cmd) + container.get("args", []),
                        env=env,
                        user=security.get("runAsUser"),
                        group=security.get("runAsGroup"),
                        fs_group=security.get("fsGroup"),
                        mount=kind,
                        read_only=read_only,
                        gpus=int(limits.get("nvidia.com/gpu", 0)),
                    )
                )
    return found


CONTAINERS = server_containers()


def test_every_server_manifest_is_covered() -> None:
    assert {c.manifest for c in CONTAINERS} == {
        "deploy/kubernetes/deployment.yaml",
        "deploy/kubernetes/gpu/deployment.yaml",
        "deploy/kubernetes/object-storage/deployment.yaml",
    }  # deploy/kserve/'s ClusterServingRuntime: tests/e2e/test_kserve_runtime.py


def gpu_visible() -> bool:
    return (
        shutil.which("nvidia-smi") is not None
        and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    inputs = keras.Input((4,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="scores")(inputs))
    path = tmp_path_factory.mktemp("manifest-model") / "tiny.keras"
    model.save(path)
    return path


@pytest.fixture
def mounted_models(tiny_model: Path) -> Iterator[Callable[[ServerContainer], Path]]:
    """Factory: a models folder made the way Kubernetes mounts the container's volume, holding `tiny.keras`."""
    made: list[Path] = []
    mounts = contextlib.ExitStack()

    def make(container: ServerContainer) -> Path:
        base = Path(tempfile.mkdtemp(prefix="kerasserve-manifest-"))  # under /tmp, reachable by any uid
        base.chmod(0o755)
        made.append(base)
        models = base / "models"
        models.mkdir()
        shutil.copy2(tiny_model, models / "tiny.keras")
        (models / "tiny.keras").chmod(0o644)
        if container.mount == "emptyDir":
            models.chmod(0o777)  # how the kubelet creates every emptyDir
        elif container.fs_group is not None and os.geteuid() == 0:
            os.chown(models, 0, container.fs_group)  # fsGroup: group-owned, setgid, group-writable
            models.chmod(0o2775)
        if container.read_only:
            mounts.enter_context(read_only_mount(models))  # what `readOnly: true` makes of the volume
        return models

    with mounts:
        yield make
    for base in made:
        shutil.rmtree(base, ignore_errors=True)


def environment(container: ServerContainer, models: Path, port: int, grpc_port: int = 0) -> dict[str, str]:
    """The container's environment; only PORT and (when the manifest keeps gRPC on) GRPC_PORT differ: free ports here."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent" if container.user not in (None, 0) else os.environ.get("HOME", "/root"),
        **container.env,
        "MODELS_DIR": str(models),
        "PORT": str(port),
    }
    if env.get("GRPC_PORT", "8500") != "0":
        env["GRPC_PORT"] = str(grpc_port or free_port())
    return env


def grpc_serving(port: int) -> bool:
    """Whether grpc.health.v1.Health answers SERVING on `port`."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return check.status == health_pb2.HealthCheckResponse.SERVING


@functools.cache
def can_run_as(user: int, group: int) -> bool:
    """Whether this Python (and so the venv) can run as `user`: needs root here, and an interpreter
    that user can reach (a pyenv under a private /root cannot be)."""
    if os.geteuid() != 0:
        return False
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import flask, tensorflow"],
            user=user,
            group=group,
            capture_output=True,
            cwd=REPO,
            timeout=120,
        )
    except PermissionError:
        return False
    return result.returncode == 0


def identity(container: ServerContainer) -> dict[str, object]:
    """Popen arguments running the server as the manifest's user, where this machine allows it.

    Where it does not (not root, or the interpreter is unreachable for that uid), the server runs as
    this user and a warning in the test summary says so.
    """
    if container.user is None:
        return {}
    group = container.group or container.user
    if not can_run_as(container.user, group):
        warnings.warn(
            f"{container.manifest}: ran as uid {os.geteuid()}, not the manifest's {container.user}: "
            "this machine cannot run the venv's Python as that user",
            stacklevel=2,
        )
        return {}
    groups = [container.fs_group] if container.fs_group is not None else []
    return {"user": container.user, "group": group, "extra_groups": groups}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def serve_as_manifest(container: ServerContainer, env: dict[str, str], port: int, log_path: Path):
    """The container's command, run from the repository root (the image's /app) as its user."""
    return serve(
        container.command,
        cwd=REPO,
        env=env,
        url=f"http://127.0.0.1:{port}",
        log_path=log_path,
        timeout_s=300,
        **identity(container),
    )


def predict_tiny(server: Server, token: str | None = None) -> None:
    """The tiny model answers a prediction (with the bearer token when the manifest sets one): two softmax scores."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = server.post("/models/tiny/predict", json={"instances": [[1.0, 2.0, 3.0, 4.0]]}, headers=headers)
    assert response.status_code == 200, response.text
    (scores,) = response.json()["predictions"]
    assert len(scores) == 2 and abs(sum(scores) - 1.0) < 1e-5


@pytest.mark.parametrize("container", [c for c in CONTAINERS if not c.gpus], ids=lambda c: c.manifest)
def test_manifest_starts_the_server_and_it_answers_a_prediction(
    container: ServerContainer, mounted_models, tmp_path: Path
) -> None:
    models = mounted_models(container)
    before = snapshot(models)
    port, grpc_port = free_port(), free_port()
    env = environment(container, models, port, grpc_port)
    with serve_as_manifest(container, env, port, tmp_path / "server.log") as server:
        # Ready means every worker is (WORKERS=2 here): the first prediction must succeed.
        if env.get("AUTH_TOKEN"):  # the Secret the manifest requires is really used: no token, no answer
            assert server.post("/models/tiny/predict", json={"instances": [[1.0, 2.0, 3.0, 4.0]]}).status_code == 401
        predict_tiny(server, env.get("AUTH_TOKEN"))
        if env.get("GRPC_PORT", "0") != "0":  # ready over HTTP: ready over gRPC too
            assert grpc_serving(grpc_port)
    if container.read_only:
        assert snapshot(models) == before, "the server wrote into a read-only mount"


@pytest.mark.parametrize("container", [c for c in CONTAINERS if c.gpus], ids=lambda c: c.manifest)
def test_gpu_manifest_serves_on_a_gpu_or_says_clearly_there_is_none(
    container: ServerContainer, mounted_models, tmp_path: Path
) -> None:
    assert container.env.get("DEVICE") == "gpu" and container.env.get("WORKERS") == "1"
    models = mounted_models(container)
    port = free_port()
    env = environment(container, models, port)
    if gpu_visible():
        with serve_as_manifest(container, env, port, tmp_path / "server.log") as server:
            predict_tiny(server, env.get("AUTH_TOKEN"))
        return
    # No GPU here: the manifest's DEVICE=gpu must stop the server with a message saying so, not serve on CPU.
    result = subprocess.run(
        container.command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, **identity(container)
    )
    assert result.returncode != 0
    assert "DEVICE=gpu but TensorFlow sees no GPU" in result.stdout + result.stderr, (result.stdout + result.stderr)[
        -3000:
    ]
