"""The relay as operators run it: the CLI, `serve` processes killed with SIGKILL, real sockets and real
PostgreSQL. Nothing accepted is lost."""

import asyncio
import hashlib
import hmac
import json
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import cli_env
from tests.factories import delivery, inbound, signed
from tests.served import run_cli, serve
from tests.subscription.receiver import Receiver, receiving

pytestmark = pytest.mark.slow  # the CLI and `serve` as processes


def deliver(http: httpx.Client) -> bytes:
    body, headers = signed(delivery([inbound()]))
    r = http.post("/webhooks/whatsapp", content=body, headers=headers)
    assert r.status_code == 200, r.text
    return body


def wait_until(check: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.1)


async def test_cli_subscribes_and_a_sigkill_after_the_commit_loses_nothing(
    emptied_afterwards: str, tmp_path: Path
) -> None:
    env = cli_env(DATABASE_URL=emptied_afterwards, JOBS_IN_SERVE="false")  # nothing relays in the first life
    async with receiving() as receiver:

        def first_life() -> tuple[str, bytes]:
            created = run_cli("subscriptions", "create", receiver.url, "--description", "inbox", env=env)
            secret = created.stdout.strip().splitlines()[-1]
            listed = [
                json.loads(line) for line in run_cli("subscriptions", "list", env=env).stdout.splitlines()
            ]
            assert [(s["url"], s["events"], s["description"]) for s in listed] == [
                (receiver.url, ["meta.webhook"], "inbox")
            ]
            assert secret not in run_cli("subscriptions", "list", env=env).stdout  # shown once
            with serve(env, tmp_path / "first.log") as gate:
                body = deliver(gate.http)  # committed with its outbox row, then Meta's 200
                gate.proc.kill()
                gate.proc.wait()
            return secret, body

        secret, body = await asyncio.to_thread(first_life)
        assert receiver.received == []

        def second_life() -> None:
            with serve(cli_env(DATABASE_URL=emptied_afterwards), tmp_path / "second.log"):
                wait_until(lambda: receiver.received, 15)

        await asyncio.to_thread(second_life)
    (got,) = receiver.received
    assert got.body == body
    assert (
        got.headers["x-hub-signature-256"]
        == "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    )


async def test_a_sigkill_mid_attempt_is_attempted_again_after_restart(
    emptied_afterwards: str, tmp_path: Path
) -> None:
    env = cli_env(DATABASE_URL=emptied_afterwards, RELAY_TIMEOUT_SECONDS="1")
    async with receiving(Receiver(hang=120)) as receiver:  # past the test: the killed attempt never ends

        def first_life() -> bytes:
            run_cli("subscriptions", "create", receiver.url, env=env)
            with serve(env, tmp_path / "first.log") as gate:
                body = deliver(gate.http)
                wait_until(lambda: receiver.arrivals, 15)  # the attempt is in flight (the receiver hangs)
                gate.proc.kill()
                gate.proc.wait()
            return body

        body = await asyncio.to_thread(first_life)
        receiver.hang = 0

        def second_life() -> None:
            with serve(env, tmp_path / "second.log"):
                wait_until(lambda: receiver.received, 30)  # once the lease of the killed attempt ran out
                time.sleep(2)  # a third attempt would have come by now

        await asyncio.to_thread(second_life)
    first, again = receiver.arrivals  # the killed attempt, and the one after restart
    assert first.body == again.body == body
    assert first.headers["webhook-id"] == again.headers["webhook-id"]
    assert receiver.received == [again]
