"""/metrics: the README's catalogue and the registry agree both ways, every label is of a bounded kind, and
the figures move when what they count happens (and only then)."""

import asyncio
import re
import time
from pathlib import Path

import httpx
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from tests.conftest import assert_problem, metric
from tests.factories import PN, delivery, signed, status
from tests.upstream import WA, Gated, Meta, meta_error, open_window, text_message
from window_gate import (
    app,  # noqa: F401 - every module that defines a metric, imported
    metrics,
)
from window_gate.config import Settings

README = Path(__file__).parents[1] / "README.md"
# Label names whose values come from fixed sets (routes are templates, codes come from tables, states and
# kinds from enums). A new label must be added here, with how its values are bounded, or the test fails.
BOUNDED_LABELS = {
    "method",  # HTTP methods the routes answer
    "route",  # route templates, `unmatched` for the rest
    "status",  # HTTP status codes
    "code",  # problem codes (docs/errors.md) or Meta codes of graph/reactions.py, else `other`
    "state",  # window states, job states, relay states, pool figures
    "type",  # webhook kinds of webhook/parse.py's COUNTED_KINDS, else `other`
    "outcome",  # COUNTED_OUTCOMES, else `other`; a send's status
    "event",  # held messages' events
    "entrypoint",  # job names registered in background.py
    "server",  # where a window check read: replica or primary
    "kind",  # template or free_form
    "scope",  # phone_number or api_key
    "currency",  # the rate card's
    "category",  # pricing categories
    "operation",  # Graph API calls: send, templates, media, pass_through
    "result",  # ok, meta_error, unreachable, no_answer, unreadable
    "pool",  # hot or orm
}


def registered() -> dict[str, tuple[str, tuple[str, ...]]]:
    """{name as queried: (type, label names)} of the app's metrics in prometheus_client's registry.
    (The metric objects keep their label names in `_labelnames`: the registry's families do not say.)"""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for collector in list(REGISTRY._collector_to_names):
        if isinstance(collector, MetricWrapperBase) and collector._name.startswith("window_gate_"):
            kind = str(collector._type)
            name = collector._name + ("_total" if kind == "counter" else "")
            found[name] = (kind, tuple(collector._labelnames))
    return found


def catalogue() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The README's table: | `name` | type | `label`, … | meaning |."""
    section = README.read_text().split("### Metrics", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(window_gate_\w+)` \| (\w+) \| ([^|]*) \| [^|]+ \|$", section, re.M)
    return {name: (kind, tuple(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


def test_the_readme_catalogue_lists_every_metric_and_no_other() -> None:
    documented, actual = catalogue(), registered()
    assert len(actual) >= 15
    assert not actual.keys() - documented.keys(), "registered, not in the README's catalogue"
    assert not documented.keys() - actual.keys(), "in the README's catalogue, not registered"
    assert documented == actual  # types and labels too


def test_every_label_is_of_a_bounded_kind() -> None:
    labels = {label for _, names in registered().values() for label in names}
    assert labels <= BOUNDED_LABELS, f"labels without a known bound: {labels - BOUNDED_LABELS}"


async def scrape(client: httpx.AsyncClient) -> str:
    r = await client.get("/metrics")
    assert r.status_code == 200
    return r.text


async def test_sends_refusals_meta_errors_and_webhooks_are_counted(gate: Gated, meta: Meta) -> None:
    client, _ = gate
    before = await scrape(client)
    await open_window(client, WA, ts=time.time() - 120)  # Meta's timestamp two minutes old
    assert (await client.post("/v1/messages", json=text_message())).status_code == 201
    meta.reply = meta_error(424242, "something new")
    assert_problem(await client.post("/v1/messages", json=text_message()), 502, "upstream_error")
    meta.reply = meta_error(131047, "Re-engagement message")
    assert_problem(await client.post("/v1/messages", json=text_message()), 409, "window_closed")
    # Meta closed the window: the gate refuses the next one itself, before Meta.
    assert_problem(await client.post("/v1/messages", json=text_message()), 409, "window_closed")
    assert len(meta.requests) == 3
    body, headers = signed(delivery(statuses=[status(WA, state="delivered", code=None)]))
    assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200
    assert_problem(await client.get("/v1/nothing-here"), 404, "not_found")
    after = await scrape(client)

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("window_gate_sends_total", kind="free_form", outcome="accepted") == 1
    assert grew("window_gate_sends_total", kind="free_form", outcome="failed") == 2
    assert grew("window_gate_sends_total", kind="free_form", outcome="refused") == 1
    assert grew("window_gate_upstream_errors_total", operation="send", code="131047") == 1
    assert grew("window_gate_upstream_errors_total", operation="send", code="other") == 1  # not 424242
    ok = {"operation": "send", "result": "ok"}
    assert grew("window_gate_upstream_request_duration_seconds_count", **ok) == 1
    assert (
        grew("window_gate_upstream_request_duration_seconds_count", operation="send", result="meta_error")
        == 2
    )
    assert grew("window_gate_upstream_request_duration_seconds_bucket", le="+Inf", **ok) == 1
    messages = "/v1/messages"
    assert grew("window_gate_refusals_total", route=messages, code="window_closed") == 2
    assert grew("window_gate_refusals_total", route=messages, code="upstream_error") == 1
    assert grew("window_gate_refusals_total", route="unmatched", code="not_found") == 1
    assert grew("window_gate_refusals_total", route=messages, code="other") == 0
    # A status webhook is recorded (here: for no send of the gate's), not counted as ignored too.
    assert grew("window_gate_webhook_messages_total", type="status_delivered", outcome="unknown_message") == 1
    assert grew("window_gate_webhook_messages_total", type="status", outcome="ignored") == 0
    assert grew("window_gate_webhook_ingest_lag_seconds_count") == 2
    assert (
        120 <= grew("window_gate_webhook_ingest_lag_seconds_sum") < 200
    )  # the message's 2 min, the status' ~0
    assert grew("window_gate_webhook_ingest_lag_seconds_bucket", le="60.0") == 1
    # In no label value (the exposition's numbers may hold any digits: a timestamp once held 424242).
    values = {
        v
        for family in text_string_to_metric_families(after)
        for s in family.samples
        for v in s.labels.values()
    }
    assert "other" in values
    for unbounded in (WA, PN, "wamid.", "something new", "424242"):
        assert not any(unbounded in v for v in values), unbounded
    for words in ("wamid.", "something new"):  # and nowhere else: HELP texts, names
        assert words not in after


async def test_a_kind_or_outcome_meta_invents_is_counted_as_other(gate: Gated) -> None:
    client, _ = gate
    before = await scrape(client)
    weird = status(WA, state="teleported", code=None)
    body, headers = signed(delivery(statuses=[weird]))
    assert (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code == 200
    after = await scrape(client)
    assert metric(after, "window_gate_webhook_messages_total", type="other", outcome="unknown_message") == (
        metric(before, "window_gate_webhook_messages_total", type="other", outcome="unknown_message") + 1
    )
    assert "teleported" not in after


async def test_a_scrape_reads_the_relay_backlog_and_the_pools(gate: Gated, settings: Settings) -> None:
    client, engine = gate
    r = await client.post(
        "/v1/subscriptions", json={"url": "http://127.0.0.1:9/hook", "events": ["meta.webhook"]}
    )
    assert r.status_code == 201, r.text
    await open_window(client, WA)  # one delivery for the subscriber, which nothing answers
    exposition = await scrape(client)
    async with engine.connect() as conn:
        undelivered = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM relay_deliveries WHERE state IN ('pending', 'failed')) "
                    "+ (SELECT count(*) FROM relay_fanout)"
                )
            )
        ).scalar_one()
    states = ("pending", "failed", "fanout")
    backlog = sum(metric(exposition, "window_gate_relay_backlog", state=s) for s in states)
    # Not fanned out yet, then pending, then failed once the dispatcher tried: never delivered.
    assert backlog == undelivered == 1
    assert metric(exposition, "window_gate_relay_held_back") == 0
    async with engine.begin() as conn:  # what webhook ingest under load writes (tests/subscription/)
        await conn.execute(
            text("INSERT INTO ingest_pressure (busy_until) VALUES (now() + interval '1 minute')")
        )
    assert metric(await scrape(client), "window_gate_relay_held_back") == 1
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM ingest_pressure"))
    for pool in ("hot", "orm"):
        figures = {
            s: metric(exposition, "window_gate_db_pool_connections", pool=pool, state=s)
            for s in ("max", "open", "in_use")
        }
        assert figures["max"] == settings.db_pool_size
        assert 0 <= figures["in_use"] <= figures["open"] <= figures["max"] and figures["open"] >= 1, figures


async def test_each_process_reads_its_pools_every_few_seconds_without_a_scrape(
    gate: Gated, settings: Settings
) -> None:
    """With several workers a scrape reaches one: the others keep their pools' figures fresh themselves."""
    metrics.DB_POOL.labels("hot", "max").set(-1)
    await asyncio.sleep(metrics.POOLS_EVERY_SECONDS + 1)
    assert metrics.DB_POOL.labels("hot", "max")._value.get() == settings.db_pool_size
