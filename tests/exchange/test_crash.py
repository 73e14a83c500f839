"""A worker killed between receive and route loses nothing and doubles nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from smartcare.platform.db import session_scope
from tests.exchange.conftest import adt, mllp_exchange, msa


def _states(prefix: str) -> dict[str, int]:
    with session_scope() as s:
        return dict(s.execute(text("SELECT state, count(*) FROM exchange.message WHERE control_id LIKE :p GROUP BY state"),
                              {"p": f"{prefix}%"}).all())


def _worker() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "smartcare.cli", "worker", "--poll-seconds", "0.5"],
                            env={**os.environ, "SMARTCARE_LOG_LEVEL": "WARNING"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_kill_the_worker_mid_routing_then_restart(live_server, hospital, residents):
    prefix = f"K{uuid.uuid4().hex[:8]}-"
    total = 600
    batches = [[adt(hospital[0], f"{prefix}{i:04d}", residents[i % len(residents)]).encode()
                for i in range(start, total, 4)] for start in range(4)]
    with ThreadPoolExecutor(4) as pool:
        acks = [a for batch in pool.map(lambda b: mllp_exchange(live_server.mllp_port, b), batches) for a in batch]
    assert all(msa(a)[1] == "AA" for a in acks)
    assert _states(prefix) == {"accepted": total}  # stored and acknowledged, nothing routed yet

    worker = _worker()
    deadline = time.monotonic() + 60
    while True:  # kill it as soon as it has started routing, before it is done
        states = _states(prefix)
        if states.get("accepted", total) < total or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    at_kill = _states(prefix)

    worker = _worker()
    try:
        deadline = time.monotonic() + 90
        while _states(prefix).get("delivered", 0) < total:
            assert time.monotonic() < deadline, _states(prefix)
            assert worker.poll() is None, worker.stderr.read().decode()
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=20)
    with session_scope() as s:
        per_message = s.execute(text(
            "SELECT m.control_id, count(e.id) AS n FROM exchange.message m LEFT JOIN exchange.event_log e "
            "ON e.source_message_id = m.id WHERE m.control_id LIKE :p GROUP BY m.control_id"), {"p": f"{prefix}%"}).all()
    assert len(per_message) == total
    # every message: exactly its two events (patient.registered + encounter.recorded), once each
    assert {n for _, n in per_message} == {2}, sorted({n for _, n in per_message})
    assert at_kill.get("accepted", 0) < total, "the worker was killed before it routed anything; the test proved less"
