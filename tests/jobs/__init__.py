"""Tests of the jobs engine (src/window_gate/jobs/)."""

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest


async def until(check: Callable[[], Awaitable[bool]], within: float, every: float = 0.05) -> float:
    """Seconds it took for `check` to hold; fails past `within`."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within:
            pytest.fail(f"not within {within} s")
        await asyncio.sleep(every)
    return time.monotonic() - start
