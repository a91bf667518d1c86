"""Model formats: which kind of model a file or folder holds, decided by content, not by extension.

`detect_format(path)` sniffs magic bytes (`PK\\x03\\x04` for a Keras 3 zip, `\\x89HDF\\r\\n\\x1a\\n` for
HDF5), reads HDF5 root attributes (`model_config` marks a full model, `layer_names` a weights-only
file) and folder contents (`saved_model.pb`), and pairs an architecture JSON with its weights file.
Whether a version's files are complete is the repository's business (`service.repository`).

This module never imports TensorFlow or Keras (h5py only), so it is cheap to call while scanning.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import ModelLoadError, UnsafeModelRefused

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")

# Names in a model folder that are never the model itself.
_SIDE_SUFFIXES = (".yaml", ".yml", ".txt", ".md", ".npy", ".py", ".pyc", ".lock", ".tmp", ".part")
_WEIGHT_NAME_SUFFIXES = (".weights.h5", "_weights.h5", "_weights.hdf5", ".h5", ".hdf5")
_ARCH_STEM_SUFFIXES = ("_config", "_architecture", "_arch", "_model", "_json", ".architecture", ".config")

MAX_WALK_DEPTH = 8
"""Folder levels walked below a model folder (a SavedModel needs 2: `variables/`, `assets/`)."""
MAX_ZIP_UNCOMPRESSED_BYTES = 64 * 1024**3
"""Largest total a `.keras` zip may declare for its members once expanded (64 GiB)."""
MAX_ZIP_RATIO = 200
"""Largest expanded-size / file-size ratio of a `.keras` zip declaring over `ZIP_RATIO_FLOOR_BYTES`."""
ZIP_RATIO_FLOOR_BYTES = 256 * 1024**2
"""Below this declared total (256 MiB) the ratio is not checked: small zero-filled models compress well."""
MAX_ZIP_MEMBERS = 10_000
"""Most members a `.keras` zip may hold (Keras writes 3)."""

_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def special_kind(mode: int) -> str | None:
    """Name the kind of a non-regular, non-folder file from its `st_mode` (None for files and folders)."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), "not a regular file")


@dataclass(slots=True)
class FolderWalk:
    """What `walk_folder` found: regular files, non-regular files, and links it did not follow."""

    files: list[Path] = field(default_factory=list)
    special: list[tuple[Path, str]] = field(default_factory=list)
    """Non-regular files (FIFOs, sockets, devices) and their kind: never opened."""
    revisits: list[Path] = field(default_factory=list)
    """Folders (through symlinks) not walked because they lead to a folder already walked or holding this one."""


def walk_folder(folder: Path, *, skip: Callable[[str], bool] = lambda name: False) -> FolderWalk:
    """Walk `folder` following symlinks, but never into a loop, and at most `MAX_WALK_DEPTH` levels deep.

    A folder is walked once: a symlink to a folder already walked, to the folder holding the link or
    to any of its parents (a loop) is recorded in `revisits` and not followed. Links leading out of
    `folder` to other files and folders are followed (a corpus linked into the models folder).
    Nothing is opened: each entry is only `stat`ed, so a FIFO can never block the walk. Dangling
    links and names `skip` accepts are left out.
    """
    walk = FolderWalk()
    real = Path(os.path.realpath(folder))
    visited: set[tuple[int, int]] = set()
    for parent in (real, *real.parents):
        try:
            st = os.stat(parent)
        except OSError:
            return walk
        visited.add((st.st_dev, st.st_ino))

    def visit(dirpath: str, depth: int) -> None:
        try:
            names = sorted(entry.name for entry in os.scandir(dirpath))
        except OSError:
            return
        for name in names:
            if skip(name):
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)  # follows symlinks; a dangling link or a link loop (ELOOP) raises
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in visited:
                    walk.revisits.append(Path(path))
                elif depth + 1 < MAX_WALK_DEPTH:
                    visited.add(key)
                    visit(path, depth + 1)
            elif stat.S_ISREG(st.st_mode):
                walk.files.append(Path(path))
            else:
                walk.special.append((Path(path), special_kind(st.st_mode) or "not a regular file"))

    visit(str(folder), 0)
    return walk


def special_file_problem(path: Path, special: list[tuple[Path, str]]) -> str:
    """The refusal message for non-regular files found in (or as) the model at `path` ("" when none)."""
    if not special:
        return ""
    root = Path(path)
    named = []
    for file, kind in special[:3]:
        try:
            shown = str(file.relative_to(root.parent))
        except ValueError:
            shown = file.name
        named.append(f"{shown} is {kind}")
    more = f" (and {len(special) - 3} more)" if len(special) > 3 else ""
    return (
        f"refused: {'; '.join(named)}{more}, not a regular file: a model may hold only regular files and "
        "folders (a FIFO would block the loader); see docs/security.md"
    )


def check_model_files(path: Path) -> None:
    """Refuse a model file or folder holding FIFOs, sockets or devices, before anything is opened.

    Raises:
        UnsafeModelRefused: `path` is, or holds, a non-regular file.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing: detect_format says so
    if stat.S_ISDIR(mode):
        problem = special_file_problem(path, walk_folder(path).special)
    else:
        kind = special_kind(mode)
        problem = special_file_problem(path, [(path, kind)] if kind else [])
    if problem:
        raise UnsafeModelRefused(problem)


def zip_bomb_problem(archive: zipfile.ZipFile, file_size: int, name: str) -> str:
    """Say why the declared sizes of a `.keras` zip are absurd ("" when they are not), before expanding it.

    Python's zipfile never expands a member beyond its declared `file_size`, so the declared sizes
    bound what reading can cost. The ratio is taken against the file's size on disk, not the sum of
    the members' compressed sizes, so members sharing one compressed stream (overlapping entries)
    cannot hide.
    """
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        return f"refused: {name} is a zip of {len(infos)} members (at most {MAX_ZIP_MEMBERS}); not a Keras model"
    total = sum(info.file_size for info in infos)
    if total > MAX_ZIP_UNCOMPRESSED_BYTES:
        return (
            f"refused: {name} declares {total / 1024**3:.1f} GiB once expanded (at most "
            f"{MAX_ZIP_UNCOMPRESSED_BYTES // 1024**3} GiB); a zip bomb?"
        )
    if total > ZIP_RATIO_FLOOR_BYTES and total > MAX_ZIP_RATIO * max(file_size, 1):
        return (
            f"refused: {name} would expand {total / max(file_size, 1):.0f} times ({file_size} bytes to "
            f"{total / 1024**2:.0f} MiB; at most {MAX_ZIP_RATIO} times above "
            f"{ZIP_RATIO_FLOOR_BYTES // 1024**2} MiB); a zip bomb?"
        )
    return ""


def check_zip(path: Path) -> None:
    """Refuse a zip whose declared sizes are absurd (a zip bomb), reading only its central directory.

    Raises:
        UnsafeModelRefused: see `zip_bomb_problem`.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            problem = zip_bomb_problem(archive, os.stat(path).st_size, path.name)
    except (OSError, zipfile.BadZipFile):
        return  # not a readable zip: whoever reads it reports that
    if problem:
        raise UnsafeModelRefused(problem)


class ModelFormat(str, enum.Enum):
    """The kinds of model files the loader reads."""

    KERAS_ZIP = "keras"
    """Keras 3 `.keras` zip (config.json + model.weights.h5 + metadata.json)."""
    HDF5 = "h5"
    """Full-model HDF5 (`model_config` attribute), written by Keras 1, 2 or 3."""
    JSON_WEIGHTS = "json+weights"
    """Architecture JSON (`model.to_json()`) plus a weights HDF5 file."""
    SAVED_MODEL = "saved_model"
    """TensorFlow SavedModel directory (TF2 export, tf.keras 2 SavedModel or TF1 graph)."""


@dataclass(frozen=True, slots=True)
class DetectedModel:
    """What `detect_format` found: the format, the main path, and the files that go with it.

    `path` is the model file, the architecture JSON, or the SavedModel directory. `weights` is the
    weights file of a JSON + weights pair. `keras_version` is the version recorded in the file
    (HDF5 attribute, JSON key or `metadata.json`), when there is one.
    """

    format: ModelFormat
    path: Path
    weights: Path | None = None
    keras_version: str | None = None
    files: tuple[Path, ...] = field(default=())
    """Every file that belongs to the model (for fingerprints and completeness checks)."""

    @property
    def keras_major(self) -> int | None:
        """Major version of the Keras that wrote the file (1, 2, 3), or None when unknown."""
        if not self.keras_version:
            return None
        match = re.match(r"(\d+)", self.keras_version)
        return int(match.group(1)) if match else None


def _magic(path: Path) -> bytes:
    try:
        with path.open("rb") as stream:
            return stream.read(8)
    except OSError:
        return b""


def _hdf5_kind(path: Path) -> tuple[str, str | None]:
    """Return ("model" | "weights" | "other", keras_version) for an HDF5 file."""
    import h5py  # local: h5py is only needed when an HDF5 file is seen

    try:
        with h5py.File(path, "r") as f:
            attrs = f.attrs
            version = attrs.get("keras_version")
            if isinstance(version, bytes):
                version = version.decode("utf-8", "replace")
            if "model_config" in attrs:
                return "model", str(version) if version is not None else None
            if "layer_names" in attrs or "model_weights" in f or "layers" in f or "vars" in f:
                return "weights", str(version) if version is not None else None
            if len(f.keys()) > 0:
                return "weights", str(version) if version is not None else None
            return "other", None
    except OSError:
        return "other", None


def _zip_version(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            if "metadata.json" in archive.namelist():
                return json.loads(archive.read("metadata.json")).get("keras_version")
    except (OSError, zipfile.BadZipFile, ValueError, KeyError):
        return None
    return None


def _json_architecture(path: Path) -> dict | None:
    """Return the parsed JSON when `path` is a Keras architecture (`to_json()`), else None."""
    try:
        if path.stat().st_size > 64 * 1024 * 1024:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and "class_name" in data and "config" in data:
        return data
    return None


def _weights_for(arch: Path) -> Path | None:
    """Find the weights file beside an architecture JSON by name, or the only weights file there."""
    stems = [arch.stem]
    for suffix in _ARCH_STEM_SUFFIXES:
        if arch.stem.endswith(suffix) and len(arch.stem) > len(suffix):
            stems.append(arch.stem[: -len(suffix)])
    for stem in stems:
        for suffix in _WEIGHT_NAME_SUFFIXES:
            candidate = arch.with_name(stem + suffix)
            if candidate.is_file() and _magic(candidate) == HDF5_MAGIC and _hdf5_kind(candidate)[0] == "weights":
                return candidate
    weights = [
        p
        for p in sorted(arch.parent.iterdir())
        if p.is_file() and _magic(p) == HDF5_MAGIC and _hdf5_kind(p)[0] == "weights"
    ]
    return weights[0] if len(weights) == 1 else None


def _detect_file(path: Path) -> DetectedModel | None:
    magic = _magic(path)
    if magic.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                problem = zip_bomb_problem(archive, path.stat().st_size, path.name)
        except (OSError, zipfile.BadZipFile):
            return None
        if problem:
            raise UnsafeModelRefused(problem, format=ModelFormat.KERAS_ZIP.value)
        if "config.json" in names:
            return DetectedModel(ModelFormat.KERAS_ZIP, path, keras_version=_zip_version(path), files=(path,))
        return None
    if magic == HDF5_MAGIC:
        kind, version = _hdf5_kind(path)
        if kind == "model":
            return DetectedModel(ModelFormat.HDF5, path, keras_version=version, files=(path,))
        return None
    if path.suffix.lower() == ".json" or magic[:1] == b"{":
        arch = _json_architecture(path)
        if arch is None:
            return None
        weights = _weights_for(path)
        version = arch.get("keras_version")
        files = (path, weights) if weights else (path,)
        return DetectedModel(
            ModelFormat.JSON_WEIGHTS,
            path,
            weights=weights,
            keras_version=str(version) if version else None,
            files=files,
        )
    return None


def _is_saved_model_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in SAVED_MODEL_FILES)


def _detect_dir(path: Path) -> DetectedModel:
    if _is_saved_model_dir(path):
        files = tuple(walk_folder(path).files)
        return DetectedModel(ModelFormat.SAVED_MODEL, path, files=files)
    full: list[DetectedModel] = []
    pairs: list[DetectedModel] = []
    for child in sorted(path.iterdir()):
        if child.name.startswith(".") or not child.is_file() or child.name.lower().endswith(_SIDE_SUFFIXES):
            continue
        found = _detect_file(child)
        if found is None:
            continue
        (pairs if found.format is ModelFormat.JSON_WEIGHTS else full).append(found)
    # A full model file wins over an architecture JSON beside it (the JSON is then documentation).
    if len(full) == 1:
        return full[0]
    if len(full) > 1:
        names = ", ".join(d.path.name for d in full)
        raise ModelLoadError(f"folder '{path.name}' holds several model files ({names}); keep one per version folder")
    pairs = [p for p in pairs if p.weights is not None] or pairs
    if len(pairs) == 1:
        return pairs[0]
    if len(pairs) > 1:
        names = ", ".join(d.path.name for d in pairs)
        raise ModelLoadError(
            f"folder '{path.name}' holds several architecture files ({names}); keep one per version folder"
        )
    subdirs = [c for c in path.iterdir() if c.is_dir() and _is_saved_model_dir(c)]
    if len(subdirs) == 1:
        return _detect_dir(subdirs[0])
    raise ModelLoadError(
        f"folder '{path.name}' holds no model: expected a .keras zip, a full-model HDF5 file, an architecture "
        "JSON with its weights file, or a SavedModel (saved_model.pb + variables/)"
    )


def detect_format(path: Path) -> DetectedModel:
    """Decide which kind of model `path` holds, from its content.

    Args:
        path: a model file, an architecture JSON, a SavedModel directory, or a folder that holds
            exactly one model (file, JSON + weights pair, or SavedModel).

    Raises:
        ModelLoadError: nothing recognisable is there, or a folder holds several models. The message
            names the file, never the server's absolute path.
        UnsafeModelRefused: `path` is or holds a FIFO, socket or device (refused before anything is
            opened), or is a zip bomb (`zip_bomb_problem`).
    """
    path = Path(path)
    check_model_files(path)
    if path.is_dir():
        return _detect_dir(path)
    if not path.is_file():
        raise ModelLoadError(f"'{path.name}' does not exist")
    found = _detect_file(path)
    if found is not None:
        return found
    magic = _magic(path)
    if magic == HDF5_MAGIC:
        raise ModelLoadError(
            f"'{path.name}' is a weights-only HDF5 file (no model_config): put the architecture JSON "
            "beside it (name.json with name.weights.h5, name_weights.h5 or name.h5)",
            format="h5-weights",
        )
    if magic.startswith(ZIP_MAGIC):
        raise ModelLoadError(f"'{path.name}' is a zip file without config.json, not a Keras model", format="zip")
    raise ModelLoadError(
        f"'{path.name}' is not a model file recognised by content (Keras zip, HDF5, architecture JSON or SavedModel)"
    )
