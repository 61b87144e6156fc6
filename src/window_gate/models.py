"""ORM models: the one place Alembic imports, and what every repository.py queries with SQLAlchemy Core
(hand-written SQL only for the hot statements: db.Statement)."""

from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
TZ = TIMESTAMP(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ApiKey(Base):
    """A caller of the /v1 API. Only the SHA-256 of the key is stored."""

    __tablename__ = "api_keys"

    id: Mapped[UUID] = mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))
    name: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    phone_number_ids: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))
    revoked_at: Mapped[datetime | None] = mapped_column(TZ)
    # Written at most once a minute per key (apikey/repository.py BY_HASH): "used in the last minute or so".
    last_used_at: Mapped[datetime | None] = mapped_column(TZ)


class Customer(Base):
    """One person, known by a phone-number wa_id, a business-scoped user id (BSUID), or both."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    wa_id: Mapped[str | None] = mapped_column(Text, unique=True)
    user_id: Mapped[str | None] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class CustomerAlias(Base):
    """Every spelling that leads to a customer: wa_id digits, BSUIDs, spellings Meta answered for."""

    __tablename__ = "customer_aliases"

    alias: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class Window(Base):
    """The facts the window rule is evaluated from, per (business number, customer)."""

    __tablename__ = "windows"

    phone_number_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    last_inbound_at: Mapped[datetime | None] = mapped_column(TZ)
    last_inbound_message_id: Mapped[str | None] = mapped_column(Text)
    closed_by_meta_at: Mapped[datetime | None] = mapped_column(TZ)
    referral_at: Mapped[datetime | None] = mapped_column(TZ)
    referral: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    fep_started_at: Mapped[datetime | None] = mapped_column(TZ)
    fep_expires_at: Mapped[datetime | None] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class InboundMessage(Base):
    """A customer's message as Meta delivered it: the dedupe key for redeliveries."""

    __tablename__ = "inbound_messages"

    phone_number_id: Mapped[str] = mapped_column(Text, primary_key=True)  # keys lead with it: docs/scaling.md
    message_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[datetime] = mapped_column(TZ)
    received_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"), index=True)


class WebhookDelivery(Base):
    """Every signed POST Meta made, byte for byte: there is no API to fetch past webhooks. Partitioned by
    month (partitions.py): the key holds the partition's column, as PostgreSQL requires."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = ({"postgresql_partition_by": "RANGE (received_at)"},)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"), primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    error: Mapped[str | None] = mapped_column(Text)


__all__ = ["ApiKey", "Base", "Customer", "CustomerAlias", "InboundMessage", "WebhookDelivery", "Window"]


class PhoneNumber(Base):
    """A business phone number: learnt from webhooks, or registered by an admin (PUT /v1/phone-numbers/{id}),
    with its own access token (else WINDOW_GATE_GRAPH_ACCESS_TOKEN is used)."""

    __tablename__ = "phone_numbers"

    phone_number_id: Mapped[str] = mapped_column(Text, primary_key=True)
    # Fernet ciphertext under ENCRYPTION_KEY (crypto.py); never the token in plain text.
    access_token_encrypted: Mapped[str | None] = mapped_column(Text)
    registered_at: Mapped[datetime | None] = mapped_column(TZ)  # set by an admin; null: only heard of
    updated_at: Mapped[datetime | None] = mapped_column(TZ)  # an admin's last change
    throughput_per_second: Mapped[int | None] = mapped_column(Integer)
    time_zone: Mapped[str | None] = mapped_column(Text)  # IANA name
    waba_id: Mapped[str | None] = mapped_column(Text)  # its WhatsApp Business Account, learnt from webhooks
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))
    # Digits, learnt from webhooks' metadata: Meta names the number only this way in quality updates.
    display_phone_number: Mapped[str | None] = mapped_column(Text)
    # Meta's latest phone_number_quality_update: its event (FLAGGED, UNFLAGGED, UPGRADE, …), the messaging
    # limit it names (TIER_250 … TIER_UNLIMITED) and when Meta sent it.
    quality_event: Mapped[str | None] = mapped_column(Text)
    messaging_limit_tier: Mapped[str | None] = mapped_column(Text)
    quality_updated_at: Mapped[datetime | None] = mapped_column(TZ)
    # The Cloud API template object sent when a message waits for a closed window (if_window_closed
    # without its own template); set by an admin.
    default_reengagement_template: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class BusinessAccount(Base):
    """What Meta's account_update webhooks said of a WhatsApp Business Account, each fact as of the latest
    event that set it (`*_at`: when Meta sent it)."""

    __tablename__ = "business_accounts"

    waba_id: Mapped[str] = mapped_column(Text, primary_key=True)
    # [{"type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expires_at": ISO 8601 | null}], from ACCOUNT_RESTRICTION
    restrictions: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    restrictions_at: Mapped[datetime | None] = mapped_column(TZ)
    ban_state: Mapped[str | None] = mapped_column(Text)  # DISABLED_UPDATE: DISABLE, SCHEDULE_FOR_DISABLE, …
    ban_date: Mapped[str | None] = mapped_column(Text)  # as Meta wrote it ("April 17, 2025")
    ban_at: Mapped[datetime | None] = mapped_column(TZ)
    # VOLUME_BASED_PRICING_TIER_UPDATE: Meta's volume_tier_info by "PRICING_CATEGORY/region", newest each.
    volume_tiers: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # AUTH_INTL_PRICE_ELIGIBILITY_UPDATE: Meta's auth_international_rate_eligibility as it came.
    auth_international: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    auth_international_at: Mapped[datetime | None] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class MessageEcho(Base):
    """A message the business sent from the WhatsApp Business app (coexistence), as Meta echoed it
    (smb_message_echoes). Recorded, never a window fact: business messages do not open the window."""

    __tablename__ = "message_echoes"

    phone_number_id: Mapped[str] = mapped_column(Text, primary_key=True)
    message_id: Mapped[str] = mapped_column(Text, primary_key=True)
    recipient: Mapped[str | None] = mapped_column(Text)  # Meta's `to`: the customer as the business typed it
    recipient_user_id: Mapped[str | None] = mapped_column(Text)  # `to_user_id` (BSUID), when Meta gives it
    type: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[datetime] = mapped_column(TZ)
    received_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"), index=True)


class Message(Base):
    """One send a caller asked for: recorded before it leaves, then updated with Meta's answers.
    Partitioned by month of `created_at` (partitions.py): its keys hold that column, as PostgreSQL requires,
    so the Idempotency-Key's uniqueness lives in MessageKey and Meta's id is indexed, not unique. Each
    partition keeps 30 % of its pages free (partitions.STORAGE). Keyed by the number first, as every hot
    table (docs/scaling.md); looked up by id alone through its own index."""

    __tablename__ = "messages"
    __table_args__ = (
        PrimaryKeyConstraint("phone_number_id", "id", "created_at"),
        Index("ix_messages_id", "id"),  # GET /v1/messages/{id}, Meta's answer to a send, held messages
        # A status webhook without the gate's id (biz_opaque_callback_data): found by Meta's.
        Index("ix_messages_graph_message_id", "graph_message_id"),
        Index("ix_messages_phone_number_id_created_at", "phone_number_id", "created_at"),  # costs report
        # The month's sends of a category, counted for a free tier (pricing/repository.py: SENT_THIS_MONTH).
        Index(
            "ix_messages_phone_number_id_pricing_category_created_at",
            "phone_number_id",
            "pricing_category",
            "created_at",
        ),
        # Sends still without Meta's answer, for the chore that expires stale `pending` ones. No index names
        # `status`, and pages keep 30 % free: a status webhook's update stays on its page, touching no index
        # (a HOT update; migration 0008, bench/).
        Index("ix_messages_unanswered", "created_at", postgresql_where=text("response IS NULL")),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )

    id: Mapped[UUID]
    api_key_id: Mapped[UUID] = mapped_column(ForeignKey("api_keys.id"))
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(String(64))
    phone_number_id: Mapped[str] = mapped_column(Text)
    recipient_input: Mapped[str] = mapped_column(Text)
    recipient_wa_id: Mapped[str | None] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text)
    graph_message_id: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    response_status: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    pricing: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # Meta's word, from status webhooks
    # The gate's own estimate when the send left (pricing/rules.py): category, market, money, window flags.
    pricing_category: Mapped[str | None] = mapped_column(Text)
    market: Mapped[str | None] = mapped_column(Text)
    billable: Mapped[bool | None]
    estimated_amount: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))
    currency: Mapped[str | None] = mapped_column(String(3))
    inside_csw: Mapped[bool | None]
    inside_fep: Mapped[bool | None]
    # The window as the gate saw it when it let the send pass.
    window: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"), index=True)
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class MessageKey(Base):
    """An Idempotency-Key and the send it names (one per API key), kept as long as that send: the unique
    key `messages` cannot hold once partitioned. `created_at` is the send's, which finds it in one partition."""

    __tablename__ = "message_keys"

    api_key_id: Mapped[UUID] = mapped_column(primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(Text, primary_key=True)
    message_id: Mapped[UUID]
    created_at: Mapped[datetime] = mapped_column(TZ)


class MessageEvent(Base):
    """A message's status history: the gate's own steps and Meta's status webhooks. Partitioned by month
    of `at` (partitions.py), without a foreign key: events go with their month. Each names its send's number
    (migration 0020), which leads its keys."""

    __tablename__ = "message_events"
    __table_args__ = (
        PrimaryKeyConstraint("phone_number_id", "id", "at"),
        # Each once: Meta delivers a status again, and two ingest groups may hold copies of one at once
        # (webhook/repository.py inserts ON CONFLICT DO NOTHING). Also the lookups of a send's events.
        UniqueConstraint("phone_number_id", "message_id", "status", "at"),
        {"postgresql_partition_by": "RANGE (at)"},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity())
    phone_number_id: Mapped[str] = mapped_column(Text)
    message_id: Mapped[UUID]
    status: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(TZ)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class Consent(Base):
    """A customer's latest word on a message category (marketing): the newest statement wins."""

    __tablename__ = "consents"

    phone_number_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    category: Mapped[str] = mapped_column(Text, primary_key=True)
    opted_out: Mapped[bool]
    source: Mapped[str] = mapped_column(Text)
    changed_at: Mapped[datetime] = mapped_column(TZ)


class MarketingHold(Base):
    """Meta refused marketing messages to this customer from this number (131049, 130472) until `until`:
    meanwhile the gate refuses that customer's marketing templates itself, before anything is paid."""

    __tablename__ = "marketing_holds"

    phone_number_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    code: Mapped[int] = mapped_column(Integer)  # Meta's error code
    since: Mapped[datetime] = mapped_column(TZ)
    until: Mapped[datetime] = mapped_column(TZ)


class MessageTemplate(Base):
    """A message template as Meta last described it: synced from the Graph API, kept current by template
    webhooks and by Meta's answers to sends. Meta's id is the key; senders name (name, language) of a WABA."""

    __tablename__ = "templates"
    __table_args__ = (Index("ix_templates_waba_id_name_language", "waba_id", "name", "language"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    waba_id: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    language: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(Text)
    previous_category: Mapped[str | None] = mapped_column(Text)
    parameter_format: Mapped[str] = mapped_column(Text, server_default=text("'POSITIONAL'"))
    components: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)  # None: known from a webhook only
    # Meta said the components changed (message_template_components_update): not checked until a sync.
    components_stale_since: Mapped[datetime | None] = mapped_column(TZ)
    quality: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    meta_error_code: Mapped[int | None] = mapped_column(Integer)
    meta_error_at: Mapped[datetime | None] = mapped_column(TZ)
    synced_at: Mapped[datetime | None] = mapped_column(TZ)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class TemplateSync(Base):
    """The last complete template sync of a WhatsApp Business Account. Until one ran, the registry does not
    know every template of that account, so a template missing from it is not refused."""

    __tablename__ = "template_syncs"

    waba_id: Mapped[str] = mapped_column(Text, primary_key=True)
    synced_at: Mapped[datetime] = mapped_column(TZ)
    templates: Mapped[int] = mapped_column(Integer)


class Budget(Base):
    """A monthly spending limit for one business phone number or one API key, in the rate card's currency."""

    __tablename__ = "budgets"
    __table_args__ = (
        CheckConstraint("scope IN ('phone_number', 'api_key')", name="scope"),
        CheckConstraint("monthly_limit >= 0", name="monthly_limit"),
    )

    scope: Mapped[str] = mapped_column(Text, primary_key=True)
    scope_id: Mapped[str] = mapped_column(Text, primary_key=True)
    monthly_limit: Mapped[Decimal] = mapped_column(Numeric(18, 6))
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class BudgetSpend(Base):
    """Estimated spend reserved per scope and calendar month (UTC), kept whether or not a budget is set:
    the row every replica's reservation locks, so concurrent sends can never pass the limit together."""

    __tablename__ = "budget_spend"

    scope: Mapped[str] = mapped_column(Text, primary_key=True)
    scope_id: Mapped[str] = mapped_column(Text, primary_key=True)
    month: Mapped[date] = mapped_column(Date, primary_key=True)
    spent: Mapped[Decimal] = mapped_column(Numeric(18, 6), server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class Subscription(Base):
    """A service behind the gate that wants Meta's webhooks relayed and the gate's own events
    (subscription/: what each event is, how it is signed and delivered)."""

    __tablename__ = "subscriptions"

    id: Mapped[UUID] = mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    phone_number_ids: Mapped[list[str] | None] = mapped_column(ARRAY(Text))  # None: every number
    description: Mapped[str | None] = mapped_column(Text)
    # `whsec_` + base64: signs every delivery, so kept as it is (encrypted at rest comes with ENCRYPTION_KEY).
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


RELAY_DUE_STATES = ("pending", "failed")  # a relay delivery not yet delivered, nor dead


class RelayFanout(Base):
    """A kept Meta delivery some `meta.webhook` subscriber wants: the outbox row webhook ingest's statement
    writes, one per delivery whatever the number of subscribers (one index, no foreign key: bench/, ingest
    with 3 subscribers). `relay.dispatch` turns it into a RelayDelivery per subscriber that wants it (those
    that existed when it was received), held back while ingest is under load, and deletes it."""

    __tablename__ = "relay_fanout"

    webhook_delivery_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[UUID]  # each subscriber's RelayDelivery.event_id
    phone_number_ids: Mapped[list[str]] = mapped_column(ARRAY(Text))  # the numbers its changes name
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))  # received: due from


class RelayDelivery(Base):
    """One event for one subscription: the outbox row, written in the transaction that caused the event
    (Meta's deliveries: made from a RelayFanout, due from when the delivery was received).

    It carries as little as it can: three indexes, no foreign-key checks (bench/relay.py). Deleting a
    subscription deletes its rows (subscription/repository.py); meta.webhook's bytes are read from
    webhook_deliveries, kept WEBHOOK_RETENTION_DAYS, far past RELAY_RETRY_HOURS."""

    __tablename__ = "relay_deliveries"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'failed', 'delivered', 'dead')", name="state"),
        CheckConstraint("(webhook_delivery_id IS NULL) <> (body IS NULL)", name="one_body"),
        Index("ix_relay_deliveries_subscription_id_id", "subscription_id", "id"),  # the listing
        # What is due, per subscription; a drain claims with FOR UPDATE SKIP LOCKED and holds the rows until
        # their outcomes are written (a drain that dies releases them).
        Index(
            "ix_relay_deliveries_due",
            "subscription_id",
            "next_attempt_at",
            "id",  # the claim's order: a stable plan when many rows share a time (one statement wrote them)
            postgresql_where=text("state IN ('pending', 'failed')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    subscription_id: Mapped[UUID]
    event_id: Mapped[UUID]  # the same for every subscriber and every attempt: consumers dedupe by it
    event_type: Mapped[str] = mapped_column(Text)
    # meta.webhook: Meta's bytes, kept once in webhook_deliveries; the gate's events: their JSON here.
    webhook_delivery_id: Mapped[int | None] = mapped_column(BigInteger)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))
    retry_from: Mapped[datetime] = mapped_column(
        TZ, server_default=text("now()")
    )  # dead RELAY_RETRY_HOURS on
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class RelayAttempt(Base):
    """Each attempt at a relay delivery, as the subscriber answered it. Partitioned by month
    (partitions.py), without a foreign key: attempts go with their month, not with their delivery (a
    purged delivery's stay until their partition passes retention, read by nothing)."""

    __tablename__ = "relay_attempts"
    __table_args__ = ({"postgresql_partition_by": "RANGE (at)"},)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    delivery_id: Mapped[int] = mapped_column(BigInteger, index=True)
    at: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)


class IngestPressure(Base):
    """Until when webhook ingest said it is under load: one row, written at most twice a second by each
    busy serve process, read by the relay before each claim so that it holds back (RELAY_YIELD_SECONDS).
    Unlogged: after a crash it is empty, which reads as "not under load"."""

    __tablename__ = "ingest_pressure"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"), {"prefixes": ["UNLOGGED"]})

    id: Mapped[int] = mapped_column(Integer, primary_key=True, server_default=text("1"))
    busy_until: Mapped[datetime] = mapped_column(TZ)


class WindowAlarm(Base):
    """When a window's `window.expiring` or `window.closed` comes due: written by webhook ingest (only for
    the kinds some subscription wants), moved by each newer customer message, fired once by a job."""

    __tablename__ = "window_alarms"

    phone_number_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    kind: Mapped[str] = mapped_column(Text, primary_key=True)  # the event type
    last_inbound_at: Mapped[datetime] = mapped_column(TZ)  # the message the window counts from
    due_at: Mapped[datetime] = mapped_column(TZ, index=True)


class Continuation(Base):
    """One wait for a customer's reply ("continue conversation"): the re-engagement template sent once,
    the messages held until the reply (HeldMessage), then released in order by a job.

    `sending` (the template on its way to Meta) → `awaiting_reply` → `replied` (a job releases) →
    `released`; or `failed` (Meta refused the template), `expired` (nothing left waiting), `cancelled`.
    At most one `sending` or `awaiting_reply` per (number, customer): one template per wait."""

    __tablename__ = "continuations"
    __table_args__ = (
        CheckConstraint(
            "state IN ('sending', 'awaiting_reply', 'replied', 'released', 'failed', 'expired', 'cancelled')",
            name="state",
        ),
        Index(
            "uq_continuations_waiting",
            "phone_number_id",
            "customer_id",
            unique=True,
            postgresql_where=text("state IN ('sending', 'awaiting_reply')"),
        ),
        # The few not yet over, for the chore that watches them (message/jobs.py).
        Index(
            "ix_continuations_open",
            "state",
            postgresql_where=text("state IN ('sending', 'awaiting_reply', 'replied')"),
        ),
        PrimaryKeyConstraint("phone_number_id", "id"),
        Index("ix_continuations_id", "id"),  # the chores and held messages' releases name a wait by id
    )

    id: Mapped[UUID]
    phone_number_id: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    api_key_id: Mapped[UUID] = mapped_column(ForeignKey("api_keys.id"))  # whose request sent the template
    state: Mapped[str] = mapped_column(Text)
    template_message_id: Mapped[UUID | None]  # no foreign key: messages is partitioned (0019)
    reason: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # why it failed: the refusal, Meta's error
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class HeldMessage(Base):
    """A message (status `held`) waiting in a continuation; the row goes when it leaves the wait (sent,
    expired, cancelled or failed), so this table holds only what still waits. Keyed, and tied to its wait,
    by the number first (migration 0020)."""

    __tablename__ = "held_messages"
    __table_args__ = (
        PrimaryKeyConstraint("phone_number_id", "message_id"),
        ForeignKeyConstraint(
            ["phone_number_id", "continuation_id"],
            ["continuations.phone_number_id", "continuations.id"],
            ondelete="CASCADE",
        ),
        Index("ix_held_messages_continuation_id_position", "continuation_id", "position"),
        Index("ix_held_messages_message_id", "message_id"),  # a held message's end names it by id
    )

    phone_number_id: Mapped[str] = mapped_column(Text)
    message_id: Mapped[UUID]  # no foreign key: messages is partitioned
    continuation_id: Mapped[UUID]
    position: Mapped[int] = mapped_column(BigInteger, Identity())  # the order they were accepted in
    hold_until: Mapped[datetime] = mapped_column(TZ, index=True)
