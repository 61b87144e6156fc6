"""The app without its jobs engine: these tests run the dispatcher's ticks themselves, one at a time
(one test starts the engine on its own, to show it relays unasked)."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import empty
from tests.jobs.conftest import JOB_TABLES
from window_gate.config import Settings
from window_gate.subscription import repository, service


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"jobs_in_serve": False})


@pytest.fixture(autouse=True)
async def empty_queue(database_url: str) -> AsyncIterator[None]:
    yield
    await empty(database_url, *JOB_TABLES)


async def dispatch(engine: AsyncEngine, settings: Settings) -> int:
    """What one `relay.dispatch` tick and the drains it enqueues do, run here and awaited: every
    subscription with something due, drained side by side. Deliveries attempted."""
    await service.fan_out(engine, settings)
    async with engine.connect() as conn:
        due = await repository.due_subscriptions(conn)
    return sum(await asyncio.gather(*(service.drain(engine, settings, s) for s in due)))
