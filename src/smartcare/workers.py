"""The background work of one process: bus consumers (the platform's and every channel's destinations),
the exchange router, and housekeeping. ``smartcare up`` runs it beside the web server;
``smartcare worker`` runs it alone (start as many as the load needs)."""

from __future__ import annotations

import logging
import threading
import time

from smartcare.exchange import destinations, service as exchange
from smartcare.exchange.router import Router
from smartcare.healthcard import service as healthcard
from smartcare.platform import auth, bus
from smartcare.platform.bus import postgres as bus_postgres
from smartcare.platform.db import session_scope
from smartcare.bootstrap import import_consumers

log = logging.getLogger(__name__)


def all_consumers() -> dict[str, bus.Consumer]:
    import_consumers()
    with session_scope() as session:
        return {**bus.registry.consumers, **destinations.all_consumers(session)}


def housekeeping() -> None:
    """Cheap, idempotent upkeep: tomorrow's partitions exist; old nonces, finished bus events, expired
    messages and spent health-card codes go. Each task in its own transaction, so one failing does not stop the others."""
    for task in (exchange.ensure_partitions, auth.purge_nonces, bus_postgres.purge, exchange.prune, healthcard.purge):
        try:
            with session_scope() as session:
                task(session)
        except Exception:
            log.exception("housekeeping task %s failed; the others went on", task.__name__)


def resume_payments() -> int:
    """Settlements whose orchestrator stopped (lease expired) and unfinished refunds, carried on."""
    from smartcare.payment import parties, refunds, saga

    resumed = saga.orchestrator().recover()
    with session_scope() as session:
        waiting = refunds.pending(session)
    for refund_id in waiting:
        refunds.run(parties.current(), refund_id)
    return resumed + len(waiting)


class Workers:
    def __init__(self, *, poll_seconds: float = 2.0, housekeeping_seconds: float = 300.0, reload_seconds: float = 10.0,
                 payment_seconds: float = 2.0, booking_seconds: float = 2.0, warehouse_seconds: float = 2.0):
        self.bus_worker = bus.make_worker(all_consumers(), poll_seconds=poll_seconds)
        self.router = Router(poll_seconds=poll_seconds)
        self.housekeeping_seconds = housekeeping_seconds
        self.reload_seconds = reload_seconds
        self.payment_seconds = payment_seconds
        self.booking_seconds = booking_seconds
        self.warehouse_seconds = warehouse_seconds
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def _upkeep(self) -> None:
        last_housekeeping = time.monotonic()
        while not self.stopping.wait(self.reload_seconds):
            try:  # channels may have gained or lost destinations, or changed a webhook's URL
                self.bus_worker.consumers = all_consumers()
            except Exception:
                log.exception("could not reload the consumers; trying again next round")
            if time.monotonic() - last_housekeeping >= self.housekeeping_seconds:
                housekeeping()
                last_housekeeping = time.monotonic()

    def _payments(self) -> None:
        while not self.stopping.wait(self.payment_seconds):
            try:
                resume_payments()
            except Exception:
                log.exception("resuming payments failed; trying again next round")

    def _booking(self) -> None:
        """Holds expire, freed places return (waitlist first), no-shows are marked, reminders go out."""
        from smartcare.booking import service as booking

        while not self.stopping.wait(self.booking_seconds):
            try:
                booking.tick()
            except Exception:
                log.exception("booking upkeep failed; trying again next round")

    def _warehouse(self) -> None:
        """Hub messages and card uses into the warehouse; the registry's hospitals into its dimensions now and then."""
        from smartcare.warehouse import service as warehouse

        last_reference = None
        while not self.stopping.wait(self.warehouse_seconds):
            try:
                if last_reference is None or time.monotonic() - last_reference >= self.housekeeping_seconds:
                    with session_scope() as session:
                        warehouse.refresh_reference(session)
                    last_reference = time.monotonic()
                warehouse.tick(session_scope)
            except Exception:
                log.exception("warehouse round failed; trying again next round")

    def start(self) -> None:
        for name, target in (("bus-worker", self.bus_worker.run), ("exchange-router", self.router.run),
                             ("housekeeping", self._upkeep), ("payment-recovery", self._payments),
                             ("booking", self._booking), ("warehouse", self._warehouse)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.bus_worker.stop()
        self.router.stop()
        for thread in self.threads:
            thread.join(timeout=timeout)

    def alive(self) -> bool:
        return all(t.is_alive() for t in self.threads)
