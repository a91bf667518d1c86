"""Security: the bearer-token check, the CORS policy, model-name checks and the models-folder permission check.

Pure decisions over plain values (paths, header values, settings); the API layer calls them from
its request hooks and the manager calls `check_models_dir` before it loads anything. Model files
and plugins are code (loading a Lambda layer runs the bytecode stored in the file), so whoever can
write to MODELS_DIR can run code in the server: `check_models_dir` refuses a folder every user can
write to (a read-only mount is safe whatever its mode bits say). See docs/security.md for the threat model. Imports neither Flask nor TensorFlow.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.errors import InsecureModelsDir, InvalidInput, Unauthorized
from service.settings import PLUGINS_FOLDER, Settings

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics", "/openapi.json"})
"""Routes that never need the bearer token: probes (kubelet sends no token), metrics and the API description."""
CONSOLE_PATH = "/"
CONSOLE_FILES = "/ui/"
"""The web console's page and the prefix of its files: static, no data in them, so open (a browser cannot send a
bearer token when it opens a page); the page asks for the token and sends it with every call it makes."""

CORS_ALLOWED_HEADERS = ("Authorization", "Content-Type", "X-Request-ID", "Inference-Header-Content-Length")
"""Request headers a browser may send cross-origin."""
CORS_EXPOSED_HEADERS = ("X-Request-ID", "Retry-After", "Inference-Header-Content-Length")
"""Response headers a cross-origin script may read."""
CORS_MAX_AGE_S = 600
MOUNTINFO = "/proc/self/mountinfo"
"""Where Linux lists this process's mounts: a read-only mount counts only if no writable one shows the same files."""

_MAX_SHOWN_NAME = 64


# --- authentication ------------------------------------------------------------------------------
def needs_token(path: str, method: str, settings: Settings) -> bool:
    """Tell whether a request must carry the bearer token: every route but probes, metrics, API docs, the console's files and preflights."""
    if not settings.auth_token:
        return False
    if method == "OPTIONS":
        return False  # CORS preflights never carry credentials; no route answers OPTIONS with data
    if path == "/metrics":
        return settings.metrics_need_token
    return path not in OPEN_PATHS and path != CONSOLE_PATH and not path.startswith(CONSOLE_FILES)


def check_bearer(authorization: str | None, settings: Settings) -> None:
    """Check an `Authorization` header against `Settings.auth_token` (constant-time comparison).

    Raises:
        Unauthorized: a token is configured and the header is missing, not `Bearer <token>`, or wrong.
    """
    token = settings.auth_token
    if not token:
        return
    if not authorization:
        raise Unauthorized("this route needs `Authorization: Bearer <token>` (AUTH_TOKEN is set)")
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("the Authorization header must be `Bearer <token>`")
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8")):
        raise Unauthorized("the bearer token is not valid")


# --- CORS ----------------------------------------------------------------------------------------
def cors_headers(
    origin: str | None, *, preflight: bool, requested_headers: str | None, settings: Settings
) -> dict[str, str]:
    """Return the CORS response headers for a request from `origin`; empty when CORS is off or the origin is not allowed.

    CORS is off unless `Settings.cors_origins` lists origins (`*` allows any origin, without
    credentials). A preflight (OPTIONS with Access-Control-Request-Method) also gets the allowed
    methods and headers.
    """
    allowed = settings.cors_origins
    if not allowed or not origin:
        return {}
    if "*" in allowed:
        allow_origin = "*"
    elif origin in allowed:
        allow_origin = origin
    else:
        return {}
    headers = {
        "Access-Control-Allow-Origin": allow_origin,
        "Access-Control-Expose-Headers": ", ".join(CORS_EXPOSED_HEADERS),
    }
    if allow_origin != "*":
        headers["Vary"] = "Origin"
    if preflight:
        headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        wanted = [h.strip() for h in (requested_headers or "").split(",") if h.strip()]
        known = {h.lower(): h for h in CORS_ALLOWED_HEADERS}
        headers["Access-Control-Allow-Headers"] = ", ".join(
            dict.fromkeys([*CORS_ALLOWED_HEADERS, *(known[h.lower()] for h in wanted if h.lower() in known)])
        )
        headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE_S)
    return headers


# --- names from URLs -----------------------------------------------------------------------------
def check_model_name(name: str) -> None:
    """Refuse a model name from a URL or query that no model can have ('..', '/', NUL, control or non-ASCII characters).

    Models are only ever looked up by name in the manager's map, never on disk, so this is defence
    in depth and a clearer answer than "does not exist".

    Raises:
        InvalidInput: the name holds characters model names never hold.
    """
    from service.repository import MODEL_NAME  # the one definition of a valid model name

    if name and MODEL_NAME.match(name):
        return
    shown = name[:_MAX_SHOWN_NAME].encode("ascii", "backslashreplace").decode("ascii")
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in shown)
    raise InvalidInput(
        f"model name '{shown}' is not valid: names start with a letter or digit and hold only letters, "
        "digits, '_', '-' and '.' (at most 128 characters)"
    )


def check_view_args(view_args: Mapping[str, object] | None, query_model: str | None) -> None:
    """Check the model name a route matched and the `?model=` query parameter, when present.

    The name is `<name>` in the native and KServe v2 routes, and the start of TF Serving's
    `<path:path>` (up to the first '/' or ':': `resnet/versions/2:predict`).

    Raises:
        InvalidInput: see `check_model_name`.
    """
    args = view_args or {}
    name = args.get("name")
    if isinstance(name, str):
        check_model_name(name)
    path = args.get("path")
    if isinstance(path, str):
        check_model_name(re.split("[/:]", path, maxsplit=1)[0])
    if query_model:
        check_model_name(query_model)


# --- the models folder ---------------------------------------------------------------------------
def models_dir_problem(models_dir: Path) -> str:
    """Say why MODELS_DIR is unsafe to load code from ("" when it is fine, or does not exist yet).

    Unsafe: the folder or its `plugins/` folder is writable by every user (sticky or not: anyone
    could add a model or a plugin), or a parent folder is writable by every user without the sticky
    bit (anyone could swap the whole folder). Symlinks are followed. A folder on a read-only mount
    is safe whatever its mode bits say: nobody can change its entries (KServe's /mnt/models is an
    emptyDir, mode 0777, mounted read-only), so each folder is judged by the mount it lives on
    (`on_read_only_mount`, which also asks that no writable mount shows the same files).
    """
    try:
        folder = Path(models_dir).resolve()
    except OSError:
        return ""
    for candidate, what in ((folder, "MODELS_DIR"), (folder / PLUGINS_FOLDER, "its plugins folder")):
        mode = _mode(candidate)
        if mode is not None and stat.S_ISDIR(mode) and mode & stat.S_IWOTH and not on_read_only_mount(candidate):
            return f"{what} ({candidate.name}) is writable by every user (mode {stat.S_IMODE(mode):o})"
    for parent in folder.parents:
        mode = _mode(parent)
        if mode is not None and mode & stat.S_IWOTH and not mode & stat.S_ISVTX and not on_read_only_mount(parent):
            return f"a parent folder of MODELS_DIR ('{parent.name or parent}') is writable by every user without the sticky bit"
    return ""


def on_read_only_mount(path: Path) -> bool:
    """Tell whether nobody in this mount namespace can change the entries of folder `path`.

    True when the mount holding it is read-only (`statvfs`'s ST_RDONLY: the mount's own flag, so a
    read-only bind mount counts, as the kernel enforces it for every user, root included) and no
    writable mount in /proc/self/mountinfo reaches the same files (a read-only bind mount of a
    world-writable folder that is also mounted writable elsewhere is no protection). Without
    /proc/self/mountinfo (not Linux) the flag alone decides; False when `path` cannot be read.
    """
    try:
        if not os.statvfs(path).f_flag & os.ST_RDONLY:
            return False
        real = os.path.realpath(path)
    except OSError:
        return False
    mounts = _mount_table()
    return mounts is None or not _writable_alias(real, mounts)


@dataclass(frozen=True, slots=True)
class _Mount:
    device: str  # major:minor
    root: str  # the folder of the file system this mount shows
    mount_point: str
    writable: bool  # both the mount and its super block are read-write


def _mount_table() -> list[_Mount] | None:
    """This process's mounts, from /proc/self/mountinfo (in mount order); None when it cannot be read."""
    try:
        text = Path(MOUNTINFO).read_text()
    except OSError:
        return None
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        dash = fields.index("-", 6)
        super_options = fields[dash + 3].split(",") if len(fields) > dash + 3 else []
        mounts.append(
            _Mount(
                device=fields[2],
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                writable="rw" in fields[5].split(",") and "ro" not in super_options,
            )
        )
    return mounts


def _writable_alias(real: str, mounts: list[_Mount]) -> bool:
    """Whether a writable mount of the same file system shows the files at `real` (a resolved path)."""
    holding = [m for m in mounts if real == m.mount_point or real.startswith(m.mount_point.rstrip("/") + "/")]
    if not holding:
        return False
    ours = max(reversed(holding), key=lambda m: len(m.mount_point))  # the deepest; the latest of stacked ones
    inside = os.path.relpath(real, ours.mount_point)
    files = os.path.normpath(os.path.join(ours.root, inside)) if inside != "." else ours.root
    for mount in mounts:
        if mount is ours or mount.device != ours.device or not mount.writable:
            continue
        if files == mount.root or files.startswith(mount.root.rstrip("/") + "/"):
            return True
    return False


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (`\\040` is a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def check_models_dir(settings: Settings) -> None:
    """Refuse a world-writable models folder unless `Settings.allow_world_writable_models` is on.

    Raises:
        InsecureModelsDir: the folder is unsafe and the setting is off.
    """
    problem = models_dir_problem(settings.models_dir)
    if not problem:
        return
    if settings.allow_world_writable_models:
        log.warning("%s; loading from it anyway because ALLOW_WORLD_WRITABLE_MODELS is on", problem)
        return
    raise InsecureModelsDir(
        f"refusing to load models: {problem}. Model files and plugins are code: make the folder writable by "
        "the operator only (chmod o-w), or set ALLOW_WORLD_WRITABLE_MODELS=true to accept the risk"
    )


def _mode(path: Path) -> int | None:
    try:
        return os.stat(path).st_mode
    except OSError:
        return None
