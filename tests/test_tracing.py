"""Optional OpenTelemetry traces: off, the SDK is not even loaded; on, a request gives a server span with
the database's and the Graph API's spans in its trace."""

import os
import subprocess
import sys

import httpx
from asgi_lifespan import LifespanManager
from opentelemetry import trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.conftest import bearer, empty, make_key
from tests.upstream import WA, open_window, text_message
from window_gate.app import create_app
from window_gate.config import Settings


async def test_with_otel_enabled_a_send_is_one_trace_of_server_database_and_graph_spans(
    settings: Settings, upstream: httpx.AsyncBaseTransport
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # the only test in this process that sets one (once per process)
    assert trace.get_tracer_provider() is provider
    app = create_app(settings.model_copy(update={"otel_enabled": True}), upstream)
    try:
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gate") as client:
                key = await make_key(app.state.gate.engine)
                await open_window(client, WA)
                exporter.clear()
                assert (await client.get("/metrics")).status_code == 200  # a scrape: not traced
                sent = await client.post("/v1/messages", json=text_message(), headers=bearer(key))
                assert sent.status_code == 201, sent.text
    finally:
        AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
        await empty(str(settings.database_url))  # what the app_state fixture does after its tests
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]  # the send's: the scrape has none
    assert server.attributes is not None and server.attributes.get("http.route") == "/v1/messages"
    in_trace = [s for s in spans if s.context.trace_id == server.context.trace_id]
    database = [s for s in in_trace if s.kind == SpanKind.CLIENT and "postgresql" in str(s.attributes)]
    graph = [s for s in in_trace if s.kind == SpanKind.CLIENT and "POST" in s.name and s not in database]
    assert len(database) >= 2, [s.name for s in spans]  # the window, the record, its outcome
    assert len(graph) == 1, [(s.name, s.attributes) for s in in_trace]
    everything = str([(s.name, s.attributes) for s in spans])
    assert key not in everything and "hello" not in everything  # no key, no message body


def test_with_otel_off_the_sdk_is_not_loaded(settings: Settings) -> None:
    probe = (
        "import sys; from window_gate.app import create_app; from window_gate.config import load_settings\n"
        f"create_app(load_settings(database_url={str(settings.database_url)!r}, sandbox=True,"
        " graph_base_url='http://127.0.0.1:9'))\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.instrumentation'))]\n"
        "assert not loaded, loaded"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_spans_name_the_service_window_gate_unless_otel_service_name_says_otherwise() -> None:
    probe = "from window_gate import tracing; print(tracing._provider().resource.attributes['service.name'])"

    def named(**env: str) -> str:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | env
        done = subprocess.run(
            [sys.executable, "-c", probe],
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert named() == "window-gate"
    assert named(OTEL_SERVICE_NAME="billing-gate") == "billing-gate"
