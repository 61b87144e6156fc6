"""Sending end to end over real sockets: the gate and the Graph simulator as separate processes."""

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import httpx
import pytest
from pywa.client import WhatsApp
from pywa.errors import ReEngagementMessage

from tests.conftest import cli_env, free_port
from tests.factories import PN
from tests.load import acknowledged, stored, webhooks
from tests.served import KEY, WINDOW_GATE, run_cli, serve

pytestmark = pytest.mark.slow  # `serve` and the simulator as processes

OPEN = "5511987654321"  # Meta's wa_id: 551187654321
NEVER = "5511976543210"


@contextlib.contextmanager
def simulator(
    gate_port: int, log: Path, *flags: str, port: int | None = None, stop: int = signal.SIGTERM
) -> Iterator[httpx.Client]:
    """`window-gate simulator` posting to the gate's port, until stopped with `stop`; it ends with this
    test process however that ends (`--parent-pid`: a killed test run leaves no simulator behind)."""
    port = port or free_port()
    hook = f"http://127.0.0.1:{gate_port}/webhooks/whatsapp"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                WINDOW_GATE,
                "simulator",
                "--port",
                str(port),
                "--webhook-url",
                hook,
                "--throughput",
                "10000",
                "--parent-pid",
                str(os.getpid()),
                *flags,
            ],
            env=cli_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/sandbox/stats").status_code == 200:
                        break
                time.sleep(0.1)
            yield http
    finally:
        proc.send_signal(stop)
        proc.wait(timeout=20)


@pytest.fixture
def loop(emptied_afterwards: str, tmp_path: Path) -> Iterator[tuple[int, httpx.Client, dict[str, str], str]]:
    """(gate port, simulator client, gate env, admin key) — start the gate with `serve(env, …, port=…)`."""
    gate_port = free_port()
    with simulator(gate_port, tmp_path / "simulator.log") as sim:
        env = cli_env(
            DATABASE_URL=emptied_afterwards,
            GRAPH_BASE_URL=str(sim.base_url).rstrip("/"),
            SANDBOX="true",
            GRAPH_TIMEOUT_SECONDS="2",
        )
        key = run_cli("api-keys", "create", "e2e", "--role", "admin", env=env).stdout.strip().splitlines()[-1]
        assert KEY.match(key)
        yield gate_port, sim, env, key


def test_pywa_client_works_through_the_graph_pass_through(
    loop: tuple[int, httpx.Client, dict[str, str], str], tmp_path: Path
) -> None:
    port, sim, env, key = loop
    with (
        serve(env, tmp_path / "gate.log", "--no-migrate", port=port) as served,
        httpx.Client(timeout=10) as session,
    ):
        # Its own GRAPH_BASE_URL: no simulator started beside it, and the banner does not claim one.
        assert f"upstream: {env['WINDOW_GATE_GRAPH_BASE_URL']} (sandbox mode)" in served.output()
        assert sim.post("/sandbox/inbound", json={"phone_number_id": PN, "from": OPEN}).json()["webhook"][
            "delivered"
        ]
        wa = WhatsApp(phone_id=PN, token=key, session=session)
        wa.api._session.base_url = (
            f"http://127.0.0.1:{port}/graph/v{wa.api._session.base_url.path.split('/v')[-1]}"
        )
        sent = wa.send_message(to=OPEN, text="Your order shipped")
        assert sent.id.startswith("wamid.SANDBOX")
        with pytest.raises(ReEngagementMessage):  # pywa's own error, from the gate's synchronous refusal
            wa.send_message(to=NEVER, text="hello?")
        assert sim.get("/sandbox/stats").json()["sends"] == 1  # the refusal never reached Meta


def test_pywa_marks_read_and_moves_media_through_the_gate(
    loop: tuple[int, httpx.Client, dict[str, str], str], tmp_path: Path
) -> None:
    """Beyond sends, what an SDK pointed at the gate calls: mark as read, typing, media up and down."""
    port, sim, env, key = loop
    with serve(env, tmp_path / "gate.log", "--no-migrate", port=port), httpx.Client(timeout=10) as session:
        inbound = sim.post("/sandbox/inbound", json={"phone_number_id": PN, "from": OPEN}).json()
        wa = WhatsApp(phone_id=PN, token=key, session=session)
        wa.api._session.base_url = (
            f"http://127.0.0.1:{port}/graph/v{wa.api._session.base_url.path.split('/v')[-1]}"
        )
        assert wa.mark_message_as_read(inbound["message_id"]).success
        assert wa.indicate_typing(inbound["message_id"]).success
        data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
        media = wa.upload_media(media=data, mime_type="image/png", filename="logo.png")
        url = wa.get_media_url(media.id).url
        assert url.startswith(f"http://127.0.0.1:{port}/graph/media/{media.id}")  # the gate, not Meta's CDN
        assert wa.get_media_bytes(url) == data
        assert wa.delete_media(media.id).success
        stats = sim.get("/sandbox/stats").json()
        assert (stats["marked_read"], stats["sends"], stats["media"]) == (2, 0, 0)


WORKERS = ("--workers", "2")


def test_sigkill_mid_load_loses_nothing_and_sends_nothing_twice(
    loop: tuple[int, httpx.Client, dict[str, str], str], tmp_path: Path
) -> None:
    port, sim, env, key = loop
    auth = {"Authorization": f"Bearer {key}"}
    body = {"phone_number_id": PN, "to": OPEN, "type": "text", "text": {"body": "hi"}}

    def send(i: int) -> int:
        with contextlib.suppress(httpx.TransportError):
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/messages",
                json=body,
                timeout=10,
                headers={**auth, "Idempotency-Key": f"k{i}"},
            )
            return r.status_code
        return 0  # the connection died with the gate

    base, stop = f"http://127.0.0.1:{port}", threading.Event()
    with (
        serve(env, tmp_path / "gate1.log", "--no-migrate", *WORKERS, port=port) as first,
        ThreadPoolExecutor(32 + 2) as pool,
    ):
        assert sim.post("/sandbox/inbound", json={"phone_number_id": PN, "from": OPEN}).json()["webhook"][
            "delivered"
        ]
        sim.post("/sandbox/faults", json={"latency_ms": 300})  # keep sends in flight when the gate dies
        hooks = [pool.submit(webhooks, base, OPEN, stop) for _ in range(2)]  # Meta's, all along
        futures = [pool.submit(send, i) for i in range(200)]
        deadline = time.monotonic() + 60
        while sum(f.done() for f in futures) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(first.proc.pid, signal.SIGKILL)  # the supervisor and its workers: no cleanup, no answer
        first.proc.wait()
        stop.set()
        before = [f.result() for f in futures]
        delivered = {k: v for f in hooks for k, v in f.result().items()}
    assert 0 in before and 201 in before  # the kill really cut requests short
    acked = acknowledged(delivered)
    assert acked and stored(env["WINDOW_GATE_DATABASE_URL"], acked) == set(acked)  # each 200 was kept

    def retry(i: int) -> int:
        # As a client would: with its key, again while the gate is busy (503: nothing was decided) or the
        # connection drops, so a loaded machine's slow database cannot pass for a lost send.
        for _ in range(5):
            if (status := send(i)) not in {0, 503}:
                return status
            time.sleep(1)
        return status

    sim.delete("/sandbox/faults")
    with serve(env, tmp_path / "gate2.log", "--no-migrate", *WORKERS, port=port):
        time.sleep(2 * 3 + 5 + 2)  # orphaned `pending` records expire after 3 × timeout + 5 s
        with ThreadPoolExecutor(32) as pool:
            after = list(pool.map(retry, range(200)))  # every caller retries with its key
    left = Counter(
        m["biz_opaque_callback_data"] for m in sim.get("/sandbox/messages?limit=10000").json()["data"]
    )
    records = asyncio.run(_records(env["WINDOW_GATE_DATABASE_URL"]))

    print(
        f"\nkilled with {before.count(0)} sends unanswered, {len(acked)} webhooks acknowledged; after: {Counter(after)}"
    )
    assert len(records) == 200  # exactly one record per key, however often it was retried
    assert max(left.values()) == 1, "a message left twice"
    assert set(left) <= {f"wg:{r}" for r in records}
    for record_id, status in records.items():
        assert status in {"accepted", "sent", "delivered", "read", "unknown"}, status
        if status != "unknown":
            assert left[f"wg:{record_id}"] == 1
    assert set(after) <= {201, 504}
    # A retry answers what is known: 201 once Meta's answer or status webhooks said it left, else 504.
    # Read after the retries: a status webhook may still have told the outcome of a 504'd one since.
    keys = asyncio.run(_records(env["WINDOW_GATE_DATABASE_URL"], "idempotency_key"))
    for i, answer in enumerate(after):
        status = keys[f"k{i}"]
        assert status != "unknown" if answer == 201 else status in {"unknown", "sent", "delivered", "read"}


async def _records(url: str, by: str = "id") -> dict[str, str]:
    """Every message's status, by its id (or another column)."""
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        rows = await conn.fetch(f"SELECT {by} AS by, status FROM messages")
        return {str(r["by"]): r["status"] for r in rows}
    finally:
        await conn.close()


def test_after_a_simulator_restart_a_send_the_gate_allows_is_delivered(
    emptied_afterwards: str, tmp_path: Path
) -> None:
    """Meta does not forget a customer's message when it restarts; nor does the simulator, even killed
    (SIGKILL) right after the message: otherwise the gate would allow a send it then fails with 131047."""
    gate_port, sim_port = free_port(), free_port()
    kept = ("--data-dir", str(tmp_path / "sandbox"))
    env = cli_env(
        DATABASE_URL=emptied_afterwards,
        GRAPH_BASE_URL=f"http://127.0.0.1:{sim_port}",
        SANDBOX="true",
        GRAPH_TIMEOUT_SECONDS="2",
    )
    key = run_cli("api-keys", "create", "e2e", "--role", "admin", env=env).stdout.strip().splitlines()[-1]
    auth = {"Authorization": f"Bearer {key}"}
    body = {"phone_number_id": PN, "to": OPEN, "type": "text", "text": {"body": "Your order shipped"}}
    with serve(env, tmp_path / "gate.log", "--no-migrate", port=gate_port) as gate:
        with simulator(gate_port, tmp_path / "sim1.log", *kept, port=sim_port, stop=signal.SIGKILL) as sim:
            customer = {"phone_number_id": PN, "from": OPEN}
            assert sim.post("/sandbox/inbound", json=customer).json()["webhook"]["delivered"]
        with simulator(gate_port, tmp_path / "sim2.log", *kept, port=sim_port) as sim:
            sent = gate.http.post("/v1/messages", json=body, headers=auth)
            assert sent.status_code == 201, sent.text
            deadline, status = time.monotonic() + 20, "accepted"
            while status not in {"read", "failed"} and time.monotonic() < deadline:
                time.sleep(0.1)
                status = gate.http.get(f"/v1/messages/{sent.json()['id']}", headers=auth).json()["status"]
            assert status == "read"  # not failed with 131047
            [message] = sim.get("/sandbox/messages").json()["data"]
            assert (message["to"], message["window_open"]) == (OPEN, True)
