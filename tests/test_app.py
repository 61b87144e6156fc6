"""The factory's seams: what start-up opens it releases when a later step fails, the sandbox is wired only
by the entry points, and a bad settings file still stops start-up with one line."""

import os
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import AsyncEngine

from window_gate import db
from window_gate.app import create_app
from window_gate.cli import main
from window_gate.config import Settings, load_settings
from window_gate.db import HotPool
from window_gate.sandbox import InProcess, in_process


@pytest.fixture
def released(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the lifespan closed, in order: each engine disposed, the hot pool closed."""
    closed: list[str] = []
    dispose, close = AsyncEngine.dispose, HotPool.close

    async def disposed(engine: AsyncEngine, close: bool = True) -> None:
        closed.append("engine")
        await dispose(engine, close)

    async def pool_closed(pool: HotPool) -> None:
        closed.append("hot pool")
        await close(pool)

    monkeypatch.setattr(AsyncEngine, "dispose", disposed)
    monkeypatch.setattr(HotPool, "close", pool_closed)
    return closed


async def test_start_up_failing_after_the_engine_disposes_it(
    settings: Settings, released: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable(*_: object) -> HotPool:
        raise OSError("connection refused")  # the database went away between the engine and the pool

    monkeypatch.setattr(db, "make_hot_pool", unreachable)
    with pytest.raises(OSError, match="connection refused"):
        async with LifespanManager(create_app(settings, httpx.MockTransport(lambda _: httpx.Response(500)))):
            pass
    assert released == ["engine"]


async def test_sandbox_without_the_simulator_refuses_to_start_and_releases_everything(
    settings: Settings, released: list[str]
) -> None:
    """Sandbox mode with the default Graph URL would send to Meta: the app needs the entry points' factory."""
    assert settings.sandbox_mode
    with pytest.raises(RuntimeError, match=r"create_app\(settings, window_gate\.sandbox\.in_process\)"):
        async with LifespanManager(create_app(settings)):
            pass
    assert released == ["hot pool", "engine"]  # the pool, then the engine: reverse order of opening


async def test_the_entry_points_factory_is_the_simulator_in_sandbox_mode_only(settings: Settings) -> None:
    app = create_app(settings, in_process)
    async with LifespanManager(app):
        transport = in_process(settings, app)
        assert isinstance(transport, InProcess)
        await transport.aclose()
    meta = load_settings(sandbox=False, graph_access_token="t", app_secret="s", verify_token="v")
    assert in_process(meta, app) is None  # out of sandbox mode the factory leaves the network alone


def test_a_bad_rate_card_stops_the_cli_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """The tables are built outside Settings now; the CLI builds them first, so the message is unchanged."""
    for name in [k for k in os.environ if k.startswith("WINDOW_GATE_")]:
        monkeypatch.delenv(name)
    broken = tmp_path / "broken.csv"
    broken.write_text("Cost per message in USD,,\nMarket,Currency\n")
    monkeypatch.setenv("WINDOW_GATE_RATE_CARD", str(broken))
    monkeypatch.setenv("WINDOW_GATE_DATABASE_URL", database_url)
    with pytest.raises(SystemExit) as stopped:
        main(["migrate"])
    message = str(stopped.value.code)
    assert message.startswith(f"window-gate: bad setting: WINDOW_GATE_RATE_CARD: {broken}"), message
    assert "\n" not in message


def test_bad_keywords_stop_the_cli_with_one_line(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    for name in [k for k in os.environ if k.startswith("WINDOW_GATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WINDOW_GATE_OPT_IN_KEYWORDS", "START, Stop")
    monkeypatch.setenv("WINDOW_GATE_DATABASE_URL", database_url)
    with pytest.raises(SystemExit) as stopped:
        main(["migrate"])
    assert stopped.value.code == (
        "window-gate: bad setting: WINDOW_GATE_OPT_OUT_KEYWORDS and WINDOW_GATE_OPT_IN_KEYWORDS: "
        "stop cannot both stop and resume marketing messages"
    )
