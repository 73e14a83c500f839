"""Many settlements against the sandboxes, with faults, crashes of the orchestrator and refunds —
then the proof: every settlement completed or fully compensated, the ledger balanced to the fen,
nobody charged twice (each party's books agree with the platform's, order by order) and
reconciliation finding no difference it cannot explain.

A crash is simulated in the orchestrator's own process: at a random point (before a step, after a
request is sent, after its answer came back) the orchestrator stops dead, holding its lease; nothing
after that point runs, exactly as if the process had been killed there. Recovery is another
orchestrator taking the settlement over once the lease expires. Used by ``bench/payment_faults.py``
and, shorter, by the test suite; the sandboxes and the platform's HTTP server must be running.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from sqlalchemy import select, text

from smartcare.healthcard import service as healthcard
from smartcare.payment import ledger, reconcile, refunds, saga, service
from smartcare.payment.commercial import CommercialPolicy
from smartcare.payment.models import DirectPayConsent, Refund, Settlement
from smartcare.payment.parties import CHANNELS, INSURER, Parties
from smartcare.payment.schemas import BillIn
from smartcare.platform.clock import china_today
from smartcare.platform.db import session_scope

#: a small hospital catalogue: (code, name, category, unit price fen, price cap)
CATALOGUE = (("A001", "血常规", "甲", 2_500, None), ("A002", "尿常规", "甲", 1_200, None),
             ("XJ01DDK019", "头孢克肟", "乙", 4_800, None), ("XC10AAA072", "阿托伐他汀", "乙", 3_600, None),
             ("C001", "进口敷料", "丙", 6_000, None), ("P001", "CT", "甲", 32_000, 30_000),
             ("P002", "核磁共振", "乙", 68_000, 60_000), ("S001", "门诊手术", "甲", 150_000, None))
CRASH_POINTS = ("before:presettle", "before:authorise", "authorise:sent", "before:reserve", "before:pay_cash",
                "pay_cash:before-send", "pay_cash:answered", "before:settle_medins", "settle_medins:before-send",
                "settle_medins:answered", "before:capture", "capture:before-send", "before:finish",
                "before:compensate")


@dataclass(frozen=True)
class SimPatient:
    card_no: str
    empi_id: str
    insurance_type: str
    channels: tuple[str, ...]


@dataclass
class Report:
    settlements: int = 0
    states: Counter = field(default_factory=Counter)
    crashes: int = 0
    recovered: int = 0
    refunds: int = 0
    #: succeeded, or failed: a party refused its part (an injected business error) and the rest was given back
    refund_states: Counter = field(default_factory=Counter)
    faults: dict = field(default_factory=dict)
    ledger_balanced: bool = False
    open_pending: int = 0
    charged_wrong: list[str] = field(default_factory=list)
    insurance_wrong: list[str] = field(default_factory=list)
    insurer_wrong: list[str] = field(default_factory=list)
    recon_differences: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (set(self.states) <= {"completed", "compensated"} and self.ledger_balanced and not self.open_pending
                and not self.charged_wrong and not self.insurance_wrong and not self.insurer_wrong
                and not self.recon_differences and "processing" not in self.refund_states and not self.errors)


def prepare_patients(parties: Parties, *, count: int, seed: int, commercial_share: float = 0.3) -> list[SimPatient]:
    """Residents of the synthetic region with a card bound to every channel, a personal account at
    the insurance centre (mirrored in the ledger), and for some a commercial policy and consent."""
    rng = random.Random(seed)
    patients = []
    with session_scope() as session:
        rows = session.execute(text(
            "SELECT name, id_number, phone FROM synth.resident WHERE guardian_id IS NULL "
            "AND birth_date < current_date - interval '20 years' ORDER BY md5(id_number || :seed) LIMIT :n"),
            {"seed": str(seed), "n": count}).mappings().all()
    for row in rows:
        with session_scope() as session:
            holder = f"sim-{row['id_number'][-8:]}"
            held = healthcard.held_cards(session, holder)
            card = held[0][0] if held else healthcard.issue(session, holder=holder, relation="self", actor="simulation",
                                                            **row)
            bound = {b.channel for b in healthcard.bindings(session, card)}
            for channel in CHANNELS:
                if channel not in bound:
                    healthcard.bind_channel(session, card=card, channel=channel, actor="simulation")
            empi_id, card_no = card.empi_id, card.card_no
        insurance_type = "employee" if rng.random() < 0.7 else "resident"
        balance = rng.choice((0, 5_000, 50_000, 300_000)) if insurance_type == "employee" else 0
        httpx.put(_url("medins") + f"/_sandbox/persons/{empi_id}", timeout=10,
                  json={"insutype": "310" if insurance_type == "employee" else "390", "balance": balance,
                        "deductible_used": 0, "fund_paid": 0}).raise_for_status()
        with session_scope() as session:
            account = session.scalar(select(text("1")).select_from(text("payment.account"))
                                     .where(text("code = :c")).params(c=service.personal_account_code(empi_id)))
            if balance and account is None:
                service.credit_personal_account(session, empi_id=empi_id, amount=balance,
                                                transfer_id=uuid.uuid5(saga.LEDGER_NS, f"alloc:{empi_id}"))
            if rng.random() < commercial_share:
                parties.insurer.put_policy(CommercialPolicy(f"HMB-{empi_id}", INSURER, deductible=rng.choice((0, 10_000)),
                                                            ratio_bp=rng.choice((5_000, 8_000)), annual_limit=2_000_000,
                                                            excluded_categories=frozenset({"丙"})), insured_id=empi_id)
                if session.get(DirectPayConsent, (empi_id, INSURER)) is None:
                    session.add(DirectPayConsent(empi_id=empi_id, insurer=INSURER, granted_by="simulation"))
        patients.append(SimPatient(card_no, empi_id, insurance_type, CHANNELS))
    return patients


def _bill(rng: random.Random, patient: SimPatient, facility_code: str) -> BillIn:
    picks = rng.sample(CATALOGUE, rng.randint(1, 4))
    items = [{"code": c, "name": n, "category": cat, "unit_price": price, "quantity": rng.randint(1, 3),
              "price_cap": cap} for c, n, cat, price, cap in picks]
    return BillIn(bill_no=f"SIM{uuid.uuid4().hex[:16]}", empi_id=patient.empi_id,
                  insurance_type=patient.insurance_type if rng.random() < 0.9 else "none", items=items)


def _payment_code(patient: SimPatient, facility_code: str, channel: str) -> str:
    with session_scope() as session:
        card = healthcard.get_card(session, patient.card_no)
        shown = healthcard.dynamic_code(session, card=card)
        scanned = healthcard.verify(session, code_text=shown.text, facility_code=facility_code, step="payment",
                                    channel="window")
    return str(scanned.payments[channel])


def settle_one(parties: Parties, orchestrator: saga.Orchestrator, rng: random.Random, patient: SimPatient,
               facility_code: str) -> str:
    """A bill, scanned code and settlement, as the hospital terminal does it; returns the settlement number."""
    channel = rng.choice(patient.channels)
    data = _bill(rng, patient, facility_code)
    code = _payment_code(patient, facility_code, channel)
    with session_scope() as session:
        service.create_bill(session, facility_code=facility_code, data=data, actor="simulation")
    with session_scope() as session:
        no = saga.start(session, facility_code=facility_code, bill_no=data.bill_no, channel=channel,
                        auth_code=code)[0].settlement_no
    orchestrator.run(no)
    return no


def run(parties: Parties, *, patients: list[SimPatient], facility_code: str, count: int, workers: int = 8,
        crash_rate: float = 0.02, refund_share: float = 0.1, seed: int = 1, options: saga.Options | None = None,
        progress: Callable[[int, int], None] | None = None) -> Report:
    """``count`` settlements from ``workers`` threads; crashes at random points with ``crash_rate``
    per point; then recovery until everything has ended; then the checks."""
    options = options or saga.Options(lease_seconds=1.0, payer_wait_seconds=3.0, retry_seconds=0.3)
    report = Report()
    started = time.monotonic()
    numbers: list[str] = []
    lock = threading.Lock()
    todo = iter(range(count))

    def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)

        def crash(point: str) -> bool:
            return point in CRASH_POINTS and rng.random() < crash_rate

        orchestrator = saga.Orchestrator(parties, options, crash=crash)
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                no = settle_one(parties, orchestrator, rng, rng.choice(patients), facility_code)
                _maybe_refund(parties, rng, no, facility_code, refund_share, report, lock)
            except saga.Crash:
                with lock:
                    report.crashes += 1
                orchestrator = saga.Orchestrator(parties, options, crash=crash)  # the process is "restarted"
                continue
            except Exception as exc:  # a bug, not a fault: reported, and the run goes on
                with lock:
                    report.errors.append(f"{type(exc).__name__}: {exc}"[:2000])
                continue
            finally:
                with lock:
                    report.settlements += 1
                    if progress:
                        progress(report.settlements, count)
            with lock:
                numbers.append(no)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.recovered = _recover_all(parties, options)
    report.seconds = time.monotonic() - started
    _check(parties, report)
    return report


def _maybe_refund(parties, rng, no, facility_code, share, report, lock) -> None:
    if rng.random() >= share:
        return
    with session_scope() as session:
        s = session.scalar(select(Settlement).where(Settlement.settlement_no == no))
        if s.state != "completed":
            return
        cash_and_claim = s.cash_pay + s.insurer_pay
        amount = s.total if rng.random() < 0.3 or not cash_and_claim else rng.randint(1, cash_and_claim)
        refund, _ = refunds.request(session, facility_code=facility_code, settlement_no=no,
                                    refund_no=f"RF{uuid.uuid4().hex[:12]}", amount=amount, reason="simulation")
        refund_id = refund.id
    refunds.run(parties, refund_id)
    with lock:
        report.refunds += 1


def _recover_all(parties: Parties, options: saga.Options, *, seconds: float = 120.0) -> int:
    """Let recovery take over until nothing is left running (leases expire after ``lease_seconds``)."""
    rescuer = saga.Orchestrator(parties, options)
    deadline = time.monotonic() + seconds
    recovered = 0
    while time.monotonic() < deadline:
        with session_scope() as session:
            unfinished = session.scalar(text("SELECT count(*) FROM payment.settlement "
                                             "WHERE state IN ('running', 'compensating')"))
            waiting = refunds.pending(session)
        if not unfinished and not waiting:
            break
        recovered += rescuer.recover()
        for refund_id in waiting:
            refunds.run(parties, refund_id)
        time.sleep(0.2)
    return recovered


def _check(parties: Parties, report: Report) -> None:
    with session_scope() as session:
        report.states = Counter(dict(session.execute(text(
            "SELECT state, count(*) FROM payment.settlement WHERE bill_id IN "
            "(SELECT id FROM payment.bill WHERE bill_no LIKE 'SIM%') GROUP BY state")).all()))
        report.refund_states = Counter(dict(session.execute(text(
            "SELECT state, count(*) FROM payment.refund GROUP BY state")).all()))
        report.ledger_balanced = ledger.trial_balance(session).balanced
        report.open_pending = session.scalar(text(  # of this simulation's settlements
            "SELECT count(*) FROM payment.transfer p WHERE p.kind = 'pending' "
            "AND NOT EXISTS (SELECT 1 FROM payment.transfer r WHERE r.pending_id = p.id) "
            "AND p.reference IN (SELECT s.settlement_no FROM payment.settlement s JOIN payment.bill b "
            "ON b.id = s.bill_id WHERE b.bill_no LIKE 'SIM%')"))
        settlements = {s.settlement_no: s for s in session.scalars(select(Settlement))}
        refunded = defaultdict(lambda: [0, 0, 0])
        for r in session.scalars(select(Refund)):  # the parts that went through (a refused refund stops midway)
            parts = refunded[r.settlement_id]
            for n, (status, amount) in enumerate(((r.cash_status, r.cash_part), (r.insurer_status, r.insurer_part),
                                                  (r.medins_status, r.medins_part))):
                parts[n] += amount if status == "succeeded" else 0
        session.expunge_all()

    def expected_cash(s: Settlement) -> int:
        return s.cash_pay - refunded[s.id][0] if s.state == "completed" else 0

    for channel in CHANNELS:  # money each channel holds per order = what the platform booked for it
        books = httpx.get(_url(channel) + "/_sandbox/books", timeout=30).json()
        held = defaultdict(int)
        for order in books["orders"]:
            held[order["out_trade_no"]] += (order["amount"] if order["state"] in ("paid", "reversed") else 0) \
                - order["refunded"]
        for s in settlements.values():
            if s.channel == channel and held.get(s.settlement_no, 0) != expected_cash(s):
                report.charged_wrong.append(f"{s.settlement_no}: {channel} holds {held.get(s.settlement_no, 0)}, "
                                            f"platform {expected_cash(s)}")
    centre = httpx.get(_url("medins") + "/_sandbox/books", timeout=30).json()
    settled_at_centre = Counter(r["mdtrt_id"] for r in centre["settlements"] if r["state"] == "settled")
    for s in settlements.values():
        should = int(s.state == "completed" and s.setl_id is not None and not refunded[s.id][2])
        if settled_at_centre.get(s.settlement_no, 0) != should:
            report.insurance_wrong.append(f"{s.settlement_no}: centre {settled_at_centre.get(s.settlement_no, 0)}, "
                                          f"platform {should}")
    insurer = httpx.get(_url("insurer") + "/_sandbox/books", timeout=30).json()
    paid = defaultdict(int)
    for a in insurer["authorisations"]:
        if a["status"] == "captured":
            paid[a["bill_ref"]] += a["amount"] - a["refunded"]
    for s in settlements.values():
        should = s.insurer_pay - refunded[s.id][1] if s.state == "completed" else 0
        if paid.get(s.settlement_no, 0) != (should or 0):
            report.insurer_wrong.append(f"{s.settlement_no}: insurer {paid.get(s.settlement_no, 0)}, platform {should}")
    for party in ("medins", "insurer", *CHANNELS):
        try:
            report.faults[party] = httpx.get(_url(party) + "/_sandbox/faults", timeout=10).json()["counts"]
        except httpx.HTTPError:
            report.faults[party] = {}
    with session_scope() as session:
        results = reconcile.run(session, parties, day=china_today(), actor="simulation")
    report.recon_differences = [f"{r.party}: {r.error}" for r in results if r.error] + [
        f"{r.party} {d.reference} {d.kind}: {d.reason}" for r in results for d in r.differences]


def _url(party: str) -> str:
    from smartcare.payment.sandbox.serve import url

    return url(party).rstrip("/")
