"""How long the gate takes to answer while its database hangs (accepts connections, answers nothing).

    ./dev run python -m bench.hung_database [--database-url postgresql://…/DB] [--rounds 5] [--db-timeout S]

The app runs in-process with its default settings (DB_TIMEOUT_SECONDS 5 unless given) against a migrated
database, behind tests/dbproxy.py; each request is asked once healthy, then `rounds` times hung. Prints the answer
times (min / median / max) and the status codes seen, then checks that the same app recovers.
"""

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
from asgi_lifespan import LifespanManager

from tests.dbproxy import proxy_for
from tests.factories import PN, delivery, inbound, signed
from window_gate import db
from window_gate.apikey import service as api_keys
from window_gate.apikey.rules import Role
from window_gate.app import create_app
from window_gate.config import load_settings
from window_gate.sandbox import in_process

WA = "551187654321"


def requests(client: httpx.AsyncClient) -> dict[str, Callable[[], Awaitable[httpx.Response]]]:
    body, headers = signed(delivery([inbound(WA)]))
    text = {"phone_number_id": PN, "to": WA, "type": "text", "text": {"body": "hi"}}
    return {
        "POST /webhooks/whatsapp": lambda: client.post("/webhooks/whatsapp", content=body, headers=headers),
        "GET /v1/windows/{pn}/{customer}": lambda: client.get(f"/v1/windows/{PN}/{WA}"),
        "POST /v1/windows/check": lambda: client.post(
            "/v1/windows/check", json={"phone_number_id": PN, "customers": [WA]}
        ),
        "POST /v1/messages": lambda: client.post("/v1/messages", json=text),
        "GET /readyz": lambda: client.get("/readyz"),
    }


async def main(admin_url: str, rounds: int, db_timeout: float | None) -> None:
    name = f"window_gate_hung_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    try:
        await asyncio.to_thread(db.upgrade, url)
        async with proxy_for(url) as (proxy, proxied):
            bound = {"db_timeout_seconds": db_timeout} if db_timeout else {}
            app = create_app(load_settings(database_url=proxied, sandbox=True, **bound), in_process)
            async with LifespanManager(app) as manager:
                transport = httpx.ASGITransport(app=manager.app)
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://gate", timeout=120
                ) as client:
                    async with app.state.gate.engine.begin() as conn:
                        key = await api_keys.create(conn, "bench", Role.ADMIN, ())
                    client.headers["Authorization"] = f"Bearer {key}"
                    print(
                        f"DB_TIMEOUT_SECONDS={app.state.gate.settings.db_timeout_seconds}, {rounds} rounds hung"
                    )
                    for label, ask in requests(client).items():
                        healthy = (await ask()).status_code
                        proxy.hang()
                        seconds, codes = [], set()
                        for _ in range(rounds):
                            start = time.monotonic()
                            codes.add((await ask()).status_code)
                            seconds.append(time.monotonic() - start)
                        proxy.heal()
                        again = (await ask()).status_code
                        print(
                            f"{label:34} healthy {healthy}, hung {sorted(codes)} in "
                            f"{min(seconds):.2f} / {statistics.median(seconds):.2f} / {max(seconds):.2f} s "
                            f"(min / median / max), healed {again}"
                        )
                    proxy.heal()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--db-timeout", type=float, help="WINDOW_GATE_DB_TIMEOUT_SECONDS (default: the default)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.database_url, args.rounds, args.db_timeout))
