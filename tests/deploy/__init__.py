"""Tests of the deployment files (Dockerfile, deploy/): validated against their schemas and read for what a
schema cannot say. Docker does not run here: nothing is started."""

import tomllib
from pathlib import Path

from window_gate.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
SETTINGS = {f"WINDOW_GATE_{name.upper()}" for name in Settings.model_fields}
GATE_PORT = 8000  # the image's EXPOSE and the port every gate listens on
