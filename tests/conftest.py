"""Real PostgreSQL for every test: the local server (or WINDOW_GATE_TEST_DATABASE_URL) when it answers,
else an embedded one. One fresh database per run, migrated once; tables emptied after each test."""

import asyncio
import contextlib
import os
import signal
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.processes import marked, still_running
from window_gate import db
from window_gate.apikey import service as api_keys
from window_gate.apikey.rules import Role
from window_gate.app import create_app
from window_gate.config import Settings, load_settings
from window_gate.crypto import Sealer
from window_gate.kit import Gate
from window_gate.models import Base

pytest_plugins = ["tests.upstream"]  # the scripted Meta every app fixture talks to

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
# The tests' ENCRYPTION_KEY (Fernet.generate_key()): public, like the sandbox's app secret.
ENCRYPTION_KEY = "0PzQPfnDsrNcIUx3tB8tGa8Hk4Urt6pEEzZkYhI2A9A="
# Every table of the models, children before their parents (the order DELETE needs): a new table is
# emptied after each test without anyone remembering to list it.
TABLES = tuple(table.name for table in reversed(Base.metadata.sorted_tables))
# Inherited by every process the tests start, so the last check of the run finds any left behind.
RUN, RUN_ID = "WG_TEST_RUN", uuid.uuid4().hex
os.environ[RUN] = RUN_ID


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """After the last test, no process any test started still runs (they are killed, and the run fails)."""
    yield
    left = [
        p for p in still_running(marked(f"{RUN}={RUN_ID}".encode()), within=10) if "postgres" not in p.args
    ]
    for process in left:
        os.kill(process.pid, signal.SIGKILL)
    assert not left, "left running by the tests:\n" + "\n".join(f"{p.pid} {p.args}" for p in left)


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own DATA_DIR (the in-process simulator keeps its state there), never the checkout's."""
    folder = tmp_path / "data"
    monkeypatch.setenv("WINDOW_GATE_DATA_DIR", str(folder))
    return folder


def _answers(url: str) -> bool:
    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A new, migrated database (asyncpg URL) for this test run, dropped afterwards."""
    admin = os.environ.get("WINDOW_GATE_TEST_DATABASE_URL", LOCAL_SERVER).replace("+asyncpg", "")
    if not _answers(admin):
        admin = db.embedded_url(Path(tempfile.mkdtemp(prefix="wg-test-pg-"))).replace("+asyncpg", "")
    with scratch_database(admin, "window_gate_test") as url:
        db.upgrade(url)
        yield url


@contextlib.contextmanager
def scratch_database(server: str, prefix: str) -> Iterator[str]:
    """A new empty database on this server (asyncpg URL), dropped afterwards."""
    admin = server.replace("+asyncpg", "")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    base, _, query = admin.partition("?")
    url = base.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    url += f"?{query}" if query else ""
    try:
        yield url
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE "{name}" WITH (FORCE)'))


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return load_settings(
        database_url=database_url,
        sandbox=True,
        api_key_cache_seconds=0,
        graph_timeout_seconds=1,
        db_pool_size=5,
        # These tests time nothing: a shared CI machine's PostgreSQL once stalled past the default 5 s in
        # two of them (503 database_unavailable). The bound's own tests set theirs (test_db_failures.py).
        db_timeout_seconds=20,
        encryption_key=ENCRYPTION_KEY,
    )


def sealed(token: str) -> str:
    """A token as the gate stores it (phone_numbers.access_token_encrypted) under the tests' key."""
    return Sealer([ENCRYPTION_KEY]).seal(token)


@pytest.fixture
async def app_state(
    settings: Settings, upstream: httpx.AsyncBaseTransport
) -> AsyncIterator[tuple[httpx.AsyncClient, Gate]]:
    app = create_app(settings, upstream)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gate") as client:
            yield client, app.state.gate
        await empty(str(settings.database_url))


@pytest.fixture
async def listening(
    settings: Settings, upstream: httpx.AsyncBaseTransport
) -> AsyncIterator[tuple[str, Gate]]:
    """The app under uvicorn on a free port of this machine, in this event loop (its base URL, its
    state): for what only a real socket shows."""
    app = create_app(settings, upstream)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_config=None, lifespan="on"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn stopped before it started"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app.state.gate
    finally:
        server.should_exit = True
        await serving
        await empty(str(settings.database_url))


async def empty(url: str, *tables: str) -> None:
    """Delete every row of these tables (default: all of the app's, in an order the foreign keys allow):
    after a test, or after processes that write outside it. DELETE is much cheaper than TRUNCATE here."""
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        for table in tables or TABLES:
            await conn.execute(f"DELETE FROM {table}")
    finally:
        await conn.close()


@pytest.fixture
def client(app_state: tuple[httpx.AsyncClient, Gate]) -> httpx.AsyncClient:
    return app_state[0]


@pytest.fixture
def engine(app_state: tuple[httpx.AsyncClient, Gate]) -> AsyncEngine:
    return app_state[1].engine


async def make_key(engine: AsyncEngine, role: Role = Role.ADMIN, phone_numbers: tuple[str, ...] = ()) -> str:
    async with engine.begin() as conn:
        return await api_keys.create(conn, f"test-{role.value}", role, phone_numbers)


@pytest.fixture
async def admin_headers(engine: AsyncEngine) -> dict[str, str]:
    return {"Authorization": f"Bearer {await make_key(engine)}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def metric(exposition: str, name: str, **labels: str) -> float:
    """One sample's value in a Prometheus exposition (0 when absent)."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    """An RFC 9457 problem+json answer with the given status and stable code; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys(), body
    assert (body["status"], body["code"]) == (status, code), body
    assert str(body["type"]).endswith("/" + code) and body["title"] and body["detail"], body
    return body


def cli_env(**settings: str) -> dict[str, str]:
    """This environment without any inherited WINDOW_GATE_* setting (but the test's own DATA_DIR), plus
    the given ones (names unprefixed)."""
    kept = "WINDOW_GATE_DATA_DIR"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WINDOW_GATE_") or k == kept}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env | {f"WINDOW_GATE_{k}": v for k, v in settings.items()}


@pytest.fixture
def emptied_afterwards(database_url: str) -> Iterator[str]:
    """The test database, emptied after the test: these processes write outside the per-test cleanup."""
    yield database_url
    asyncio.run(empty(database_url))
