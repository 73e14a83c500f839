"""Test fixtures: a fresh PostgreSQL database per test session, migrated like production.

The server is ``DATABASE_URL`` when set (CI points it at the machine's PostgreSQL), otherwise an
embedded PostgreSQL started once for the session. Nothing is mocked: tests talk to the real thing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

_TMP_HOME = Path(tempfile.mkdtemp(prefix="smartcare-test-"))
os.environ.setdefault("SMARTCARE_SECRET_KEY", "test-secret-key-not-for-production-0123456789")
os.environ["SMARTCARE_HOME"] = str(_TMP_HOME)


def _server_url() -> str:
    from smartcare.platform.db import sqlalchemy_url, start_embedded

    if os.environ.get("DATABASE_URL"):
        return sqlalchemy_url(os.environ["DATABASE_URL"])
    return sqlalchemy_url(start_embedded(Path(os.environ.get("SMARTCARE_TEST_PGHOME", Path.home() / ".cache/smartcare-test-pg"))))


@pytest.fixture(scope="session")
def database_url():
    """A new database on the server, migrated to head; dropped after the session."""
    from smartcare.bootstrap import prepare_database
    from smartcare.platform import db
    from smartcare.platform.settings import get_settings

    server = make_url(_server_url())
    name = f"smartcare_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    db.reset_caches()
    prepare_database()
    yield url
    db.reset_caches()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
    if previous is None:
        os.environ.pop("DATABASE_URL", None)
    else:
        os.environ["DATABASE_URL"] = previous


@pytest.fixture
def session(database_url):
    """A session whose work is committed by the test when it wants (like a request or job)."""
    from smartcare.platform.db import session_factory

    s = session_factory()()
    yield s
    s.rollback()
    s.close()


@pytest.fixture(scope="session")
def seeded(database_url):
    """The demo region (scale small, seed 2026) and the demo users, loaded once for the session."""
    from smartcare import cli
    from smartcare.platform.db import session_scope
    from smartcare.synth import service as synth

    with session_scope() as s:
        report = synth.seed(s, scale="small", seed=2026)
    cli._ensure_demo_users()
    return report


def _hospital_client(nth: int) -> tuple[str, str, str]:
    """The ``nth`` seeded 三级 general hospital with a new signed API client: (facility code, client id, secret)."""
    from sqlalchemy import text

    from smartcare.platform import auth
    from smartcare.platform.db import session_scope

    with session_scope() as s:
        code = s.execute(text("SELECT code FROM registry.facility WHERE kind = 'general_hospital' AND level = 3 "
                              "ORDER BY code OFFSET :n LIMIT 1"), {"n": nth}).scalar()
        client_id = f"his-{uuid.uuid4().hex[:8]}"
        secret = auth.create_api_client(s, client_id=client_id, name="HIS", facility_code=code)
    return code, client_id, secret


@pytest.fixture(scope="session")
def hospital(seeded):
    """A seeded general hospital with a signed API client of its own: (facility code, client id, secret)."""
    return _hospital_client(0)


@pytest.fixture(scope="session")
def other_hospital(seeded):
    """A second one, for what differs between hospitals (each has its own doctor codes, slots, bills)."""
    return _hospital_client(1)


@pytest.fixture(scope="session")
def residents(seeded):
    from sqlalchemy import text

    from smartcare.platform.db import session_scope

    with session_scope() as s:
        return [dict(r) for r in s.execute(text(
            "SELECT id, name, sex, birth_date, id_number, phone, address FROM synth.resident ORDER BY id LIMIT 500")).mappings()]


@pytest.fixture(scope="session")
def app(database_url):
    from smartcare.web.app import create_app

    return create_app()


@pytest.fixture
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


#: ``shared/`` sits beside the repository (read-only reference material: samples, schemas).
SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared(*parts: str) -> Path:
    """A path inside ``shared/``. Missing: the test fails under CI and is skipped, saying why, elsewhere."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        problem = f"{path} not found: shared/ must sit beside the repository"
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return path


NATS_URL = "nats://127.0.0.1:4222"


def nats_listening() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 4222), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def bus_url(name: str):
    """Point ``SMARTCARE_BUS_URL`` at one transport (this process and the workers it starts), then put it back."""
    from smartcare.platform.settings import get_settings

    previous = os.environ.get("SMARTCARE_BUS_URL")
    os.environ["SMARTCARE_BUS_URL"] = NATS_URL if name == "nats" else "postgres"
    get_settings.cache_clear()
    try:
        yield name
    finally:
        if previous is None:
            os.environ.pop("SMARTCARE_BUS_URL", None)
        else:
            os.environ["SMARTCARE_BUS_URL"] = previous
        get_settings.cache_clear()


@pytest.fixture(params=["postgres", "nats"])
def bus_transport(request, database_url):
    """Run the test once on the PostgreSQL bus and once on NATS JetStream (which CI must have running)."""
    if request.param == "nats" and not nats_listening():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI needs NATS with JetStream on 127.0.0.1:4222 (nats-server -js); .ci/run starts it")
        pytest.skip("no NATS server on 127.0.0.1:4222 (start nats-server -js to run the NATS half)")
    with bus_url(request.param):
        yield request.param


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class LiveServer:
    url: str
    mllp_port: int
    app: object


@pytest.fixture(scope="session")
def live_server(database_url, seeded):
    """The real app served by uvicorn on a free local port, with MLLP on another one (for browsers and senders)."""
    import uvicorn

    from smartcare.web.app import create_app

    app = create_app(mllp_port=0)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    yield LiveServer(f"http://127.0.0.1:{port}", app.state.mllp.port, app)
    server.should_exit = True
    thread.join(timeout=10)


# ---- mixed payment: every party of a payment as its own process --------------------------------------

PAYMENT_PARTIES = ("medins", "insurer", "wechat", "alipay", "unionpay")


@dataclass
class PaymentRegion:
    """The sandboxes (each started by ``smartcare sandbox run`` on a free port) and the live platform
    they redeem payment codes at and send notifications to."""

    url: str
    hospital: tuple

    def party(self, name: str) -> str:
        from smartcare.platform.settings import get_settings

        return getattr(get_settings(), f"payment_{name}_url")

    def faults(self, name: str, **faults) -> None:
        import httpx

        r = httpx.put(self.party(name) + "/_sandbox/faults", json=faults, timeout=5)
        assert r.status_code == 200, r.text

    def calm(self) -> None:
        for name in PAYMENT_PARTIES:
            self.faults(name)

    def books(self, name: str) -> dict:
        import httpx

        return httpx.get(self.party(name) + "/_sandbox/books", timeout=5).json()


@pytest.fixture(scope="session")
def payment_region(live_server, hospital, tmp_path_factory):
    from smartcare.payment.sandbox import serve
    from smartcare.platform import auth
    from smartcare.platform.db import session_scope
    from smartcare.platform.settings import get_settings

    env = {f"SMARTCARE_PAYMENT_{p.upper()}_URL": f"http://127.0.0.1:{free_port()}" for p in PAYMENT_PARTIES}
    env |= {"SMARTCARE_PAYMENT_NOTIFY_URL": live_server.url,
            "SMARTCARE_PAYMENT_KEYS_DIR": str(tmp_path_factory.mktemp("payment-keys")),
            "SMARTCARE_PAYMENT_TIMEOUT_SECONDS": "0.6", "SMARTCARE_PAYMENT_PAYER_WAIT_SECONDS": "4"}
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    processes = {}
    try:
        for party in PAYMENT_PARTIES:
            secret = None
            if party in serve.CHANNELS:  # the test database is new: the sandbox's platform client is too
                with session_scope() as s:
                    secret = auth.create_api_client(s, client_id=serve.client_id(party), name=f"{party} sandbox",
                                                    facility_code=None)
            processes[party] = serve.spawn(party, platform_url=live_server.url, secret=secret)
        for party, process in processes.items():
            serve.wait_ready(party, process)
        yield PaymentRegion(live_server.url, hospital)
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(timeout=10)
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()
