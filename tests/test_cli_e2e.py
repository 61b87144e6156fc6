"""The `window-gate` command as operators run it: real processes, a real socket, real PostgreSQL."""

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import cli_env, empty, free_port
from tests.factories import PN, delivery, inbound, signed
from tests.processes import descendants, still_running
from window_gate import db

pytestmark = pytest.mark.slow  # the CLI and `serve` as processes

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
        proc = subprocess.Popen(
            [WINDOW_GATE, "serve", "--port", str(port), *flags], env=env, stdout=out, stderr=subprocess.STDOUT
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
    """The embedded server outlives `serve` by design; stop the one a test started (by its data folder)."""
    if not (pgdata / "postmaster.pid").exists():
        return
    from pgserver._commands import POSTGRES_BIN_PATH

    user = "pgserver" if os.geteuid() == 0 else None  # pgserver runs PostgreSQL as this user under root
    subprocess.run(
        [POSTGRES_BIN_PATH / "pg_ctl", "-D", pgdata, "-w", "-t", "30", "-m", "fast", "stop"],
        user=user,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert not (pgdata / "postmaster.pid").exists(), "embedded PostgreSQL still running"


@pytest.fixture
def emptied_afterwards(database_url: str) -> Iterator[str]:
    """The test database, emptied after the test: these processes write outside the per-test cleanup."""
    yield database_url
    asyncio.run(empty(database_url))


def test_created_key_works_against_a_served_gate(emptied_afterwards: str, tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL=emptied_afterwards)
    assert run_cli("migrate", env=env).stdout.strip().endswith(f"database at revision {db.head_revision()}")
    created = run_cli("api-keys", "create", "ops", "--role", "read", "--phone-number", "123", env=env)
    key = created.stdout.strip().splitlines()[-1]
    assert KEY.match(key), created.stdout
    assert created.stdout.count(key) == 1

    with serve(env, tmp_path / "serve.log", "--no-migrate") as gate:
        assert window(gate.http, key, "123").json()["state"] == "never_opened"
        deliver_inbound(gate.http, "123")
        r = window(gate.http, key, "123")
        assert r.status_code == 200, r.text
        assert (r.json()["state"], r.json()["can_send_free_form"]) == ("open", True)
        assert r.json()["customer"]["wa_id"] == CUSTOMER
        assert window(gate.http, key, PN).json()["code"] == "forbidden"  # the key is limited to 123
        assert window(gate.http, "wg_" + "x" * 43, "123").status_code == 401
        assert gate.http.get("/readyz").json()["revision"] == db.head_revision()
        assert key not in gate.output()  # keys never reach the logs


def test_embedded_first_start_prints_an_admin_key_and_data_survives_restart() -> None:
    # Short path: PostgreSQL's socket lives in the data folder and socket paths are limited in length.
    home = Path(tempfile.mkdtemp(prefix="wg-e2e-"))
    env = cli_env(DATA_DIR=str(home / "data"))
    pgdata = home / "data" / "pg"
    try:
        with serve(env, home / "first.log") as gate:
            lines = gate.output().splitlines()
            keys = [line.strip() for line in lines if KEY.match(line.strip())]
            assert len(keys) == 1, gate.output()
            [key] = keys
            assert window(gate.http, key, PN).json()["state"] == "never_opened"
            deliver_inbound(gate.http, PN)
            first = window(gate.http, key, PN).json()
            assert first["state"] == "open"
        # Stop PostgreSQL too, so the second start reads the window back from disk.
        stop_embedded_postgres(pgdata)

        with serve(env, home / "second.log") as gate:
            assert not [line for line in gate.output().splitlines() if KEY.match(line.strip())], gate.output()
            assert "admin API key" not in gate.output()
            again = window(gate.http, key, PN)
            assert again.status_code == 200, again.text
            assert (again.json()["state"], again.json()["last_inbound_at"]) == (
                "open",
                first["last_inbound_at"],
            )
    finally:
        stop_embedded_postgres(pgdata)
        shutil.rmtree(home, ignore_errors=True)
