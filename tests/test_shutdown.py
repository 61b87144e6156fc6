"""A graceful stop of `window-gate serve`, with real signals over real sockets: SIGTERM while sends wait
on a slow Meta and webhooks keep arriving. What the gate took it finishes (every send answered and
recorded, every delivery answered 200 stored), then it exits 0 with every process it started; past
SHUTDOWN_GRACE_SECONDS what is still at Meta is cut off, left `unknown`, and never sent again."""

import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.factories import PN
from tests.load import acknowledged, send, statuses, stored, webhooks
from tests.processes import descendants, still_running
from tests.served import admin_key, deliver_inbound, serve, wait_until
from tests.upstream import CountingMeta, counting_meta

pytestmark = pytest.mark.slow  # `serve` as a process, stopped by signals

CUSTOMER = "551187654321"
SENDS = 8
HOOK_CLIENTS = 3


def arrivals(meta: CountingMeta) -> Counter[str]:
    """How many times each send (by its Idempotency-Key, the text's body) reached Meta."""
    return Counter(s["text"]["body"] for s in list(meta.sends) if s.get("type") == "text")


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_finishes_the_sends_and_webhooks_in_flight_then_exits_0(
    emptied_afterwards: str, tmp_path: Path, workers: int
) -> None:
    url = emptied_afterwards
    with counting_meta(delay=2) as meta:  # each send waits 2 s at Meta
        env = cli_env(DATABASE_URL=url, GRAPH_BASE_URL=meta.url, GRAPH_TIMEOUT_SECONDS="5")
        key = admin_key(url)
        with serve(env, tmp_path / "gate.log", "--no-migrate", "--workers", str(workers)) as gate:
            base = str(gate.http.base_url).rstrip("/")
            deliver_inbound(gate.http, PN, CUSTOMER)  # the window is open
            children = descendants(gate.proc.pid)
            stop = threading.Event()
            with ThreadPoolExecutor(SENDS + HOOK_CLIENTS) as pool:
                hooks = [pool.submit(webhooks, base, CUSTOMER, stop) for _ in range(HOOK_CLIENTS)]
                sends = [pool.submit(send, base, key, CUSTOMER, f"k{i}") for i in range(SENDS)]
                wait_until(lambda: len(meta.sends) == SENDS, 20, "every send at Meta")
                os.kill(gate.proc.pid, signal.SIGTERM)
                signalled = time.monotonic()
                gate.proc.wait(timeout=30)
                took = time.monotonic() - signalled
                stop.set()
                answers = [f.result() for f in sends]
                delivered = {k: v for f in hooks for k, v in f.result().items()}
            assert gate.proc.returncode == 0, gate.output()
            assert still_running(children, within=5) == []

    acked = acknowledged(delivered)
    print(
        f"\n{workers} worker(s): {SENDS} sends at Meta and {len(acked)} webhooks answered 200; stopped in {took:.1f} s"
    )
    assert answers == [201] * SENDS, answers  # each waited for Meta's answer, through the stop
    assert Counter(statuses(url).values()) == {"accepted": SENDS}  # nothing left pending
    assert arrivals(meta) == {f"k{i}": 1 for i in range(SENDS)}
    assert acked, delivered  # webhooks were being answered while the stop began
    assert stored(url, acked) == set(acked)
    assert took < 2 + 5 + 10, took  # Meta's 2 s, the jobs' grace, slack; not SHUTDOWN_GRACE_SECONDS (20)


def test_past_the_grace_sends_still_at_meta_are_cut_off_and_never_sent_again(
    emptied_afterwards: str, tmp_path: Path
) -> None:
    url = emptied_afterwards
    with counting_meta(delay=30) as meta:  # Meta never answers in time
        env = cli_env(
            DATABASE_URL=url,
            GRAPH_BASE_URL=meta.url,
            GRAPH_TIMEOUT_SECONDS="3",
            SHUTDOWN_GRACE_SECONDS="1",
        )
        key = admin_key(url)
        with serve(env, tmp_path / "first.log", "--no-migrate") as gate:
            base = str(gate.http.base_url).rstrip("/")
            deliver_inbound(gate.http, PN, CUSTOMER)
            with ThreadPoolExecutor(SENDS) as pool:
                sends = [pool.submit(send, base, key, CUSTOMER, f"k{i}") for i in range(SENDS)]
                wait_until(lambda: len(meta.sends) == SENDS, 20, "every send at Meta")
                os.kill(gate.proc.pid, signal.SIGTERM)
                signalled = time.monotonic()
                gate.proc.wait(timeout=30)
                took = time.monotonic() - signalled
                answers = [f.result() for f in sends]
            assert gate.proc.returncode == 0, gate.output()
        assert took < 3, took  # the grace (1 s), not Meta's timeout (3 s)
        assert answers == [504] * SENDS, answers  # upstream_timeout: may have left, not re-sent
        assert set(statuses(url).values()) == {"pending"}  # on its way when cut off: not known to have left

        with serve(env, tmp_path / "second.log", "--no-migrate") as gate:
            base = str(gate.http.base_url).rstrip("/")
            # Each caller retries with its key: answered as unknown once past Meta's timeout, never re-sent.
            with ThreadPoolExecutor(SENDS) as pool:
                retried = list(pool.map(lambda i: send(base, key, CUSTOMER, f"k{i}"), range(SENDS)))
            wait_until(lambda: set(statuses(url).values()) == {"unknown"}, 20, "pending sends expired")
    assert retried == [504] * SENDS, retried
    assert arrivals(meta) == {f"k{i}": 1 for i in range(SENDS)}
