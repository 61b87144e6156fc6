"""What every endpoint shares: the process state. (The caller: apikey/access.py.)"""

import asyncio
from dataclasses import dataclass, field

from fastapi import Request, Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from window_gate.apikey.service import Authenticator
from window_gate.config import Settings
from window_gate.db import Coalescer, HotPool
from window_gate.graph.client import GraphClient
from window_gate.window.repository import RawDelivery, Recorded
from window_gate.window.rule import Policy


@dataclass(frozen=True, slots=True)
class Gate:
    """Process-wide state built by the lifespan; nothing here decides correctness on its own."""

    settings: Settings
    engine: AsyncEngine
    autocommit: AsyncEngine  # the same pool, for single statements: no BEGIN/COMMIT round trips
    hot: HotPool  # asyncpg, for the hot paths
    record_deliveries: Coalescer[RawDelivery, Recorded]  # webhook deliveries arriving together: one statement
    policy: Policy
    auth: Authenticator
    graph: GraphClient
    background: "set[asyncio.Task[None]]" = field(default_factory=set)  # best-effort work; ends with the app


def gate(request: Request) -> Gate:
    state: Gate = request.app.state.gate
    return state


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """The model as JSON, skipping FastAPI's re-validation of what the endpoint already built (hot paths;
    the route's response_model still documents it)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")
