"""Liveness, readiness and metrics for operators."""

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from window_gate import db
from window_gate.errors import DatabaseUnavailable, GateError, problems
from window_gate.kit import gate
from window_gate.metrics import metrics_endpoint, read_at_scrape
from window_gate.replica import Replica

router = APIRouter(tags=["operations"])


class NotMigrated(GateError):
    code, status, title = "not_migrated", 503, "Database schema is not at the latest migration"
    sample = ("database is at '0013', code expects '0014'", {"revision": "0013"})


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"status": "ok"}})

    status: str = Field(examples=["ok"])


class Readiness(Health):
    model_config = ConfigDict(json_schema_extra={"example": {"status": "ok", "revision": "0014"}})

    revision: str | None = Field(description="Alembic revision of the database", examples=["0001"])


@router.get("/healthz", summary="Liveness", response_model=Health, status_code=200)
async def healthz() -> Health:
    """The process answers. Touches nothing else."""
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness",
    response_model=Readiness,
    status_code=200,
    responses=problems(DatabaseUnavailable, NotMigrated),
)
async def readyz(request: Request) -> Readiness:
    """The database answers and its schema is at the latest migration."""
    async with gate(request).engine.connect() as conn:
        await conn.execute(select(1))
        revision = await conn.run_sync(db.current_revision)
    if revision != db.head_revision():
        raise NotMigrated(
            f"database is at {revision!r}, code expects {db.head_revision()!r}", revision=revision
        )
    return Readiness(status="ok", revision=revision)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {"example": 'window_gate_window_decisions_total{state="open"} 3.0'}}}
    },
)
async def metrics(request: Request) -> Response:
    """Requests and refusals by route, sends, Meta's latency and errors, webhook items and lag, window
    decisions, budgets and spend, pools, background jobs, the relay's backlog and the read replica's lag
    (READ_DATABASE_URL): every metric is in the README's catalogue."""
    state = gate(request)
    if isinstance(state.reads, Replica):
        await state.reads.refresh()
    await read_at_scrape(state.engine, state.hot)
    return await metrics_endpoint(request)
