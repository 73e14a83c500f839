"""Hospital traffic simulator: the synthetic region's hospitals send HL7 v2 over MLLP and over HTTP,
CDA and FHIR over HTTP, about the synthetic residents, at a chosen rate — for demos and benchmarks.

Each simulated hospital is a real API client (``sim-<facility code>``, secret rotated at each run)
and signs its HTTP requests like a real hospital system would. A small share of messages is
deliberately malformed so the monitoring shows errors too.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import httpx
from smartcare.platform import auth
from smartcare.platform.db import session_scope
from smartcare.platform.errors import Unauthorized
from smartcare.registry import service as registry
from smartcare.standards import mllp
from smartcare.synth import messages
from smartcare.synth import service as synth


@dataclass
class SimHospital:
    code: str
    name: str
    client_id: str
    secret: str
    mllp: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    rejected: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def prepare(hospitals: int, residents: int, seed: int) -> tuple[list[SimHospital], list[dict]]:
    """Pick hospitals and residents from the database and give each hospital a signing secret."""
    with session_scope() as session:
        found = registry.hospitals(session, limit=hospitals)
        if not found:
            raise RuntimeError("no hospitals in the registry: run `smartcare seed` first")
        sims = []
        for facility in found:
            client_id = f"sim-{facility.code}"
            try:
                secret = auth.rotate_api_client_secret(session, client_id=client_id, actor="simulator")
            except Unauthorized:  # first run: the client does not exist yet
                secret = auth.create_api_client(session, client_id=client_id, name=f"{facility.name}（模拟）",
                                                facility_code=facility.code, actor="simulator")
            sims.append(SimHospital(facility.code, facility.name, client_id, secret))
        people = synth.random_residents(session, limit=residents, seed=seed)
    return sims, people


class Simulator:
    def __init__(self, *, base_url: str, mllp_host: str, mllp_port: int, hospitals: list[SimHospital],
                 residents: list[dict], seed: int = 1, error_share: float = 0.02):
        self.base_url, self.mllp_host, self.mllp_port = base_url.rstrip("/"), mllp_host, mllp_port
        self.hospitals, self.residents = hospitals, residents
        self.rng = random.Random(seed)
        self.error_share = error_share
        self.tally = Tally()
        self.http: httpx.AsyncClient | None = None

    async def _mllp(self, h: SimHospital, payload: bytes) -> bool:
        async with h.lock:  # one connection per hospital, one message at a time on it, like a real interface engine
            if h.mllp is None:
                h.mllp = await asyncio.open_connection(self.mllp_host, self.mllp_port)
            reader, writer = h.mllp
            writer.write(mllp.frame(payload))
            await writer.drain()
            ack = await reader.readuntil(b"\x1c\x0d")
            return b"MSA|AA" in ack

    async def _http(self, h: SimHospital, path: str, body: bytes, content_type: str) -> bool:
        headers = auth.sign_request(client_id=h.client_id, secret=h.secret, method="POST", path=path, body=body)
        r = await self.http.post(self.base_url + path, content=body, headers={**headers, "Content-Type": content_type})
        return r.status_code in (200, 202)

    async def send_one(self, n: int) -> None:
        h = self.rng.choice(self.hospitals)
        person = self.rng.choice(self.residents)
        control = f"SIM{int(time.time() * 1000)}{n:06d}"
        roll = self.rng.random()
        broken = self.rng.random() < self.error_share
        started = time.perf_counter()
        try:
            if roll < 0.6:
                text_ = (messages.oru(h.code, control, person, rng=self.rng) if roll < 0.2 else
                         messages.adt(h.code, control, person, trigger=self.rng.choice(("A04", "A04", "A08", "A01"))))
                ok = await self._mllp(h, (text_.replace("|P|2.5|", "|P||") if broken else text_).encode())
            elif roll < 0.85:
                text_ = messages.adt(h.code, control, person, trigger="A04")
                body = text_.replace(f"|{control}|", "||", 1) if broken else text_  # no control id: AE
                ok = await self._http(h, "/api/v1/exchange/hl7v2", body.encode(), "text/plain")
            elif roll < 0.95:
                doc = b"<ClinicalDocument/>" if broken else messages.cda_document(person, h.code, h.name)
                ok = await self._http(h, "/api/v1/exchange/cda", doc, "application/xml")
            else:
                ok = await self._http(h, "/api/v1/exchange/fhir", messages.fhir_patient(person, h.code), "application/fhir+json")
        except (OSError, httpx.HTTPError, asyncio.IncompleteReadError):
            self.tally.failed += 1
            return
        self.tally.sent += 1
        self.tally.latencies.append(time.perf_counter() - started)
        if ok:
            self.tally.ok += 1
        else:
            self.tally.rejected += 1

    async def run(self, *, rate: float, duration: float, progress=None) -> Tally:
        """Send about ``rate`` messages per second for ``duration`` seconds (open loop: arrivals do not wait for ACKs)."""
        async with httpx.AsyncClient(timeout=30) as self.http:
            start = time.monotonic()
            tasks: set[asyncio.Task] = set()
            n = 0
            while (elapsed := time.monotonic() - start) < duration:
                due = int(elapsed * rate) + 1
                while n < due:
                    task = asyncio.create_task(self.send_one(n))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    n += 1
                if progress:
                    progress(elapsed, self.tally)
                await asyncio.sleep(min(0.05, 1 / rate))
            if tasks:
                await asyncio.gather(*tasks)
            for h in self.hospitals:
                if h.mllp is not None:
                    h.mllp[1].close()
        return self.tally
