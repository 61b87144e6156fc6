"""What every endpoint shares: the process state. (The caller: apikey/access.py.)"""

import asyncio
from dataclasses import dataclass, field
from typing import TypeVar, cast

from fastapi import Request, Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from window_gate.config import Settings
from window_gate.db import HotPool, Rows
from window_gate.graph.client import GraphClient

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Gate:
    """Process-wide state built by the lifespan (app.py); nothing here decides correctness on its own.

    Infrastructure by name; what features make of the settings (the window policy, the pricing tables,
    the authenticator, webhook's coalescer…) by type, in `parts`: the lifespan provides them, a feature
    asks for the type it defines (`gate.part(Policy)`), so this module names no feature (the layering in
    pyproject's import-linter contracts)."""

    settings: Settings
    engine: AsyncEngine
    autocommit: AsyncEngine  # the same pool, for single statements: no BEGIN/COMMIT round trips
    hot: HotPool  # asyncpg, for the hot paths
    reads: Rows  # where window checks read: `hot`, or a read replica in front of it (replica.py)
    graph: GraphClient
    parts: dict[type, object] = field(default_factory=dict)
    background: "set[asyncio.Task[None]]" = field(default_factory=set)  # best-effort work; ends with the app

    def part(self, kind: type[T]) -> T:
        """The one `kind` the lifespan provided; a KeyError names a part it forgot."""
        return cast(T, self.parts[kind])


def gate(request: Request) -> Gate:
    state: Gate = request.app.state.gate
    return state


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """The model as JSON, skipping FastAPI's re-validation of what the endpoint already built (hot paths;
    the route's response_model still documents it)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")
