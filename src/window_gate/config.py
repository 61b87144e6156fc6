"""Settings: the one place that reads the environment."""

import base64
import binascii
import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_GRAPH_BASE_URL = "https://graph.facebook.com"

# pt, es, en. Erring towards opting out is safe (only marketing stops), so the opt-out list is generous.
# Opting in is not: words that also navigate menus or answer questions are left out (pt "VOLTAR" means
# "go back" in most bots; "SIM"/"SI"/"YES" answer anything). Meta's own "Stop promotions" button
# arrives as a quick reply whose label is in the customer's language, hence those phrases.
# (consent/rules.py says how a message is compared with them.)
DEFAULT_OPT_OUT_KEYWORDS = (
    "PARAR, SAIR, CANCELAR, DESCADASTRAR, DESINSCREVER, PARAR PROMOÇÕES, "
    "BAJA, DAR DE BAJA, DARME DE BAJA, ALTO, DETENER, DESUSCRIBIR, DETENER PROMOCIONES, "
    "STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, OPT OUT, OPTOUT, STOP PROMOTIONS"
)
DEFAULT_OPT_IN_KEYWORDS = (
    "ASSINAR, INSCREVER, VOLTAR A RECEBER, ALTA, DAR DE ALTA, SUSCRIBIR, SUSCRIBIRME, START, UNSTOP, SUBSCRIBE, "
    "RESUME PROMOTIONS"
)


class Settings(BaseSettings):
    """Every knob of window_gate, read from ``WINDOW_GATE_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="WINDOW_GATE_", extra="ignore")

    database_url: str | None = Field(None, description="postgresql+asyncpg://…; unset → embedded PostgreSQL")
    read_database_url: str | None = Field(
        None,
        description="postgresql+asyncpg://… of a streaming replica of DATABASE_URL: window checks read "
        "there while it is provably at most READ_MAX_LAG_SECONDS behind (README, Past one machine); "
        "sends, API keys and every write stay on the primary. Unset → everything reads the primary",
    )
    read_max_lag_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Window checks leave the replica for the primary while it may be further behind "
        "than this (a lag bound measured against the primary's WAL, at most every second)",
    )
    data_dir: Path = Path(".window-gate")
    embedded_in_container: bool = Field(
        False,
        description="Use the embedded PostgreSQL even in a container (Docker, Podman, a Kubernetes pod); "
        "without it, there every command that needs the database refuses to start one when DATABASE_URL is "
        "unset, as its data would go with the container (keep DATA_DIR on a volume if you set it)",
    )
    graph_base_url: str = DEFAULT_GRAPH_BASE_URL
    graph_api_version: str = Field("v25.0", pattern=r"^v\d+\.\d+$")
    graph_access_token: str | None = None
    app_secret: str | None = None
    verify_token: str | None = None
    safety_margin_seconds: int = Field(60, ge=0, le=86_400)
    sandbox: bool | None = None

    # Additions to the contract's settings (docs/settings.md) (documented in the README).
    window_hours: int = Field(24, ge=1, le=168)
    free_entry_point_hours: int = Field(72, ge=1, le=24 * 14)
    max_clock_skew_seconds: int = Field(300, ge=0, le=86_400)
    webhook_retention_days: int = Field(30, ge=1)
    message_retention_days: int | None = Field(
        None,
        ge=62,
        description="Sends, their status history and their Idempotency-Keys are dropped a month at a time once "
        "a whole month is older than this; unset → kept forever. At least 62: this month's and last month's "
        "costs and free-tier counts stay whole",
    )
    max_body_bytes: int = Field(3 * 1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(
        100 * 1024 * 1024,
        ge=1024,
        description="Bodies the Graph pass-through streams to Meta (media uploads) may be this large; "
        "Meta's largest media, a document, is 100 MB",
    )
    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^/?#]+(/[^?#]*)?$",
        description="The gate's own base URL as its clients reach it (e.g. https://gate.example.com), for "
        "the links it hands out in Meta's answers; unset → the Host of each request",
    )
    api_key_cache_seconds: float = Field(5.0, ge=0)
    db_pool_size: int = Field(10, ge=1, le=200)
    db_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=600,
        description="Longest a request waits on the database for one call (queue, connect, statement); "
        "past it the answer is 503 database_unavailable",
    )
    graph_timeout_seconds: float = Field(10.0, gt=0, le=120)
    graph_max_connections: int = Field(
        100, ge=1, description="Connections to the Graph API per worker; sends beyond them wait their turn"
    )
    shutdown_grace_seconds: int = Field(
        20,
        ge=1,
        le=600,
        description="on SIGTERM or SIGINT, `serve` takes no new request and waits this long for those in "
        "flight (sends to Meta among them) before cutting them off; keep it above GRAPH_TIMEOUT_SECONDS and "
        "below your supervisor's kill timeout",
    )
    bootstrap_admin_key: bool = True
    jobs_in_serve: bool = Field(
        True,
        description="Run background jobs inside every `serve` process too; false leaves them all to "
        "`window-gate worker` processes",
    )
    jobs_concurrency: int = Field(4, ge=1, le=100, description="Most jobs one process runs at once")
    rate_card: str | None = Field(
        None,
        description="Comma-separated Meta rate-card CSVs (`PATH` or `PATH@YYYY-MM-DD`, one per effective date); "
        "unset → the bundled EXAMPLE card (not Meta's prices)",
    )
    billability_matrix: str | None = Field(
        None, description="CSV of which messages Meta charges, with effective dates; unset → the bundled one"
    )
    pricing_apply_unsure: bool = Field(
        True,
        description="Apply matrix rows marked unsure (the 2026-10-01 pricing changes, reported by several "
        "providers); false prices by the documented rows only",
    )
    marketing_restrictions: bool = Field(
        True,
        description="Refuse marketing templates to countries Meta does not deliver them to, per the bundled "
        "marketing_restrictions.csv (US numbers since 2025-04-01)",
    )
    waba_ids: str = Field(
        "",
        description="Comma-separated WhatsApp Business Account ids whose templates `templates sync` pulls "
        "(besides every account learnt from webhooks)",
    )
    opt_out_keywords: str = Field(
        DEFAULT_OPT_OUT_KEYWORDS,
        description="Comma-separated; a customer message that is exactly one of these stops marketing messages",
    )
    opt_in_keywords: str = Field(
        DEFAULT_OPT_IN_KEYWORDS,
        description="Comma-separated; a customer message that is exactly one of these resumes them",
    )
    relay_retry_hours: float = Field(
        24.0,
        gt=0,
        le=24 * 30,
        description="A relayed event a subscriber keeps refusing is retried this long, then `dead`",
    )
    relay_max_backoff_seconds: float = Field(
        3600.0,
        ge=1,
        description="Longest pause between two attempts at one relayed event (jittered, doubling)",
    )
    relay_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="A subscriber's answer is awaited this long; then the attempt failed"
    )
    relay_concurrency: int = Field(
        16, ge=1, le=1000, description="Most requests in flight to one subscriber, across every replica"
    )
    relay_yield_seconds: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="While webhook ingest is under load (a serve process with 16 or more deliveries in "
        "flight), the relay holds back what is due for up to this long, then sends it whatever the load; "
        "0: never holds back",
    )
    relay_url_allowlist: str = Field(
        "",
        description="Comma-separated URL prefixes a subscription's URL must start with; empty: any http(s) URL",
    )
    expiring_lead_seconds: int = Field(
        3600, ge=1, description="`window.expiring` is emitted this long before a window's expires_at"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe log events written (stderr, one line each)"
    )
    encryption_key: str | None = Field(
        None,
        description="Comma-separated Fernet keys (URL-safe base64 of 32 random bytes): the first encrypts the "
        "phone numbers' access tokens, every one decrypts (rotation); unset: no token can be stored",
    )
    allow_listed_numbers_only: bool = Field(
        False,
        description="Serve only the phone numbers registered with PUT /v1/phone-numbers/{id}; webhooks for "
        "others are kept, not applied",
    )
    log_format: Literal["json", "console"] = Field(
        "json", description="`json`: one JSON object per line; `console`: for a person at a terminal"
    )
    otel_enabled: bool = Field(
        False,
        description="OpenTelemetry traces (server, database and Graph API spans) over OTLP/HTTP, set up by the "
        "standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, …)",
    )

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("database_url", "read_database_url")
    @classmethod
    def _asyncpg_url(cls, url: str | None) -> str | None:
        # Caught here, a wrong URL is one line; later it is a driver-import traceback.
        if url and not url.startswith("postgresql+asyncpg://"):
            raise ValueError("must be a postgresql+asyncpg://user@host:port/database URL")
        return url

    @model_validator(mode="after")
    def _require_meta_secrets(self) -> "Settings":
        if not self.sandbox_mode:
            for name in ("app_secret", "verify_token"):
                if not getattr(self, name):
                    raise ValueError(f"WINDOW_GATE_{name.upper()} is required unless sandbox mode is on")
        return self

    @field_validator("encryption_key")
    @classmethod
    def _fernet_keys(cls, value: str | None) -> str | None:
        for position, key in enumerate(_split(value or ""), 1):
            try:
                raw = base64.urlsafe_b64decode(key.encode())
            except (ValueError, binascii.Error):
                raw = b""
            if len(raw) != 32:  # Fernet's key size
                # The key itself is never echoed: it is a secret.
                raise ValueError(f"key {position} is not URL-safe base64 of 32 bytes (Fernet.generate_key())")
        return value or None

    @property
    def encryption_keys(self) -> list[str]:
        """The Fernet keys, the one that encrypts first; empty: none configured."""
        return _split(self.encryption_key or "")

    @field_validator("waba_ids")
    @classmethod
    def _numeric_ids(cls, value: str) -> str:
        bad = [w for w in _split(value) if not w.isdigit()]
        if bad:
            raise ValueError(f"not a WhatsApp Business Account id (digits): {bad[0]!r}")
        return value

    @property
    def relay_url_prefixes(self) -> list[str]:
        return _split(self.relay_url_allowlist)

    @property
    def template_accounts(self) -> list[str]:
        """The accounts to sync templates of; the sandbox's simulated one when none is configured."""
        configured = _split(self.waba_ids)
        return configured or ([SANDBOX_WABA_ID] if self.sandbox_mode else [])

    @field_validator("rate_card", "billability_matrix")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @cached_property
    def sandbox_mode(self) -> bool:
        """Sandbox unless told otherwise, or when no Meta token is configured."""
        return self.sandbox if self.sandbox is not None else not self.graph_access_token

    @property  # not cached: a settings copy with another APP_SECRET (model_copy) would keep the old one
    def app_secrets(self) -> list[bytes]:
        """Every configured Meta app secret; the sandbox signs with a fixed, public one."""
        secrets = [s.strip() for s in (self.app_secret or "").split(",") if s.strip()]
        if self.sandbox_mode and not secrets:
            secrets = [SANDBOX_APP_SECRET]
        return [s.encode() for s in secrets]

    @property
    def effective_verify_token(self) -> str:
        return self.verify_token or (SANDBOX_VERIFY_TOKEN if self.sandbox_mode else "")


# Public on purpose: the sandbox is a local test double, never Meta.
SANDBOX_APP_SECRET = "sandbox-app-secret"  # noqa: S105
SANDBOX_VERIFY_TOKEN = "sandbox-verify-token"  # noqa: S105
SANDBOX_WABA_ID = "102290129340398"  # the simulator's account (SimulatorConfig.waba_id)


# Docker writes the first into every container, Podman the second; Kubernetes sets the variable in every pod.
CONTAINER_MARKERS = (Path("/.dockerenv"), Path("/run/.containerenv"))


def in_container() -> bool:
    """Whether this process runs in a container, where an embedded database does not outlive a restart."""
    return "KUBERNETES_SERVICE_HOST" in os.environ or any(marker.exists() for marker in CONTAINER_MARKERS)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class SettingsError(Exception):
    """Bad settings: the message is one line naming the setting and what is wrong. Raised by
    `load_settings`, and for the files the settings name (rate card, keyword lists) where they are read."""


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning pydantic's report into one line a person can act on."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = "".join(str(p) for p in err["loc"])
        name = f"WINDOW_GATE_{loc.upper()}: " if loc else ""
        raise SettingsError(f"{name}{err['msg'].removeprefix('Value error, ')}") from None
