"""A local receiver for kerasserve's traces and payload events: one JSON line on stdout per span or event.

    python examples/telemetry_sink.py --port 4318

then start the server with tracing and payload logging pointed at it (docs/operations.md):

    OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 \
    PAYLOAD_LOG_URL=http://localhost:4318/events make run

`POST /v1/traces` takes what the OpenTelemetry OTLP/HTTP exporter sends (protobuf) and prints
`{"span": {...}}` per span (name, ids, parent, links, attributes, duration); any other POST is taken
as a CloudEvent in HTTP binary mode (what PAYLOAD_LOG_URL receives) and printed as `{"event": {...}}`
(its `ce-*` attributes, content type and data). It answers 200 to everything. A stand-in for an
OpenTelemetry Collector and a KServe message dumper on a laptop; not for production.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

_print_lock = threading.Lock()


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def spans(body: bytes) -> list[dict]:
    """The spans of one OTLP/HTTP export, as plain dicts."""
    export = ExportTraceServiceRequest.FromString(body)
    found = []
    for resource in export.resource_spans:
        service = {a.key: _value(a.value) for a in resource.resource.attributes}.get("service.name")
        for scope in resource.scope_spans:
            for span in scope.spans:
                found.append(
                    {
                        "service": service,
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "links": [{"trace_id": k.trace_id.hex(), "span_id": k.span_id.hex()} for k in span.links],
                        "attributes": {a.key: _value(a.value) for a in span.attributes},
                        "duration_ms": (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6,
                    }
                )
    return found


def event(headers: dict[str, str], body: bytes) -> dict:
    """A CloudEvent in HTTP binary mode: its attributes (`ce-*` headers), content type and data."""
    content_type = headers.get("content-type", "")
    if content_type.startswith("application/json") or content_type.startswith("text/"):
        data: object = body.decode("utf-8", "replace")
    else:
        data = {"base64": base64.b64encode(body).decode()}
    attributes = {k.removeprefix("ce-"): v for k, v in headers.items() if k.startswith("ce-")}
    return {**attributes, "content_type": content_type, "data": data}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.path == "/v1/traces":
            lines = [{"span": span} for span in spans(body)]
            content_type = "application/x-protobuf"
        else:
            lines = [{"event": event(headers, body)}]
            content_type = "text/plain"
        with _print_lock:
            for line in lines:
                print(json.dumps(line), flush=True)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318, help="4318 is OTLP/HTTP's usual port")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on http://{args.host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
