"""What `window-gate simulator` and `window-gate sandbox-inbound` run; no database involved."""

from pathlib import Path
from typing import Any

import httpx

from window_gate.sandbox.simulator import create_simulator
from window_gate.sandbox.state import SimulatorConfig


def run_simulator(
    host: str,
    port: int,
    webhook_url: str | None,
    throughput: int,
    app_secret: str,
    data_dir: Path | None = None,
) -> None:
    import uvicorn

    config = SimulatorConfig(
        webhook_url=webhook_url or None,
        app_secret=app_secret,
        throughput_per_second=throughput,
        data_dir=data_dir,
    )
    print(
        f"Graph API simulator (sandbox: nothing reaches WhatsApp) on http://{host}:{port}"
        f" · webhooks → {config.webhook_url or 'nowhere'} · state in {data_dir or 'memory'}"
        f" · docs: http://{host}:{port}/docs",
        flush=True,
    )
    # One process only: one view of the windows, and one writer of its journal.
    uvicorn.run(create_simulator(config), host=host, port=port, log_level="warning", access_log=False)


def post_inbound(
    simulator_url: str,
    phone_number_id: str,
    sender: str,
    text: str | None,
    hours_ago: float = 0,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """POST /sandbox/inbound; the simulator's answer (the payload it posted and the gate's status)."""
    body: dict[str, Any] = {"phone_number_id": phone_number_id, "from": sender, "text": text}
    if hours_ago:
        body["ago_seconds"] = hours_ago * 3600
    with httpx.Client(base_url=simulator_url, transport=transport, timeout=15.0) as client:
        response = client.post("/sandbox/inbound", json=body)
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer
