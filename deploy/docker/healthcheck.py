"""Docker HEALTHCHECK: exit 0 when the server in this container answers `GET /healthz` with 200.

Reads the port from Settings (PORT), like gunicorn.conf.py, and imports neither Flask nor TensorFlow,
so a check costs a few milliseconds.
"""

from __future__ import annotations

import sys
import urllib.request

sys.path.insert(0, "/app")  # the image's working tree; makes `service` importable from any cwd

from service.settings import Settings  # noqa: E402


def main() -> int:
    """Return 0 when /healthz answers 200 within 3 seconds, else 1."""
    url = f"http://127.0.0.1:{Settings().port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError as err:
        print(f"{url}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
