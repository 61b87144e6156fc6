"""The Graph API simulator: a stand-in for Meta's Cloud API in tests and on a newcomer's machine.

It is a test double of Meta, never a claim that a message reached WhatsApp: every answer carries
`X-Sandbox: true` and every wamid starts with `wamid.SANDBOX`. Its state lives on `app.state.simulator`,
kept in its data folder when it has one (so a restart forgets no window); several simulator processes
would each keep their own view, so run one.
"""

import asyncio
import contextlib
import email.policy
import hashlib
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from typing import Annotated, Any

import httpx
import orjson
from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from window_gate.sandbox.meta import (
    ERRORS,
    RE_ENGAGEMENT,
    MetaError,
    envelope,
    new_wamid,
    pricing,
    unix,
    validate_send,
    validate_status_update,
    wa_id_for,
)
from window_gate.sandbox.meta import Send as SendBody
from window_gate.sandbox.state import (
    ErrorFault,
    Fault,
    Faults,
    Media,
    SentMessage,
    SimulatorConfig,
    SimulatorState,
)
from window_gate.sandbox.templates import Template, check_send, page

GRAPH_TAG, SANDBOX_TAG = "graph (simulated)", "sandbox controls"
META_ERROR = {"description": "Meta's error shape: `{error: {message, type, code, error_data, fbtrace_id}}`"}
graph = APIRouter(tags=[GRAPH_TAG])
controls = APIRouter(prefix="/sandbox", tags=[SANDBOX_TAG])
objects = APIRouter(tags=[GRAPH_TAG])  # /{version}/{id}…: after the controls, which it would shadow
ATTACHMENTS = "/whatsapp_business/attachments/"  # the path of Meta's media CDN (lookaside.fbsbx.com)


def create_simulator(config: SimulatorConfig | None = None) -> FastAPI:
    """The simulator as an app of its own: serve it with uvicorn, or mount it in-process with an
    `httpx.ASGITransport` (its state is built here, so it works without a lifespan too)."""
    state = SimulatorState(config or SimulatorConfig())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await state.aclose()

    app = FastAPI(
        title="window_gate Graph API simulator",
        version="0.1.0",
        summary="A test double of Meta's WhatsApp Cloud API: nothing sent here reaches WhatsApp",
        description=__doc__ or "",
        lifespan=lifespan,
    )
    app.state.simulator = state
    app.exception_handler(MetaError)(_meta_error)
    app.include_router(graph)
    app.include_router(controls)
    app.include_router(objects)
    app.add_middleware(SandboxHeader)
    return app


class InProcess(httpx.ASGITransport):
    """The simulator inside the caller's process, reached without a socket. Its lifespan never runs
    there, so closing the transport (as `httpx.AsyncClient.aclose` does) stops it and saves its state."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.simulator = create_simulator(config)
        super().__init__(app=self.simulator)

    async def aclose(self) -> None:
        await simulator_state(self.simulator).aclose()


def simulator_state(app: FastAPI) -> SimulatorState:
    state: SimulatorState = app.state.simulator
    return state


def _state(request: Request) -> SimulatorState:
    return simulator_state(request.app)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _meta_error(_: Request, exc: MetaError) -> Response:
    response = _json(exc.body(), exc.http_status)
    if exc.code == 190:
        response.headers["WWW-Authenticate"] = f'OAuth "Facebook Platform" "invalid_token" "{exc.title}"'
    return response


class SandboxHeader:
    """`X-Sandbox: true` on every answer, errors and 404s included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-sandbox", b"true")]
            await send(message)

        await self.app(scope, receive, marked if scope["type"] == "http" else send)


def _authenticate(request: Request) -> None:
    """Any non-empty token passes: the simulator checks presence, not validity."""
    if not _token(request):
        raise MetaError(190)


def _token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.query_params.get("access_token", "")


# --- Graph API (Meta's paths and shapes) -------------------------------------------------------------------
@graph.post(
    "/{version}/{phone_number_id}/messages",
    summary="Send a message (simulated)",
    status_code=200,
    responses={
        400: META_ERROR,
        401: META_ERROR,
        404: META_ERROR,
        500: META_ERROR,
        502: {"description": "dropped answer (fault)"},
    },
)
async def send_message(request: Request, version: str, phone_number_id: str) -> Response:
    """Meta's send: validated like Meta (code 100), throttled per number (130429), templates checked
    (132000/132001/132015/132016). Accepted sends answer a `wamid.SANDBOX…` id and post signed status
    webhooks: sent → delivered → read, or a `failed` status with 131047 for free-form outside the
    simulator's own view of the window (or with an injected error: `POST /sandbox/faults`)."""
    state = _state(request)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and "status" in body:
        return await _update_status(request, state, phone_number_id, body)
    state.sends[phone_number_id] += 1
    try:
        _authenticate(request)
        fault = await _apply_faults(state)
        if body is None:
            raise MetaError(100, "The request body is not valid JSON.")
        send = validate_send(body)
        template = check_send(state.config.templates, send.template) if send.type == "template" else None
        if not state.take_throughput(phone_number_id):
            raise MetaError(130429)
        error = state.faults.draw_error() if fault is None else None
        if error is not None:
            state.faulted[str(error.code)] += 1
            if not error.in_status:
                raise MetaError(error.code)
    except MetaError as exc:
        state.errors[exc.code] += 1
        raise
    answer = _accept(state, phone_number_id, send, template, error.code if error else None)
    if fault == "timeout":  # the message did go out; the answer comes too late for the caller
        await asyncio.sleep(state.faults.timeout_seconds)
    if fault == "drop":  # the message did go out; the answer is lost on the way, as behind a proxy
        return PlainTextResponse("upstream connect error or disconnect/reset before headers", status_code=502)
    return _json(answer)


async def _update_status(
    request: Request, state: SimulatorState, phone_number_id: str, body: dict[str, Any]
) -> Response:
    """Mark as read (with a typing indicator or not): `{"success": true}`, no message, no webhook."""
    try:
        _authenticate(request)
        if state.faults.latency_ms:
            await asyncio.sleep(state.faults.latency_ms / 1000)
        validate_status_update(body)
    except MetaError as exc:
        state.errors[exc.code] += 1
        raise
    state.marked_read[phone_number_id] += 1
    return _json({"success": True})


async def _apply_faults(state: SimulatorState) -> Fault | None:
    faults = state.faults
    if faults.latency_ms:
        await asyncio.sleep(faults.latency_ms / 1000)
    fault = faults.draw()
    if fault:
        state.faulted[fault] += 1
    if fault == "5xx":
        raise MetaError(131000)
    return fault


def _accept(
    state: SimulatorState, pn: str, send: SendBody, template: Template | None, failure: int | None = None
) -> dict[str, Any]:
    wa_id = send.wa_id or (state.wa_by_user.get(send.user_id) if send.user_id else None)
    message = SentMessage(
        id=new_wamid(wa_id),
        phone_number_id=pn,
        input=send.input,
        wa_id=wa_id,
        user_id=send.user_id,
        type=send.type,
        template=template.name if template else None,
        window_open=state.window_open(pn, wa_id, send.user_id),
        accepted_at=state.now(),
        callback=send.callback,
    )
    state.accepted_message(message)
    state.accepted[pn] += 1
    category = template.category.lower() if template else "service"
    # Free-form outside the window fails whatever the entry point: it starts no free window either.
    fep = (
        state.free_entry_point(pn, wa_id, send.user_id)
        if category != "service" or message.window_open
        else None
    )
    state.spawn(_deliver(state, message, category, send.callback, failure, fep))
    contact = {"input": send.input} | ({"wa_id": wa_id} if wa_id else {})
    contact |= {"user_id": send.user_id} if send.user_id else {}
    return {
        "messaging_product": "whatsapp",
        "contacts": [contact],
        "messages": [{"id": message.id, "message_status": "accepted"}],
    }


async def _deliver(
    state: SimulatorState,
    message: SentMessage,
    category: str,
    callback: str | None,
    failure: int | None,
    fep: tuple[str, datetime] | None = None,
) -> None:
    """The status webhooks of one accepted message, in order, each after its configured delay; one
    `failed` status with Meta's error instead when it cannot be delivered. Inside a free-entry-point
    window (`fep`: conversation id, end) they carry Meta's `conversation` object (its end on `sent` only)
    and free `referral_conversion` pricing."""
    delays = state.config.status_delays
    if failure is None and category == "service" and not message.window_open:
        failure = RE_ENGAGEMENT
    if failure is not None:
        await asyncio.sleep(delays[0])
        await _post_status(state, message, "failed", callback, errors=[MetaError(failure).as_status_error()])
        return
    price = pricing(category, message.window_open, free_entry_point=fep is not None)
    for status, delay in zip(("sent", "delivered", "read"), delays, strict=True):
        await asyncio.sleep(delay)
        extra: dict[str, Any] = {"pricing": price}
        if fep is not None:
            conversation_id, ends = fep
            conversation: dict[str, Any] = {"id": conversation_id, "origin": {"type": "referral_conversion"}}
            if status == "sent":
                conversation["expiration_timestamp"] = unix(ends)
            extra["conversation"] = conversation
        await _post_status(state, message, status, callback, **extra)


async def _post_status(
    state: SimulatorState, message: SentMessage, status: str, callback: str | None, **extra: Any
) -> None:
    item: dict[str, Any] = {"id": message.id, "status": status, "timestamp": unix(state.now())}
    item |= {"recipient_id": message.wa_id} if message.wa_id else {}
    item |= {"recipient_user_id": message.user_id} if message.user_id else {}
    item |= {"biz_opaque_callback_data": callback} if callback is not None else {}
    state.add_status(message, status)
    config = state.config
    payload = envelope(
        config.waba_id, message.phone_number_id, config.display_phone_number, statuses=[item | extra]
    )
    await state.post_webhook(payload)


@graph.get(
    "/{version}/{waba_id}/message_templates",
    summary="List message templates (simulated)",
    status_code=200,
    responses={400: META_ERROR, 401: META_ERROR},
)
async def list_templates(
    request: Request,
    version: str,
    waba_id: str,
    limit: Annotated[str | None, Query(examples=["25"])] = None,
    after: str | None = None,
    before: str | None = None,
    fields: Annotated[str | None, Query(examples=["name,status,language"])] = None,
    status: Annotated[str | None, Query(examples=["APPROVED"])] = None,
    name: str | None = None,
) -> Response:
    """The simulator's built-in templates with Meta's cursor paging (`paging.cursors.before/after`,
    `paging.next`, `paging.previous`) and `fields`, `status` and `name` filters."""
    state = _state(request)
    _authenticate(request)
    if state.faults.latency_ms:
        await asyncio.sleep(state.faults.latency_ms / 1000)
    if waba_id != state.config.waba_id:
        raise MetaError(
            100,
            f"Unsupported get request. Object with ID '{waba_id}' does not exist, cannot be loaded due to "
            "missing permissions, or does not support this operation.",
        )
    # Meta's paging links carry the caller's access token, even when it came in a header.
    url = request.url.include_query_params(access_token=_token(request))
    found = page(
        state.config.templates,
        url,
        limit=limit,
        after=after,
        before=before,
        fields=fields,
        status=status,
        name=name,
    )
    return _json(found)


# --- Media: upload, look up, download, delete ---------------------------------------------------------------
@graph.post(
    "/{version}/{phone_number_id}/media",
    summary="Upload media (simulated)",
    status_code=200,
    responses={400: META_ERROR, 401: META_ERROR},
)
async def upload_media(request: Request, version: str, phone_number_id: str) -> Response:
    """Meta's multipart upload (`file`, `type`, `messaging_product`, the last also as a query parameter):
    `{"id": <media id>}`. The simulator keeps media in memory only."""
    state = _state(request)
    _authenticate(request)
    parts = _form(request.headers.get("content-type", ""), await request.body())
    product = parts.get("messaging_product", (None, b""))[1].decode() or request.query_params.get(
        "messaging_product"
    )
    if product != "whatsapp":
        raise MetaError(100, "The parameter messaging_product is required and must be 'whatsapp'.")
    if "file" not in parts:
        raise MetaError(100, "The parameter file is required.")
    file_type, data = parts["file"]
    mime_type = parts.get("type", (None, b""))[1].decode() or file_type
    if not mime_type:
        raise MetaError(100, "The parameter type is required.")
    media = Media(str(10**15 + secrets.randbelow(9 * 10**15)), phone_number_id, mime_type, data)
    state.media[media.id] = media
    return _json({"id": media.id})


def _form(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """multipart/form-data by part name: (the part's own content type, its bytes)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise MetaError(100, "Media must be uploaded as multipart/form-data.")
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            own_type = part.get_content_type() if part.get("content-type") else None
            parts[name] = (own_type, payload if isinstance(payload, bytes) else b"")
    return parts


def _media(state: SimulatorState, media_id: str, phone_number_id: str | None) -> Media:
    media = state.media.get(media_id)
    if media is None or (phone_number_id is not None and phone_number_id != media.phone_number_id):
        # Meta does not say whether the media exists for another number: the same error either way.
        raise MetaError(
            100,
            f"Unsupported request. Object with ID '{media_id}' does not exist, cannot be loaded due to "
            "missing permissions, or does not support this operation.",
        )
    return media


def _attachment_hash(media: Media) -> str:
    return hashlib.sha256(f"{media.id}:{media.phone_number_id}".encode()).hexdigest()[:24]


@graph.get(
    ATTACHMENTS, summary="Download media (simulated CDN)", status_code=200, responses={401: META_ERROR}
)
async def download_media(
    request: Request, mid: str = "", digest: Annotated[str, Query(alias="hash")] = ""
) -> Response:
    """The URL a media lookup answers, as Meta's CDN serves it: the bytes, with the access token only."""
    state = _state(request)
    _authenticate(request)
    media = _media(state, mid, None)
    if not secrets.compare_digest(digest, _attachment_hash(media)):
        raise MetaError(100, "The media URL is not valid.")
    return Response(media.data, media_type=media.mime_type)


@objects.get(
    "/{version}/{node}",
    summary="Read an object: media, the account, a phone number (simulated)",
    status_code=200,
    responses={400: META_ERROR, 401: META_ERROR},
)
async def read_object(
    request: Request, version: str, node: str, phone_number_id: str | None = None
) -> Response:
    """A media object (its `url` on the simulator's CDN path), the simulator's account, or else one of its
    phone numbers: the simulator serves every number."""
    state = _state(request)
    _authenticate(request)
    config = state.config
    if node in state.media or node in state.media_deleted:
        media = _media(state, node, phone_number_id)
        url = request.url.replace(path=ATTACHMENTS, query="").include_query_params(
            mid=media.id, ext=int(state.now().timestamp()), hash=_attachment_hash(media)
        )
        return _json(media.graph(str(url)))
    if node == config.waba_id:
        return _json({"id": node, "name": "Sandbox Business Account", "currency": "USD", "timezone_id": "1"})
    return _json(
        {
            "verified_name": "Sandbox Business",
            "display_phone_number": config.display_phone_number,
            "quality_rating": "GREEN",
            "platform_type": "CLOUD_API",
            "id": node,
        }
    )


@objects.delete(
    "/{version}/{node}",
    summary="Delete media (simulated)",
    status_code=200,
    responses={400: META_ERROR, 401: META_ERROR},
)
async def delete_object(
    request: Request, version: str, node: str, phone_number_id: str | None = None
) -> Response:
    state = _state(request)
    _authenticate(request)
    del state.media[_media(state, node, phone_number_id).id]
    state.media_deleted.add(node)
    return _json({"success": True})


# Not in the simulator's document: one function on several methods and paths.
@objects.api_route(
    "/{version}/{node}/{edge:path}", methods=["GET", "POST", "DELETE"], include_in_schema=False
)
@objects.post("/{version}/{node}", include_in_schema=False)
async def unsupported(request: Request) -> Response:
    """What the simulator does not model is refused as Meta refuses an unknown path: code 100."""
    _authenticate(request)
    raise MetaError(
        100,
        f"Unsupported {request.method.lower()} request. The simulator does not model {request.url.path}.",
    )


# --- Sandbox controls (not Meta's) ---------------------------------------------------------------------
class InboundIn(BaseModel):
    """A customer writing to a business number, as the simulator will deliver it to the gate."""

    model_config = ConfigDict(populate_by_name=True)

    phone_number_id: str = Field(min_length=1, max_length=64, examples=["106540352242922"])
    from_: str | None = Field(
        None,
        alias="from",
        description="Customer phone number; separators tolerated",
        examples=["+55 11 98765-4321"],
    )
    user_id: str | None = Field(
        None, description="Business-scoped user id (BSUID)", examples=["US.13491208655302741918"]
    )
    name: str = Field("Sandbox Customer", description="Profile name in `contacts[]`", examples=["Ana"])
    type: str = Field("text", description="Inbound message type", examples=["text", "button"])
    text: str | None = Field(None, description="Body of a text message", examples=["Hi, where is my order?"])
    content: dict[str, Any] | None = Field(None, description="The `<type>` object for other types")
    referral: dict[str, Any] | None = Field(None, description="Click-to-WhatsApp ad referral, passed through")
    timestamp: float | None = Field(None, description="Unix seconds; default the simulator's now")
    ago_seconds: float = Field(
        0,
        ge=0,
        description="Date the message this long before the simulator's now (ages the window)",
        examples=[90000],
    )

    @model_validator(mode="after")
    def _someone(self) -> "InboundIn":
        if not (self.from_ or self.user_id):
            raise ValueError("either from (a phone number) or user_id (a BSUID) is required")
        if self.from_ and wa_id_for(self.from_) is None:
            raise ValueError(f"from ({self.from_!r}) is not a phone number")
        return self


class ClockIn(BaseModel):
    advance_seconds: float = Field(
        description="Shift the simulator's clock (negative goes back)", examples=[90000]
    )


class ErrorFaultIn(BaseModel):
    code: int = Field(description="One of the Meta error codes the simulator knows", examples=[131049])
    rate: float = Field(ge=0, le=1, description="Share of the sends that passed Meta's checks", examples=[1])
    in_status: bool = Field(
        False,
        description="Accept the send, then fail it in its status webhook (Meta's usual way for 131026, "
        "131049); false: answer the error at once",
    )

    @model_validator(mode="after")
    def _known(self) -> "ErrorFaultIn":
        if self.code not in ERRORS:
            raise ValueError(f"code {self.code} is not one of {sorted(ERRORS)}")
        return self


class FaultsIn(BaseModel):
    latency_ms: float = Field(
        0, ge=0, le=600_000, description="Added before every Graph answer", examples=[250]
    )
    error_5xx_rate: float = Field(0, ge=0, le=1, description="Share of sends answered 500 (code 131000)")
    timeout_rate: float = Field(0, ge=0, le=1, description="Share of sends accepted but answered late")
    timeout_seconds: float = Field(30, ge=0, le=600, description="How late a timed-out answer comes")
    drop_answer_rate: float = Field(0, ge=0, le=1, description="Share of sends accepted but answered 502")
    seed: int | None = Field(None, description="Replay the same fault sequence", examples=[42])
    errors: list[ErrorFaultIn] = Field(
        default_factory=list,
        description="Meta's errors for a share of the sends that pass Meta's checks, tried in order",
        examples=[[{"code": 131049, "rate": 1, "in_status": True}]],
    )


@controls.post("/inbound", summary="Simulate a customer message", status_code=200)
async def inbound(request: Request, body: InboundIn) -> Response:
    """Records the message in the simulator's own window view and posts it, signed, to the gate's
    webhook URL, waiting for the answer. Answers the payload posted and what the gate said."""
    state, config = _state(request), _state(request).config
    wa_id = wa_id_for(body.from_) if body.from_ else None
    at = datetime.fromtimestamp(body.timestamp, UTC) if body.timestamp is not None else state.now()
    at -= timedelta(seconds=body.ago_seconds)
    message: dict[str, Any] = {"id": new_wamid(wa_id), "timestamp": unix(at), "type": body.type}
    message |= {"from": wa_id} if wa_id else {}
    message |= {"from_user_id": body.user_id} if body.user_id else {}
    default = {"body": body.text or "Hello"} if body.type == "text" else {}
    message[body.type] = body.content if body.content is not None else default
    message |= {"referral": body.referral} if body.referral else {}
    contact: dict[str, Any] = {"profile": {"name": body.name}}
    contact |= {"wa_id": wa_id} if wa_id else {}
    contact |= {"user_id": body.user_id} if body.user_id else {}
    payload = envelope(
        config.waba_id,
        body.phone_number_id,
        config.display_phone_number,
        contacts=[contact],
        messages=[message],
    )
    if body.type != "system":  # an identity event, not the customer writing
        state.record_inbound(body.phone_number_id, wa_id, body.user_id, at, referral=bool(body.referral))
    status = await state.post_webhook(payload)
    webhook = {
        "url": config.webhook_url,
        "status_code": status,
        "delivered": status is not None and status < 300,
    }
    return _json({"message_id": message["id"], "webhook": webhook, "payload": payload})


@controls.get("/stats", summary="Counters", status_code=200)
async def stats(request: Request) -> Response:
    """Send attempts received (`sends`), `accepted`, per phone number, errors by Meta code, faults
    injected, webhooks posted and given up, and the simulator's clock."""
    return _json(_state(request).stats())


@controls.get("/messages", summary="Recently accepted messages", status_code=200)
async def messages(request: Request, limit: Annotated[int, Query(ge=1, le=10_000)] = 50) -> Response:
    """What the services sent, newest first, with the statuses emitted so far."""
    recent = list(_state(request).messages)[::-1][:limit]
    return _json({"data": [m.public() for m in recent]})


@controls.post("/faults", summary="Inject faults", status_code=200)
async def set_faults(request: Request, body: FaultsIn) -> Response:
    """Replace the fault settings for Graph sends: latency, 5xx, timeouts (accepted, answered after
    `timeout_seconds`) and dropped answers (accepted, answered 502): the last two DID send. `errors`:
    Meta's own refusals (131026, 131049, 131056, 130472, …) at once or in a failed status webhook."""
    state = _state(request)
    errors = tuple(ErrorFault(e.code, e.rate, e.in_status) for e in body.errors)
    state.faults = Faults(**body.model_dump(exclude={"errors"}), errors=errors)
    state.faults.rng.seed(body.seed)
    return _json(state.faults.public())


@controls.delete("/faults", summary="Clear faults", status_code=200)
async def clear_faults(request: Request) -> Response:
    """Back to a well-behaved Meta."""
    state = _state(request)
    state.faults = Faults()
    return _json(state.faults.public())


@controls.post("/clock", summary="Move the simulator's clock", status_code=200)
async def move_clock(request: Request, body: ClockIn) -> Response:
    """Shift the simulator's "now" (its window view and webhook timestamps); e.g. 90000 s = 25 h."""
    state = _state(request)
    state.advance_clock(body.advance_seconds)
    return _json({"now": state.now().isoformat(), "offset_seconds": state.offset.total_seconds()})


@controls.post("/reset", summary="Forget everything", status_code=200)
async def reset(request: Request) -> Response:
    """Windows, accepted messages, counters, faults, clock offset and pending webhooks are dropped (in
    the data folder too)."""
    state = _state(request)
    state.reset()
    return _json(state.stats())
