"""The app without its jobs engine: these tests run the dispatcher's ticks themselves, one at a time
(one test starts the engine on its own, to show it relays unasked)."""

from collections.abc import AsyncIterator

import pytest

from tests.conftest import empty
from tests.jobs.conftest import JOB_TABLES
from window_gate.config import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"jobs_in_serve": False})


@pytest.fixture(autouse=True)
async def empty_queue(database_url: str) -> AsyncIterator[None]:
    yield
    await empty(database_url, *JOB_TABLES)
