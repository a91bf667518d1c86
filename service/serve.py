"""`python -m service serve`: start the server the way KServe and TF Serving runtimes start theirs.

A serving runtime passes its choices as arguments: KServe's `--model_name={{.Name}}
--model_dir=/mnt/models --http_port=8080 --grpc_port=8081`, TF Serving's `--model_name
--model_base_path --rest_api_port --port`. This command turns them into the settings they mean
(MODEL_NAME, MODELS_DIR, PORT, GRPC_PORT, WORKERS), checks the result with `Settings`, and replaces
itself with gunicorn running this repository's gunicorn.conf.py, so gunicorn is the process the
container runtime signals. Arguments it does not know are ignored with a warning (runtimes add
options of their own, such as KServe's `--max_threadpool_workers`), except near-misses of its own
(`--model_nam`, `--http_ports`), which stop it: a typo must not silently serve the wrong thing.

It writes the environment of the process it becomes; `Settings` (in gunicorn.conf.py and in every
worker) reads it from there. It imports neither Flask nor TensorFlow.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from service.repository import MODEL_NAME
from service.settings import Settings

APP_ROOT = Path(__file__).resolve().parent.parent
"""The folder holding wsgi.py and gunicorn.conf.py (the image's /app)."""

OPTIONS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "--model_name": ("MODEL_NAME", ("--model-name",), "single-model mode: serve the model folder as this one model"),
    "--model_dir": (
        "MODELS_DIR",
        ("--model-dir", "--model_base_path"),
        "the models folder, or with --model_name that model's base path",
    ),
    "--http_port": ("PORT", ("--http-port", "--rest_api_port"), "HTTP port"),
    "--grpc_port": ("GRPC_PORT", ("--grpc-port", "--port"), "gRPC port; 0 turns gRPC off"),
    "--workers": ("WORKERS", (), "gunicorn worker processes"),
}
"""Each option: the setting it sets, other spellings (TF Serving's `--model_base_path`, `--rest_api_port`
and `--port`, which is its gRPC port), and its help."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service serve",
        description=(
            "Start kerasserve (gunicorn with gunicorn.conf.py). Options override the environment's "
            "settings; the other settings come from the environment (docs/configuration.md). Unknown "
            "options are ignored with a warning."
        ),
        allow_abbrev=False,
    )
    for option, (setting, aliases, help_) in OPTIONS.items():
        parser.add_argument(option, *aliases, dest=setting, metavar=setting, help=f"{help_} ({setting})")
    return parser


def settings_environment(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Parse `argv`: the environment variables it sets, and the unknown arguments to ignore.

    Raises:
        SystemExit: an unknown option is a near-miss of a known one, or a value is missing (argparse).
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(list(argv))
    known = [spelling for option, (_, aliases, _) in OPTIONS.items() for spelling in (option, *aliases)]
    for word in unknown:
        option = word.split("=", 1)[0]
        if option.startswith("-"):
            near = difflib.get_close_matches(option, known, n=1, cutoff=0.8)
            if near:
                parser.error(f"unknown option {option}; did you mean {near[0]}?")
    environment = {name: value for name, value in vars(args).items() if value is not None}
    if "MODELS_DIR" in environment:
        # Absolute now: gunicorn runs from APP_ROOT, not from where this command was started.
        environment["MODELS_DIR"] = os.path.abspath(environment["MODELS_DIR"])
    return environment, unknown


def gunicorn_command() -> list[str]:
    """The command this process becomes: this Python's gunicorn, with the repository's config, from the app root."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(APP_ROOT / "gunicorn.conf.py"),
        "--chdir",
        str(APP_ROOT),
        "wsgi:app",
    ]


def main(argv: Sequence[str]) -> int:
    """Set the settings the arguments name, check them, and exec gunicorn; return 2 on a bad setting."""
    environment, unknown = settings_environment(argv)
    if unknown:
        print(f"kerasserve serve: ignoring arguments it does not use: {' '.join(unknown)}", file=sys.stderr)
    os.environ.update(environment)
    try:
        settings = Settings()
    except ValidationError as err:
        print(f"kerasserve serve: bad setting: {err}", file=sys.stderr)
        return 2
    if settings.model_name is not None and not MODEL_NAME.match(settings.model_name):
        print(
            f"kerasserve serve: --model_name '{settings.model_name}' is not a valid model name (letters, digits, "
            "'_', '-' and '.', starting with a letter or digit)",
            file=sys.stderr,
        )
        return 2
    command = gunicorn_command()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return 0  # pragma: no cover - execv does not return
