"""Benchmark: the exchange hub's ack-after-commit ingest, over MLLP and HTTP, against the naive limit.

`smartcare serve` (API + MLLP; ``--workers`` processes sharing the ports, default 2: one per core) on this
machine's PostgreSQL or the embedded one receives; this process sends from ``--senders`` concurrent senders,
each waiting for its ACK before the next message (like an interface engine). Printed, measured in the same run:

- the naive limit: N concurrent connections each doing a single-row INSERT + COMMIT per message
  straight into PostgreSQL (no parsing, no HTTP, no MLLP) — what "ack after commit" costs if every
  message pays its own commit;
- the hub over MLLP: msgs/s, p50/p99 ACK latency, and its ratio to the naive limit of the same round;
- the floor: the same MLLP framing and the hub's own group commit with none of the hub's HL7 work, in
  processes of its own (what this machine allows any Python hub storing through the message store);
- the hub over HTTP (HMAC-signed), once;
- CPU per message of the server, of this process (the load generator, or the naive connections' client)
  and of PostgreSQL, from /proc, how busy the machine was and how much of that the host stole;
- peak RSS of the server (its largest worker) and of this process.

This machine's speed drifts from one minute to the next, so naive, hub and floor alternate for
``--rounds`` rounds and every ratio is taken within its round; the medians are printed last. All modes
send from uvloop, as the server runs.

    python bench/exchange.py            # 64 senders, 20,000 messages per mode and round, 5 rounds (~2 minutes)
    python bench/exchange.py --quick    # 16 senders, 3,000 messages per mode, 1 round (well under a minute)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402
import uvloop  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from _common import (  # noqa: E402
    CpuMeter, free_port, peak_rss_mib, postgres_processes, process_peak_rss_mib, scratch_database,
)

from smartcare.platform import auth  # noqa: E402
from smartcare.exchange.store import GroupCommitter, NewMessage  # noqa: E402
from smartcare.platform.db import session_scope  # noqa: E402
from smartcare.standards import mllp  # noqa: E402
from smartcare.synth.messages import adt  # noqa: E402

FACILITY = "500103H001"




def person(i: int) -> dict:
    return {"id": i, "name": "张三丰", "sex": "1", "birth_date": date(1980, 1, 1), "id_number": "11010519491231002X",
            "phone": "13800000000", "address": "重庆市渝中区解放碑1号"}


def summary(name: str, latencies: list[float], seconds: float) -> dict:
    ordered = sorted(latencies)
    return {"name": name, "n": len(ordered), "rate": len(ordered) / seconds,
            "p50": ordered[len(ordered) // 2] * 1000, "p99": ordered[int(len(ordered) * 0.99) - 1] * 1000}


class MllpSender(asyncio.Protocol):
    """One sender on its own connection: a frame, then its ACK, then the next frame. A protocol, not
    streams, so that the load generator spends as little of the shared CPU as it can."""

    def __init__(self, frames: list[bytes], done: asyncio.Future):
        self.frames, self.done, self.latencies = frames, done, []
        self.buffer, self.sent, self.started = b"", 0, 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._next()

    def _next(self) -> None:
        if self.sent == len(self.frames):
            self.transport.close()
            self.done.set_result(self.latencies)
            return
        self.started = time.perf_counter()
        self.transport.write(self.frames[self.sent])
        self.sent += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.buffer.endswith(b"\x1c\x0d"):
            return
        self.latencies.append(time.perf_counter() - self.started)
        ack, self.buffer = self.buffer, b""
        if b"MSA|AA" not in ack:
            self.transport.close()
            self.done.set_exception(AssertionError(ack[:200]))
            return
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("the hub closed the connection before the last ACK"))


async def floor_senders(port: int, senders: int, per_sender: int, tag: str) -> dict:
    result = await mllp_senders(port, senders, per_sender, tag)
    return {**result, "name": "floor: MLLP + group commit, no HL7 work"}


async def mllp_senders(port: int, senders: int, per_sender: int, tag: str) -> dict:
    # Messages are built before the clock starts: the load generator shares the machine with the server.
    frames = [[b"\x0b" + adt(FACILITY, f"{tag}-{k}-{i}", person(i)).encode() + b"\x1c\x0d" for i in range(per_sender)]
              for k in range(senders)]
    loop = asyncio.get_running_loop()
    done = [loop.create_future() for _ in range(senders)]
    start = time.perf_counter()
    for k in range(senders):
        await loop.create_connection(lambda k=k: MllpSender(frames[k], done[k]), "127.0.0.1", port)
    results = await asyncio.gather(*done)
    return summary("hub over MLLP", [x for r in results for x in r], time.perf_counter() - start)


class KeepAliveHttp:
    """A minimal HTTP/1.1 keep-alive client: httpx costs more CPU per request than the server does,
    and on a 2-core machine the load generator must not be what is measured."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode()
                          + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def http_senders(base: str, clients: list[tuple[str, str]], per_sender: int, tag: str) -> dict:
    path = "/api/v1/exchange/hl7v2"
    host, port = base.removeprefix("http://").split(":")

    # Built and signed before the clock starts (signatures stay valid for the 300 s window).
    requests = []
    for k, (client_id, secret) in enumerate(clients):
        mine = []
        for i in range(per_sender):
            body = adt(FACILITY, f"{tag}-{k}-{i}", person(i)).encode()
            headers = auth.sign_request(client_id=client_id, secret=secret, method="POST", path=path, body=body)
            mine.append((body, {**headers, "Content-Type": "text/plain"}))
        requests.append(mine)

    async def one(k: int) -> list[float]:
        http = KeepAliveHttp(host, int(port))
        lat = []
        for body, headers in requests[k]:
            start = time.perf_counter()
            status, answer = await http.post(path, body, headers)
            lat.append(time.perf_counter() - start)
            assert status == 200, answer[:300]
        http.close()
        return lat

    start = time.perf_counter()
    results = await asyncio.gather(*(one(k) for k in range(len(clients))))
    return summary("hub over HTTP (signed)", [x for r in results for x in r], time.perf_counter() - start)


async def naive(dsn: str, senders: int, per_sender: int) -> dict:
    """The naive limit: one INSERT + COMMIT per message per connection, nothing else."""
    setup = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await setup.execute("CREATE TABLE IF NOT EXISTS bench_naive (id bigserial PRIMARY KEY, control_id text, raw bytea, "
                        "received_at timestamptz DEFAULT now())")
    await setup.close()
    payload = adt(FACILITY, "naive", person(1)).encode()

    async def one(k: int) -> list[float]:
        conn = await psycopg.AsyncConnection.connect(dsn)
        lat = []
        for i in range(per_sender):
            start = time.perf_counter()
            await conn.execute("INSERT INTO bench_naive (control_id, raw) VALUES (%s, %s)", (f"n-{k}-{i}", payload))
            await conn.commit()
            lat.append(time.perf_counter() - start)
        await conn.close()
        return lat

    start = time.perf_counter()
    results = await asyncio.gather(*(one(k) for k in range(senders)))
    return summary("naive: INSERT + COMMIT per message", [x for r in results for x in r], time.perf_counter() - start)


class FloorConnection(asyncio.Protocol):
    """The floor: MLLP framing and the hub's own group commit, with none of the hub's HL7 work (no parsing,
    checks, channel choice, metrics or ACK built from the message) — each frame stored as it is and
    answered with a fixed AA. What this machine allows any Python hub that stores through the message store."""

    ACK = mllp.frame(b"MSH|^~\\&|SMARTCARE|REGION|BENCH|BENCH|20260101000000||ACK^A04^ACK|SC0|P|2.5\rMSA|AA|0\r")
    count = 0

    def __init__(self, committer: GroupCommitter):
        self.committer, self.decoder = committer, mllp.FrameDecoder()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            FloorConnection.count += 1
            message = NewMessage(channel_id="hl7v2", sender="mllp:floor", facility_code=None, connector="mllp", kind="hl7v2",
                                 message_type="ADT^A04", control_id=f"floor-{os.getpid()}-{FloorConnection.count}",
                                 state="accepted",
                                 raw=frame.payload, content_type=None)
            self.committer.submit(message).add_done_callback(self._stored)

    def _stored(self, future: asyncio.Future) -> None:
        if future.exception() is not None:  # the sender's connection ends: the run fails instead of waiting
            self.transport.close()
            raise future.exception()
        self.transport.write(self.ACK)


async def floor_server(port: int) -> None:
    committer = GroupCommitter()
    server = await asyncio.get_running_loop().create_server(lambda: FloorConnection(committer), "127.0.0.1", port,
                                                            reuse_port=True)  # one process per core, as serve's workers
    async with server:
        await server.serve_forever()


def started_workers(server: subprocess.Popen, http_port: int, mllp_port: int, count: int) -> list[psutil.Process]:
    """``serve``'s worker processes, once HTTP answers and each of them listens for MLLP."""
    deadline = time.monotonic() + 60
    while True:
        supervisor = psutil.Process(server.pid)  # with one worker, uvicorn serves in this process itself
        workers = [p for p in (supervisor, *supervisor.children())
                   if any(c.status == psutil.CONN_LISTEN and c.laddr.port == mllp_port for c in p.net_connections("tcp"))]
        try:
            up = httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            up = False
        if up and len(workers) == count:
            return workers
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start: {server.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--senders", type=int)
    parser.add_argument("--messages", type=int, help="messages per mode")
    parser.add_argument("--workers", type=int, default=2, help="server processes (smartcare serve --workers; one per core)")
    parser.add_argument("--rounds", type=int, help="naive, hub over MLLP and floor measured in turn this many times, "
                                                   "each ratio within its round (default 5; 1 with --quick)")
    parser.add_argument("--floor-server", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the floor's own process
    args = parser.parse_args()
    if args.floor_server:
        return uvloop.run(floor_server(args.floor_server))
    rounds = args.rounds or (1 if args.quick else 5)
    senders = args.senders or (16 if args.quick else 64)
    total = args.messages or (3000 if args.quick else 20000)
    per_sender = total // senders

    with scratch_database() as url:
        dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(dsn) as conn:  # which server: the ratio differs between them (docs/benchmarks.md)
            server_name = (f"PostgreSQL {conn.execute('SHOW server_version').fetchone()[0].split()[0]} over "
                           + ("a Unix socket" if conn.info.host.startswith("/") else "TCP"))
        with session_scope() as s:
            clients = [(f"bench-{k}", auth.create_api_client(s, client_id=f"bench-{k}", name="bench", facility_code=FACILITY))
                       for k in range(senders)]
        http_port, mllp_port = free_port(), free_port()
        env = {**os.environ, "DATABASE_URL": url.replace("postgresql+psycopg://", "postgresql://", 1),
               "SMARTCARE_PORT": str(http_port), "SMARTCARE_MLLP_PORT": str(mllp_port), "SMARTCARE_LOG_LEVEL": "WARNING",
               "SMARTCARE_RATE_PER_SECOND": "100000", "SMARTCARE_RATE_BURST": "100000"}
        server = subprocess.Popen([sys.executable, "-m", "smartcare.cli", "serve", "--workers", str(args.workers)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        floor_port = free_port()
        floors = [subprocess.Popen([sys.executable, __file__, "--floor-server", str(floor_port)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(args.workers)]
        try:
            workers = started_workers(server, http_port, mllp_port, args.workers)
            uvloop.run(mllp_senders(mllp_port, 4 * args.workers, 50, "warm"))  # warm-up: connections, caches
            uvloop.run(floor_senders(floor_port, 4 * args.workers, 50, "warm"))
            # the supervisor, its workers and the floor's processes (only one of them is sent to at a time)
            serving = [psutil.Process(server.pid), *(w for w in workers if w.pid != server.pid),
                       *(psutil.Process(f.pid) for f in floors)]
            meter = CpuMeter({"server": lambda: serving, "this process": lambda: [psutil.Process()],
                              "PostgreSQL": postgres_processes(make_url(url).database)})
            # This machine's speed drifts from minute to minute: naive, hub and floor alternate, and each ratio
            # is taken within one round, a few seconds apart.
            runs = [run for k in range(rounds) for run in (lambda: naive(dsn, senders, per_sender),
                                                            lambda k=k: mllp_senders(mllp_port, senders, per_sender, f"m{k}"),
                                                            lambda k=k: floor_senders(floor_port, senders, per_sender, f"f{k}"))]
            runs.append(lambda: http_senders(f"http://127.0.0.1:{http_port}", clients, per_sender, "h"))
            results = []
            for run in runs:
                meter.start()
                result = uvloop.run(run())  # uvloop, as the server: the load generator shares the machine
                results.append({**result, "cpu": meter.stop()})
            server_rss = max(process_peak_rss_mib(w.pid) for w in workers)
        finally:
            for process in (server, *floors):
                process.terminate()
                process.wait(timeout=20)

    print(f"exchange ingest, ack after commit: {senders} concurrent senders, {per_sender * senders:,} messages per mode "
          f"and round (HL7 v2 ADT^A04, {len(adt(FACILITY, 'x', person(1))):,} bytes), {rounds} round(s), {server_name}")
    print(f"  {'mode':<38}{'msgs/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'× naive':>9}   CPU µs a message: server / "
          "this process / PostgreSQL; machine busy (of it stolen by the host)")
    ratios, floor_ratios = [], []
    for r in results:
        if r["name"].startswith("naive"):
            base = r["rate"]
        elif r["name"] == "hub over MLLP":
            ratios.append(r["rate"] / base)
        elif r["name"].startswith("floor"):
            floor_ratios.append(r["rate"] / base)
        cpu = {k: v / r["n"] * 1e6 for k, v in r["cpu"].items() if not k.endswith("%")}
        print(f"  {r['name']:<38}{r['rate']:>10,.0f}{r['p50']:>9.1f}{r['p99']:>9.1f}{r['rate'] / base:>9.2f}   "
              f"{cpu['server']:.0f} / {cpu['this process']:.0f} / {cpu['PostgreSQL']:.0f}; {r['cpu']['busy %']:.0f} % "
              f"({r['cpu']['steal %']:.0f} %)")
    print(f"  hub over MLLP ÷ naive, round by round: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"median {statistics.median(ratios):.2f}")
    print(f"  floor ÷ naive, round by round: {', '.join(f'{x:.2f}' for x in floor_ratios)}; "
          f"median {statistics.median(floor_ratios):.2f}")
    print(f"  peak RSS: server worker (largest of {args.workers}) {server_rss:.0f} MiB, load generator {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
