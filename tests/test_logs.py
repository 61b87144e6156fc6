"""Logs an operator can use: one JSON line per event, each with the id of the request that caused it,
and nothing secret in them."""

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import make_key
from tests.factories import PN, delivery, inbound, signed
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
