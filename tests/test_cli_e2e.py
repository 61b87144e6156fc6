"""The `window-gate` command as operators run it: real processes, a real socket, real PostgreSQL."""

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.factories import PN
from tests.served import (
    CUSTOMER,
    KEY,
    WINDOW_GATE,
    deliver_inbound,
    run_cli,
    serve,
    stop_embedded_postgres,
    window,
)
from window_gate import db
from window_gate.cli import EMBEDDED_IN_CONTAINER

pytestmark = pytest.mark.slow  # the CLI and `serve` as processes


def test_created_key_works_against_a_served_gate(emptied_afterwards: str, tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL=emptied_afterwards)
    assert run_cli("migrate", env=env).stdout.strip().endswith(f"database at revision {db.head_revision()}")
    created = run_cli("api-keys", "create", "ops", "--role", "read", "--phone-number", "123", env=env)
    key = created.stdout.strip().splitlines()[-1]
    assert KEY.match(key), created.stdout
    assert created.stdout.count(key) == 1

    with serve(env, tmp_path / "serve.log", "--no-migrate") as gate:
        assert window(gate.http, key, "123").json()["state"] == "never_opened"
        deliver_inbound(gate.http, "123")
        r = window(gate.http, key, "123")
        assert r.status_code == 200, r.text
        assert (r.json()["state"], r.json()["can_send_free_form"]) == ("open", True)
        assert r.json()["customer"]["wa_id"] == CUSTOMER
        assert window(gate.http, key, PN).json()["code"] == "forbidden"  # the key is limited to 123
        assert window(gate.http, "wg_" + "x" * 43, "123").status_code == 401
        assert gate.http.get("/readyz").json()["revision"] == db.head_revision()
        assert key not in gate.output()  # keys never reach the logs


def test_embedded_first_start_prints_an_admin_key_and_data_survives_restart() -> None:
    # Short path: PostgreSQL's socket lives in the data folder and socket paths are limited in length.
    home = Path(tempfile.mkdtemp(prefix="wg-e2e-"))
    env = cli_env(DATA_DIR=str(home / "data"), EMBEDDED_IN_CONTAINER="true")  # this may run in a container
    pgdata = home / "data" / "pg"
    try:
        with serve(env, home / "first.log") as gate:
            lines = gate.output().splitlines()
            keys = [line.strip() for line in lines if KEY.match(line.strip())]
            assert len(keys) == 1, gate.output()
            [key] = keys
            assert window(gate.http, key, PN).json()["state"] == "never_opened"
            deliver_inbound(gate.http, PN)
            first = window(gate.http, key, PN).json()
            assert first["state"] == "open"
        # Stopped with the `serve` that started it: the second start reads the window back from disk.
        assert not (pgdata / "postmaster.pid").exists()
        run_cli("api-keys", "list", env=env)  # a CLI command starts it this time, and leaves it running

        with serve(env, home / "second.log") as gate:
            assert not [line for line in gate.output().splitlines() if KEY.match(line.strip())], gate.output()
            assert "admin API key" not in gate.output()
            again = window(gate.http, key, PN)
            assert again.status_code == 200, again.text
            assert (again.json()["state"], again.json()["last_inbound_at"]) == (
                "open",
                first["last_inbound_at"],
            )
        assert (pgdata / "postmaster.pid").exists()  # joined, not started, by that `serve`: left running
    finally:
        stop_embedded_postgres(pgdata)
        shutil.rmtree(home, ignore_errors=True)


# What Kubernetes sets in every pod: the CLI then knows it runs in a container, wherever the test runs.
IN_A_POD = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}


@pytest.mark.parametrize(
    ("verb", "settings"),
    [
        (["migrate"], {}),
        (["migrate"], {"DATABASE_URL": ""}),  # empty is unset, as compose's `${VAR:-}` gives it
        (["serve", "--port", "1"], {}),
        (["worker"], {}),
        (["api-keys", "list"], {}),
    ],
    ids=["migrate", "migrate-empty-url", "serve", "worker", "api-keys"],
)
def test_in_a_container_without_database_url_nothing_starts_an_embedded_database(
    verb: list[str], settings: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    done = subprocess.run(
        [WINDOW_GATE, *verb],
        env=cli_env(DATA_DIR=str(data), **settings) | IN_A_POD,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.strip().splitlines()[-1] == EMBEDDED_IN_CONTAINER, done.stderr  # after any warning
    assert not data.exists()  # no embedded PostgreSQL was started: nothing to lose, nothing to clean up


def test_in_a_container_the_embedded_database_is_used_when_asked_for() -> None:
    home = Path(tempfile.mkdtemp(prefix="wg-pod-"))  # short: PostgreSQL's socket lives in the data folder
    env = cli_env(DATA_DIR=str(home / "data"), EMBEDDED_IN_CONTAINER="true") | IN_A_POD
    try:
        done = run_cli("migrate", env=env)
        assert done.stdout.strip().endswith(f"database at revision {db.head_revision()}")
        assert (home / "data" / "pg" / "PG_VERSION").exists()
    finally:
        stop_embedded_postgres(home / "data" / "pg")
        shutil.rmtree(home, ignore_errors=True)


def test_in_a_container_a_database_url_is_used_as_ever(database_url: str, tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL=database_url, DATA_DIR=str(tmp_path / "data")) | IN_A_POD
    assert run_cli("migrate", env=env).stdout.strip().endswith(f"database at revision {db.head_revision()}")
    assert not (tmp_path / "data").exists()
