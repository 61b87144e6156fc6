"""The one Graph API client: Meta's Cloud API send, its errors typed, retries only where safe."""

import asyncio
import time
from collections.abc import AsyncIterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import orjson

from window_gate.errors import GraphError, GraphNoAnswer, GraphUnreachable, GraphUnreadable
from window_gate.graph.reactions import REACTIONS
from window_gate.metrics import UPSTREAM_ERRORS, UPSTREAM_LATENCY

CONNECT_RETRIES = 2  # a refused connection means the message surely did not leave
TEMPLATE_FIELDS = "id,name,language,status,category,previous_category,parameter_format,components,rejected_reason,quality_score"
TEMPLATE_PAGE = 100


def graph_error(response: httpx.Response) -> GraphError:
    """Meta's error object from an HTTP 4xx/5xx answer; whatever of it can be read."""
    try:
        error = orjson.loads(response.content).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    data = error.get("error_data") if isinstance(error.get("error_data"), dict) else {}
    code = error.get("code")
    subcode = error.get("error_subcode")
    return GraphError(
        response.status_code,
        code if isinstance(code, int) else None,
        str(error.get("message") or f"HTTP {response.status_code} from the Graph API"),
        type=error.get("type"),
        subcode=subcode if isinstance(subcode, int) else None,
        details=(data or {}).get("details"),
        fbtrace_id=error.get("fbtrace_id"),
        raw={"error": error} if error else {},
        regain_seconds=regain_seconds(response.headers.get("x-business-use-case-usage")),
    )


def regain_seconds(usage: str | None) -> int | None:
    """The longest `estimated_time_to_regain_access` (minutes) of Meta's X-Business-Use-Case-Usage header,
    `{"<business id>": [{"type": …, "call_count": …, "estimated_time_to_regain_access": 5}, …]}`, in seconds;
    None when the header is absent, unreadable or names no wait."""
    try:
        entries = orjson.loads(usage) if usage else None
    except orjson.JSONDecodeError:
        return None
    minutes = [
        wait
        for uses in (entries.values() if isinstance(entries, dict) else ())
        for use in (uses if isinstance(uses, list) else ())
        if isinstance(use, dict)
        and isinstance(wait := use.get("estimated_time_to_regain_access"), int)
        and not isinstance(wait, bool)
        and wait > 0
    ]
    return max(minutes) * 60 if minutes else None


class GraphClient:
    def __init__(self, http: httpx.AsyncClient, version: str, default_token: str | None) -> None:
        self.http = http
        self.version = version
        self.default_token = default_token

    async def send_message(
        self, phone_number_id: str, body: dict[str, Any], token: str | None = None
    ) -> dict[str, Any]:
        """POST /{version}/{phone_number_id}/messages: Meta's JSON answer, or a GraphFailure (errors.py)."""
        headers = self._auth(token) | {"Content-Type": "application/json"}
        url = f"/{self.version}/{phone_number_id}/messages"
        return await self._call("send", "POST", url, headers=headers, content=orjson.dumps(body))

    async def list_templates(
        self, waba_id: str, after: str | None = None, limit: int = TEMPLATE_PAGE, token: str | None = None
    ) -> dict[str, Any]:
        """One page of GET /{version}/{waba_id}/message_templates: `{data, paging: {cursors: {after}, next}}`.
        A read: retried on connection failures like any call; a GraphFailure (errors.py) otherwise."""
        params = {"fields": TEMPLATE_FIELDS, "limit": str(limit)} | ({"after": after} if after else {})
        headers = self._auth(token)
        page = await self._call(
            "templates", "GET", f"/{self.version}/{waba_id}/message_templates", headers=headers, params=params
        )
        if not isinstance(page.get("data"), list):
            raise GraphUnreadable("unreadable answer from the Graph API: no `data` list")
        return page

    async def media(self, media_id: str, phone_number_id: str | None, token: str | None) -> dict[str, Any]:
        """GET /{version}/{media_id}: `{url, mime_type, sha256, file_size, id}`; with `phone_number_id`,
        Meta answers only when the media belongs to that number."""
        params = {"phone_number_id": phone_number_id} if phone_number_id else None
        url = f"/{self.version}/{media_id}"
        return await self._call("media", "GET", url, headers=self._auth(token), params=params)

    async def stream(
        self,
        method: str,
        url: str,
        *,
        token: str | None,
        params: Sequence[tuple[str, str]] = (),
        headers: Sequence[tuple[str, str]] = (),
        content: AsyncIterable[bytes] | None = None,
    ) -> httpx.Response:
        """Any Graph API call (a path under the Graph root, or the absolute URL of Meta's media), with
        `token`, its answer not read yet (the caller closes it): the pass-through's, whatever Meta says.
        Never retried, since the body is a stream; a GraphFailure when no answer came."""
        request = self.http.build_request(
            method,
            url,
            params=list(params) or None,  # an empty list would drop the query of `url` (Meta's media URL)
            headers=[*headers, *self._auth(token).items()],
            content=content,
        )
        with _measured(PROXIED) as call:
            try:
                response = await self.http.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise GraphUnreachable(str(exc)) from exc
            except httpx.HTTPError as exc:
                raise GraphNoAnswer(f"{type(exc).__name__}: {exc}") from exc
            if response.status_code >= 400:  # its error object is streamed to the caller unread
                call.result = META_ERROR
            return response

    def _auth(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.default_token or 'sandbox'}"}

    async def _call(self, operation: str, method: str, url: str, **request: Any) -> dict[str, Any]:
        """Meta's JSON object; retried only when no connection was made (nothing left)."""
        with _measured(operation):
            return await self._answer(method, url, **request)

    async def _answer(self, method: str, url: str, **request: Any) -> dict[str, Any]:
        for attempt in range(CONNECT_RETRIES + 1):
            try:
                response = await self.http.request(method, url, **request)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                if attempt == CONNECT_RETRIES:
                    raise GraphUnreachable(str(exc)) from exc
                await asyncio.sleep(0.05 * 2**attempt)
            except httpx.HTTPError as exc:  # the request may have left: the outcome is unknown
                raise GraphNoAnswer(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise graph_error(response)
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise GraphUnreadable(f"unreadable answer from the Graph API: {exc}") from exc
        if not isinstance(answer, dict):
            raise GraphUnreadable("unreadable answer from the Graph API")
        return answer


# /metrics: each call's duration by its result; Meta's error codes by those the gate knows (a bounded label).
PROXIED = "pass_through"
META_ERROR = "meta_error"
RESULTS: dict[type[BaseException], str] = {
    GraphError: META_ERROR,
    GraphUnreachable: "unreachable",
    GraphNoAnswer: "no_answer",
    GraphUnreadable: "unreadable",
}


class _Call:
    result = "ok"


@contextmanager
def _measured(operation: str) -> Iterator[_Call]:
    call, start = _Call(), time.perf_counter()
    try:
        yield call
    except BaseException as exc:  # cancelled too: the request may have left
        call.result = RESULTS.get(type(exc), "no_answer")
        if isinstance(exc, GraphError):
            code = str(exc.code) if exc.code in REACTIONS else "other"
            UPSTREAM_ERRORS.labels(operation, code).inc()
        raise
    finally:
        UPSTREAM_LATENCY.labels(operation, call.result).observe(time.perf_counter() - start)
