"""The Graph API simulator: Meta's stand-in for tests and a newcomer's first run (README "A first run").

Only the entry points (cli.py, asgi.py) and tests import it (pyproject's import-linter contracts): the
service itself never depends on its test double.
"""

import httpx
from starlette.types import ASGIApp

from window_gate.config import DEFAULT_GRAPH_BASE_URL, Settings
from window_gate.sandbox.simulator import InProcess, create_simulator, simulator_state
from window_gate.sandbox.state import SimulatorConfig, SimulatorState

__all__ = [
    "InProcess",
    "SimulatorConfig",
    "SimulatorState",
    "create_simulator",
    "in_process",
    "simulator_state",
]


def in_process(settings: Settings, app: ASGIApp) -> httpx.AsyncBaseTransport | None:
    """The Graph transport factory of the entry points (`create_app(settings, in_process)`): in sandbox
    mode with no simulator URL given, the simulator runs inside this process and posts its webhooks straight
    into `app`, so a sandbox never reaches Meta. None otherwise: the network. (`serve` runs one simulator
    beside its workers instead and points them at it, so this applies to single-process use.)"""
    if not settings.sandbox_mode or settings.graph_base_url != DEFAULT_GRAPH_BASE_URL:
        return None
    config = SimulatorConfig(
        webhook_url="http://gate/webhooks/whatsapp",
        app_secret=settings.app_secrets[0].decode(),
        webhook_transport=httpx.ASGITransport(app=app),
        data_dir=settings.data_dir / "sandbox",
    )
    return InProcess(config)
