"""Static checks of what ships: the Dockerfile (hadolint), the Kubernetes and KServe manifests
(kubernetes-validate, offline schemas), the probes and timeouts they promise, and the object-storage
sync script (run for real against a local "bucket").

No Docker engine or cluster runs here, so these checks keep the files honest: the image installs and
starts the way `make run` does, every manifest matches the Kubernetes API schema, and every setting
a manifest passes is one `Settings` accepts.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.serve import settings_environment
from service.settings import Settings
from tests.conftest import REPO

KUBERNETES_VERSION = "1.37.0"
DEPLOY = REPO / "deploy"
DOCKERFILE = REPO / "Dockerfile"
MANIFESTS = sorted(path for path in DEPLOY.rglob("*.yaml"))
CONFIGMAP = DEPLOY / "kubernetes" / "configmap.yaml"
SYNC_CONFIGMAP = DEPLOY / "kubernetes" / "object-storage" / "sync-configmap.yaml"

KSERVE = DEPLOY / "kserve"
KSERVE_SCHEMAS = REPO / "tests" / "data" / "kserve"  # vendored from KServe's published CRDs (README.md there)
KSERVE_KINDS = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "clusterservingruntime.v1alpha1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.v1beta1.json",
}
KUBERNETES_DEFAULT_GRACE_S = 30  # a pod's terminationGracePeriodSeconds when nothing sets it


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_documents(kind: str) -> list[tuple[Path, dict]]:
    return [(path, doc) for path in MANIFESTS for doc in documents(path) if doc["kind"] == kind]


def tool(name: str) -> str:
    """Path of a command-line tool installed by requirements-dev.txt (next to this Python, or on PATH)."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `pip install -r requirements-dev.txt` (or `make test`)")
    return found


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, f"hadolint found problems:\n{result.stdout}{result.stderr}"


def test_hadolint_reports_a_broken_dockerfile(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:latest\nRUN cd /app && pip install flask\n")
    result = subprocess.run([tool("hadolint"), "--no-color", str(broken)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # `latest` tag


def makefile_run_commands() -> list[str]:
    """The recipe lines of the Makefile's `run` target, with `$(VAR)/bin/` prefixes removed."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(re.sub(r"\$\([A-Z_]+\)(/bin/)?", "", line.strip()))
    return recipe


def test_image_installs_and_starts_like_make_run() -> None:
    dockerfile = DOCKERFILE.read_text()
    makefile = (REPO / "Makefile").read_text()
    assert "install --quiet -r requirements.txt" in makefile
    assert re.search(r"pip install --no-cache-dir -r \S*requirements\.txt", dockerfile)
    run = makefile_run_commands()
    assert any("-m service default-model --if-empty" in line for line in run)
    assert any(line.endswith("gunicorn wsgi:app") for line in run)
    cmd = re.search(r"^CMD (.+)$", dockerfile, re.MULTILINE).group(1)
    assert "python -m service default-model --if-empty && exec gunicorn wsgi:app" in cmd
    assert re.search(
        r'^HEALTHCHECK .*\\\n\s+CMD \["python", "/app/deploy/docker/healthcheck.py"\]', dockerfile, re.MULTILINE
    )
    assert "/healthz" in (DEPLOY / "docker" / "healthcheck.py").read_text()
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)
    assert 'VOLUME ["/models"]' in dockerfile
    assert re.search(r'tensorflow\[and-cuda\]==(\S+)"', dockerfile).group(1) == pinned("tensorflow")


def pinned(package: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in requirements.txt")


def dockerignore_allows(path: str) -> bool:
    """Whether `path` reaches the build context under .dockerignore (last matching pattern wins)."""
    allowed = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            allowed = negate
    return allowed


def test_dockerignore_sends_exactly_what_the_image_copies() -> None:
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            words = [w for w in line.split()[1:] if not w.startswith("--")]
            sources += words[:-1]
    assert sources, "no COPY from the build context found"
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY source {source} does not exist"
        files = [path] if path.is_file() else [f for f in path.rglob("*.py") if "__pycache__" not in f.parts]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            assert dockerignore_allows(relative), f".dockerignore keeps {relative} out of the build context"
    for private in (".venv/bin/python", ".git/HEAD", "models/digits.keras", "tests/conftest.py"):
        assert not dockerignore_allows(private), f".dockerignore lets {private} into the build context"


# --- Kubernetes and KServe manifests ------------------------------------------------------------


def strict(schema: object) -> object:
    """A CRD schema that refuses unknown fields, as `kubectl apply --validate=strict` does.

    CRD schemas leave `additionalProperties` out (the API server prunes unknown fields silently):
    every object with `properties` and no `additionalProperties` or
    `x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false`.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


@functools.cache
def kserve_validator(api_version: str, kind: str) -> jsonschema.Draft4Validator:
    schema = json.loads((KSERVE_SCHEMAS / KSERVE_KINDS[(api_version, kind)]).read_text())
    # Kubernetes' structural schemas are OpenAPI v3.0 schemas: Draft 4 keywords and semantics.
    return jsonschema.Draft4Validator(strict(schema), format_checker=None)


def validate_kserve(doc: dict) -> None:
    """Validate a KServe resource against KServe's CRD schema (strict: unknown fields are errors)."""
    validator = kserve_validator(doc["apiVersion"], doc["kind"])
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_matches_the_kubernetes_schema(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no manifest"
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in KSERVE_KINDS:
            validate_kserve(doc)
        else:
            # Raises SchemaNotFoundError for an unknown kind, so nothing is skipped silently.
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    "where, change",
    [
        ("runtime: a misspelt field", lambda d: d["spec"].update(supportedModelFormat=[])),
        ("runtime: a string priority", lambda d: d["spec"]["supportedModelFormats"][0].update(priority="high")),
        ("runtime: priority 0", lambda d: d["spec"]["supportedModelFormats"][0].update(priority=0)),
        (
            "runtime: a misspelt probe field",
            lambda d: d["spec"]["containers"][0]["livenessProbe"].update(periodSecondz=1),
        ),
        ("runtime: no containers", lambda d: d["spec"].pop("containers")),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_kserve_validation_rejects_a_broken_runtime(where: str, change) -> None:
    runtime = copy.deepcopy(kserve_runtime())
    change(runtime)
    with pytest.raises(AssertionError):
        validate_kserve(runtime)


def test_kserve_validation_rejects_a_broken_inference_service() -> None:
    (_, service), *_ = all_documents("InferenceService")
    broken = copy.deepcopy(service)
    broken["spec"]["predictor"]["model"]["storageURI"] = broken["spec"]["predictor"]["model"].pop("storageUri")
    with pytest.raises(AssertionError, match="storageURI"):
        validate_kserve(broken)
    broken = copy.deepcopy(service)
    del broken["spec"]["predictor"]["model"]["modelFormat"]["name"]
    with pytest.raises(AssertionError, match="'name' is a required property"):
        validate_kserve(broken)


def test_validation_rejects_a_misspelt_probe_field() -> None:
    _, deployment = all_documents("Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecondz"] = 10
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_manifests_cover_every_kind_the_issue_asks_for() -> None:
    kinds = {doc["kind"] for path in MANIFESTS for doc in documents(path)}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "ConfigMap",
        "PersistentVolumeClaim",
        "InferenceService",
        "ClusterServingRuntime",
    } <= kinds


def configmap_settings() -> dict[str, str]:
    (doc,) = documents(CONFIGMAP)
    return doc["data"]


def test_configmap_holds_only_valid_settings() -> None:
    data = configmap_settings()
    unknown = {key for key in data if key.lower() not in Settings.model_fields or key != key.upper()}
    assert not unknown, f"not Settings fields: {unknown}"
    settings = Settings(**{key.lower(): value for key, value in data.items()})  # a bad value raises
    assert str(settings.models_dir) == "/models"


def container_settings(container: dict) -> Settings:
    """The Settings a container runs with: the ConfigMap (when referenced), its `env` values, then `serve`'s args."""
    values: dict[str, str] = {}
    if any(ref.get("configMapRef", {}).get("name") == "kerasserve-config" for ref in container.get("envFrom", [])):
        values.update(configmap_settings())
    values.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    if container.get("command", [])[-1:] == ["serve"]:
        from_args, unknown = settings_environment(container.get("args", []))
        assert not unknown, f"arguments `serve` does not use: {unknown}"
        values.update(from_args)
    fields = {key.lower(): value for key, value in values.items() if key.lower() in Settings.model_fields}
    return Settings(**fields)


def server_pods() -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod template that runs kerasserve."""
    pods = [
        (str(path.relative_to(DEPLOY)), doc["spec"]["template"]["spec"]) for path, doc in all_documents("Deployment")
    ]
    pods += [(str(path.relative_to(DEPLOY)), doc["spec"]) for path, doc in all_documents("ClusterServingRuntime")]
    assert len(pods) >= 4
    return pods


def server_container(pod: dict) -> dict:
    return next(c for c in pod["containers"] if c["image"].startswith("kerasserve:"))


def port_of(container: dict, probe: dict) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
    return port


@pytest.mark.parametrize("where, pod", [pytest.param(w, p, id=w) for w, p in server_pods()])
def test_server_pod_probes_health_readiness_and_waits_for_slow_starts(where: str, pod: dict) -> None:
    container = server_container(pod)
    settings = container_settings(container)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    # TensorFlow's import plus the first-run training plus slow model loads: at least 5 minutes.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert port_of(container, container[probe]) == settings.port
    assert any(p["containerPort"] == settings.port for p in container["ports"])


@pytest.mark.parametrize("where, pod", [pytest.param(w, p, id=w) for w, p in server_pods()])
def test_termination_grace_outlasts_the_longest_request(where: str, pod: dict) -> None:
    container = server_container(pod)
    settings = container_settings(container)
    pre_stop_s = 0
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "exec" in pre_stop:
        assert pre_stop["exec"]["command"][0] == "sleep"
        pre_stop_s = int(pre_stop["exec"]["command"][1])
    assert settings.graceful_timeout_s >= settings.request_timeout_s
    # A ServingRuntime sets no pod fields: its pods get Kubernetes' default grace.
    grace = pod.get("terminationGracePeriodSeconds", KUBERNETES_DEFAULT_GRACE_S)
    assert grace > pre_stop_s + settings.graceful_timeout_s


def test_every_deployment_reads_the_auth_token_from_a_required_secret() -> None:
    # Auth is meant to be on: a missing Secret must stop the pod (CreateContainerConfigError), not start it
    # without a token, which `optional: true` did silently.
    deployments = [(w, p) for w, p in server_pods() if not w.startswith("kserve")]
    assert len(deployments) >= 3
    for where, pod in deployments:
        env = {e["name"]: e for e in server_container(pod).get("env", [])}
        assert "AUTH_TOKEN" in env, where
        ref = env["AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("kerasserve-auth", "token"), where
        assert ref.get("optional", False) is False, f"{where}: the auth Secret is optional"


def test_gpu_variant_asks_for_one_gpu_and_one_worker() -> None:
    (doc,) = documents(DEPLOY / "kubernetes" / "gpu" / "deployment.yaml")
    container = server_container(doc["spec"]["template"]["spec"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    settings = container_settings(container)
    assert settings.workers == 1
    assert settings.device == "gpu"


def test_service_and_autoscaler_point_at_the_deployment() -> None:
    (deployment,) = documents(DEPLOY / "kubernetes" / "deployment.yaml")
    (service,) = documents(DEPLOY / "kubernetes" / "service.yaml")
    (hpa,) = documents(DEPLOY / "kubernetes" / "hpa.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    container = server_container(deployment["spec"]["template"]["spec"])
    assert container["resources"]["requests"]["cpu"], "the HPA's CPU utilisation needs a CPU request"
    claim = deployment["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == documents(DEPLOY / "kubernetes" / "pvc.yaml")[0]["metadata"]["name"]


@pytest.mark.parametrize(
    "where, pod", [pytest.param(w, p, id=w) for w, p in server_pods() if not w.startswith("kserve")]
)
def test_kubernetes_pods_expose_the_grpc_port(where: str, pod: dict) -> None:
    container = server_container(pod)
    settings = container_settings(container)
    assert settings.grpc_port, "gRPC is on in the Kubernetes manifests"
    grpc = next(p for p in container["ports"] if p["name"] == "grpc")
    assert (grpc["containerPort"], grpc["protocol"]) == (settings.grpc_port, "TCP")


def test_service_routes_http_and_grpc_by_port_name() -> None:
    (service,) = documents(DEPLOY / "kubernetes" / "service.yaml")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["targetPort"] == "grpc" and ports["grpc"]["port"] == Settings().grpc_port
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"  # plaintext HTTP/2


# --- the KServe serving runtime and its InferenceServices ----------------------------------------


def kserve_runtime() -> dict:
    ((_, runtime),) = all_documents("ClusterServingRuntime")
    return runtime


def test_runtime_serves_keras_and_tensorflow_formats_with_auto_selection() -> None:
    formats = {(f["name"], f["version"]): f for f in kserve_runtime()["spec"]["supportedModelFormats"]}
    assert set(formats) == {("keras", "3"), ("keras", "2"), ("tensorflow", "2")}
    assert all(f["autoSelect"] for f in formats.values())
    # The only Keras runtime; below KServe's own TF Serving runtime (priority 2) for SavedModels.
    assert formats[("keras", "3")]["priority"] == formats[("keras", "2")]["priority"] == 2
    assert formats[("tensorflow", "2")]["priority"] == 1


def test_runtime_speaks_both_rest_and_both_grpc_protocols_on_its_ports() -> None:
    spec = kserve_runtime()["spec"]
    assert spec["protocolVersions"] == ["v1", "v2", "grpc-v1", "grpc-v2"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    settings = container_settings(container)
    assert (settings.port, settings.grpc_port) == (8080, 8081)  # KServe's conventional ports
    assert container["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(settings.port)


def test_runtime_passes_kserve_arguments_to_serve_and_runs_as_non_root() -> None:
    (container,) = kserve_runtime()["spec"]["containers"]
    assert container["command"] == ["python", "-m", "service", "serve"]
    assert "--model_name={{.Name}}" in container["args"]
    assert "--model_dir=/mnt/models" in container["args"]
    settings = container_settings(container)
    assert settings.model_name == "{{.Name}}" and str(settings.models_dir) == "/mnt/models"
    assert settings.workers is None  # one worker per GPU on GPU nodes
    assert not settings.allow_world_writable_models  # the read-only mount is safe without it
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] != 0
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_inference_services_name_a_format_of_the_runtime_and_cover_the_three_layouts() -> None:
    runtime = kserve_runtime()
    formats = {(f["name"], f["version"]) for f in runtime["spec"]["supportedModelFormats"]}
    uris = []
    for path, service in all_documents("InferenceService"):
        model = service["spec"]["predictor"]["model"]
        assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats, path
        assert model.get("runtime", runtime["metadata"]["name"]) == runtime["metadata"]["name"], path
        assert "containers" not in service["spec"]["predictor"], f"{path}: the runtime supplies the container"
        uris.append(model["storageUri"])
    assert sorted(Path(u).suffix for u in uris) == ["", ".h5", ".keras"]


def test_h5_example_mounts_its_plugin_from_the_configmap_beside_it() -> None:
    docs = documents(KSERVE / "flowers-h5-plugin.yaml")
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (service,) = [d for d in docs if d["kind"] == "InferenceService"]
    predictor = service["spec"]["predictor"]
    (volume,) = predictor["volumes"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    (mount,) = predictor["model"]["volumeMounts"]
    assert mount["name"] == volume["name"] and mount["readOnly"]
    env = {e["name"]: e["value"] for e in predictor["model"]["env"]}
    assert env["PYTHONPATH"] == mount["mountPath"]
    assert f"{env['MODEL_PLUGINS']}.py" in config_map["data"]


# --- the object-storage sync script: copy, then rename -------------------------------------------


@pytest.fixture
def sync(tmp_path: Path):
    """Run sync-models.sh --once with a stand-in `rclone` that copies a local folder (the bucket)."""
    (script_text,) = documents(SYNC_CONFIGMAP)[0]["data"].values()
    script = tmp_path / "sync-models.sh"
    script.write_text(script_text)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "rclone"
    # `rclone sync SRC DST ...`: make DST an exact copy of SRC.
    fake.write_text('#!/bin/sh\nset -eu\n[ "$1" = sync ]\nrm -rf "$3"\ncp -R "$2" "$3"\n')
    fake.chmod(0o755)
    bucket, models = tmp_path / "bucket", tmp_path / "models"
    bucket.mkdir()
    models.mkdir()

    def run() -> subprocess.CompletedProcess:
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "MODELS_REMOTE": str(bucket), "MODELS_DIR": str(models)}
        result = subprocess.run(["sh", str(script), "--once"], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result

    return bucket, models, run


def visible_tree(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    }


def test_sync_script_mirrors_the_bucket_and_leaves_no_partial_files(sync) -> None:
    bucket, models, run = sync
    (bucket / "digits.keras").write_bytes(b"model v1")
    (bucket / "digits.yaml").write_text("labels: [a]\n")
    (bucket / "plugins").mkdir()
    (bucket / "plugins" / "digits.py").write_text("SCALE = 1\n")
    (bucket / "resnet" / "1").mkdir(parents=True)
    (bucket / "resnet" / "1" / "model.keras").write_bytes(b"resnet 1")
    (bucket / "resnet" / "config.yaml").write_text("version_policy: all\n")

    output = run().stdout
    assert visible_tree(models) == visible_tree(bucket)
    assert "published" in output
    assert not [p for p in models.rglob(".*") if p.name != ".staging" and ".staging" not in p.parts]

    (bucket / "digits.keras").write_bytes(b"model v2")
    (bucket / "digits.yaml").unlink()
    (bucket / "resnet" / "2").mkdir()
    (bucket / "resnet" / "2" / "model.keras").write_bytes(b"resnet 2")
    run()
    assert visible_tree(models) == visible_tree(bucket)
    assert (models / "digits.keras").read_bytes() == b"model v2"
    assert not (models / "digits.yaml").exists()

    output = run().stdout
    assert "published" not in output and "removed" not in output  # nothing changed, nothing touched


def test_sync_script_publishes_nothing_when_the_copy_fails(sync, tmp_path: Path) -> None:
    bucket, models, run = sync
    (bucket / "digits.keras").write_bytes(b"model v1")
    run()
    shutil.rmtree(bucket)  # the stand-in rclone now fails, as a real one would on a lost bucket
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "MODELS_REMOTE": str(bucket), "MODELS_DIR": str(models)}
    result = subprocess.run(["sh", str(tmp_path / "sync-models.sh"), "--once"], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert (models / "digits.keras").read_bytes() == b"model v1"
