"""Command line of kerasserve: `python -m service <command> [args]`.

Commands:
    serve [args]             start gunicorn with gunicorn.conf.py; the arguments KServe and TF Serving
                             runtimes pass (`--model_name`, `--model_dir`, `--http_port`, ...) become settings
    inspect PATH...          how each model file loads and what it needs (non-zero exit if any fails)
    default-model [args]     train and write the default `digits` model (service/default_model.py)

Each command's module is imported only when the command runs, so `--help` stays fast and commands
that do not need TensorFlow never import it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        # Its own parser: it tolerates the arguments other runtimes take (service/serve.py).
        from service import serve

        return serve.main(argv[1:])
    if argv and argv[0] == "default-model":
        # Its own argparse owns every argument after the command name.
        from service import default_model

        return default_model.main(argv[1:])

    parser = argparse.ArgumentParser(prog="python -m service", description="kerasserve command line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    from service import model_inspect as inspect_command

    inspect_command.build_parser(
        commands.add_parser("inspect", help="show how model files load and what they need; exit 1 if any fails")
    )
    commands.add_parser(
        "serve", help="start the server (gunicorn); KServe's --model_name/--model_dir/--http_port/--grpc_port"
    )
    commands.add_parser("default-model", help="train and write the default digits model (see --help of the command)")
    args = parser.parse_args(argv)
    if args.command == "inspect":
        # A report tool: keep TensorFlow's C++ and Python chatter out of it (set before TF loads).
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        return inspect_command.run(args)
    parser.error(f"unknown command {args.command}")  # pragma: no cover - argparse rejects it first
    return 2


if __name__ == "__main__":
    sys.exit(main())
