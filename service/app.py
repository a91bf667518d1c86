"""create_app: build the serving components of one worker once, and the Flask app that exposes them.

The only module that knows every other one. Called in each gunicorn worker after the fork (no
preload), so TensorFlow and the models start in the worker that serves them.
"""

from __future__ import annotations

import atexit
import logging

from flask import Flask

from service.api import EXTENSION, Runtime, register_blueprints
from service.api.errors import register_error_handlers
from service.api.json import FastJSONProvider
from service.dataplane import DataPlane
from service.logs import configure_logging
from service.manager import ServableManager
from service.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the manager (which starts loading the models), the data plane and the Flask app."""
    settings = settings or Settings()
    configure_logging(settings)
    manager = ServableManager(settings)
    manager.start()
    # Unload on interpreter exit (gunicorn's graceful worker exit): batcher threads stop and
    # in-flight requests have finished by then.
    atexit.register(manager.stop)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json = FastJSONProvider(app)
    app.extensions[EXTENSION] = Runtime(settings, manager, DataPlane(manager, settings))
    register_blueprints(app)
    register_error_handlers(app)
    log.info("kerasserve app ready to serve %s", settings.models_dir)
    return app
