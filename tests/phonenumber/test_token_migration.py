"""Migration 0014: tokens stored in plain text before it are encrypted with ENCRYPTION_KEY, or the
migration stops and says why; a downgrade decrypts them again."""

from collections.abc import Iterator

import pytest
from alembic import command

from tests.conftest import ENCRYPTION_KEY, scratch_database
from tests.served import fetch
from window_gate import db
from window_gate.crypto import Sealer

PN, TOKEN = "106540352242922", "EAAG-a-plain-token-from-before-0123"


@pytest.fixture
def scratch_url(database_url: str) -> Iterator[str]:
    with scratch_database(database_url, "window_gate_token_migration") as url:
        yield url


def test_plain_tokens_are_encrypted_or_the_migration_says_to_set_a_key(
    scratch_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = db.alembic_config(scratch_url)
    command.upgrade(config, "0013")
    fetch(scratch_url, "INSERT INTO phone_numbers (phone_number_id, access_token) VALUES ($1, $2)", PN, TOKEN)

    monkeypatch.delenv("WINDOW_GATE_ENCRYPTION_KEY", raising=False)
    with pytest.raises(RuntimeError, match="set WINDOW_GATE_ENCRYPTION_KEY") as refused:
        command.upgrade(config, "0014")
    assert TOKEN not in str(refused.value)
    assert fetch(scratch_url, "SELECT version_num FROM alembic_version")[0][0] == "0013"  # nothing applied

    monkeypatch.setenv("WINDOW_GATE_ENCRYPTION_KEY", ENCRYPTION_KEY)
    command.upgrade(config, "0014")
    [row] = fetch(scratch_url, "SELECT access_token_encrypted, registered_at FROM phone_numbers")
    assert row[0] != TOKEN and Sealer([ENCRYPTION_KEY]).decrypt(row[0]) == TOKEN
    assert row[1] is not None  # an operator set it up: registered

    command.downgrade(config, "0013")
    assert fetch(scratch_url, "SELECT access_token FROM phone_numbers")[0][0] == TOKEN
