"""No 500 for any input. Every input class that once reached PostgreSQL, asyncpg or orjson and failed
there (a plain-text 500) is thrown at every operation of the app's own OpenAPI document, so a route is
covered the day it is added: each is refused 422 `validation_error` (Meta's 400 code 100 under /graph),
with nothing written and nothing sent."""

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import TABLES, assert_problem
from tests.factories import PN, WABA, delivery, inbound, sign_raw
from tests.upstream import Gated, Meta, count, open_window, text_message
from window_gate import inputs
from window_gate.app import create_app
from window_gate.config import load_settings
from window_gate.errors import MAX_ECHO, ValidationFailed, clip

SPEC = create_app(load_settings(sandbox=True)).openapi()
WEBHOOK = "/webhooks/whatsapp"
NUL = "a\x00b"
SURROGATE = "\ud800"
DEEP = 5000  # past orjson's own limit (1024) and the stdlib parser's recursion limit


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.path}"

    def params(self, where: str) -> list[dict[str, Any]]:
        return [p for p in self.spec.get("parameters", []) if p["in"] == where]

    def url(self, **values: str) -> str:
        path = self.path
        for p in self.params("path"):
            path = path.replace("{" + p["name"] + "}", quote(values.get(p["name"], example(p)), safe=""))
        return path

    def query(self, **values: str) -> dict[str, str]:
        query = {p["name"]: example(p) for p in self.params("query") if p.get("required")}
        return query | values

    def body(self) -> Any:
        content = self.spec.get("requestBody", {}).get("content", {}).get("application/json")
        if content is None:
            return None
        return content["example"] if "example" in content else _schema_example(content["schema"])


def operations() -> Iterator[Operation]:
    for path, item in SPEC["paths"].items():
        for method, spec in item.items():
            yield Operation(method, path, spec)


def example(param: dict[str, Any]) -> str:
    """A valid value of a documented parameter, from the document itself."""
    schema = param.get("schema", {})
    schema = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
    if "example" in param:
        return str(param["example"])
    if "examples" in param:
        return str(next(iter(param["examples"].values()))["value"])
    if schema.get("examples"):
        return str(schema["examples"][0])
    if "$ref" in schema:
        return str(_component(schema)["enum"][0])
    if schema.get("format") == "uuid":
        return str(uuid.uuid4())
    if schema.get("format") == "date":
        return "2026-11-01"
    return str(schema.get("default", "1"))


def _component(schema: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = SPEC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return found


def _schema_example(schema: dict[str, Any]) -> Any:
    schema = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
    if "$ref" in schema:
        schema = _component(schema)
    if "example" in schema:
        return schema["example"]
    return {
        name: prop["examples"][0]
        for name, prop in schema.get("properties", {}).items()
        if prop.get("examples")
    }


def leaves(value: Any, at: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Where the strings of a JSON value are."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, (*at, i))
    elif isinstance(value, str):
        yield at


def replaced(value: Any, at: tuple[str | int, ...], new: Any) -> Any:
    if not at:
        return new
    head, *rest = at
    if isinstance(value, dict):
        return {k: replaced(v, tuple(rest), new) if k == head else v for k, v in value.items()}
    return [replaced(v, tuple(rest), new) if i == head else v for i, v in enumerate(value)]


def bad_bodies(body: Any) -> Iterator[tuple[str, bytes]]:
    """Each input class at each string of a valid body, then bodies that are not JSON at all."""
    for at in leaves(body):
        where = ".".join(map(str, at))
        original = _get(body, at)
        yield f"NUL at {where}", orjson.dumps(replaced(body, at, original + "\x00"))
        # orjson cannot write a lone surrogate; the stdlib escapes it as \ud800, as a client would send it.
        yield f"lone surrogate at {where}", json.dumps(replaced(body, at, original + SURROGATE)).encode()
        yield f"2^64 at {where}", json.dumps(replaced(body, at, 2**64)).encode()
        yield f"-2^63-1 at {where}", json.dumps(replaced(body, at, -(2**63) - 1)).encode()
        yield (
            f"{inputs.MAX_DEPTH + 1} levels at {where}",
            orjson.dumps(replaced(body, at, _nested(inputs.MAX_DEPTH))),
        )
        yield (
            f"{DEEP} levels at {where}",
            json.dumps(body).replace(json.dumps(original), "[" * DEEP + "]" * DEEP, 1).encode(),
        )
    yield "NUL in a key", orjson.dumps({"\x00": 1, **body} if isinstance(body, dict) else [body, {"\x00": 1}])
    yield from NOT_JSON.items()


NOT_JSON = {
    "not JSON": b"not json",
    "not UTF-8": b'{"a": "\xff\xfe"}',
    "UTF-8 surrogate bytes": b'{"a": "\xed\xa0\x80"}',
    "NaN": b'{"a": NaN}',
    "1e400": b'{"a": 1e400}',
    "byte order mark": b"\xef\xbb\xbf{}",
    "truncated": b'{"a": [',
}


def _get(value: Any, at: tuple[str | int, ...]) -> Any:
    for step in at:
        value = value[step]
    return value


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def url_cases(op: Operation) -> Iterator[tuple[str, str, dict[str, str], dict[str, str]]]:
    """(name, url, query, headers): NUL in each path parameter, query parameter and header it documents."""
    for p in op.params("path"):
        yield f"NUL in path {p['name']}", op.url(**{p["name"]: NUL}), op.query(), {}
    for p in op.params("query"):
        yield f"NUL in query {p['name']}", op.url(), op.query(**{p["name"]: NUL}), {}
    for p in op.params("header"):
        if p["name"] != "authorization":
            yield f"NUL in header {p['name']}", op.url(), op.query(), {p["name"]: NUL}


OPERATIONS = list(operations())


async def rows(engine: AsyncEngine) -> dict[str, int]:
    return {table: await count(engine, table) for table in TABLES}


def assert_refused(op: Operation, case: str, response: httpx.Response) -> None:
    if op.path.startswith("/graph/"):  # Meta's own shape: an SDK raises its usual error
        assert response.status_code == 400, (case, response.text)
        error = response.json()["error"]
        assert (error["code"], error["window_gate"]["code"]) == (100, "validation_error"), (case, error)
    else:
        assert response.status_code == 422, (case, response.text)
        assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize("op", OPERATIONS, ids=str)
async def test_every_input_class_on_every_route_is_422_nothing_written_nothing_sent(
    gate: Gated, meta: Meta, op: Operation
) -> None:
    client, engine = gate
    before = await rows(engine)
    tried = 0
    for case, url, query, headers in url_cases(op):
        r = await client.request(op.method, url, params=query, headers=headers, content=_raw(op.body()))
        assert_refused(op, case, r)
        tried += 1
    if op.body() is not None and op.path != WEBHOOK:
        for case, raw in bad_bodies(op.body()):
            r = await client.request(
                op.method,
                op.url(),
                params=op.query(),
                content=raw,
                headers={"Content-Type": "application/json"},
            )
            assert_refused(op, case, r)
            tried += 1
    assert await rows(engine) == before
    assert meta.requests == []
    assert tried or not (list(url_cases(op)) or op.body()), f"{op}: no input tried"


NOT_UTF8 = "%ED%A0%80%FF"  # a surrogate's UTF-8 bytes, then a byte no UTF-8 has: decoded as U+FFFD


@pytest.mark.parametrize("op", [op for op in OPERATIONS if op.params("path") or op.params("query")], ids=str)
async def test_bytes_that_are_not_utf8_in_a_url_are_answered_as_documented(
    gate: Gated, op: Operation
) -> None:
    """Percent-decoding replaces them, so they never reach the database as they came: whatever the
    answer, it is one the operation documents, never a 5xx."""
    client, _ = gate
    urls = [op.url().replace(quote(example(p), safe=""), NOT_UTF8, 1) for p in op.params("path")]
    urls += [f"{op.url()}?{p['name']}={NOT_UTF8}" for p in op.params("query")]
    for url in urls:
        r = await client.request(op.method, url, content=_raw(op.body()))
        assert r.status_code < 500 and str(r.status_code) in op.spec["responses"], (url, r.text)


def _raw(body: Any) -> bytes | None:
    return None if body is None else orjson.dumps(body)


def test_the_generated_cases_cover_every_operation_and_count() -> None:
    """The README quotes this number: the cases the test above tries, per input class."""
    counted = sum(
        len(list(url_cases(op)))
        + (len(list(bad_bodies(op.body()))) if op.body() and op.path != WEBHOOK else 0)
        for op in OPERATIONS
    )
    assert len(OPERATIONS) >= 20
    assert counted >= 200, counted


@pytest.mark.parametrize(
    ("old", "new", "applied"),
    [
        ('"hi"', '"h\\u0000i"', True),  # the text is not stored: the window opens
        ('"hi"', "18446744073709551616", True),
        ("wamid.X", "wamid.\\u0000X", False),
        ('"5511987654321"', '"55119\\u000087654321"', False),
        ('"hi"', '"\\ud800"', False),
        ('"hi"', "[" * DEEP + "]" * DEEP, False),
        (None, "not json", False),
    ],
    ids=["NUL in a text", "2^64", "NUL in an id", "NUL in the sender", "lone surrogate", "deep", "not JSON"],
)
async def test_a_well_signed_webhook_with_any_input_is_kept_and_answered_200(
    gate: Gated, old: str | None, new: str, applied: bool
) -> None:
    """Signed with Meta's secret: never refused (Meta would retry it for days), never a 500; kept byte for
    byte, applied where it can be, else kept with the reason."""
    client, engine = gate
    message = orjson.dumps(delivery([inbound("5511987654321", message_id="wamid.X")])).decode()
    raw = (message.replace(old, new) if old else new).encode()
    r = await client.post(WEBHOOK, content=raw, headers=sign_raw(raw))
    assert r.status_code == 200, r.text
    async with engine.connect() as conn:
        [(kept, reason)] = (await conn.execute(text("SELECT body, error FROM webhook_deliveries"))).all()
    assert kept == raw
    assert (reason is None, await count(engine, "windows")) == ((True, 1) if applied else (False, 0)), reason


async def test_an_unsigned_webhook_with_bad_input_is_401_and_kept_nowhere(gate: Gated) -> None:
    client, engine = gate
    r = await client.post(
        WEBHOOK, content=b'{"a": "\\u0000\\ud800"}', headers={"X-Hub-Signature-256": "sha256=00"}
    )
    assert_problem(r, 401, "unauthorized")
    assert await count(engine, "webhook_deliveries") == 0


# --- the limits, exactly ---


@pytest.mark.parametrize(
    ("value", "accepted"),
    [(2**64 - 1, True), (2**64, False), (-(2**63), True), (-(2**63) - 1, False), (10**30, False)],
)
def test_integers_are_accepted_exactly_as_far_as_orjson_writes_them(value: int, accepted: bool) -> None:
    raw = json.dumps({"n": value, "id": "1" * 30}).encode()  # 20+ digits elsewhere: the precise path runs
    if accepted:
        assert inputs.loads(raw)["n"] == value
        orjson.dumps(json.loads(raw))  # and it can be written back out
    else:
        with pytest.raises(ValidationFailed, match="integer out of range"):
            inputs.loads(raw)


def test_nesting_is_accepted_up_to_the_limit() -> None:
    inputs.loads(orjson.dumps(_nested(inputs.MAX_DEPTH - 1)))  # the string adds no level
    with pytest.raises(ValidationFailed, match="nested deeper"):
        inputs.loads(orjson.dumps(_nested(inputs.MAX_DEPTH + 1)))


def test_an_escaped_backslash_before_u0000_is_text_not_nul() -> None:
    assert inputs.loads(b'{"a": "\\\\u0000"}') == {"a": "\\u0000"}
    with pytest.raises(ValidationFailed, match="NUL"):
        inputs.loads(b'{"a": "\\\\\\u0000"}')


# Biased toward what once failed: NUL, lone surrogates, backslashes, integers at orjson's limits.
TEXT = st.text(st.characters(exclude_categories=()) | st.sampled_from("\x00\ud800\udfff\\"))
INTEGERS = st.integers() | st.sampled_from([2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | INTEGERS | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=20,
)


def storable(value: Any, depth: int = 1) -> bool:
    """What PostgreSQL, asyncpg and orjson all take: no NUL, no lone surrogate, 64-bit integers, 64 levels."""
    if isinstance(value, str):
        return "\x00" not in value and not any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, dict):
            return depth <= inputs.MAX_DEPTH and all(
                storable(k) and storable(v, depth + 1) for k, v in value.items()
            )
        if isinstance(value, list):
            return depth <= inputs.MAX_DEPTH and all(storable(v, depth + 1) for v in value)
        return True
    return inputs.INT_RANGE[0] <= value <= inputs.INT_RANGE[1]


@given(value=JSON_VALUES, ascii_only=st.booleans())
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_the_body_check_refuses_exactly_what_cannot_be_stored_or_sent(value: Any, ascii_only: bool) -> None:
    """No false alarm, no miss: a body is refused if and only if something in it would fail later."""
    # As clients write JSON: escaped (\\ud800, \\u0000) or as raw UTF-8, surrogates byte for byte.
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        inputs.loads(raw)
    except ValidationFailed:
        assert not storable(value)
        return
    assert storable(value)
    orjson.dumps(json.loads(raw))  # FastAPI's own parse of the same bytes can be written back out


async def test_a_send_with_a_64_bit_integer_still_passes(gate: Gated, meta: Meta) -> None:
    """The check refuses only what would fail later: Meta's body may carry any 64-bit integer."""
    client, _ = gate
    await open_window(client)
    r = await client.post("/v1/messages", json=text_message(text={"body": "hi", "n": 2**64 - 1}))
    assert r.status_code == 201, r.text
    assert meta.requests[0]["text"] == {"body": "hi", "n": 2**64 - 1}


# --- bodies that are not JSON: a documented code ---


def test_every_route_with_a_body_documents_its_refusal_of_a_malformed_one() -> None:
    undocumented = [
        str(op)
        for op in OPERATIONS
        if "requestBody" in op.spec and op.path != WEBHOOK
        if not (
            "validation_error" in op.spec["responses"].get("422", {}).get("description", "")
            or (
                op.path.startswith("/graph/")
                and "100 Invalid parameter" in op.spec["responses"]["400"]["description"]
            )
        )
    ]
    assert not undocumented


# --- ids that go to Meta ---


@pytest.mark.parametrize("waba_id", ["", "abc", "1/2", "../1", "1?x=1", "١٢٣", "1" * 33])
async def test_sync_refuses_an_account_id_that_is_not_digits_before_asking_meta(
    gate: Gated, meta: Meta, waba_id: str
) -> None:
    client, engine = gate
    r = await client.post("/v1/templates/sync", json={"waba_ids": [WABA, waba_id]})
    assert_problem(r, 422, "validation_error")
    assert meta.requests == []
    assert await count(engine, "template_syncs") == 0


@pytest.mark.parametrize("phone_number_id", ["", "abc", "1/../2", "1?x=1", "1" * 33])
async def test_sends_refuse_a_phone_number_id_that_is_not_digits(
    gate: Gated, meta: Meta, phone_number_id: str
) -> None:
    client, engine = gate
    r = await client.post("/v1/messages", json=text_message(phone_number_id=phone_number_id))
    assert_problem(r, 422, "validation_error")
    body = {"phone_number_id": phone_number_id, "to": "5511987654321", "language": "en"}
    assert_problem(await client.post("/v1/templates/hello_world/send", json=body), 422, "validation_error")
    if phone_number_id and "/" not in phone_number_id and "?" not in phone_number_id:
        r = await client.post(f"/graph/v25.0/{phone_number_id}/messages", json={"to": "5511987654321"})
        assert r.status_code == 400 and r.json()["error"]["code"] == 100, r.text
    assert meta.requests == []
    assert await count(engine, "messages") == 0


@pytest.mark.parametrize(
    "content_type", ["text/csv", "multipart/form-data", "application/x-www-form-urlencoded"]
)
async def test_graph_reads_its_body_strictly_whatever_its_content_type(
    gate: Gated, meta: Meta, content_type: str
) -> None:
    """The request check leaves bodies that say they are not JSON to their route; /graph reads any body
    as JSON, so it reads it with the same check."""
    client, engine = gate
    await open_window(client)
    raw = b'{"to": "5511987654321", "type": "text", "text": {"body": "h\\u0000i"}}'
    r = await client.post(f"/graph/v25.0/{PN}/messages", content=raw, headers={"Content-Type": content_type})
    assert r.status_code == 400 and r.json()["error"]["code"] == 100, r.text
    assert meta.requests == []
    assert await count(engine, "messages") == 0


async def test_graph_answers_a_bad_path_in_meta_shape(gate: Gated) -> None:
    client, _ = gate
    r = await client.post(f"/graph/v25/{PN}/messages", json={"to": "5511987654321"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == 100 and "version" in r.json()["error"]["error_data"]["details"]


# --- what a problem repeats of the input ---


async def test_a_10_kb_customer_is_not_echoed_back(gate: Gated) -> None:
    client, _ = gate
    huge = "x" * 10_000
    answers = [
        await client.put(f"/v1/opt-outs/{PN}/{huge}"),
        await client.post("/v1/windows/check", json={"phone_number_id": PN, "customers": [huge]}),
        await client.post("/v1/messages", json=text_message(to=huge)),
        await client.post("/v1/windows/check", json={"phone_number_id": PN, "customers": [huge[:150]]}),
    ]
    for r in answers:
        assert r.status_code == 422 and len(r.content) < 1500, (r.status_code, len(r.content))
    problem = answers[-1].json()
    assert problem["code"] == "invalid_recipient" and problem["customer"] == huge[:150]  # short: whole


async def test_the_window_lookup_refuses_a_customer_longer_than_documented(gate: Gated) -> None:
    client, _ = gate
    r = await client.get(f"/v1/windows/{PN}/{'5 ' * 101}")  # digits and spaces: a readable number
    assert_problem(r, 422, "validation_error")
    assert len(r.content) < 1500


def test_clip_keeps_head_and_tail_within_the_limit() -> None:
    assert clip("short") == "short"
    long = "a" * 150 + "b" * 10_000 + "' is neither a phone number nor a BSUID"
    clipped = clip({"x": [long]})["x"][0]
    assert len(clipped) == MAX_ECHO
    assert clipped.startswith("a" * 100 + "…") and clipped.endswith("' is neither a phone number nor a BSUID")


# --- the rest schemathesis found ---


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PATCH", WEBHOOK, "GET, POST"),
        ("POST", f"/v1/opt-outs/{PN}/5511987654321", "DELETE, PUT"),
        ("GET", f"/v1/budgets/phone_number/{PN}", "DELETE, PUT"),
    ],
)
async def test_405_names_every_method_of_the_path(gate: Gated, method: str, path: str, allowed: str) -> None:
    client, _ = gate
    r = await client.request(method, path)
    assert_problem(r, 405, "method_not_allowed")
    assert r.headers["allow"] == allowed


async def test_a_cost_report_to_the_last_day_python_knows_is_422(gate: Gated) -> None:
    client, _ = gate
    r = await client.get("/v1/costs", params={"group_by": "day", "from": "9999-12-31", "to": "9999-12-31"})
    assert_problem(r, 422, "validation_error")
