"""Logs an operator can use: one JSON line per event, each with the id of the request that caused it,
and nothing secret in them."""

import io
import json
import logging
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import ENCRYPTION_KEY, cli_env, make_key
from tests.factories import PN, delivery, inbound, signed
from tests.served import CUSTOMER, WINDOW_GATE, run_cli, serve
from window_gate import logs
from window_gate.apikey.rules import Role
from window_gate.config import Settings

Lines = Callable[[], list[dict[str, Any]]]


def _capture(settings: Settings, level: str) -> Iterator[Lines]:
    # configure() sets the process's loggers: put back what the test run had.
    loggers = [logging.getLogger(name) for name in ("", "httpx", "pgserver")]
    saved = [(logger, logger.handlers[:], logger.level) for logger in loggers]
    out = io.StringIO()
    logs.configure(level, settings.log_format, out)
    try:
        yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    finally:
        for logger, handlers, was in saved:
            logger.handlers[:] = handlers
            logger.setLevel(was)


@pytest.fixture
def lines(settings: Settings) -> Iterator[Lines]:
    """What the service logs at info, parsed line by line (a line that is not JSON fails the test)."""
    yield from _capture(settings, "info")


@pytest.fixture
def debug_lines(settings: Settings) -> Iterator[Lines]:
    yield from _capture(settings, "debug")


def requests(lines: Lines) -> list[dict[str, Any]]:
    return [line for line in lines() if line["event"] == "request"]


async def test_each_request_is_one_json_line_with_its_id_and_no_secret(
    client: httpx.AsyncClient, engine: AsyncEngine, lines: Lines
) -> None:
    key = await make_key(engine, Role.ADMIN)
    answer = await client.get("/v1/templates", headers={"Authorization": f"Bearer {key}"})
    refused = await client.get("/v1/templates", headers={"Authorization": "Bearer wg_not_a_key_of_ours"})

    ok, unauthorized = requests(lines)
    assert ok["request_id"] == answer.headers["X-Request-ID"] != refused.headers["X-Request-ID"]
    assert ok["path"] == "/v1/templates" and ok["method"] == "GET" and ok["status"] == 200
    assert ok["level"] == "info" and ok["duration_ms"] >= 0 and ok["timestamp"].endswith("Z")
    assert ok["key_id"] and "code" not in ok
    assert (unauthorized["status"], unauthorized["code"]) == (401, "unauthorized")
    assert unauthorized["request_id"] == refused.headers["X-Request-ID"]
    everything = json.dumps(lines())
    assert key not in everything and key[-12:] not in everything
    assert "wg_not_a_key_of_ours" not in everything and "Bearer" not in everything


async def test_a_well_formed_request_id_is_kept_and_any_other_replaced(
    client: httpx.AsyncClient, lines: Lines
) -> None:
    kept = await client.get("/nowhere", headers={"X-Request-ID": "edge-7f3a.42"})
    forged = await client.get("/nowhere", headers={"X-Request-ID": 'x", "level": "error'})

    assert kept.headers["X-Request-ID"] == "edge-7f3a.42"
    assert len(forged.headers["X-Request-ID"]) == 32 and '"' not in forged.headers["X-Request-ID"]
    assert [line["request_id"] for line in requests(lines)] == [
        "edge-7f3a.42",
        forged.headers["X-Request-ID"],
    ]


async def test_unknown_paths_are_logged_as_sent_and_without_the_query(
    client: httpx.AsyncClient, lines: Lines
) -> None:
    await client.get("/webhooks/whatsapp?hub.verify_token=hush-hush&hub.mode=subscribe")
    await client.get("/nowhere")

    verification, missing = requests(lines)
    assert verification["path"] == "/webhooks/whatsapp" and "hush-hush" not in json.dumps(lines())
    assert (missing["path"], missing["status"], missing["code"]) == ("/nowhere", 404, "not_found")


async def test_hot_path_successes_log_at_debug_only_and_their_refusals_at_info(
    client: httpx.AsyncClient, engine: AsyncEngine, debug_lines: Lines
) -> None:
    key = await make_key(engine, Role.READ)
    await client.get(f"/v1/windows/{PN}/15551234567", headers={"Authorization": f"Bearer {key}"})
    body, headers = signed(delivery([inbound("15551234567")]))
    await client.post(
        "/webhooks/whatsapp", content=body, headers={**headers, "X-Hub-Signature-256": "sha256=0"}
    )

    window, webhook = requests(debug_lines)
    assert (window["level"], window["status"], window["path"]) == (
        "debug",
        200,
        "/v1/windows/{phone_number_id}/{customer}",
    )
    assert (webhook["level"], webhook["code"]) == ("info", "unauthorized")
    refused = [line for line in debug_lines() if line["event"] == "webhook signature refused"]
    assert refused and refused[0]["level"] == "warning" and refused[0]["request_id"] == webhook["request_id"]


async def test_hot_path_and_probe_successes_write_nothing_at_info(
    client: httpx.AsyncClient, engine: AsyncEngine, lines: Lines
) -> None:
    key = await make_key(engine, Role.READ)
    answer = await client.get(f"/v1/windows/{PN}/15551234567", headers={"Authorization": f"Bearer {key}"})
    probes = [await client.get(path) for path in ("/healthz", "/readyz", "/metrics")]

    assert answer.status_code == 200 and answer.headers["X-Request-ID"]
    assert [probe.status_code for probe in probes] == [200, 200, 200]
    assert requests(lines) == []


def test_standard_library_loggers_render_the_same_json(settings: Settings, lines: Lines) -> None:
    logging.getLogger("uvicorn.error").warning("worker %s died", 7)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("window_gate.somewhere").exception("chore failed")

    died, failed = lines()
    assert (died["event"], died["level"], died["logger"]) == ("worker 7 died", "warning", "uvicorn.error")
    assert failed["level"] == "error" and "RuntimeError: boom" in failed["exception"]


def test_fields_named_like_secrets_are_blanked(lines: Lines) -> None:
    logs.log.warning("careless", token="EAAG-secret", authorization="Bearer wg_x", phone_number_id=PN)

    (line,) = lines()
    assert line["token"] == line["authorization"] == "[redacted]" and line["phone_number_id"] == PN


@pytest.mark.slow  # `serve` and the simulator as processes
def test_a_served_run_logs_each_request_once_and_no_secret_nor_message_body(
    emptied_afterwards: str, tmp_path: Path
) -> None:
    """A real `window-gate serve` at LOG_LEVEL=info, its captured output (the simulator's too) searched
    for every secret it was given and the words customers and the business wrote."""
    app_secret, token, words = "appsecret-" + uuid.uuid4().hex, "EAAG" + uuid.uuid4().hex, uuid.uuid4().hex
    env = cli_env(
        DATABASE_URL=emptied_afterwards,
        SANDBOX="true",
        APP_SECRET=app_secret,
        ENCRYPTION_KEY=ENCRYPTION_KEY,
        LOG_LEVEL="info",
    )
    key = run_cli("api-keys", "create", "logs", "--role", "admin", env=env).stdout.strip().splitlines()[-1]
    stored = subprocess.run(
        [WINDOW_GATE, "phone-numbers", "set", PN, "--access-token-stdin"],
        input=token,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert stored.returncode == 0, stored.stderr
    auth = {"Authorization": f"Bearer {key}"}
    with serve(env, tmp_path / "serve.log") as served:
        simulator = served.http.base_url.copy_with(port=(served.http.base_url.port or 0) + 1)
        deadline = time.monotonic() + 60  # serve starts it beside itself, on its port + 1
        while not _answers(simulator.join("/sandbox/stats")):
            assert time.monotonic() < deadline, served.output()
            time.sleep(0.2)
        message = inbound(CUSTOMER)
        message["text"]["body"] = f"customer says {words}"
        body, headers = signed(delivery([message]), secret=app_secret)
        assert served.http.post("/webhooks/whatsapp", content=body, headers=headers).status_code == 200
        sent = served.http.post(
            "/v1/messages",
            json={"phone_number_id": PN, "to": CUSTOMER, "type": "text", "text": {"body": f"we say {words}"}},
            headers={**auth, "X-Request-ID": "logs-test-1"},
        )
        assert sent.status_code == 201, sent.text
        assert (
            served.http.get("/v1/templates", headers={"Authorization": "Bearer wg_wrong"}).status_code == 401
        )
    output = served.output()

    for secret in (key, key[-12:], token, app_secret, ENCRYPTION_KEY, words):
        assert secret not in output
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    requests = [e for e in events if e["event"] == "request"]
    # The window check and webhook ingest are quiet at info (debug only); the others one line each.
    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("POST", "/v1/messages", 201),
        ("GET", "/v1/templates", 401),
    ]
    # uvicorn's access log stays off (it writes whenever its logger reaches a handler, at any access_log).
    assert not [e for e in events if e["logger"] == "uvicorn.access"], output
    assert requests[0]["request_id"] == "logs-test-1" and requests[0]["duration_ms"] > 0
    assert requests[1]["code"] == "unauthorized" and len(requests[1]["request_id"]) == 32
    # LOG_LEVEL reaches uvicorn's own loggers (it ran at warning whatever the setting once).
    assert any(e["logger"] == "uvicorn.error" and e["level"] == "info" for e in events), output


def _answers(url: httpx.URL) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False
