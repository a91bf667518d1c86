"""OpenTelemetry tracing, opt-in (OTEL_TRACES_EXPORTER): a span per request, and its parts.

Off (the default), this module imports no OpenTelemetry package and every helper below returns at
once (`span` gives a shared `nullcontext`). On, `configure` builds one tracer provider per worker
from the standard variables (the SDK reads OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG,
OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS,
OTEL_RESOURCE_ATTRIBUTES and OTEL_BSP_* itself) and spans are:

- the request's server span: Flask's instrumentation (`opentelemetry-instrumentation-flask`) for
  HTTP, `server_span` for gRPC; W3C `traceparent` honoured; probes and `/metrics` make none;
- `preprocess` (decoding and preparing the inputs), `queue` (time in the batch queue, linked to the
  batch's span) and `encode` (the answer's wire format), children of the request's span;
- `batch`: one per device call, on the batcher's thread, the root of its own trace, linked to the
  span of every request in the batch (and linked back from each request's `queue` span).

The trace id goes back to the client in a `traceresponse` header (W3C Trace Context level 2:
`00-<trace id>-<span id>-<flags>`), and into the access log.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from service.servable import ServableId
from service.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

log = logging.getLogger(__name__)

RESPONSE_HEADER = "traceresponse"
"""Response header (and gRPC initial metadata key) carrying the request's trace context."""

EXCLUDED_URLS = r"/healthz(\?|$),/readyz(\?|$),/metrics(\?|$),/v2/health/"
"""URLs Flask's instrumentation makes no span for: the probes and /metrics."""

_NULL: contextlib.nullcontext = contextlib.nullcontext()
_tracer: Any = None
_provider: Any = None


def enabled() -> bool:
    """Whether tracing is on in this process."""
    return _tracer is not None


def configure(settings: Settings, *, exporter: Any = None) -> None:
    """Turn tracing on in this worker when OTEL_TRACES_EXPORTER asks for it (or `exporter` is given), else off.

    Args:
        settings: OTEL_TRACES_EXPORTER and OTEL_SERVICE_NAME; the SDK reads the other OTEL_* variables.
        exporter: a span exporter to use instead (tests: the SDK's `InMemorySpanExporter`), fed
            synchronously, span by span.
    """
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None
    if exporter is None and settings.otel_traces_exporter == "none":
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    # The sampler comes from OTEL_TRACES_SAMPLER / _ARG (TracerProvider's default reads them).
    provider = TracerProvider(resource=Resource.create({"service.name": settings.otel_service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif settings.otel_traces_exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Endpoint, headers, timeout from OTEL_EXPORTER_OTLP_(TRACES_)*; spans leave in batches, off the request path.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider = provider
    _tracer = provider.get_tracer("kerasserve")
    log.info(
        "OpenTelemetry tracing on (%s)", "test exporter" if exporter is not None else settings.otel_traces_exporter
    )


def instrument_app(app: Flask) -> None:
    """Give every HTTP request (but the probes and /metrics) a server span, with Flask's instrumentation; no-op when off.

    Call before the app's own `before_request` hooks are registered, so the span exists in them.
    """
    if _tracer is None:
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    FlaskInstrumentor().instrument_app(
        app, tracer_provider=_provider, excluded_urls=EXCLUDED_URLS, enable_commenter=False
    )


def span(name: str, attributes: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager:
    """A child span of the current one, made current for the `with` block; a shared no-op when off."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(name, attributes=attributes)


def current_span_context() -> Any:
    """The current span's context (to link to it from another thread), or None (off, or no span)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


@contextlib.contextmanager
def _batch_span(servable_id: ServableId, rows: int, links: list[Any]) -> Iterator[Any]:
    from opentelemetry import context, trace

    attributes = {"kerasserve.model": servable_id.name, "kerasserve.version": servable_id.version}
    attributes["kerasserve.batch_rows"] = rows
    with _tracer.start_as_current_span(
        "batch",
        context=context.Context(),  # a root: the batch is no one request's child
        links=[trace.Link(link) for link in links],
        attributes=attributes,
    ) as batch:
        yield batch.get_span_context()


def batch_span(servable_id: ServableId, rows: int, requests: Iterable[Any]) -> contextlib.AbstractContextManager:
    """The span of one device call, linked to the spans of `requests` (their span contexts); yields its context.

    A no-op yielding None when off.
    """
    if _tracer is None:
        return _NULL
    return _batch_span(servable_id, rows, [r for r in requests if r is not None])


def now_ns() -> int:
    """Wall-clock time in ns (span timestamps); 0 when off, so callers skip the clock read."""
    return time.time_ns() if _tracer is not None else 0


def queue_span(submitted_ns: int, queue_s: float | None, batch: Any) -> None:
    """Record the request's wait in the batch queue as a `queue` child span, linked to the batch's span; no-op when off."""
    if _tracer is None or queue_s is None:
        return
    from opentelemetry import trace

    links = [trace.Link(batch)] if batch is not None else []
    queued = _tracer.start_span("queue", links=links, start_time=submitted_ns)
    queued.end(end_time=submitted_ns + int(queue_s * 1e9))


def trace_id() -> str:
    """The current trace id (32 hex digits), or '' (off, or not sampled into a span)."""
    context = current_span_context()
    return "" if context is None else format(context.trace_id, "032x")


def response_header() -> str | None:
    """The `traceresponse` value of the current span, or None."""
    context = current_span_context()
    if context is None:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


@contextlib.contextmanager
def _server_span(route: str, metadata: Mapping[str, str]) -> Iterator[None]:
    from opentelemetry import propagate, trace

    parent = propagate.extract(metadata)
    with _tracer.start_as_current_span(
        route, context=parent, kind=trace.SpanKind.SERVER, attributes={"rpc.system": "grpc", "rpc.method": route}
    ):
        yield


def server_span(route: str, metadata: Mapping[str, str]) -> contextlib.AbstractContextManager:
    """A gRPC call's server span (`traceparent` taken from its metadata), current for the block; no-op when off."""
    if _tracer is None:
        return _NULL
    return _server_span(route, metadata)
