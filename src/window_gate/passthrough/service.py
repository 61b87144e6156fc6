"""Who may reach which Graph object through the gate, with whose token, and how Meta's answer is handed
back without Meta's token or URLs in it.

What a path names decides the rest (`Kind`):

- a phone number (a `phone_numbers` row or one of the key's numbers; any id followed by an edge unless it
  is an account): its own token, else GRAPH_ACCESS_TOKEN; the key must reach the number;
- a WhatsApp Business Account (`WABA_IDS`, or the account of a number the gate knows): the token of one
  of its numbers, else the default; a key limited to numbers reaches only its numbers' accounts;
- anything else (media, above all): with `phone_number_id` the token of that number, and Meta itself
  answers only for media of that number. A key limited to numbers must name one of its numbers there
  (implied when it has exactly one), may not write, and gets media objects only.

Roles: any GET needs `read`; uploading and deleting media `send` (`SEND_WRITES`); every other write
`admin`. Edges that send (`GATED_EDGES`) are never passed: sends go through the gated `/messages`.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from sqlalchemy.ext.asyncio import AsyncConnection

from window_gate.apikey.rules import Caller, Role
from window_gate.config import Settings
from window_gate.errors import Forbidden
from window_gate.passthrough import repository


class Kind(StrEnum):
    NUMBER = "phone number"
    ACCOUNT = "WhatsApp Business Account"
    OTHER = "other object"


# Sending through these would skip the window, template and budget checks (marketing_messages is Meta's
# Marketing Messages API): refused on every method.
GATED_EDGES = frozenset({"messages", "marketing_messages"})
# The writes a `send` key may make (kind, method, first edge or None for the object itself); the rest is admin's.
SEND_WRITES = frozenset({(Kind.NUMBER, "POST", "media"), (Kind.OTHER, "DELETE", None)})
# The caller's credentials in a query (Graph API clients may send the token so): never passed to Meta.
CREDENTIAL_PARAMS = frozenset({"access_token", "appsecret_proof"})
NUMBER_PARAM = "phone_number_id"


@dataclass(frozen=True, slots=True)
class Target:
    """A Graph call the caller may make, as the gate makes it."""

    kind: Kind
    node: str
    params: tuple[tuple[str, str], ...]  # the caller's query without its credentials
    token: (
        str | None
    )  # None: GRAPH_ACCESS_TOKEN; encrypted as `service.target` gives it (crypto.Sealer opens it)
    phone_number_id: str | None  # the number a media object is asked of
    media_only: bool  # a limited key on an object that is not its number: only media objects pass


def role_for(kind: Kind, method: str, edge: str | None) -> Role:
    if method == "GET":
        return Role.READ
    return Role.SEND if (kind, method, edge) in SEND_WRITES else Role.ADMIN


async def target(
    conn: AsyncConnection,
    settings: Settings,
    caller: Caller,
    method: str,
    node: str,
    edge: str | None,
    query: Sequence[tuple[str, str]],
) -> Target:
    """The call as the gate makes it, once the key may make it (Forbidden otherwise)."""
    first = edge.split("/", 1)[0] if edge else None
    if first in GATED_EDGES:
        raise Forbidden(
            f"`{first}` sends messages: the gate passes sends only through POST /{{phone_number_id}}/messages, "
            "where it checks them",
            edge=first,
        )
    found = await repository.node(conn, node)
    account = found.account or node in settings.template_accounts
    if first is not None:
        kind = Kind.ACCOUNT if account else Kind.NUMBER
    elif found.number or node in caller.phone_number_ids:
        kind = Kind.NUMBER
    else:
        kind = Kind.ACCOUNT if account else Kind.OTHER
    caller.require(role_for(kind, method, first))
    params = [(k, v) for k, v in query if k not in CREDENTIAL_PARAMS]
    named = sorted({v for k, v in params if k == NUMBER_PARAM})
    if len(named) > 1:
        raise Forbidden(f"one {NUMBER_PARAM}, not {len(named)}", phone_number_ids=named)
    if kind is Kind.NUMBER:
        caller.require_number(node)
        return Target(kind, node, tuple(params), found.number_token, None, media_only=False)
    if kind is Kind.ACCOUNT:
        limited = sorted(caller.phone_number_ids)
        if limited and node not in await repository.accounts_of(conn, limited):
            raise Forbidden(
                f"this key may not use account {node}: it is not the account of any of its numbers",
                waba_id=node,
            )
        return Target(kind, node, tuple(params), found.account_token, None, media_only=False)
    phone_number_id = named[0] if named else None
    if caller.phone_number_ids:
        if method == "POST":
            raise Forbidden(
                f"a key limited to phone numbers writes only to its numbers and their accounts; {node} is neither",
                node=node,
            )
        if phone_number_id is None:
            if len(caller.phone_number_ids) > 1:
                raise Forbidden(
                    f"{node} is not one of this key's numbers: name the number its media belongs to "
                    f"(?{NUMBER_PARAM}=…)",
                    node=node,
                )
            [phone_number_id] = caller.phone_number_ids
            params.append((NUMBER_PARAM, phone_number_id))
        caller.require_number(phone_number_id)
    token = await repository.token_of(conn, phone_number_id) if phone_number_id else None
    return Target(kind, node, tuple(params), token, phone_number_id, media_only=bool(caller.phone_number_ids))


def is_media(answer: object) -> bool:
    """Meta's media object (GET /{media_id}): `{url, mime_type, sha256, file_size, id, messaging_product}`."""
    return isinstance(answer, dict) and isinstance(answer.get("url"), str) and "mime_type" in answer


def refuse_unless_media(target: Target, answer: object) -> None:
    if target.media_only and not is_media(answer):
        raise Forbidden(
            f"{target.node} is not a media object of phone number {target.phone_number_id}, and this key "
            "may read only its numbers, their accounts and their media",
            node=target.node,
        )


@dataclass(frozen=True, slots=True)
class Links:
    """How URLs in Meta's answers are handed back: to the gate, never to Meta with Meta's token."""

    graph_root: str  # GRAPH_BASE_URL
    public: str  # the gate, as the caller reaches it
    credential: str | None  # the caller's key, when it came as `access_token` in the query

    def graph(self, url: str) -> str:
        """A Graph API URL (paging.next, …) as the same call through the gate: Meta's token left out, the
        caller's own credential put back where the caller had it (a client following `next` as it is)."""
        rest = url[len(self.graph_root.rstrip("/")) :]
        parts = urlsplit(rest)
        query = [
            (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in CREDENTIAL_PARAMS
        ]
        return self._with_query(f"{self.public}/graph{parts.path}", query)

    def media(self, media_id: str, phone_number_id: str | None) -> str:
        """The gate's download link of a media object, in place of Meta's CDN URL (which needs Meta's token)."""
        query = [(NUMBER_PARAM, phone_number_id)] if phone_number_id else []
        return self._with_query(f"{self.public}/graph/media/{media_id}", query)

    def _with_query(self, url: str, query: list[tuple[str, str]]) -> str:
        if self.credential:
            query.append(("access_token", self.credential))
        return f"{url}?{urlencode(query)}" if query else url

    def rewritten(self, answer: Any) -> Any:
        """Every Graph API URL in the answer, however deep, pointed at the gate."""
        root = self.graph_root.rstrip("/") + "/"
        if isinstance(answer, str):
            return self.graph(answer) if answer.startswith(root) else answer
        if isinstance(answer, dict):
            return {k: self.rewritten(v) for k, v in answer.items()}
        if isinstance(answer, list):
            return [self.rewritten(v) for v in answer]
        return answer


SECRET_MIN_CHARS = 16  # shorter is no Meta token (the sandbox's placeholder), and would cut words out


def scrubbed(raw: bytes, *secrets: str | None) -> bytes:
    """Meta's tokens never leave the gate, whatever Meta put in its answer."""
    for secret in secrets:
        if secret and len(secret) >= SECRET_MIN_CHARS:
            raw = raw.replace(secret.encode(), b"")
    return raw
