"""``smartcare serve --workers 2``: two processes serve HTTP and share the MLLP port; every message is
acknowledged after commit whichever process took its connection."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import httpx
import psutil

from tests.conftest import free_port
from tests.exchange.conftest import CR, FS, VT, adt, message_row, msa, read_ack


def test_two_worker_processes_share_the_mllp_port(database_url, hospital, residents):
    http_port, mllp_port = free_port(), free_port()
    env = {**os.environ, "SMARTCARE_PORT": str(http_port), "SMARTCARE_MLLP_PORT": str(mllp_port),
           "SMARTCARE_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen([sys.executable, "-m", "smartcare.cli", "serve", "--workers", "2"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sockets = []
    try:
        workers = _wait_for_workers(server, http_port, mllp_port, 2)
        for _ in range(16):  # the kernel spreads connections over the listening processes
            sockets.append(socket.create_connection(("127.0.0.1", mllp_port), timeout=20))
        controls = []
        for k, sock in enumerate(sockets):
            control = f"W{uuid.uuid4().hex[:12]}"
            sock.sendall(VT + adt(hospital[0], control, residents[k]).encode() + FS + CR)
            controls.append(control)
        acks = [read_ack(sock)[0] for sock in sockets]
        assert [msa(a)[1:3] for a in acks] == [["AA", c] for c in controls]
        holding = {w.pid: sum(1 for c in w.net_connections("tcp") if c.laddr.port == mllp_port and c.raddr)
                   for w in workers}
        assert sum(holding.values()) == 16 and all(holding.values()), holding  # both took their share
        for ack in acks:  # committed before the ACK went out (SC<id> names the stored message)
            control_id = next(s for s in ack.split("\r") if s.startswith("MSH")).split("|")[9]
            assert message_row(int(control_id.removeprefix("SC")))["state"] in ("accepted", "routed", "delivered")
        assert httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=10).status_code == 200
    finally:
        for sock in sockets:
            sock.close()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, server.stderr.read().decode()[-2000:]


def _wait_for_workers(server: subprocess.Popen, http_port: int, mllp_port: int, count: int) -> list[psutil.Process]:
    """The worker processes (uvicorn's children that listen on the MLLP port), once HTTP answers."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"serve exited: {server.stderr.read().decode()[-2000:]}")
        workers = [p for p in psutil.Process(server.pid).children() if _listens_on(p, mllp_port)]
        try:
            up = httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            up = False
        if up and len(workers) == count:
            return workers
        time.sleep(0.2)
    raise AssertionError(f"{count} worker processes did not start listening within 60 s")


def _listens_on(process: psutil.Process, port: int) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in process.net_connections("tcp"))
    except psutil.NoSuchProcess:
        return False

