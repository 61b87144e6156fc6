"""Import target for uvicorn workers: `uvicorn --factory window_gate.asgi:app`."""

import gc
import multiprocessing

from fastapi import FastAPI

from window_gate import lifeline, logs
from window_gate.app import create_app
from window_gate.config import load_settings
from window_gate.sandbox import in_process

# Measured in bench/: with CPython's default thresholds, full collections over the ~90 MB a worker holds
# after start-up were most of the window check's p99 and cost a fifth of its throughput. The start-up
# objects are frozen out of collection, and young garbage is collected less often.
GC_THRESHOLDS = (50_000, 1_000, 1_000)


def app() -> FastAPI:
    supervisor = multiprocessing.parent_process()  # set in the workers uvicorn spawns for --workers N
    if supervisor is not None and supervisor.pid is not None:
        lifeline.exit_with(supervisor.pid)
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    application = create_app(settings, in_process)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return application
