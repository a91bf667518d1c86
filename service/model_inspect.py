"""`python -m service inspect PATH...`: how each model file loads, and what it needs.

For every path it prints the detected format, the loader path that worked, the signatures (inputs and
outputs), the custom objects and Lambda layers the model needs and which of them are missing, and
whether compile fell back to `compile=False`. The exit status is non-zero when any path cannot be
loaded, so the command works as a pre-deployment check in CI. Plugins come from the same settings as
the server's (`MODELS_DIR/plugins`, `MODEL_PLUGINS`) plus `--plugin` / `--models-dir` options; a
model's config beside it (`<name>.yaml`, `config.yaml`) is read like the repository reads it.

What a model needs (`model_needs`) is read from its config without building it, so the report
names every missing object even when the load stops at the first. (Named `model_inspect`, not
`inspect`, so it never shadows the standard library's `inspect` module.)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from service.custom_objects import CustomObjectRegistry
from service.errors import ModelLoadError
from service.formats import ModelFormat, detect_format
from service.keras_config import looks_keras3, read_keras_config, repair_config
from service.load_errors import keras_knows
from service.model_config import (
    CONFIG_SUFFIXES,
    FOLDER_CONFIG_NAMES,
    ForeignConfigFile,
    ModelConfig,
    ModelConfigError,
    read_model_config,
)
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class InspectResult:
    """What `inspect` found out about one path."""

    path: str
    ok: bool = False
    format: str | None = None
    keras_version: str | None = None
    loader: str | None = None
    signatures: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_signature: str | None = None
    custom_objects: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    lambdas: list[str] = field(default_factory=list)
    replaced_lambdas: list[str] = field(default_factory=list)
    compile_fallback: str | None = None
    unresolved_losses: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plugin_errors: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    load_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelNeeds:
    """What a model file needs beyond Keras, read from its config without building it."""

    format: str
    keras_version: str | None = None
    custom_objects: tuple[str, ...] = ()
    """Layer / object class names Keras does not ship."""
    lambdas: tuple[str, ...] = ()
    """Lambda layers whose stored Python code would run."""
    replaced_lambdas: tuple[str, ...] = ()
    unreadable_lambdas: tuple[str, ...] = ()
    """Lambda layers whose bytecode this Python cannot read and nobody replaced."""
    losses: tuple[str, ...] = ()
    """Losses / metrics given by a name Keras 3 does not resolve."""


def model_needs(
    path: Path, registry: CustomObjectRegistry | None = None, config: ModelConfig | None = None
) -> ModelNeeds:
    """Read what the model at `path` needs (custom objects, Lambdas, losses) from its config; never builds it.

    Raises:
        ModelLoadError: nothing recognisable at `path`.
    """
    detected = detect_format(Path(path))
    if detected.format is ModelFormat.SAVED_MODEL:
        return ModelNeeds(detected.format.value)
    registry = (registry or CustomObjectRegistry()).for_model(config, [detected.path.parent])
    raw, training = read_keras_config(detected)
    major = detected.keras_major or (3 if looks_keras3(raw) else 2)
    _, report = repair_config(raw, keras_major=major, registry=registry)
    compile_config = training or (raw.get("compile_config") if isinstance(raw, dict) else None)
    import keras

    from service.loader import unresolved_names

    objects = registry.custom_objects()
    losses = tuple(n for n in unresolved_names(keras, compile_config, objects)) if compile_config else ()
    names = sorted(n for n in report.class_names if not keras_knows(n))
    if config is not None:
        names = sorted({*names, *config.custom_objects})
    return ModelNeeds(
        format=detected.format.value,
        keras_version=detected.keras_version,
        custom_objects=tuple(names),
        lambdas=tuple(report.code_lambdas),
        replaced_lambdas=tuple(report.replaced_lambdas),
        unreadable_lambdas=tuple(report.unreadable_lambdas),
        losses=losses,
    )


def find_config(path: Path) -> ModelConfig | None:
    """Read the model config the repository would use for `path` (`<name>.yaml` or `config.yaml`)."""
    candidates: list[Path] = []
    if path.is_dir():
        candidates += [path / name for name in FOLDER_CONFIG_NAMES]
        candidates += [path.parent / name for name in FOLDER_CONFIG_NAMES]
    else:
        candidates += [path.with_suffix(suffix) for suffix in CONFIG_SUFFIXES if path.with_suffix(suffix) != path]
        candidates += [path.parent / name for name in FOLDER_CONFIG_NAMES if (path.parent / name) != path]
    config: ModelConfig | None = None
    for candidate in reversed(candidates):  # the nearest config overrides the folder's
        if not candidate.is_file():
            continue
        try:
            found = read_model_config(candidate)
        except ModelConfigError as err:
            if isinstance(err, ForeignConfigFile) or candidate.suffix == ".json":
                continue  # another tool's config file, or an architecture JSON: not a model config
            raise
        config = found if config is None else config.merged(found)
    return config


def inspect_path(path: Path, loader: Any, registry: Any) -> InspectResult:
    """Load one path and describe it; never raises for a model that fails to load."""
    result = InspectResult(path=path.name)
    result.plugin_errors = dict(registry.plugin_errors)
    started = time.monotonic()
    try:
        config = find_config(path)
        needs = model_needs(path, registry, config)
        result.format = needs.format
        result.keras_version = needs.keras_version
        result.custom_objects = list(needs.custom_objects)
        result.lambdas = list(needs.lambdas)
        result.replaced_lambdas = list(needs.replaced_lambdas)
        result.missing = list(needs.unreadable_lambdas)
        result.unresolved_losses = list(needs.losses)
        loaded = loader.load(path, config)
    except (ModelLoadError, ModelConfigError) as err:
        result.error = str(err)
        result.missing = list(dict.fromkeys([*result.missing, *getattr(err, "missing", ())]))
        result.format = result.format or getattr(err, "format", None) or None
        result.load_s = time.monotonic() - started
        return result
    result.ok = True
    result.loader = loaded.loader
    result.default_signature = loaded.default_signature
    result.signatures = {
        name: {
            "method": sig.method_name,
            "batched": sig.batched,
            "fixed_batch_size": sig.fixed_batch_size,
            "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in sig.inputs],
            "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in sig.outputs],
        }
        for name, sig in loaded.signatures.items()
    }
    result.warnings = list(loaded.warnings)
    result.compile_fallback = next((w for w in loaded.warnings if w.startswith("compile=False")), None)
    result.load_s = loaded.load_s
    loaded.close()
    return result


def _shape(shape: list[int | None]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def render(result: InspectResult, out: TextIO) -> None:
    """Write one human-readable report."""
    status = "OK" if result.ok else "FAILED"
    out.write(f"{result.path}: {status}\n")
    version = f" (Keras {result.keras_version})" if result.keras_version else ""
    out.write(f"  format:          {result.format or 'unknown'}{version}\n")
    if result.ok:
        out.write(f"  loader:          {result.loader} ({result.load_s:.2f}s)\n")
        for name, sig in result.signatures.items():
            batching = "batched" if sig["batched"] else f"fixed batch {sig['fixed_batch_size']}"
            default = ", default" if name == result.default_signature else ""
            out.write(f"  signature:       {name} [{sig['method']}, {batching}{default}]\n")
            for t in sig["inputs"]:
                out.write(f"    input   {t['name']}: {t['dtype']} {_shape(t['shape'])}\n")
            for t in sig["outputs"]:
                out.write(f"    output  {t['name']}: {t['dtype']} {_shape(t['shape'])}\n")
    needed = ", ".join(result.custom_objects) or "none"
    out.write(f"  custom objects:  {needed}\n")
    if result.lambdas or result.replaced_lambdas:
        parts = [f"{n} (stored code)" for n in result.lambdas] + [
            f"{n} (replaced by plugin)" for n in result.replaced_lambdas
        ]
        out.write(f"  lambda layers:   {', '.join(parts)}\n")
    out.write(f"  missing:         {', '.join(result.missing) or 'none'}\n")
    if result.unresolved_losses:
        out.write(f"  losses unknown:  {', '.join(result.unresolved_losses)} (loads with compile=False)\n")
    if result.ok:
        out.write(f"  compile:         {result.compile_fallback or 'compiled (or nothing to compile)'}\n")
        for warning in result.warnings:
            if warning != result.compile_fallback:
                out.write(f"  warning:         {warning}\n")
    for plugin, message in result.plugin_errors.items():
        out.write(f"  plugin error:    {plugin}: {message}\n")
    if result.error:
        out.write(f"  error:           {result.error}\n")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the `inspect` arguments to `parser` (or a new one)."""
    parser = parser or argparse.ArgumentParser(prog="python -m service inspect")
    parser.add_argument("paths", nargs="+", type=Path, help="model files or folders (one version each)")
    parser.add_argument(
        "--models-dir", type=Path, default=None, help="folder whose plugins/ to import (default: MODELS_DIR)"
    )
    parser.add_argument("--plugin", action="append", default=[], help="extra plugin module (import path); repeatable")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    return parser


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Inspect `args.paths`; return 0 when every one loads, 1 otherwise."""
    out = out or sys.stdout
    from service.loader import Loader

    overrides: dict[str, Any] = {}
    if args.models_dir is not None:
        overrides["models_dir"] = args.models_dir
    base = Settings()
    if args.plugin:
        overrides["model_plugins"] = [*base.model_plugins, *args.plugin]
    settings = base.model_copy(update=overrides) if overrides else base
    registry = CustomObjectRegistry.from_plugins(settings)
    loader = Loader(registry, settings)
    results = [inspect_path(path, loader, registry) for path in args.paths]
    if args.json:
        json.dump([asdict(r) for r in results], out, indent=2)
        out.write("\n")
    else:
        for result in results:
            render(result, out)
    return 0 if all(r.ok for r in results) else 1


def main(argv: list[str]) -> int:
    """Run `python -m service inspect ARGV`; return the exit status."""
    return run(build_parser().parse_args(argv))
