"""Window checks from a read replica (READ_DATABASE_URL; replica.py): against a real streaming replica, a
private primary and standby made here with initdb and pg_basebackup (never the shared server)."""

import asyncio
import contextlib
import math
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from tests.conftest import ENCRYPTION_KEY, bearer, empty, free_port, make_key
from tests.factories import PN
from tests.upstream import WA, open_window, text_message
from window_gate import db
from window_gate.app import create_app
from window_gate.config import Settings, load_settings

MAX_LAG = 3.0
CUSTOMER = "+55 11 98765-4321"  # Meta's WA once it wrote


def postgres_bin() -> Path | None:
    """The newest local PostgreSQL's binaries (Debian keeps them out of PATH), or PATH's."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    initdb = found[-1] if found else (Path(p) if (p := shutil.which("initdb")) else None)
    return initdb.parent if initdb else None


def as_postgres() -> list[str]:
    """PostgreSQL refuses to run as root: as root, its commands run as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass
class Pair:
    primary: str  # asyncpg URLs of the app's database
    replica: str
    replica_dir: Path
    bin_dir: Path


def _run(*args: str | Path) -> None:
    done = subprocess.run([*as_postgres(), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """A primary and a streaming standby of it (pg_basebackup -R) on free ports, the app's schema migrated
    on the primary; both stopped and removed afterwards."""
    bin_dir = postgres_bin()
    if bin_dir is None or shutil.which("pg_basebackup", path=str(bin_dir)) is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_basebackup) on this machine")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a `postgres` user to run PostgreSQL as")
    base = Path(tempfile.mkdtemp(prefix="wg-replica-"))
    if os.geteuid() == 0:
        os.chown(base, user.pw_uid, user.pw_gid)
    ports = {"primary": free_port(), "replica": free_port()}
    started: list[Path] = []
    try:
        primary = base / "primary"
        _run(bin_dir / "initdb", "-D", primary, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        with (primary / "postgresql.conf").open("a") as conf:  # initdb's pg_hba trusts local replication
            conf.write(
                f"port = {ports['primary']}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{base}'\nwal_level = replica\nmax_wal_senders = 4\n"
                "max_connections = 40\nfsync = off\nhot_standby_feedback = on\n"
            )
        _run(bin_dir / "pg_ctl", "-D", primary, "-l", base / "primary.log", "-w", "start")
        started.append(primary)
        replica = base / "replica"
        _run(
            *(bin_dir / "pg_basebackup", "-h", "127.0.0.1", "-p", str(ports["primary"]), "-U", "postgres"),
            *("-D", replica, "-R", "-X", "stream", "-c", "fast", "--no-sync"),
        )
        with (replica / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {ports['replica']}\n")
        _run(bin_dir / "pg_ctl", "-D", replica, "-l", base / "replica.log", "-w", "start")
        started.append(replica)
        urls = {k: f"postgresql+asyncpg://postgres@127.0.0.1:{port}/window_gate" for k, port in ports.items()}
        asyncio.run(_sql(urls["primary"].replace("/window_gate", "/postgres"), "CREATE DATABASE window_gate"))
        db.upgrade(urls["primary"])
        yield Pair(urls["primary"], urls["replica"], replica, bin_dir)
    finally:
        for data in reversed(started):
            _run(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


async def _sql(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def served(settings: Settings, upstream: httpx.AsyncBaseTransport) -> AsyncIterator[httpx.AsyncClient]:
    """The app on these settings, with an admin key (made on the primary) on its client."""
    app = create_app(settings, upstream)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gate") as client:
            client.headers.update(bearer(await make_key(app.state.gate.engine)))
            yield client


def gate_settings(database_url: str, read_database_url: str) -> Settings:
    return load_settings(
        database_url=database_url,
        read_database_url=read_database_url,
        read_max_lag_seconds=MAX_LAG,
        sandbox=True,
        jobs_in_serve=False,
        api_key_cache_seconds=0,
        db_pool_size=3,
        encryption_key=ENCRYPTION_KEY,
    )


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    """The replica's figures on /metrics: the lag bound, and window checks by the server that answered."""
    text = (await client.get("/metrics")).text
    figures = {"lag": float(re.findall(r"^window_gate_replica_lag_seconds (\S+)$", text, re.M)[0])}
    for server in ("primary", "replica"):
        found = re.findall(rf'^window_gate_replica_reads_total{{server="{server}"}} (\S+)$', text, re.M)
        figures[server] = float(found[0]) if found else 0.0
    return figures


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.1)


async def lag_below(client: httpx.AsyncClient, seconds: float) -> bool:
    return (await scrape(client))["lag"] < seconds


async def lag_above(client: httpx.AsyncClient, seconds: float) -> bool:
    return (await scrape(client))["lag"] > seconds


async def state(client: httpx.AsyncClient, customer: str = CUSTOMER) -> str:
    r = await client.get(f"/v1/windows/{PN}/{customer}")
    assert r.status_code == 200, r.text
    answer: str = r.json()["state"]
    return answer


async def is_open(client: httpx.AsyncClient, customer: str) -> bool:
    return await state(client, customer) == "open"


async def test_a_lagging_replica_errs_towards_closed_until_its_bound_then_the_primary_answers(
    pair: Pair, upstream: httpx.AsyncBaseTransport
) -> None:
    async with served(gate_settings(pair.primary, pair.replica), upstream) as client:
        # Caught up: a window opened on the primary is read from the replica.
        before = await scrape(client)
        await open_window(client, "5511911112222")
        await until(lambda: is_open(client, "+55 11 91111-2222"), "the replica replays the inbound")
        await until(lambda: lag_below(client, 1.0), "a probe confirms the replica caught up")
        assert (await scrape(client))["replica"] > before["replica"]

        # Replay paused: the primary learns of a new inbound, the replica does not.
        await _sql(pair.replica, "SELECT pg_wal_replay_pause()")
        try:
            await open_window(client, WA)
            first = await scrape(client)
            assert await state(client) == "never_opened"  # the replica's older view: closed, never open
            after = await scrape(client)
            assert after["replica"] == first["replica"] + 1 and after["primary"] == first["primary"]
            # A send decides on the primary: the window it sees is open.
            sent = await client.post("/v1/messages", json=text_message())
            assert sent.status_code == 201 and sent.json()["window"]["state"] == "open", sent.text
            await asyncio.sleep(1.1)
            assert (await scrape(client))["lag"] > first["lag"] + 1  # the bound grows while nothing confirms
            # Past READ_MAX_LAG_SECONDS the primary answers.
            await until(lambda: lag_above(client, MAX_LAG), "the lag bound passes READ_MAX_LAG_SECONDS")
            first = await scrape(client)
            assert await state(client) == "open"
            after = await scrape(client)
            assert after["primary"] == first["primary"] + 1 and after["replica"] == first["replica"]
        finally:
            await _sql(pair.replica, "SELECT pg_wal_replay_resume()")

        # Replay resumed: the bound falls back and the replica answers again, now up to date.
        await until(lambda: lag_below(client, 1.0), "the replica catches up")
        first = await scrape(client)
        assert await state(client) == "open"
        assert (await scrape(client))["replica"] == first["replica"] + 1


async def test_a_replica_gone_leaves_window_checks_to_the_primary(
    pair: Pair, upstream: httpx.AsyncBaseTransport
) -> None:
    async with served(gate_settings(pair.primary, pair.replica), upstream) as client:
        await open_window(client, "5511933334444")
        await until(lambda: is_open(client, "+55 11 93333-4444"), "the replica replays the inbound")
        await until(lambda: lag_below(client, 1.0), "a probe confirms the replica caught up")
        _run(pair.bin_dir / "pg_ctl", "-D", pair.replica_dir, "-m", "fast", "-w", "stop")
        try:
            first = await scrape(client)
            assert first["lag"] < MAX_LAG  # still trusted: the read itself fails over
            assert await state(client, "+55 11 93333-4444") == "open"
            after = await scrape(client)
            assert after["primary"] == first["primary"] + 1 and after["replica"] == first["replica"]
        finally:
            log = pair.replica_dir.parent / "replica.log"
            _run(pair.bin_dir / "pg_ctl", "-D", pair.replica_dir, "-l", log, "-w", "start")


@pytest.mark.parametrize("replica", ["not a standby", "unreachable"])
async def test_a_replica_never_confirmed_leaves_window_checks_to_the_primary(
    database_url: str, upstream: httpx.AsyncBaseTransport, replica: str
) -> None:
    """READ_DATABASE_URL naming a primary (a standby promoted, a wrong URL) or nothing that answers: no
    probe confirms a replayed position, so the lag bound stays +Inf and the primary answers."""
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/window_gate"
    read_url = database_url if replica == "not a standby" else nowhere
    try:
        async with served(gate_settings(database_url, read_url), upstream) as client:
            await open_window(client)
            first = await scrape(client)
            assert first["lag"] == math.inf
            assert await state(client) == "open"
            after = await scrape(client)
            assert after["primary"] == first["primary"] + 1 and after["replica"] == first["replica"]
    finally:
        await empty(database_url)
