"""The KServe serving runtime as a contract: its container, run here exactly as KServe would run it.

For each InferenceService example in deploy/kserve/ (a `.keras` file, a Keras 2 `.h5` whose custom
layer comes from a ConfigMap plugin, a TF Serving version folder `1/saved_model.pb`), the test
reads deploy/kserve/clusterservingruntime.yaml: the container's command and args with KServe's
substitutions (`{{.Name}}` -> `flowers`, `/mnt/models` -> the model folder; the two ports -> free
ports), the image's ENV (Dockerfile), the runtime's env and the InferenceService's env, and the
container's `runAsUser`. The model folder is made as KServe's storage initializer leaves it: the
downloaded file or folder in an emptyDir (mode 0777), which the predictor mounts read-only (here a
real read-only bind mount); the ConfigMap is written to a folder standing in for its mount path.

The server must answer `/v1/models/flowers:predict` and `/v2/models/flowers/infer` (tritonclient),
and KServe v2's ModelInfer over gRPC (tritonclient.grpc), with the model's exact outputs, report
SERVING over gRPC's health service, run as the manifest's uid, and leave the
folder as it found it.

Running as the uid: the suite runs as root, but this machine's Python lives under a private /root,
which uid 10001 cannot reach; then the command runs through `setpriv` as uid/gid 10001 with only
CAP_DAC_READ_SEARCH kept (it may read the interpreter; it writes and owns nothing as root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from tests.conftest import REPO, read_only_mount
from tests.e2e.conftest import Server, free_port, serve
from tests.e2e.test_manifests import can_run_as, dockerfile_runtime, grpc_serving, snapshot

KSERVE = REPO / "deploy" / "kserve"
RUNTIME = KSERVE / "clusterservingruntime.yaml"
KSERVE_MODEL_MOUNT = "/mnt/models"
NAME = "flowers"
X = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], dtype=np.float32)
KERNEL = (np.arange(12, dtype=np.float32).reshape(4, 3) - 6.0) / 10.0
BIAS = np.array([0.1, -0.2, 0.3], dtype=np.float32)
H5_FACTOR = 2.0  # the Keras 2 model's custom `Scale` layer


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def runtime_container() -> dict:
    ((container,),) = [d["spec"]["containers"] for d in documents(RUNTIME) if d["kind"] == "ClusterServingRuntime"]
    return container


@dataclass(frozen=True)
class Example:
    """One InferenceService example: its model spec and the ConfigMaps of its file."""

    manifest: str
    model: dict
    volumes: dict[str, dict]
    config_maps: dict[str, dict[str, str]]

    @property
    def layout(self) -> str:
        suffix = Path(self.model["storageUri"]).suffix
        return suffix.lstrip(".") or "version-folder"


def examples() -> list[Example]:
    found = []
    for path in sorted(KSERVE.glob("*.yaml")):
        docs = documents(path)
        maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
        for doc in docs:
            if doc["kind"] == "InferenceService":
                predictor = doc["spec"]["predictor"]
                volumes = {v["name"]: v for v in predictor.get("volumes", [])}
                found.append(Example(path.name, predictor["model"], volumes, maps))
    return found


EXAMPLES = examples()


def test_the_three_storage_layouts_are_covered() -> None:
    assert sorted(e.layout for e in EXAMPLES) == ["h5", "keras", "version-folder"]


# --- the models, as a user trains and uploads them --------------------------------------------------


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    """Per layout: what the storageUri points at (a file or a folder) and the outputs the model must give for X."""
    import keras
    import tf_keras

    root = tmp_path_factory.mktemp("kserve-uploads")
    inputs = keras.Input((4,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="scores")(inputs))
    model.get_layer("scores").set_weights([KERNEL, BIAS])
    model.save(root / "flowers.keras")
    expected = softmax(X @ KERNEL + BIAS)

    exported = root / "savedmodel"
    model.export(str(exported / "1"), verbose=False)  # TF Serving layout: <base>/1/saved_model.pb

    class Scale(tf_keras.layers.Layer):
        """The training script's layer; the ConfigMap's plugin is its Keras 3 twin (same name and config)."""

        def __init__(self, factor: float = 2.0, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x: object) -> object:
            return x * self.factor

        def get_config(self) -> dict:
            return {**super().get_config(), "factor": self.factor}

    inputs2 = tf_keras.Input((4,), name="features")
    dense = tf_keras.layers.Dense(3, name="logits")
    scaled = Scale(H5_FACTOR, name="scale")(dense(inputs2))
    keras2 = tf_keras.Model(inputs2, tf_keras.layers.Activation("softmax", name="scores")(scaled))
    dense.set_weights([KERNEL, BIAS])
    keras2.save(root / "flowers.h5")
    expected_h5 = softmax(H5_FACTOR * (X @ KERNEL + BIAS))
    np.testing.assert_allclose(np.asarray(keras2(X)), expected_h5, rtol=1e-5, atol=1e-6)
    return {
        "keras": (root / "flowers.keras", expected),
        "h5": (root / "flowers.h5", expected_h5),
        "version-folder": (exported, expected),
    }


@contextlib.contextmanager
def storage_initializer(upload: Path) -> Iterator[Path]:
    """/mnt/models as the predictor sees it: the download in a 0777 emptyDir, mounted read-only."""
    base = Path(tempfile.mkdtemp(prefix="kerasserve-kserve-"))  # under /tmp, reachable by any uid
    try:
        base.chmod(0o755)
        models = base / "mnt-models"
        if upload.is_dir():  # a folder storageUri: its contents land in /mnt/models
            shutil.copytree(upload, models)
        else:  # a file storageUri: /mnt/models/<file name>
            models.mkdir()
            shutil.copy2(upload, models / upload.name)
        for folder, dirs, files in os.walk(models):
            for name in dirs:
                os.chmod(os.path.join(folder, name), 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
        models.chmod(0o777)  # the kubelet makes every emptyDir world-writable
        with read_only_mount(models):
            yield models
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def config_map_mounts(example: Example) -> Iterator[dict[str, str]]:
    """Write each ConfigMap volume the model mounts to a read-only folder; map its mountPath to that folder."""
    paths: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for mount in example.model.get("volumeMounts", []):
            volume = example.volumes[mount["name"]]
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kerasserve-configmap-")))
            folder.chmod(0o755)
            for key, text in example.config_maps[volume["configMap"]["name"]].items():
                (folder / key).write_text(text)
                (folder / key).chmod(0o644)
            stack.enter_context(read_only_mount(folder))
            paths[mount["mountPath"]] = str(folder)
        yield paths


# --- the container, as KServe runs it --------------------------------------------------------------


def kserve_command(container: dict, models: Path, http_port: int, grpc_port: int) -> list[str]:
    """The container's command and args after KServe's substitutions; only the two ports are ours."""
    ports = {"--http_port": http_port, "--grpc_port": grpc_port}
    args = []
    for arg in container["args"]:
        arg = arg.replace("{{.Name}}", NAME).replace(KSERVE_MODEL_MOUNT, str(models))
        option = arg.split("=", 1)[0]
        args.append(f"{option}={ports[option]}" if option in ports else arg)
    assert f"--model_name={NAME}" in args and f"--model_dir={models}" in args
    assert all(f"{option}=" in " ".join(args) for option in ports), "the runtime sets both ports"
    return [*container["command"], *args]


def kserve_environment(container: dict, example: Example, mounts: dict[str, str]) -> dict[str, str]:
    """The image's ENV, then the runtime's env, then the InferenceService's (KServe merges them in that order)."""
    _, image_env = dockerfile_runtime()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",
        **image_env,
    }
    for item in [*container.get("env", []), *example.model.get("env", [])]:
        value = str(item["value"])
        for mount_path, folder in mounts.items():
            value = value.replace(mount_path, folder)
        env[item["name"]] = value
    return env


def as_user(container: dict) -> list[str]:
    """A prefix running the command as the container's `runAsUser` (see the module docstring)."""
    security = container["securityContext"]
    assert security["runAsNonRoot"]
    user, group = security["runAsUser"], security.get("runAsGroup", security["runAsUser"])
    if os.geteuid() != 0:
        pytest.skip("running as the manifest's uid needs root here")
    prefix = ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups"]
    if not can_run_as(user, group):
        prefix += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return prefix


def process_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[2])


def v1_predict(server: Server) -> np.ndarray:
    response = server.post(f"/v1/models/{NAME}:predict", json={"instances": X.tolist()})
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["predictions"], dtype=np.float32)


def v2_infer(port: int) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        assert client.is_model_ready(NAME)
        metadata = client.get_model_metadata(NAME)
        (inp,) = metadata["inputs"]
        (out,) = metadata["outputs"]
        tensor = httpclient.InferInput(inp["name"], list(X.shape), inp["datatype"])
        tensor.set_data_from_numpy(X.astype(np.float32))
        result = client.infer(NAME, [tensor], outputs=[httpclient.InferRequestedOutput(out["name"])])
        return result.as_numpy(out["name"])
    finally:
        client.close()


def v2_grpc_infer(port: int) -> np.ndarray:
    """The same inference over gRPC (grpc-v2, the runtime's second port), with tritonclient.grpc."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        metadata = client.get_model_metadata(NAME, as_json=True)
        (inp,) = metadata["inputs"]
        (out,) = metadata["outputs"]
        tensor = grpcclient.InferInput(inp["name"], list(X.shape), inp["datatype"])
        tensor.set_data_from_numpy(X.astype(np.float32))
        result = client.infer(NAME, [tensor], outputs=[grpcclient.InferRequestedOutput(out["name"])])
        return result.as_numpy(out["name"])
    finally:
        client.close()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.layout)
def test_runtime_container_serves_the_example_under_its_name(example: Example, uploads, tmp_path: Path) -> None:
    container = runtime_container()
    upload, expected = uploads[example.layout]
    http_port, grpc_port = free_port(), free_port()
    with storage_initializer(upload) as models, config_map_mounts(example) as mounts:
        before = snapshot(models)
        command = as_user(container) + kserve_command(container, models, http_port, grpc_port)
        env = kserve_environment(container, example, mounts)
        with serve(
            command,
            cwd=REPO,
            env=env,
            url=f"http://127.0.0.1:{http_port}",
            log_path=tmp_path / "server.log",
            timeout_s=300,
        ) as server:
            assert process_uid(server.process.pid) == container["securityContext"]["runAsUser"]
            np.testing.assert_allclose(v1_predict(server), expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(v2_infer(http_port), expected, rtol=1e-5, atol=1e-6)
            assert grpc_serving(grpc_port)
            np.testing.assert_allclose(v2_grpc_infer(grpc_port), expected, rtol=1e-5, atol=1e-6)
            models_listed = requests.get(f"{server.url}/v1/models/{NAME}", timeout=10).json()
            assert models_listed["model_version_status"][0]["state"] == "AVAILABLE"
            assert server.get("/v1/models/1").status_code == 404  # a version folder is never a model
        assert snapshot(models) == before, "the server wrote into the read-only model mount"
        assert "refusing to load" not in server.log()
