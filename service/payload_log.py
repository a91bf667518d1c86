"""Payload logging, opt-in (PAYLOAD_LOG_URL): request and response bodies as CloudEvents, KServe's logger format.

For each logged request (a share PAYLOAD_LOG_RATE of the POST requests), two events go to the sink,
in CloudEvents' HTTP binary mode as KServe's payload logger sends them: the body is the payload, as
it came or went, and the attributes are headers:

| header | value |
|---|---|
| `Ce-Specversion` | `1.0` |
| `Ce-Id` | the request id (`X-Request-ID`): the request and its response share it |
| `Ce-Type` | `org.kubeflow.serving.inference.request` / `org.kubeflow.serving.inference.response` |
| `Ce-Source` | `http://<host name>:<PORT>/` |
| `Ce-Time` | when the event was made (RFC 3339) |
| `Ce-Inferenceservicename` | the model |
| `Ce-Component`, `Ce-Endpoint` | `predictor`, `default` |
| `Ce-Metadata` | JSON: `{"model": [..], "version": [..], "path": [..], "status": [..]}` |
| `Content-Type` | the payload's content type |

Image and other binary bodies (multipart uploads, `image/*`, `application/octet-stream`) are sent as
a JSON note of their sizes and types unless PAYLOAD_LOG_IMAGES; a body over PAYLOAD_LOG_MAX_BYTES
is replaced by a JSON note of its size.

Never in the way of a prediction: the request thread only puts the event into a bounded queue
(PAYLOAD_LOG_QUEUE_EVENTS; full: the event is dropped and counted); one background thread per
worker sends the events, each step of a send (connect, write, answer) bounded by PAYLOAD_LOG_TIMEOUT_S. A slow, dead or refusing sink
costs events (`kerasserve_payload_events_dropped_total{reason}`), never a prediction or its latency.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import random
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass

from service import metrics
from service.settings import Settings

log = logging.getLogger(__name__)

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
BINARY_TYPES = ("multipart/form-data", "application/octet-stream")
"""Content types (besides `image/*`) whose bodies are sent as a size note unless PAYLOAD_LOG_IMAGES."""
WARN_EVERY_S = 60.0
"""Fewest seconds between two log warnings about a failing sink."""


@dataclass(frozen=True, slots=True)
class Event:
    """One CloudEvent to send: its type, id, attributes and payload."""

    type: str
    id: str
    model: str
    metadata: dict[str, list[str]]
    content_type: str
    data: bytes
    time: float
    """time.time() when it was made."""


class PayloadLogger:
    """Sends request and response payloads to PAYLOAD_LOG_URL from one background thread. Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        assert settings.payload_log_url is not None
        self._settings = settings
        url = urllib.parse.urlsplit(settings.payload_log_url)
        self._https = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._source = f"http://{socket.gethostname()}:{settings.port}/"
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=settings.payload_log_queue_events)
        self._connection: http.client.HTTPConnection | None = None
        self._last_warning = 0.0
        self._dropped = {
            reason: metrics.PAYLOAD_EVENTS_DROPPED.labels(reason=reason)
            for reason in ("queue_full", "timeout", "sink_error")
        }
        self._thread = threading.Thread(target=self._loop, name="payload-logger", daemon=True)
        self._thread.start()

    # --- request threads ---------------------------------------------------------------------------

    def sampled(self) -> bool:
        """Whether the request now starting is logged (PAYLOAD_LOG_RATE)."""
        rate = self._settings.payload_log_rate
        return rate >= 1.0 or (rate > 0.0 and random.random() < rate)

    def log_exchange(
        self,
        *,
        request_id: str,
        model: str,
        version: int | None,
        path: str,
        status: int,
        request_type: str,
        request_body: bytes,
        response_type: str,
        response_body: bytes,
        files: list[dict[str, object]] | None = None,
    ) -> None:
        """Queue the request's and the response's events (never blocks; a full queue drops them, counted).

        Args:
            files: the multipart parts (name, filename, content type, bytes), for the size note of an upload.
        """
        metadata = {"model": [model], "version": ["" if version is None else str(version)], "path": [path]}
        metadata["status"] = [str(status)]
        now = time.time()
        request_type, request_body = self._payload(request_type, request_body, files)
        response_type, response_body = self._payload(response_type, response_body, None)
        self._put(Event(REQUEST_TYPE, request_id, model, metadata, request_type, request_body, now))
        self._put(Event(RESPONSE_TYPE, request_id, model, metadata, response_type, response_body, now))

    def _payload(self, content_type: str, body: bytes, files: list[dict[str, object]] | None) -> tuple[str, bytes]:
        """The body to send: as it is, or a JSON note (binary and images unless asked; over the size cap)."""
        mimetype = content_type.split(";", 1)[0].strip().lower()
        binary = mimetype.startswith("image/") or mimetype in BINARY_TYPES
        if binary and not self._settings.payload_log_images:
            note: dict[str, object] = {"omitted": "binary", "content_type": mimetype, "bytes": len(body)}
            if files:
                note["files"] = files
            return "application/json", json.dumps(note).encode()
        if len(body) > self._settings.payload_log_max_bytes:
            note = {
                "omitted": "larger than PAYLOAD_LOG_MAX_BYTES",
                "content_type": mimetype,
                "bytes": len(body),
                "limit": self._settings.payload_log_max_bytes,
            }
            return "application/json", json.dumps(note).encode()
        return content_type or "application/octet-stream", body

    def _put(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._dropped["queue_full"].inc()

    def close(self, timeout_s: float | None = None) -> None:
        """Send what is queued (within `timeout_s`, default PAYLOAD_LOG_TIMEOUT_S) and stop the thread."""
        try:
            self._queue.put(None, timeout=0.1)
        except queue.Full:
            pass
        self._thread.join(self._settings.payload_log_timeout_s if timeout_s is None else timeout_s)

    # --- the sender thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                self._send(event)
                metrics.PAYLOAD_EVENTS_SENT.inc()
            except Exception as err:  # noqa: BLE001 - a sink's failure costs its event, never the thread
                self._close_connection()
                reason = "timeout" if isinstance(err, TimeoutError) else "sink_error"
                self._dropped[reason].inc()
                now = time.monotonic()
                if now - self._last_warning >= WARN_EVERY_S:
                    self._last_warning = now
                    log.warning(
                        "payload logging: the sink %s did not take an event (%s: %s); events are dropped "
                        "(kerasserve_payload_events_dropped_total) until it does",
                        self._settings.payload_log_url,
                        type(err).__name__,
                        err,
                    )

    def _send(self, event: Event) -> None:
        """POST one event in CloudEvents' binary mode on a kept-alive connection; raise unless the sink took it."""
        headers = {
            "Ce-Specversion": "1.0",
            "Ce-Id": event.id,
            "Ce-Type": event.type,
            "Ce-Source": self._source,
            "Ce-Time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.time))
            + f".{int(event.time % 1 * 1e6):06d}Z",
            "Ce-Inferenceservicename": event.model,
            "Ce-Component": "predictor",
            "Ce-Endpoint": "default",
            "Ce-Metadata": json.dumps(event.metadata, separators=(",", ":")),
            "Content-Type": event.content_type,
            "Content-Length": str(len(event.data)),
        }
        if self._connection is None:
            timeout = self._settings.payload_log_timeout_s
            if self._https:
                self._connection = http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
            else:
                self._connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        self._connection.request("POST", self._path, body=event.data, headers=headers)
        response = self._connection.getresponse()
        response.read()
        if response.will_close:
            self._close_connection()
        if not 200 <= response.status < 300:
            raise RuntimeError(f"the sink answered {response.status} {response.reason}")

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
