"""MLLP connector: HL7 v2 over TCP (optionally TLS with client certificates).

Frames are read with the incremental decoder; each good frame is answered, in order, with an ACK that
is sent only after the message is committed. A frame that cannot be read is kept byte for byte in
``exchange.bad_frame`` and answered AR with the problem and where to find the bytes.

Each connection is an ``asyncio.Protocol`` with one task that answers its frames in turn: no stream
reader and writer between the socket and the decoder, whose wrappers and read futures every message
paid for. A sender that does not wait for its ACKs is slowed down by the transport's flow
control: reading pauses while ``MAX_WAITING`` frames wait, and answering while the ACKs are not read.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque

from smartcare.exchange.ingest import Hub, Receipt, inspect
from smartcare.exchange.ratelimit import RateLimiter
from smartcare.exchange.store import NewBadFrame
from smartcare.platform import metrics
from smartcare.platform.db import session_factory
from smartcare.platform.refresh import Refreshed
from smartcare.platform.settings import get_settings
from smartcare.registry import service as registry
from smartcare.standards import hl7v2, mllp

log = logging.getLogger(__name__)


def tls_context() -> ssl.SSLContext | None:
    settings = get_settings()
    if not settings.mllp_tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.mllp_tls_cert, settings.mllp_tls_key)
    if settings.mllp_tls_client_ca:
        context.load_verify_locations(settings.mllp_tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _facility_codes() -> frozenset[str]:
    with session_factory()() as session:
        return frozenset(registry.facility_codes(session))


def ack_control_id(receipt: Receipt) -> str | None:
    """The ACK's own control id names the stored message, so both sides can find it later."""
    return f"SC{receipt.message_id}" if receipt.message_id else None


def ack_code(receipt: Receipt) -> str:
    if receipt.ok:
        return "AA"
    error = receipt.inspected.hl7_error
    return "AR" if receipt.status == "refused" or (error is not None and error.reject) else "AE"


class MllpServer:
    def __init__(self, hub: Hub, *, host: str = "127.0.0.1", port: int = 2575, tls: ssl.SSLContext | None = None):
        settings = get_settings()
        self.hub, self.host, self.port, self.tls = hub, host, port, tls
        #: registered facility codes (MLLP senders are identified by MSH-4), reloaded every minute
        self.facilities = Refreshed(_facility_codes, 60.0)
        self.limiter = RateLimiter(settings.rate_per_second, settings.rate_burst)
        self.max_frame = settings.max_payload_bytes
        self.ack_seconds = metrics.EXCHANGE_ACK_SECONDS.labels("mllp")
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        # reuse_port: the worker processes of `smartcare serve --workers N` listen on the same port and the
        # kernel spreads the connections among them
        self._server = await asyncio.get_running_loop().create_server(lambda: _Connection(self), self.host, self.port,
                                                                      ssl=self.tls, reuse_port=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("MLLP listening on %s:%s%s", self.host, self.port, " (TLS)" if self.tls else "")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def answer(self, frame: mllp.Frame, cert_cn: str | None, host: str, peer: str) -> bytes:
        """The framed ACK of one frame, once its message is stored."""
        started = time.perf_counter()
        ack = await (self._message(frame.payload, cert_cn, cert_cn or host) if frame.ok else self._bad_frame(frame, peer))
        self.ack_seconds.observe(time.perf_counter() - started)
        return mllp.frame(ack.encode("utf-8"))

    async def _bad_frame(self, frame, peer: str) -> str:
        metrics.EXCHANGE_BAD_FRAMES.inc()
        try:
            frame_id = await self.hub.committer.submit_bad_frame(NewBadFrame("mllp", peer, frame.problem, frame.raw))
            where = f"; its raw bytes are kept as bad frame #{frame_id}"
        except Exception:  # still answer: the sender must learn the frame was not taken
            where = ""
        return hl7v2.build_ack(frame.payload.decode("latin-1"), code="AR", text=f"bad MLLP frame: {frame.problem}{where}")

    async def _message(self, payload: bytes, cert_cn: str | None, peer_key: str) -> str:
        """``peer_key`` (certificate name or peer host) is what the rate limit counts: MSH-4 is the sender's to choose."""
        seen = inspect("hl7v2", payload)
        original = seen.header or payload.decode("latin-1")
        sending = seen.facility_code  # MSH-4: MLLP has no login, the message says who sent it
        if cert_cn is not None and cert_cn != sending:  # broken messages too: nobody may send in another's name
            return hl7v2.build_ack(original, code="AR", text="the client certificate does not belong to the sending facility (MSH-4)")
        wait = self.limiter.check(peer_key)
        if wait:
            await asyncio.sleep(wait)  # MLLP has no "429": slow the sender down instead
        try:
            # Only registered facilities are counted as hospitals in monitoring; channels decide who may send.
            registered = self.facilities.peek()
            if registered is None:
                registered = await self.facilities.get()
            facility = sending if sending in registered else None
            # the sender says how it was identified: by its client certificate, or only by what MSH-4 claims
            sender = f"mllp-cert:{sending}" if cert_cn is not None else f"mllp:{sending or '?'}"
            receipt = await self.hub.receive(connector="mllp", kind="hl7v2", raw=payload, sender=sender,
                                             facility_code=facility, inspected=seen)
        except Exception as exc:
            log.error("MLLP message could not be stored: %s", exc)
            return hl7v2.build_ack(original, code="AE", text="temporarily unable to store the message; send it again")
        code = ack_code(receipt)
        return hl7v2.build_ack(original, code=code, error=seen.hl7_error, control_id=ack_control_id(receipt),
                               text=None if code == "AA" else receipt.reason or seen.error)


class _Connection(asyncio.Protocol):
    """One sender's connection: frames are answered one at a time, in the order they arrived."""

    #: frames read but not answered yet before reading pauses (a sender that does not wait for its ACKs)
    MAX_WAITING = 64

    def __init__(self, server: MllpServer):
        self.server = server
        self.decoder = mllp.FrameDecoder(max_size=server.max_frame)
        self.frames: deque[mllp.Frame] = deque()
        self.closed = False
        self.reading = self.writing = True
        self._wake: asyncio.Future | None = None
        self._task: asyncio.Task | None = None  # held: the loop keeps only weak references to tasks

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        host, port = (transport.get_extra_info("peername") or ("?", 0))[:2]
        cert = transport.get_extra_info("peercert")
        cert_cn = next((v for rdn in (cert or {}).get("subject", ()) for k, v in rdn if k == "commonName"), None)
        self._task = asyncio.get_running_loop().create_task(self._answer_frames(cert_cn, host, f"{host}:{port}"))

    def data_received(self, data: bytes) -> None:
        frames = self.decoder.feed(data)
        if not frames:
            return
        self.frames.extend(frames)
        if len(self.frames) >= self.MAX_WAITING and self.reading:
            self.reading = False
            self.transport.pause_reading()
        self._wake_up()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake_up()

    def pause_writing(self) -> None:
        self.writing = False

    def resume_writing(self) -> None:
        self.writing = True
        self._wake_up()

    def _wake_up(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _wait(self) -> None:
        self._wake = asyncio.get_running_loop().create_future()
        await self._wake

    async def _answer_frames(self, cert_cn: str | None, host: str, peer: str) -> None:
        try:
            while not self.closed:
                if not self.frames or not self.writing:
                    await self._wait()
                    continue
                ack = await self.server.answer(self.frames.popleft(), cert_cn, host, peer)
                if self.closed:
                    return
                self.transport.write(ack)
                if not self.reading and len(self.frames) < self.MAX_WAITING // 2:
                    self.reading = True
                    self.transport.resume_reading()
        finally:
            self.transport.close()
