"""Bad settings stop start-up with one line naming the setting and what is wrong."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env
from window_gate import config
from window_gate.config import SANDBOX_APP_SECRET, SettingsError, in_container, load_settings

WINDOW_GATE = Path(sys.executable).parent / "window-gate"

BAD = {
    "negative-margin": ({"SAFETY_MARGIN_SECONDS": "-1"}, "WINDOW_GATE_SAFETY_MARGIN_SECONDS"),
    "margin-not-a-number": ({"SAFETY_MARGIN_SECONDS": "a minute"}, "WINDOW_GATE_SAFETY_MARGIN_SECONDS"),
    "graph-version": ({"GRAPH_API_VERSION": "25"}, "WINDOW_GATE_GRAPH_API_VERSION"),
    "sandbox-not-bool": ({"SANDBOX": "perhaps"}, "WINDOW_GATE_SANDBOX"),
    "tiny-body-limit": ({"MAX_BODY_BYTES": "10"}, "WINDOW_GATE_MAX_BODY_BYTES"),
    "zero-window": ({"WINDOW_HOURS": "0"}, "WINDOW_GATE_WINDOW_HOURS"),
    "sync-database-url": ({"DATABASE_URL": "postgresql://u@h/db"}, "WINDOW_GATE_DATABASE_URL"),
    "not-a-database-url": ({"DATABASE_URL": "localhost:5432"}, "WINDOW_GATE_DATABASE_URL"),
    "meta-without-secret": ({"GRAPH_ACCESS_TOKEN": "EAAG"}, "WINDOW_GATE_APP_SECRET"),
    "sandbox-off-without-secret": ({"SANDBOX": "false"}, "WINDOW_GATE_APP_SECRET"),
    "meta-without-verify-token": (
        {"GRAPH_ACCESS_TOKEN": "EAAG", "APP_SECRET": "s3cret"},
        "WINDOW_GATE_VERIFY_TOKEN",
    ),
}


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [k for k in os.environ if k.startswith("WINDOW_GATE_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(("env", "name"), BAD.values(), ids=BAD.keys())
def test_bad_setting_is_one_line_naming_it(
    environ: pytest.MonkeyPatch, env: dict[str, str], name: str
) -> None:
    for key, value in env.items():
        environ.setenv(f"WINDOW_GATE_{key}", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert name in message and "\n" not in message, message
    assert len(message) < 200, message


def test_defaults_need_no_configuration(environ: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.sandbox_mode and settings.database_url is None
    assert settings.safety_margin_seconds == 60
    assert settings.app_secrets == [SANDBOX_APP_SECRET.encode()]


def test_meta_mode_with_its_secrets_loads(environ: pytest.MonkeyPatch) -> None:
    for key, value in {"GRAPH_ACCESS_TOKEN": "EAAG", "APP_SECRET": "a, b", "VERIFY_TOKEN": "v"}.items():
        environ.setenv(f"WINDOW_GATE_{key}", value)
    settings = load_settings()
    assert not settings.sandbox_mode
    assert settings.app_secrets == [b"a", b"b"]  # several Meta apps, comma-separated
    assert SANDBOX_APP_SECRET.encode() not in settings.app_secrets
    rotated = settings.model_copy(update={"app_secret": "c"})  # read from the copy's own field
    assert rotated.app_secrets == [b"c"] and settings.app_secrets == [b"a", b"b"]


def test_empty_database_url_means_embedded(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("WINDOW_GATE_DATABASE_URL", "")
    assert not load_settings().database_url


@pytest.mark.slow  # the CLI as a process
@pytest.mark.parametrize(
    ("verb", "bad"),
    [
        (["migrate"], "negative-margin"),
        (["serve", "--port", "1"], "meta-without-secret"),
        (["api-keys", "create", "ops"], "sync-database-url"),
    ],
)
def test_cli_refuses_bad_setting_with_one_line(verb: list[str], bad: str) -> None:
    env, name = BAD[bad]
    done = subprocess.run(
        [WINDOW_GATE, *verb], env=cli_env(**env), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], done.stderr


def test_a_container_is_known_by_its_marker_file_or_by_kubernetes(
    environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    marker = tmp_path / ".dockerenv"
    environ.setattr(config, "CONTAINER_MARKERS", (marker, tmp_path / ".containerenv"))
    environ.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert not in_container()
    marker.touch()
    assert in_container()
    marker.unlink()
    environ.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert in_container()
