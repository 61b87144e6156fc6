"""Import target for uvicorn workers: `uvicorn --factory window_gate.asgi:app`."""

from fastapi import FastAPI

from window_gate.app import create_app
from window_gate.config import load_settings


def app() -> FastAPI:
    return create_app(load_settings())
