"""Sandbox: load a model file whose Lambda layers hold Python code in a disposable subprocess first.

A Lambda layer stores the marshalled bytecode of a Python function, and loading the model runs it
(Keras calls every Lambda while it rebuilds a functional model). Bytecode written by another Python
version, or crafted, can crash the interpreter (SIGSEGV) instead of raising (docs/keras-loading.md,
fact 4), which would kill the gunicorn worker and every request in it. So before the worker loads
such a file, `probe()` loads it, and calls it once on zeros, in a child Python process
(`python -m service.sandbox`) with the same settings, plugins and model config. When the child dies
by a signal, times out or reports a load error, the version fails with that reason and the worker
never runs the code; when it succeeds, the worker loads the file itself. The probe is keyed on the
content's hash (`quarantine.content_hash`): the child loads only that content (else it answers that the
file changed), and the builder hashes the file again before the worker loads it. A crash or a timeout
raises `ModelCrashed`, which the builder remembers by that hash.

`lambda_layers()` is the cheap test that decides whether a probe is needed: it reads only the
model's config (zip `config.json`, HDF5 `model_config` attribute or architecture JSON), so files
without stored Lambda code (most models, and every SavedModel) cost one small read. Bytecode this
Python cannot unmarshal is not probed: the loader refuses it before running anything. The parent side
imports neither Flask nor TensorFlow; the child imports the loader and the runner.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from service import errors, lambda_code, quarantine
from service.errors import ModelCrashed, ModelLoadError, strip_paths
from service.formats import HDF5_MAGIC, ZIP_MAGIC, check_model_files, check_zip, walk_folder
from service.model_config import ModelConfig
from service.settings import Settings

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""Folder holding the `service` package: the child's PYTHONPATH."""
_RESULT_ERRORS = {cls.__name__: cls for cls in (ModelLoadError, errors.MissingCustomObject, errors.UnsafeModelRefused)}
_STDERR_TAIL_BYTES = 4000
CHILD_ENV_NAMES = frozenset(
    {"PATH", "PYTHONPATH", "PYTHONHOME", "LD_LIBRARY_PATH", "HOME", "TMPDIR", "TMP", "TEMP", "LANG", "LANGUAGE", "TZ"}
)
"""Environment variables the probe child inherits, besides those starting with `CHILD_ENV_PREFIXES`."""
CHILD_ENV_PREFIXES = ("LC_", "TF_", "KERAS_", "CUDA_", "XLA_", "OMP_", "MKL_")
_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY", "PRIVATE")
"""A variable whose name holds one of these never reaches the child, even with an allowed prefix."""
_CHILD_SETTINGS_EXCLUDED = {"auth_token"}
"""Settings the child is not told (it serves nothing, so it needs no token)."""


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The probe child's environment: what Python and TensorFlow need, never the server's secrets.

    Only `CHILD_ENV_NAMES` and names starting with `CHILD_ENV_PREFIXES` pass, unless the name holds
    a secret-looking word (`AUTH_TOKEN`, `AWS_SECRET_ACCESS_KEY`, `TF_..._TOKEN` never do). The child
    gets its settings from the request file, so it needs no other variable; `PYTHONPATH` starts with
    this package, `CUDA_VISIBLE_DEVICES` is empty (no GPU) and `PROMETHEUS_MULTIPROC_DIR` is dropped.
    """
    env = {
        name: value
        for name, value in environ.items()
        if (name in CHILD_ENV_NAMES or name.startswith(CHILD_ENV_PREFIXES))
        and not any(word in name.upper() for word in _SECRET_WORDS)
    }
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["CUDA_VISIBLE_DEVICES"] = ""  # the probe never needs (or takes memory from) a GPU
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


# --- is a probe needed? ----------------------------------------------------------------------------
def lambda_layers(path: Path) -> tuple[str, ...]:
    """Return the names of the Lambda layers whose stored Python code would run when `path` loads.

    Reads only the model config: a `.keras` zip's `config.json`, a full-model HDF5 file's
    `model_config` attribute, or the architecture JSON files of a model folder. Returns () for
    SavedModels, weights-only files, Lambda layers that wrap a registered function, and anything
    unreadable (the loader reports those).
    """
    names: list[str] = []
    for config in _model_configs(Path(path)):
        for layer in _walk_dicts(config):
            if layer.get("class_name") == "Lambda" and lambda_code.runs_stored_code(layer.get("config")):
                cfg = layer.get("config") or {}
                names.append(str(cfg.get("name") or layer.get("name") or "?"))
    return tuple(dict.fromkeys(names))


def _walk_dicts(value: Any) -> Iterator[dict]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _model_configs(path: Path) -> list[Any]:
    check_model_files(path)  # a FIFO would block the reads below: refused first
    files = [path] if path.is_file() else walk_folder(path).files if path.is_dir() else []
    configs: list[Any] = []
    for file in files:
        try:
            configs.extend(_file_config(file))
        except Exception as err:  # noqa: BLE001 - unreadable files are the loader's to report
            log.debug("cannot read the model config of %s: %s", file.name, err)
    return configs


def _file_config(file: Path) -> list[Any]:
    with file.open("rb") as stream:
        magic = stream.read(8)
    if magic.startswith(ZIP_MAGIC):
        check_zip(file)
        with zipfile.ZipFile(file) as archive:
            if "config.json" not in archive.namelist():
                return []
            return [json.loads(archive.read("config.json"))]
    if magic == HDF5_MAGIC:
        import h5py

        with h5py.File(file, "r") as handle:
            raw = handle.attrs.get("model_config")
        if raw is None:
            return []
        return [json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)]
    if file.suffix.lower() == ".json" and file.stat().st_size < 64 * 1024 * 1024:
        text = file.read_text(encoding="utf-8", errors="replace")
        if '"Lambda"' in text:
            return [json.loads(text)]
    return []


def lambda_allowed(config: ModelConfig | None, settings: Settings) -> bool:
    """Tell whether the loader would run Lambda code at all (the model's `allow_lambda`, else ALLOW_LAMBDA)."""
    value = getattr(config, "allow_lambda", None) if config is not None else None
    return settings.allow_lambda if value is None else bool(value)


def needs_probe(path: Path, config: ModelConfig | None, settings: Settings) -> tuple[str, ...]:
    """Return the Lambda layers that make a probe necessary for `path`, or () when none is needed.

    None is needed when LAMBDA_PROBE is off, when Lambda code is refused anyway (ALLOW_LAMBDA off:
    the loader refuses the file before running anything), or when the file stores no Lambda code.
    """
    if not settings.lambda_probe or not lambda_allowed(config, settings):
        return ()
    replaced = set(config.lambdas) if config is not None else set()  # replacements run instead of the stored code
    return tuple(name for name in lambda_layers(path) if name not in replaced)


# --- the probe (parent side) -----------------------------------------------------------------------
def probe(
    path: Path, config: ModelConfig | None, settings: Settings, *, layers: tuple[str, ...] = (), digest: str = ""
) -> float:
    """Load `path` and call it once in a child process; return the seconds it took.

    Args:
        path: the model file or version folder, as the loader gets it.
        digest: its content hash: the child loads only that content ("" = whatever it finds).
        config: the model's config (plugins, globals, Lambda replacements), passed to the child.
        settings: the service settings; the child uses them with DEVICE=cpu.
        layers: the Lambda layers found (named in error messages).

    Raises:
        ModelCrashed: the child crashed (signal) or timed out.
        ModelLoadError: the child exited without an answer, or reported a load error (then the same
            class and message the loader raised there), or the content is not `digest`.
    """
    path = Path(path).absolute()  # the child runs in a temporary folder
    started = time.monotonic()
    name = path.name
    what = f"Lambda layer(s) {', '.join(repr(n) for n in layers)}" if layers else "its Lambda layers"
    with tempfile.TemporaryDirectory(prefix="kerasserve-probe-") as tmp:
        request_file, result_file, stderr_file = (
            Path(tmp, "request.json"),
            Path(tmp, "result.json"),
            Path(tmp, "stderr.txt"),
        )
        request_file.write_text(
            json.dumps(
                {
                    "path": str(path),
                    "digest": digest,
                    "config": config.model_dump(mode="json") if config is not None else None,
                    "settings": settings.model_dump(mode="json", exclude=_CHILD_SETTINGS_EXCLUDED),
                }
            ),
            encoding="utf-8",
        )
        env = child_environment(os.environ)
        with stderr_file.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "service.sandbox", str(request_file), str(result_file), str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                env=env,
                cwd=tmp,
                start_new_session=True,
                close_fds=True,
            )
            try:
                returncode = process.wait(timeout=settings.lambda_probe_timeout_s)
            except subprocess.TimeoutExpired:
                _kill(process)
                raise ModelCrashed(
                    f"{name}: loading it in the Lambda probe subprocess took longer than "
                    f"{settings.lambda_probe_timeout_s:g}s (LAMBDA_PROBE_TIMEOUT_S); not loaded into the server"
                ) from None
            finally:
                if process.poll() is None:
                    _kill(process)
        elapsed_s = time.monotonic() - started
        result = _read_json(result_file)
        if returncode < 0:
            signum = -returncode
            raise ModelCrashed(
                f"{name}: the Lambda probe subprocess crashed with signal {signum} ({_signal_name(signum)}) while "
                f"loading it, so it was not loaded into the server. The Python code stored in {what} cannot run on "
                f"this Python ({sys.version_info.major}.{sys.version_info.minor}): it was probably saved by another "
                "Python version. Re-save the model with this Python version, or register a replacement with "
                "register_lambda('<layer name>', fn) in a plugin (or `lambdas:` in the model's config)"
            )
        if result and result.get("ok"):
            log.info("%s: Lambda probe passed in %.2fs (%s)", name, elapsed_s, what)
            return elapsed_s
        if result and result.get("error"):
            cls = _RESULT_ERRORS.get(str(result.get("kind")), ModelLoadError)
            raise cls(
                str(result["error"]),
                missing=tuple(result.get("missing") or ()),
                format=str(result.get("format") or ""),
                tried=tuple(result.get("tried") or ()),
            )
        tail = _last_line(stderr_file)
        raise ModelLoadError(
            f"{name}: the Lambda probe subprocess exited with status {returncode} without an answer"
            + (f" ({tail})" if tail else "")
        )


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown signal"


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _last_line(path: Path) -> str:
    """Last non-empty line of the child's output, without file-system paths (shown to clients)."""
    try:
        with path.open("rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(0, stream.tell() - _STDERR_TAIL_BYTES))
            lines = [line.strip() for line in stream.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    if not lines:
        return ""
    return strip_paths(lines[-1])[:300]


# --- the child -----------------------------------------------------------------------------------
def _exit_with_parent(parent_pid: int) -> None:
    """End this process when the worker that started it is gone (it runs in its own session)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _child(request_file: Path, result_file: Path) -> int:
    """Load the model described in `request_file` and call it once; write the outcome to `result_file`."""
    request = json.loads(request_file.read_text(encoding="utf-8"))
    settings = Settings(**{**request["settings"], "device": "cpu", "lambda_probe": False})
    config = ModelConfig.model_validate(request["config"]) if request.get("config") is not None else None
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from service.custom_objects import CustomObjectRegistry
    from service.loader import Loader
    from service.runner import InferenceRunner, configure_tensorflow, device_scope

    device = configure_tensorflow(settings)
    loader = Loader(CustomObjectRegistry.from_plugins(settings), settings)
    try:
        path = Path(request["path"])
        if request.get("digest") and quarantine.content_hash(path) != request["digest"]:
            raise ModelLoadError(f"{path.name} changed while it was probed; it is probed again once it settles")
        with device_scope(device):
            loaded = loader.load(Path(request["path"]), config)
    except ModelLoadError as err:
        result_file.write_text(
            json.dumps(
                {
                    "ok": False,
                    "kind": type(err).__name__,
                    "error": str(err),
                    "missing": list(err.missing),
                    "format": err.format,
                    "tried": list(err.tried),
                }
            ),
            encoding="utf-8",
        )
        return 3
    # Call every signature once, as the worker's warm-up will: some bytecode crashes only when called.
    for signature_name in loaded.signatures:
        try:
            InferenceRunner(loaded, signature_name, device=device, allowed_batch_sizes=(1,)).warm_up()
        except Exception as err:  # noqa: BLE001 - the worker's own warm-up reports ordinary failures
            log.warning("warm-up of %r failed: %s", signature_name, err)
    result_file.write_text(json.dumps({"ok": True}), encoding="utf-8")
    return 0


if __name__ == "__main__":
    _exit_with_parent(int(sys.argv[3]))
    sys.exit(_child(Path(sys.argv[1]), Path(sys.argv[2])))
