"""WSGI entry point: `gunicorn wsgi:app` from the repository root (settings from gunicorn.conf.py / env)."""

from service.app import create_app

app = create_app()
