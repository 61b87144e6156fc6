"""`window-gate phone-numbers set|list|reencrypt` and `api-keys list|revoke`: the API's rules, from the
gate's host; a token read from stdin, never printed."""

import asyncio
import io
import json
import os
from collections.abc import Iterator

import asyncpg
import pytest
from cryptography.fernet import Fernet

from tests.conftest import ENCRYPTION_KEY, empty
from window_gate import cli
from window_gate.crypto import Sealer

PN, TOKEN = "106540352242922", "EAAG-typed-into-stdin-0123456789"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        cli.main(list(argv))
        code = 0  # `api-keys create` returns
    except SystemExit as done:
        code = int(done.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in [k for k in os.environ if k.startswith("WINDOW_GATE_")]:
        if name != "WINDOW_GATE_DATA_DIR":
            monkeypatch.delenv(name)
    monkeypatch.setenv("WINDOW_GATE_DATABASE_URL", database_url)
    monkeypatch.setenv("WINDOW_GATE_SANDBOX", "true")
    monkeypatch.setenv("WINDOW_GATE_ENCRYPTION_KEY", ENCRYPTION_KEY)
    yield database_url
    asyncio.run(empty(database_url, "phone_numbers", "api_keys"))


def sealed_token(url: str) -> str:
    async def read() -> str:
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            return str(await conn.fetchval("SELECT access_token_encrypted FROM phone_numbers"))
        finally:
            await conn.close()

    return asyncio.run(read())


def test_phone_numbers_set_list_and_reencrypt(
    env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(TOKEN + "\n"))
    code, out, _ = run(capsys, "phone-numbers", "set", PN, "--access-token-stdin", "--time-zone", "UTC")
    assert code == 0 and TOKEN not in out
    assert json.loads(out)["has_access_token"] and json.loads(out)["time_zone"] == "UTC"
    code, out, _ = run(capsys, "phone-numbers", "list")
    assert code == 0 and [json.loads(line)["phone_number_id"] for line in out.splitlines()] == [PN]
    code, _, err = run(capsys, "phone-numbers", "set", PN, "--time-zone", "Nowhere/Never")
    assert code == 2 and "IANA" in err

    new = Fernet.generate_key().decode()
    monkeypatch.setenv("WINDOW_GATE_ENCRYPTION_KEY", f"{new},{ENCRYPTION_KEY}")
    code, out, _ = run(capsys, "phone-numbers", "reencrypt")
    assert code == 0 and out.startswith("1 access token(s), 0 subscription secret(s)")
    assert Sealer([new]).decrypt(sealed_token(env)) == TOKEN


def test_api_keys_list_and_revoke(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "api-keys", "create", "ops", "--role", "read")
    key = out.splitlines()[-1]
    assert code == 0 and key.startswith("wg_")
    code, out, _ = run(capsys, "api-keys", "list")
    assert code == 0
    [listed] = [json.loads(line) for line in out.splitlines()]
    assert listed["name"] == "ops" and key not in out
    assert run(capsys, "api-keys", "revoke", listed["id"])[0] == 0
    assert run(capsys, "api-keys", "list")[1] == ""
    assert run(capsys, "api-keys", "revoke", listed["id"])[0] == 1
    assert run(capsys, "api-keys", "revoke", "not-a-uuid")[0] == 1
