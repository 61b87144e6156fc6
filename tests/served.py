"""`window-gate` as operators run it, for the tests that start it as a process: the CLI, `serve` on a
free port (always stopped, with every process it started), and what they share."""

import asyncio
import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

from tests.conftest import free_port, make_key
from tests.factories import delivery, inbound, signed
from tests.processes import descendants, still_running
from window_gate import db

WINDOW_GATE = Path(sys.executable).parent / "window-gate"
KEY = re.compile(r"^wg_[A-Za-z0-9_-]{40,}$")
START_SECONDS = 90  # the embedded first start runs initdb
CUSTOMER = "5511987654321"


@dataclass
class Served:
    http: httpx.Client
    log: Path
    proc: "subprocess.Popen[bytes]"

    def output(self) -> str:
        return self.log.read_text()


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [WINDOW_GATE, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@contextlib.contextmanager
def serve(env: dict[str, str], log: Path, *flags: str, port: int | None = None) -> Iterator[Served]:
    """`window-gate serve` on a free port: ready (healthz 200) within START_SECONDS, always stopped, and
    with it every process it started (the sandbox simulator, workers)."""
    port = port or free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(  # a process group of its own: a test may kill it whole (os.killpg)
            [WINDOW_GATE, "serve", "--port", str(port), *flags],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            deadline = time.monotonic() + START_SECONDS
            while True:
                assert proc.poll() is None, f"serve exited {proc.returncode}:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"serve not ready in {START_SECONDS}s:\n{log.read_text()}"
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/healthz").status_code == 200:
                        break
                time.sleep(0.2)
            yield Served(http, log, proc)
    finally:
        children = descendants(proc.pid)
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        left = still_running(children, within=5)
    assert not left, f"serve left running: {left}"


def deliver_inbound(http: httpx.Client, phone_number_id: str, wa_id: str = CUSTOMER) -> None:
    body, headers = signed(delivery([inbound(wa_id)], phone_number_id=phone_number_id))
    r = http.post("/webhooks/whatsapp", content=body, headers=headers)
    assert r.status_code == 200, r.text


def window(
    http: httpx.Client, key: str, phone_number_id: str, customer: str = "+55 11 98765-4321"
) -> httpx.Response:
    return http.get(f"/v1/windows/{phone_number_id}/{customer}", headers={"Authorization": f"Bearer {key}"})


def stop_embedded_postgres(pgdata: Path) -> None:
    """The embedded server outlives a `serve` that did not start it; stop the one a test started."""
    if (pgdata / "postmaster.pid").exists():
        db.stop_embedded(pgdata.parent)
    assert not (pgdata / "postmaster.pid").exists(), "embedded PostgreSQL still running"


def fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> float:
    """Seconds it took for `check` to hold (polled every 0.1 s); fails past `seconds`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"{what}: not within {seconds} s"
        time.sleep(0.1)
    return time.monotonic() - start


def admin_key(url: str) -> str:
    """An admin key, made here (a CLI process costs seconds: the CLI is tests/test_cli_e2e.py's)."""

    async def make() -> str:
        engine = db.make_engine(url, 1)
        try:
            return await make_key(engine)
        finally:
            await engine.dispose()

    return asyncio.run(make())
