"""The simulator's memory: its own view of the windows, throughput, faults, stats and webhook delivery.

Meta does not forget a customer's message when it restarts, so neither does the simulator when given a
data folder: it journals every change there (journal.py). What decides windows (inbound times, BSUID →
wa_id, the clock offset) is written before the change is answered; the messages it accepted and their
statuses within `save_delay` seconds, and on a clean stop. Faults, throughput and counters belong to the
process and start afresh. One simulator per data folder.
"""

import asyncio
import hashlib
import logging
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson

from window_gate.config import SANDBOX_APP_SECRET
from window_gate.sandbox.journal import Journal, Record
from window_gate.sandbox.templates import BUILT_IN, Template
from window_gate.webhook.signature import sign

log = logging.getLogger(__name__)
Fault = Literal["5xx", "timeout", "drop"]
JOURNAL = "simulator.jsonl"
COMPACT_MIN_LINES = 10_000


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the simulator behaves; every default fits a newcomer's first run against `window-gate serve`."""

    webhook_url: str | None = None  # the gate's POST /webhooks/whatsapp; None: post nothing
    app_secret: str = SANDBOX_APP_SECRET
    waba_id: str = "102290129340398"
    display_phone_number: str = "15550001111"
    throughput_per_second: int = 80  # per phone number, sliding one-second window (Meta's default)
    status_delays: tuple[float, float, float] = (0.05, 0.05, 0.05)  # before sent, delivered, read
    window: timedelta = timedelta(hours=24)
    free_entry_point: timedelta = timedelta(hours=72)  # from the first reply within 24 h of an ad click
    webhook_retry_delays: tuple[float, ...] = (0.2, 1.0, 3.0)  # then the webhook is given up (and logged)
    clock: Callable[[], datetime] = _utcnow  # the simulator's "now"; POST /sandbox/clock shifts it
    monotonic: Callable[[], float] = time.monotonic  # throughput is measured in real seconds
    templates: tuple[Template, ...] = BUILT_IN
    webhook_transport: httpx.AsyncBaseTransport | None = None  # e.g. an ASGITransport into the gate app
    data_dir: Path | None = None  # where what Meta would not forget is kept; None: in memory only
    save_delay: float = 1.0  # accepted messages and statuses are written within this, not one by one


@dataclass(frozen=True, slots=True)
class ErrorFault:
    """Meta's error `code` for a share of sends: answered at once, or (`in_status`) the send is accepted and
    its status webhook fails with it, as Meta mostly reports 131026 and 131049."""

    code: int
    rate: float
    in_status: bool = False


@dataclass(slots=True)
class Faults:
    latency_ms: float = 0
    error_5xx_rate: float = 0
    timeout_rate: float = 0
    timeout_seconds: float = 30  # longer than any sane client timeout
    drop_answer_rate: float = 0
    seed: int | None = None
    errors: tuple[ErrorFault, ...] = ()
    rng: random.Random = field(default_factory=random.Random)

    def draw(self) -> Fault | None:
        """At most one fault per send, drawn in a fixed order so a seed replays the same sequence."""
        rates: tuple[tuple[Fault, float], ...] = (
            ("5xx", self.error_5xx_rate),
            ("timeout", self.timeout_rate),
            ("drop", self.drop_answer_rate),
        )
        for fault, rate in rates:
            if rate and self.rng.random() < rate:
                return fault
        return None

    def draw_error(self) -> ErrorFault | None:
        """At most one of Meta's errors per send that passed Meta's checks, in the order given."""
        for fault in self.errors:
            if fault.rate and self.rng.random() < fault.rate:
                return fault
        return None

    def public(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "error_5xx_rate": self.error_5xx_rate,
            "timeout_rate": self.timeout_rate,
            "timeout_seconds": self.timeout_seconds,
            "drop_answer_rate": self.drop_answer_rate,
            "seed": self.seed,
            "errors": [{"code": e.code, "rate": e.rate, "in_status": e.in_status} for e in self.errors],
        }


@dataclass(frozen=True, slots=True)
class Media:
    """An uploaded file, as Meta keeps it for the number that uploaded it (here in memory only)."""

    id: str
    phone_number_id: str
    mime_type: str
    data: bytes

    def graph(self, url: str) -> dict[str, Any]:
        return {
            "messaging_product": "whatsapp",
            "url": url,
            "mime_type": self.mime_type,
            "sha256": hashlib.sha256(self.data).hexdigest(),
            "file_size": len(self.data),
            "id": self.id,
        }


@dataclass(slots=True)
class SentMessage:
    id: str
    phone_number_id: str
    input: str
    wa_id: str | None
    user_id: str | None
    type: str
    template: str | None
    window_open: bool
    accepted_at: datetime
    callback: str | None = None  # biz_opaque_callback_data, as sent
    statuses: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "phone_number_id": self.phone_number_id,
            "to": self.input,
            "wa_id": self.wa_id,
            "user_id": self.user_id,
            "type": self.type,
            "template": self.template,
            "window_open": self.window_open,
            "accepted_at": self.accepted_at.isoformat(),
            "biz_opaque_callback_data": self.callback,
            "statuses": self.statuses,
        }


class SimulatorState:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.http = httpx.AsyncClient(transport=config.webhook_transport, timeout=5.0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._save_later: asyncio.TimerHandle | None = None
        self._clear()
        self.journal = None
        if config.data_dir is not None:
            config.data_dir.mkdir(parents=True, exist_ok=True)  # an unusable folder stops start-up
            self.journal = Journal(config.data_dir / JOURNAL)
            self._replay(self.journal.read())
            self.journal.rewrite(self._snapshot())  # compacted, and no torn last line to append to

    def reset(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._clear()
        if self.journal is not None:
            self.journal.rewrite([])

    def _clear(self) -> None:
        self.offset = timedelta(0)
        self.last_inbound: dict[tuple[str, str], datetime] = {}
        self.referrals: dict[tuple[str, str], datetime] = {}  # the latest Click-to-WhatsApp ad message
        self.fep_started: dict[tuple[str, str], datetime] = {}  # the reply that started its free window
        self.wa_by_user: dict[str, str] = {}  # BSUID → wa_id, learnt from inbound messages carrying both
        self.recent_sends: defaultdict[str, deque[float]] = defaultdict(deque)
        self.faults = Faults()
        self.messages: deque[SentMessage] = deque(maxlen=10_000)
        self.sends: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.errors: Counter[int] = Counter()
        self.faulted: Counter[str] = Counter()
        self.webhooks: Counter[str] = Counter()
        self.marked_read: Counter[str] = Counter()  # status updates (mark as read) by phone number
        self.media: dict[str, Media] = {}
        self.media_deleted: set[str] = set()  # still media ids: asked for, Meta's "does not exist" error

    def now(self) -> datetime:
        return self.config.clock() + self.offset

    def advance_clock(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)
        self._journal({"offset": self.offset.total_seconds()}, now=True)

    # --- the simulator's own view of the customer service window ---------------------------------------
    @staticmethod
    def keys(wa_id: str | None, user_id: str | None) -> list[str]:
        return [k for k in (f"wa:{wa_id}" if wa_id else "", f"user:{user_id}" if user_id else "") if k]

    def record_inbound(
        self,
        phone_number_id: str,
        wa_id: str | None,
        user_id: str | None,
        at: datetime,
        referral: bool = False,
    ) -> None:
        if wa_id and user_id:
            self.wa_by_user[user_id] = wa_id
            self._journal({"user": [user_id, wa_id]})
        for key in self.keys(wa_id, user_id):
            self._inbound(phone_number_id, key, at)
            self._journal({"inbound": [phone_number_id, key, at.isoformat()]})
            if referral:
                self._referral(phone_number_id, key, at)
                self._journal({"referral": [phone_number_id, key, at.isoformat()]})
        self._flush()  # before the gate hears of it: the simulator must not forget what it opened

    def _referral(self, phone_number_id: str, key: str, at: datetime) -> None:
        seen = self.referrals.get((phone_number_id, key))
        self.referrals[phone_number_id, key] = max(at, seen) if seen else at

    def _inbound(self, phone_number_id: str, key: str, at: datetime) -> None:
        seen = self.last_inbound.get((phone_number_id, key))
        self.last_inbound[phone_number_id, key] = max(at, seen) if seen else at

    def window_open(self, phone_number_id: str, wa_id: str | None, user_id: str | None) -> bool:
        now = self.now()
        seen = [self.last_inbound.get((phone_number_id, k)) for k in self.keys(wa_id, user_id)]
        return any(at is not None and now - at < self.config.window for at in seen)

    def free_entry_point(
        self, phone_number_id: str, wa_id: str | None, user_id: str | None
    ) -> tuple[str, datetime] | None:
        """(conversation id, end) of the free-entry-point window a send now leaves in, or None. The
        business's first reply within the 24 h after a Click-to-WhatsApp ad message starts one."""
        now, keys = self.now(), self.keys(wa_id, user_id)
        for key in keys:
            started = self.fep_started.get((phone_number_id, key))
            if started is not None and now < started + self.config.free_entry_point:
                return self._fep(phone_number_id, key, started)
        for key in keys:
            referral = self.referrals.get((phone_number_id, key))
            started = self.fep_started.get((phone_number_id, key))
            if referral is None or now - referral >= self.config.window:
                continue
            if started is None or started < referral:
                self.fep_started[phone_number_id, key] = now
                self._journal({"fep": [phone_number_id, key, now.isoformat()]}, now=True)
                return self._fep(phone_number_id, key, now)
        return None

    def _fep(self, phone_number_id: str, key: str, started: datetime) -> tuple[str, datetime]:
        seed = f"{phone_number_id}|{key}|{started.isoformat()}".encode()
        return hashlib.sha256(seed).hexdigest()[:32], started + self.config.free_entry_point

    def take_throughput(self, phone_number_id: str) -> bool:
        """One accepted message against the number's sliding one-second budget; False when it is spent."""
        now, recent = self.config.monotonic(), self.recent_sends[phone_number_id]
        while recent and now - recent[0] >= 1.0:
            recent.popleft()
        if len(recent) >= self.config.throughput_per_second:
            return False
        recent.append(now)
        return True

    # --- webhooks ----------------------------------------------------------------------------------------
    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run in the background, never blocking an answer; kept referenced until done."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def post_webhook(self, payload: dict[str, Any]) -> int | None:
        """POST a signed delivery to the gate, retrying with backoff; the last HTTP status, None if none."""
        url = self.config.webhook_url
        if not url:
            return None
        body = orjson.dumps(payload)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "facebookexternalua (window-gate sandbox)",
            "X-Hub-Signature-256": sign(self.config.app_secret.encode(), body),
        }
        status: int | None = None
        for delay in (*self.config.webhook_retry_delays, None):
            try:
                status = (await self.http.post(url, content=body, headers=headers)).status_code
                if 200 <= status < 300:
                    self.webhooks["posted"] += 1
                    return status
                problem = f"HTTP {status}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if delay is None:
                break
            log.info("sandbox webhook to %s failed (%s); retrying in %ss", url, problem, delay)
            await asyncio.sleep(delay)
        self.webhooks["failed"] += 1
        log.warning("sandbox webhook to %s given up: %s", url, problem)
        return status

    async def idle(self, seconds: float = 5.0) -> None:
        """Wait until every background webhook has been posted (tests and a clean shutdown)."""
        async with asyncio.timeout(seconds):
            while self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.http.aclose()
        self._flush()

    # --- what survives a restart -------------------------------------------------------------------------
    def accepted_message(self, message: SentMessage) -> None:
        self.messages.append(message)
        self._journal({"message": message})

    def add_status(self, message: SentMessage, status: str) -> None:
        message.statuses.append(status)
        self._journal({"status": [message.id, status]})

    def _journal(self, record: Record, *, now: bool = False) -> None:
        """Written at once (`now`), else within `save_delay`: not one write per send."""
        if self.journal is None:
            return
        self.journal.append(record)
        if now:
            self._flush()
        elif self._save_later is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._flush()
                return
            self._save_later = loop.call_later(self.config.save_delay, self._flush)

    def _flush(self) -> None:
        if self._save_later is not None:
            self._save_later.cancel()
            self._save_later = None
        if self.journal is None:
            return
        self.journal.flush()
        # A send journals four lines (message, sent, delivered, read) but only the last 10,000 messages
        # are kept: compact once the file holds several times what a snapshot would.
        live = len(self.last_inbound) + len(self.wa_by_user) + len(self.messages)
        live += len(self.referrals) + len(self.fep_started)
        if self.journal.lines > COMPACT_MIN_LINES + 4 * live:
            self.journal.rewrite(self._snapshot())

    def _snapshot(self) -> list[Record]:
        records: list[Record] = [{"offset": self.offset.total_seconds()}]
        records += [{"user": [user, wa]} for user, wa in self.wa_by_user.items()]
        records += [{"inbound": [pn, k, at.isoformat()]} for (pn, k), at in self.last_inbound.items()]
        records += [{"referral": [pn, k, at.isoformat()]} for (pn, k), at in self.referrals.items()]
        records += [{"fep": [pn, k, at.isoformat()]} for (pn, k), at in self.fep_started.items()]
        return records + [{"message": m} for m in self.messages]

    def _replay(self, records: list[Record]) -> None:
        by_id: dict[str, SentMessage] = {}
        skipped = 0
        for record in records:
            try:
                if "inbound" in record:
                    pn, key, at = record["inbound"]
                    self._inbound(str(pn), str(key), datetime.fromisoformat(at))
                elif "referral" in record:
                    pn, key, at = record["referral"]
                    self._referral(str(pn), str(key), datetime.fromisoformat(at))
                elif "fep" in record:
                    pn, key, at = record["fep"]
                    self.fep_started[str(pn), str(key)] = datetime.fromisoformat(at)
                elif "user" in record:
                    user, wa = record["user"]
                    self.wa_by_user[str(user)] = str(wa)
                elif "offset" in record:
                    self.offset = timedelta(seconds=float(record["offset"]))
                elif "message" in record:
                    fields = record["message"]
                    message = SentMessage(
                        **fields | {"accepted_at": datetime.fromisoformat(fields["accepted_at"])}
                    )
                    self.messages.append(message)
                    by_id[message.id] = message
                elif "status" in record:
                    message_id, status = record["status"]
                    if message_id in by_id:
                        by_id[message_id].statuses.append(str(status))
            except (KeyError, TypeError, ValueError):
                skipped += 1
        if skipped:
            log.warning("sandbox state: %d records not understood, skipped", skipped)

    def stats(self) -> dict[str, Any]:
        numbers = sorted(set(self.sends) | set(self.accepted))
        return {
            "sends": sum(self.sends.values()),
            "accepted": sum(self.accepted.values()),
            "by_phone_number": {
                pn: {"sends": self.sends[pn], "accepted": self.accepted[pn]} for pn in numbers
            },
            "errors": {str(code): n for code, n in sorted(self.errors.items())},
            "faults": dict(self.faulted),
            "webhooks": {"posted": self.webhooks["posted"], "failed": self.webhooks["failed"]},
            "marked_read": sum(self.marked_read.values()),
            "media": len(self.media),
            "now": self.now().isoformat(),
        }
