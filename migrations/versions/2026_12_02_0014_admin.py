"""admin: phone numbers registered by admins, their access tokens encrypted; API keys' last use

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 08:30:00

`phone_numbers.access_token` (plain text) becomes `access_token_encrypted` (Fernet under
WINDOW_GATE_ENCRYPTION_KEY's first key): tokens already stored are encrypted here, and when there are some
and no key is configured the migration stops with a message saying so (no token stays in plain text). A
number with a token or a default re-engagement template was set up by an operator: it counts as
registered. New: `registered_at`, `updated_at`, `throughput_per_second`, `time_zone`;
`api_keys.last_used_at`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from cryptography.fernet import Fernet, MultiFernet
from sqlalchemy.dialects import postgresql

from window_gate.config import load_settings

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = postgresql.TIMESTAMP(timezone=True)


def _fernet(stored: int, doing: str) -> MultiFernet:
    keys = load_settings().encryption_keys
    if not keys:
        raise RuntimeError(
            f"{stored} phone number(s) have an access token: set WINDOW_GATE_ENCRYPTION_KEY "
            f"(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())') "
            f"and migrate again, to {doing} them"
        )
    return MultiFernet([Fernet(k) for k in keys])


def _tokens(column: str) -> list[tuple[str, str]]:
    rows = op.get_bind().execute(
        sa.text(f"SELECT phone_number_id, {column} FROM phone_numbers WHERE {column} IS NOT NULL")
    )
    return [(r[0], r[1]) for r in rows]


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("last_used_at", TZ, nullable=True))
    op.add_column("phone_numbers", sa.Column("registered_at", TZ, nullable=True))
    op.add_column("phone_numbers", sa.Column("updated_at", TZ, nullable=True))
    op.add_column("phone_numbers", sa.Column("throughput_per_second", sa.Integer(), nullable=True))
    op.add_column("phone_numbers", sa.Column("time_zone", sa.Text(), nullable=True))
    op.execute(
        "UPDATE phone_numbers SET registered_at = created_at "
        "WHERE access_token IS NOT NULL OR default_reengagement_template IS NOT NULL"
    )
    plain = _tokens("access_token")
    fernet = _fernet(len(plain), "encrypt") if plain else None  # before any change: it may stop here
    op.alter_column("phone_numbers", "access_token", new_column_name="access_token_encrypted")
    if fernet is not None:
        for phone_number_id, token in plain:
            op.get_bind().execute(
                sa.text("UPDATE phone_numbers SET access_token_encrypted = :t WHERE phone_number_id = :p"),
                {"t": fernet.encrypt(token.encode()).decode(), "p": phone_number_id},
            )


def downgrade() -> None:
    sealed = _tokens("access_token_encrypted")
    fernet = _fernet(len(sealed), "decrypt") if sealed else None
    op.alter_column("phone_numbers", "access_token_encrypted", new_column_name="access_token")
    if fernet is not None:
        for phone_number_id, token in sealed:
            op.get_bind().execute(
                sa.text("UPDATE phone_numbers SET access_token = :t WHERE phone_number_id = :p"),
                {"t": fernet.decrypt(token.encode()).decode(), "p": phone_number_id},
            )
    for column in ("time_zone", "throughput_per_second", "updated_at", "registered_at"):
        op.drop_column("phone_numbers", column)
    op.drop_column("api_keys", "last_used_at")
