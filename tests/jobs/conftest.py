"""The jobs' tests share the session's database: each leaves pgqueuer's tables as it found them."""

from collections.abc import AsyncIterator

import pytest

from tests.conftest import empty

JOB_TABLES = ("pgqueuer", "pgqueuer_log", "pgqueuer_schedules", "pgqueuer_statistics")


@pytest.fixture(autouse=True)
async def empty_queue(database_url: str) -> AsyncIterator[None]:
    await empty(database_url, *JOB_TABLES)
    yield
    await empty(database_url, *JOB_TABLES)
