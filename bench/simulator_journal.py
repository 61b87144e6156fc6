"""Cost of the sandbox simulator's journal (its memory in DATA_DIR): CPU per send through the in-process
app with and without a data folder, and one compaction of 10,000 sent messages.

    ./dev run python -m bench.simulator_journal
"""

import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from window_gate.sandbox import SimulatorConfig, create_simulator, simulator_state

N = 5000
BODY = {
    "messaging_product": "whatsapp",
    "to": "5511987654321",
    "type": "template",
    "template": {"name": "hello_world", "language": {"code": "en_US"}},
}


async def run(data_dir: Path | None) -> tuple[float, float]:
    app = create_simulator(
        SimulatorConfig(throughput_per_second=10**9, status_delays=(0, 0, 0), data_dir=data_dir)
    )
    state = simulator_state(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as c:
        h = {"Authorization": "Bearer x"}
        t = time.process_time()
        for _ in range(N):
            await c.post("/v25.0/1/messages", json=BODY, headers=h)
        await state.idle(60)
        per = (time.process_time() - t) / N
        state.messages.extend(list(state.messages)[: 10_000 - len(state.messages)])
        compact = 0.0
        if state.journal:
            t = time.perf_counter()
            state.journal.rewrite(state._snapshot())
            compact = time.perf_counter() - t
        await state.aclose()
    return per, compact


async def main() -> None:
    results: dict[str, list[tuple[float, float]]] = {"memory": [], "data dir": []}
    for _ in range(5):
        for label in results:
            with tempfile.TemporaryDirectory(prefix="wg-journal-") as folder:
                results[label].append(await run(Path(folder) if label == "data dir" else None))
    for label, runs in results.items():
        pers = sorted(r[0] * 1e6 for r in runs)
        print(
            f"{label:9}: CPU per send (5 runs of {N}, statuses included) min {pers[0]:.0f} µs, median {pers[2]:.0f} µs;"
            f" compaction of 10,000 messages: min {min(r[1] for r in runs) * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    asyncio.run(main())
