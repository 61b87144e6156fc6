"""`window-gate`: serve, worker, migrate, api-keys, phone-numbers, subscriptions, templates sync,
simulator, sandbox-inbound."""

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import structlog
from sqlalchemy.engine import make_url

from window_gate import db, lifeline, logs
from window_gate.apikey import repository as api_keys
from window_gate.apikey import service as api_key_service
from window_gate.apikey.rules import OPERATOR, Role
from window_gate.config import (
    DEFAULT_GRAPH_BASE_URL,
    Settings,
    SettingsError,
    in_container,
    load_settings,
)

log = structlog.stdlib.get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="window-gate", description="WhatsApp session-window gatekeeper")
    verbs = parser.add_subparsers(dest="verb", required=True)

    serve = verbs.add_parser("serve", help="run the HTTP service (migrates first)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--no-migrate", action="store_true", help="do not apply pending migrations")
    serve.add_argument("--simulator-port", type=int, help="sandbox: the simulator's port (default: port + 1)")

    verbs.add_parser("migrate", help="apply pending database migrations")

    worker = verbs.add_parser("worker", help="run background jobs (as many processes as you like)")
    worker.add_argument(
        "--concurrency", type=_concurrency, help="most jobs at once, 1–100 (default: JOBS_CONCURRENCY)"
    )

    keys = verbs.add_parser("api-keys", help="manage API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key; prints it once, on the last line")
    create.add_argument("name")
    create.add_argument("--phone-number", action="append", default=[], dest="phone_numbers", metavar="ID")
    create.add_argument("--role", choices=[r.value for r in Role], default=Role.SEND.value)
    keys.add_parser("list", help="every key not revoked, one JSON object per line (never the key)")
    revoke = keys.add_parser("revoke", help="refused on every replica within API_KEY_CACHE_SECONDS")
    revoke.add_argument("id")

    numbers = verbs.add_parser("phone-numbers", help="business numbers: tokens, accounts, settings")
    number_verbs = numbers.add_subparsers(dest="action", required=True)
    number_set = number_verbs.add_parser(
        "set", help="register a number or change it (what is not given stays); prints it, never its token"
    )
    number_set.add_argument("phone_number_id", metavar="ID")
    number_set.add_argument("--waba-id", metavar="ID")
    number_set.add_argument(
        "--access-token-stdin",
        action="store_true",
        help="read its token from stdin (kept out of the shell history); encrypted with ENCRYPTION_KEY",
    )
    number_set.add_argument("--no-access-token", action="store_true", help="drop its own token")
    number_set.add_argument("--display-phone-number", metavar="DIGITS")
    number_set.add_argument("--throughput", type=int, dest="throughput_per_second", metavar="PER_SECOND")
    number_set.add_argument("--time-zone", metavar="IANA_NAME")
    number_set.add_argument(
        "--default-template", metavar="JSON", help='e.g. \'{"name":"reconnect","language":{"code":"en_US"}}\''
    )
    number_verbs.add_parser("list", help="every number the gate knows, one JSON object per line")
    number_verbs.add_parser(
        "reencrypt",
        help="encrypt every stored token and subscription secret anew under ENCRYPTION_KEY's first key (rotation)",
    )

    subs = verbs.add_parser("subscriptions", help="who receives Meta's webhooks and the gate's events")
    sub_verbs = subs.add_subparsers(dest="action", required=True)
    sub_create = sub_verbs.add_parser(
        "create", help="subscribe a URL; prints its secret once, on the last line"
    )
    sub_create.add_argument("url")
    sub_create.add_argument(
        "--event", action="append", dest="events", metavar="TYPE", help="repeatable (default: meta.webhook)"
    )
    sub_create.add_argument("--phone-number", action="append", dest="phone_numbers", metavar="ID")
    sub_create.add_argument("--description")
    sub_verbs.add_parser("list", help="every subscription, one JSON object per line")
    sub_delete = sub_verbs.add_parser("delete", help="unsubscribe (its deliveries not yet sent are dropped)")
    sub_delete.add_argument("id")

    templates = verbs.add_parser("templates", help="the template registry").add_subparsers(
        dest="action", required=True
    )
    sync = templates.add_parser(
        "sync", help="pull every template of each WhatsApp Business Account from Meta"
    )
    sync.add_argument(
        "--waba",
        action="append",
        default=[],
        dest="wabas",
        metavar="ID",
        help="only this account (repeatable; default: WINDOW_GATE_WABA_IDS and every account learnt from webhooks)",
    )

    budgets = verbs.add_parser("budgets", help="monthly spending limits").add_subparsers(
        dest="action", required=True
    )
    budget = budgets.add_parser("set", help="set the monthly budget of a phone number or an API key (by id)")
    budget.add_argument("scope", choices=["phone_number", "api_key"])
    budget.add_argument("scope_id", metavar="ID")
    budget.add_argument(
        "--limit", required=True, metavar="AMOUNT", help="most estimated spend a calendar month"
    )
    budget.add_argument("--currency", help="default: the rate card's currency")

    sim = verbs.add_parser("simulator", help="run the Graph API simulator (sandbox Meta) as its own server")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8001)
    sim.add_argument("--webhook-url", default="http://127.0.0.1:8000/webhooks/whatsapp", help="'' posts none")
    sim.add_argument("--throughput", type=int, default=80, help="messages per second per phone number")
    sim.add_argument(
        "--data-dir",
        help="where it keeps what Meta would not forget (default: DATA_DIR/sandbox; '' keeps it in memory)",
    )
    sim.add_argument(
        "--parent-pid", type=int, help="exit when this process, its parent, exits (serve sets it)"
    )

    inbound = verbs.add_parser("sandbox-inbound", help="simulate a customer writing, through the simulator")
    inbound.add_argument("--simulator-url", default="http://127.0.0.1:8001")
    inbound.add_argument("--phone-number-id", required=True, metavar="ID")
    inbound.add_argument("--from", required=True, dest="sender", metavar="NUMBER")
    inbound.add_argument("--text", default="Hello")
    inbound.add_argument("--hours-ago", type=float, default=0, help="date the message in the past")

    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        _read_configured(settings)
    except SettingsError as exc:
        sys.exit(f"window-gate: bad setting: {exc}")
    logs.configure(settings.log_level, settings.log_format)
    if args.verb in ("simulator", "sandbox-inbound"):
        _sandbox(args, settings)  # before the database URL: the simulator needs no database
        return
    if not settings.database_url and not settings.embedded_in_container and in_container():
        sys.exit(EMBEDDED_IN_CONTAINER)  # before anything is created: a refused start leaves nothing behind
    # Known before the embedded server is joined: `serve` stops the one it started, no other.
    own_database = not settings.database_url and not db.embedded_running(settings.data_dir)
    url = db.database_url(settings)
    if args.verb == "serve":
        _serve(settings, url, args, migrate=not args.no_migrate, own_database=own_database)
    elif args.verb == "worker":
        _work(settings, args.concurrency or settings.jobs_concurrency)  # never 0: _concurrency
    elif args.verb == "migrate":
        db.upgrade(url)
        print(f"database at revision {db.head_revision()}")
    elif args.verb == "templates":
        sys.exit(asyncio.run(_sync_templates(settings, url, args.wabas)))
    elif args.verb == "budgets":
        sys.exit(asyncio.run(_set_budget(settings, url, args)))
    elif args.verb == "subscriptions":
        sys.exit(asyncio.run(_subscriptions(settings, url, args)))
    elif args.verb == "phone-numbers":
        sys.exit(asyncio.run(_phone_numbers(settings, url, args)))
    elif args.verb == "api-keys" and args.action != "create":
        sys.exit(asyncio.run(_api_keys(url, args)))
    else:
        key = asyncio.run(_create_key(url, args.name, Role(args.role), args.phone_numbers))
        print(f"API key {args.name!r} ({args.role}); it is shown only this once:")
        print(key)


EMBEDDED_IN_CONTAINER = (
    "window-gate: WINDOW_GATE_DATABASE_URL is not set and this runs in a container: the embedded PostgreSQL "
    "would keep its data inside the container and lose it with the container. Set WINDOW_GATE_DATABASE_URL="
    "postgresql+asyncpg://…, or WINDOW_GATE_EMBEDDED_IN_CONTAINER=true to use the embedded one anyway "
    "(with WINDOW_GATE_DATA_DIR on a volume)"
)


def _read_configured(settings: Settings) -> None:
    """What the lifespan builds from the settings' files and lists, built here first: a bad one is then
    the CLI's one line, not a worker's traceback."""
    from window_gate.consent.rules import Keywords
    from window_gate.pricing import tables

    tables.configured(settings)
    Keywords.configured(settings)


def _sandbox(args: argparse.Namespace, settings: Settings) -> None:
    import httpx

    from window_gate.sandbox import cli as sandbox

    if args.verb == "simulator":  # signs webhooks with the secret the gate checks them with
        if args.parent_pid:
            lifeline.exit_with(args.parent_pid)
        data_dir = settings.data_dir / "sandbox" if args.data_dir is None else args.data_dir
        sandbox.run_simulator(
            args.host,
            args.port,
            args.webhook_url,
            args.throughput,
            settings.app_secrets[0].decode(),
            Path(data_dir) if data_dir else None,
        )
        return
    try:
        answer = sandbox.post_inbound(
            args.simulator_url, args.phone_number_id, args.sender, args.text, args.hours_ago
        )
    except httpx.HTTPError as exc:
        sys.exit(
            f"window-gate: the simulator at {args.simulator_url} did not take it ({exc}); is it running?"
        )
    print(json.dumps(answer["payload"], indent=2))
    hook = answer["webhook"]
    if not hook["url"]:
        print(f"inbound {answer['message_id']}: the simulator has no webhook URL, nothing was posted")
        return
    print(f"inbound {answer['message_id']}: webhook to {hook['url']} answered {hook['status_code']}")
    if not hook["delivered"]:
        sys.exit(1)


def _serve(
    settings: Settings, url: str, args: argparse.Namespace, *, migrate: bool, own_database: bool
) -> None:
    import uvicorn

    host, port, workers = args.host, args.port, args.workers

    if migrate:
        db.upgrade(url)
    if settings.database_url is None and settings.bootstrap_admin_key:
        key = asyncio.run(_first_admin_key(url))
        if key:
            print(f"First start of the embedded database: an admin API key (shown once):\n{key}", flush=True)
    # Workers are separate processes: hand them the database the embedded server answers on,
    # and a shared directory for their metrics.
    os.environ["WINDOW_GATE_DATABASE_URL"] = url
    metrics_dir = None  # made here, removed when serve stops
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir = tempfile.mkdtemp(prefix="window-gate-metrics-")
    simulator = None
    upstream = settings.graph_base_url
    if settings.sandbox_mode and upstream == DEFAULT_GRAPH_BASE_URL:
        # Every worker must see one simulator (one view of the windows, one writer of its journal): beside us.
        sim_port = args.simulator_port or port + 1
        upstream = f"http://127.0.0.1:{sim_port}"
        os.environ["WINDOW_GATE_GRAPH_BASE_URL"] = upstream
        hook = f"http://127.0.0.1:{port}/webhooks/whatsapp"
        simulator = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "window_gate.cli",
                "simulator",
                "--port",
                str(sim_port),
                "--webhook-url",
                hook,
                "--data-dir",
                str((settings.data_dir / "sandbox").resolve()),
                "--parent-pid",
                str(os.getpid()),
            ]
        )
    mode = (
        f"sandbox simulator at {upstream} (nothing reaches WhatsApp)"
        if simulator
        else f"{upstream} (sandbox mode)"
        if settings.sandbox_mode
        else upstream
    )
    print(
        f"window_gate on http://{host}:{port} · upstream: {mode} · docs: http://{host}:{port}/docs",
        flush=True,
    )
    log.info(
        "start",
        version=version("window-gate"),
        sandbox=settings.sandbox_mode,
        database="embedded" if settings.database_url is None else _without_password(url),
        upstream=upstream,
        listen=f"{host}:{port}",
        workers=workers,
    )
    # A stop signal: uvicorn takes no new connection, waits up to SHUTDOWN_GRACE_SECONDS for the requests
    # in flight, then runs the lifespan's shutdown (the jobs' own grace). With one worker it re-raises the
    # signal once done, which would end this process before any `finally`: caught here as an exception, so
    # a graceful stop exits 0, as it does with several workers (whose supervisor catches it).
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stopped)
    try:
        uvicorn.run(
            "window_gate.asgi:app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
            log_level=settings.log_level,  # uvicorn's own loggers too: its start-up lines at info
            log_config=None,  # logs.configure's handler, in each worker too (asgi.py)
            access_log=False,  # RequestLog writes one line per request instead
        )
    except Stopped:
        log.info("stopped")
    finally:
        _stop(simulator)
        if own_database and db.embedded_running(settings.data_dir):
            db.stop_embedded(settings.data_dir)  # after the workers: their pools are closed
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _without_password(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _concurrency(value: str) -> int:
    """`worker --concurrency`: the bounds of JOBS_CONCURRENCY, refused with argparse's one line."""
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number from 1 to 100")
    return int(value)


def _work(settings: Settings, concurrency: int) -> None:
    """`worker`: the jobs of every feature until SIGINT or SIGTERM; running jobs get their grace. It is
    the app without HTTP: its lifespan opens what a job may need (a release sends as a request does)."""
    from window_gate.app import create_app
    from window_gate.sandbox import in_process

    async def work() -> None:
        stop = asyncio.Event()
        for signum in STOP_SIGNALS:
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        app = create_app(
            settings.model_copy(update={"jobs_in_serve": True, "jobs_concurrency": concurrency}), in_process
        )
        async with app.router.lifespan_context(app):
            print(f"window_gate worker: up to {concurrency} jobs at once", flush=True)
            await stop.wait()

    asyncio.run(work())


class Stopped(BaseException):
    """A stop signal arrived (BaseException, like KeyboardInterrupt: nothing may swallow it)."""


def _stopped(signum: int, _: object) -> None:
    raise Stopped(signum)


def _stop(child: "subprocess.Popen[bytes] | None") -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s; waits, so no zombie is left."""
    if child is None or child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


async def _sync_templates(settings: Settings, url: str, only: Sequence[str]) -> int:
    """`templates sync`: one line per account; exit status 1 when any account failed."""
    import httpx

    from window_gate.graph.client import GraphClient
    from window_gate.template import service as templates

    transport = None
    if settings.sandbox_mode and settings.graph_base_url == DEFAULT_GRAPH_BASE_URL:
        from window_gate.sandbox import InProcess, SimulatorConfig

        transport = InProcess(SimulatorConfig())  # its templates, in-process
    engine = db.make_engine(url, 1)
    try:
        async with httpx.AsyncClient(
            base_url=settings.graph_base_url, timeout=settings.graph_timeout_seconds, transport=transport
        ) as http:
            async with engine.connect() as conn:
                accounts = await templates.accounts_to_sync(conn, settings, OPERATOR, only)
            if not accounts:
                print("no WhatsApp Business Account known: set WINDOW_GATE_WABA_IDS, or let a webhook arrive")
                return 1
            graph = GraphClient(http, settings.graph_api_version, settings.graph_access_token)
            results = await templates.sync(engine, graph, accounts)
    finally:
        await engine.dispose()
    for r in results:
        if r.error:
            print(f"{r.waba_id}: not synced: {r.error}")
        else:
            print(f"{r.waba_id}: {r.templates} templates, {r.deleted} no longer listed (marked DELETED)")
    return 1 if any(r.error for r in results) else 0


async def _subscriptions(settings: Settings, url: str, args: argparse.Namespace) -> int:
    """`subscriptions create|list|delete`: the same rules as /v1/subscriptions."""
    from uuid import UUID

    from pydantic import ValidationError

    from window_gate.crypto import Sealer
    from window_gate.errors import GateError
    from window_gate.subscription import repository, service
    from window_gate.subscription.schemas import SubscriptionIn, SubscriptionOut

    def shown(row: object) -> str:
        return SubscriptionOut.model_validate(row, from_attributes=True).model_dump_json()

    engine = db.make_engine(url, 1)
    try:
        async with engine.begin() as conn:
            if args.action == "list":
                for row in await repository.listing(conn):
                    print(shown(row))
                return 0
            if args.action == "delete":
                try:
                    gone = await repository.remove(conn, UUID(args.id))
                except ValueError:
                    gone = False
                print(
                    f"subscription {args.id} deleted" if gone else f"window-gate: no subscription {args.id}"
                )
                return 0 if gone else 1
            try:
                asked = SubscriptionIn(
                    url=args.url,
                    events=args.events or ["meta.webhook"],
                    phone_number_ids=args.phone_numbers,
                    description=args.description,
                )
                made = await service.create(
                    conn,
                    settings,
                    Sealer(settings.encryption_keys),
                    url=asked.url,
                    events=asked.events,
                    phone_number_ids=asked.phone_number_ids,
                    description=asked.description,
                )
            except ValidationError as exc:
                err = exc.errors()[0]
                print(f"window-gate: {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
                return 2
            except GateError as exc:
                print(f"window-gate: {exc.detail}", file=sys.stderr)
                return 2
            print(shown(made))
            print("Its secret (app secret for meta.webhook consumers; shown only this once):")
            print(made["secret"])
            return 0
    finally:
        await engine.dispose()


async def _phone_numbers(settings: Settings, url: str, args: argparse.Namespace) -> int:
    """`phone-numbers set|list|reencrypt`: the same rules as PUT /v1/phone-numbers/{id}."""
    from pydantic import ValidationError

    from window_gate.crypto import Sealer
    from window_gate.errors import GateError
    from window_gate.phonenumber import repository, service
    from window_gate.phonenumber.schemas import PhoneNumberIn, shown
    from window_gate.subscription import service as subscription_service

    sealer = Sealer(settings.encryption_keys)
    engine = db.make_engine(url, 1)
    try:
        async with engine.begin() as conn:
            if args.action == "list":
                for row in await repository.listing(conn):
                    print(shown(row).model_dump_json())
                return 0
            if args.action == "reencrypt":
                tokens = await service.reencrypt(conn, sealer)
                secrets = await subscription_service.reencrypt(conn, sealer)
                print(
                    f"{tokens} access token(s), {secrets} subscription secret(s) encrypted under the first key"
                )
                return 0
            given: dict[str, object] = {
                name: getattr(args, name)
                for name in ("waba_id", "display_phone_number", "throughput_per_second", "time_zone")
                if getattr(args, name) is not None
            }
            if args.default_template is not None:
                given["default_reengagement_template"] = json.loads(args.default_template)
            if args.access_token_stdin:
                given["access_token"] = sys.stdin.readline().strip()
            elif args.no_access_token:
                given["access_token"] = None
            asked = PhoneNumberIn.model_validate(given)
            row = await service.put(conn, sealer, OPERATOR, args.phone_number_id, asked)
            print(shown(row).model_dump_json())
            return 0
    except ValidationError as exc:
        err = exc.errors()[0]
        print(f"window-gate: {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
        return 2
    except (GateError, ValueError) as exc:  # ValueError: --default-template is not JSON
        print(f"window-gate: {getattr(exc, 'detail', exc)}", file=sys.stderr)
        return 2
    finally:
        await engine.dispose()


async def _api_keys(url: str, args: argparse.Namespace) -> int:
    """`api-keys list|revoke`: what GET and DELETE /v1/api-keys do, with the operator's rights."""
    from uuid import UUID

    from window_gate.apikey.schemas import ApiKeyOut

    engine = db.make_engine(url, 1)
    try:
        async with engine.begin() as conn:
            if args.action == "list":
                for row in await api_keys.listing(conn):
                    print(ApiKeyOut.model_validate(row, from_attributes=True).model_dump_json())
                return 0
            try:
                gone = await api_keys.revoke(conn, UUID(args.id))
            except ValueError:
                gone = False
            print(f"API key {args.id} revoked" if gone else f"window-gate: no API key {args.id}")
            return 0 if gone else 1
    finally:
        await engine.dispose()


async def _set_budget(settings: Settings, url: str, args: argparse.Namespace) -> int:
    """`budgets set`: the same rules as PUT /v1/budgets/{scope}/{scope_id}."""
    from decimal import Decimal, InvalidOperation

    from window_gate.errors import GateError
    from window_gate.pricing import service as pricing
    from window_gate.pricing.schemas import Scope
    from window_gate.pricing.tables import configured
    from window_gate.window.service import now

    tables = configured(settings)
    try:
        limit = Decimal(args.limit)
    except InvalidOperation:
        limit = Decimal("NaN")
    if not limit.is_finite() or limit < 0:
        print(f"window-gate: --limit {args.limit!r} is not an amount", file=sys.stderr)
        return 2
    engine = db.make_engine(url, 1)
    try:
        async with engine.begin() as conn:
            budget = await pricing.set_budget(
                conn,
                tables,
                OPERATOR,
                Scope(args.scope),
                args.scope_id,
                limit,
                args.currency or tables.card.currency,
                now(),
            )
    except GateError as exc:
        print(f"window-gate: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
    print(
        f"{budget.scope.value} {budget.scope_id}: {budget.monthly_limit} {budget.currency} a month, "
        f"{budget.spent} spent in {budget.month:%Y-%m}"
    )
    return 0


async def _create_key(url: str, name: str, role: Role, phone_numbers: Sequence[str]) -> str:
    engine = db.make_engine(url, 1)
    try:
        async with engine.begin() as conn:
            return await api_key_service.create(conn, name, role, phone_numbers)
    finally:
        await engine.dispose()


async def _first_admin_key(url: str) -> str | None:
    engine = db.make_engine(url, 1)
    try:
        async with engine.begin() as conn:
            if await api_keys.count(conn):
                return None
            return await api_key_service.create(conn, "first-admin", Role.ADMIN)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    main()
