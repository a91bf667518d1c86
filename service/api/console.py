"""The web console: GET / (the page) and GET /ui/<file> (its script and style sheet), static files of `service/console/`.

The page is plain HTML, CSS and JavaScript (no build step, nothing fetched from elsewhere). It calls
only the public routes (`/models`, the predict routes, `/readyz`, `/metrics`) from the browser, with
the bearer token the user gives it, so the console adds no data route of its own. The files hold no
data and are open without the token (see `security.CONSOLE_PATH`). CONSOLE=false answers 404.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory
from werkzeug.exceptions import NotFound

from service.api.context import runtime
from service.security import CONSOLE_FILES, CONSOLE_PATH

bp = Blueprint("console", __name__)

CONSOLE_FOLDER = Path(__file__).resolve().parent.parent / "console"
"""`service/console/`: index.html, console.js, console.css."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' blob: data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only the console's own files run or style the page, and it talks only to this server (no inline script)."""


def _send(filename: str) -> Response:
    """Send one file of the console (404 when CONSOLE is off, or for a name outside the folder)."""
    if not runtime().settings.console:
        raise NotFound()
    response = send_from_directory(CONSOLE_FOLDER, filename, max_age=0)  # revalidated (ETag): new files show at once
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get(CONSOLE_PATH)
def index() -> Response:
    """The console page."""
    return _send("index.html")


@bp.get(CONSOLE_FILES + "<path:filename>")
def asset(filename: str) -> Response:
    """One of the console's files (script, style sheet)."""
    return _send(filename)
