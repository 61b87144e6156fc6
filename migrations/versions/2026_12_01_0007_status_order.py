"""status order: the rule by which Meta's status webhooks move a sent message's status, as a function

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 07:00:00

Webhook ingest applies every status of a group of deliveries in one statement (webhook/repository.py), so
several statuses of one message may meet there: they are folded in arrival order by this function, the
one place the rule lives. A status moves the record only forward: anything may follow the gate's own
pending / unknown / accepted; delivered, read or failed may follow sent; read may follow delivered. Every
other status is final (read, failed, not_sent, and any status Meta adds). To change the rule, replace the
function in a new revision.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION message_status_after(current text, updates text[]) RETURNS text
        LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
        DECLARE
          next text;
        BEGIN
          FOREACH next IN ARRAY updates LOOP
            IF current IN ('pending', 'unknown', 'accepted')
               OR (current = 'sent' AND next IN ('delivered', 'read', 'failed'))
               OR (current = 'delivered' AND next = 'read') THEN
              current := next;
            END IF;
          END LOOP;
          RETURN current;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION message_status_after(text, text[])")
