"""Optional OpenTelemetry traces (WINDOW_GATE_OTEL_ENABLED, off by default), from the OpenTelemetry SDK's
own instrumentations: FastAPI's (a server span per request), asyncpg's (a span per statement, the hot
pool's and SQLAlchemy's alike) and httpx's (a client span per Graph API call), exported over OTLP/HTTP
as the standard OTEL_* variables say (OTEL_EXPORTER_OTLP_ENDPOINT, default http://localhost:4318;
OTEL_SERVICE_NAME, default window-gate; OTEL_TRACES_SAMPLER …).

Imported only when enabled (app.py): off, nothing of the SDK is loaded and no request pays for it.
"""

import httpx
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider

UNTRACED = "/healthz,/readyz,/metrics"  # probes and scrapes, every few seconds: no spans


def instrument_app(app: FastAPI) -> None:
    """Server spans for `app`'s requests; database spans for every asyncpg connection of the process."""
    provider = _provider()
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=UNTRACED)
    asyncpg = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]  # a singleton: process-wide
    if not asyncpg.is_instrumented_by_opentelemetry:
        asyncpg.instrument(tracer_provider=provider)


def instrument_client(http: httpx.AsyncClient) -> None:
    """Client spans for the Graph API client's calls (its own transport included)."""
    HTTPXClientInstrumentor.instrument_client(http, tracer_provider=_provider())


def _provider() -> TracerProvider:
    """The process's SDK tracer provider: the one already set (an earlier app in this process, or a test's
    with its own exporter), else a new one exporting over OTLP/HTTP in batches."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES: the SDK reads them
    if str(resource.attributes.get(SERVICE_NAME)).startswith("unknown_service"):  # the SDK default: ours
        resource = resource.merge(Resource({SERVICE_NAME: "window-gate"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider
