"""Daily reconciliation: the platform's books against each party's, per day (China time).

- each channel: its bill file (``Channel.bill``) against the cash the platform booked, net per order
  (a payment reversed the same day nets to zero on both sides);
- the insurance centre: 3201 totals per hospital, and when they differ, 3202 details;
- the insurer: its statement against the claims the platform booked, net per settlement.

What the platform booked is read from the settlements' event log: a settlement's cash and claim count
when it completed, a medical-insurance settlement when the centre answered 2207 (it may still be
reversed: the reversal counts negatively the day it happens, as at the centre), refunds when each
part succeeded. Every difference becomes a ``recon_item`` with its reason, for a person to resolve in
the console; running the same day again refreshes the open items and leaves resolved ones alone.
Known limit: a payment made before midnight and booked after it shows as a difference on both days.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from smartcare.payment.medins import DetailIn
from smartcare.payment.models import ReconItem, ReconRun
from smartcare.payment.parties import CHANNELS, Parties
from smartcare.payment.remote import OutcomeUnknown, Refused
from smartcare.platform import audit
from smartcare.platform.clock import china_now
from smartcare.platform.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger(__name__)
ATTEMPTS = 5

#: each party's movements as the platform's event log has them: (step, outcome) → sign
_MOVES = """
    SELECT s.settlement_no, s.facility_code, s.channel, s.total, s.hifp_pay, s.acct_pay, s.insurer_pay, s.cash_pay,
           s.setl_id, s.medins_msgid, e.step, e.outcome, e.detail
      FROM payment.settlement_event e JOIN payment.settlement s ON s.id = e.settlement_id
     WHERE e.at >= (CAST(:day AS date))::timestamp AT TIME ZONE 'Asia/Shanghai'
       AND e.at < (CAST(:day AS date) + 1)::timestamp AT TIME ZONE 'Asia/Shanghai'
       AND (e.step, e.outcome) IN (('finish', 'ok'), ('settle_medins', 'ok'), ('settle_medins', 'differs'),
                                   ('undo_medins', 'ok'), ('refund:cash', 'ok'), ('refund:insurer', 'ok'),
                                   ('refund:medins', 'ok'))
"""


@dataclass
class Difference:
    reference: str
    kind: str  # missing_at_party, missing_at_platform, amount_differs, state_differs
    platform_amount: int | None
    party_amount: int | None
    reason: str


@dataclass
class PartyResult:
    party: str
    matched: int = 0
    differences: list[Difference] = field(default_factory=list)
    error: str | None = None


def _platform_moves(session: Session, day: date):
    return session.execute(text(_MOVES), {"day": day}).mappings().all()


def _nets(rows, party: str) -> dict[str, int]:
    """Net amount per settlement the platform booked for ``party`` (a channel or the insurer) that day."""
    net: dict[str, int] = defaultdict(int)
    for r in rows:
        if party == "insurer":
            if (r["step"], r["outcome"]) == ("finish", "ok") and r["insurer_pay"]:
                net[r["settlement_no"]] += r["insurer_pay"]
            elif r["step"] == "refund:insurer":
                net[r["settlement_no"]] -= r["detail"]["amount"]
        elif r["channel"] == party:
            if (r["step"], r["outcome"]) == ("finish", "ok") and r["cash_pay"]:
                net[r["settlement_no"]] += r["cash_pay"]
            elif r["step"] == "refund:cash":
                net[r["settlement_no"]] -= r["detail"]["amount"]
    return net


def _compare(result: PartyResult, platform: dict[str, int], party: dict[str, int], name: str) -> None:
    for reference in sorted(set(platform) | set(party)):
        ours, theirs = platform.get(reference, 0), party.get(reference, 0)
        if ours == theirs:
            result.matched += ours != 0
        elif reference not in party or theirs == 0:
            result.differences.append(Difference(reference, "missing_at_party", ours, theirs,
                                                 f"the platform booked {ours} fen for it; {name} has nothing that day"))
        elif ours == 0:
            result.differences.append(Difference(reference, "missing_at_platform", ours, theirs,
                                                 f"{name} moved {theirs} fen the platform did not book"))
        else:
            result.differences.append(Difference(reference, "amount_differs", ours, theirs,
                                                 f"the platform booked {ours} fen, {name} {theirs} fen"))


def _channel(parties: Parties, rows, name: str, day: date) -> PartyResult:
    result = PartyResult(name)
    party: dict[str, int] = defaultdict(int)
    for line in parties.channel(name).bill(day=day):
        party[line.out_trade_no] += line.amount if line.kind == "pay" else -line.amount
    _compare(result, _nets(rows, name), party, name)
    return result


def _insurer(parties: Parties, rows, day: date) -> PartyResult:
    result = PartyResult("insurer")
    party: dict[str, int] = defaultdict(int)
    for line in parties.insurer.statement(day=day):
        party[line.bill_ref] += line.amount if line.kind == "claim" else -line.amount
    _compare(result, _nets(rows, "insurer"), party, "the insurer")
    return result


def _medins(session: Session, parties: Parties, rows, day: date) -> PartyResult:
    """3201 per hospital; 3202 where the totals differ."""
    result = PartyResult("medins")
    per_facility: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    settled_as: dict[str, tuple[int, int]] = {}  # what the centre answered to 2207, when it differed
    reversed_msgids: set[str] = set()  # messages the platform reversed by 2601 after an unknown outcome
    for r in rows:
        if r["step"] == "settle_medins" and "hifp_pay" in r["detail"]:
            settled_as[r["settlement_no"]] = (r["detail"]["hifp_pay"], r["detail"]["acct_pay"])
    reversed_msgids.update(_reversed_messages(session, day))
    for r in rows:
        if r["step"] in ("settle_medins", "undo_medins", "refund:medins"):
            sign = 1 if r["step"] == "settle_medins" else -1
            fund, acct = settled_as.get(r["settlement_no"], (r["hifp_pay"], r["acct_pay"]))
            per_facility[r["facility_code"]][r["settlement_no"]].append((sign, r["total"], fund, acct, r))
    for facility, settlements in sorted(per_facility.items()):
        moves = [m for ms in settlements.values() for m in ms]
        totals = [sum(m[0] * m[i] for m in moves) for i in (1, 2, 3)]  # medfee, fund, account
        count = sum(m[0] for m in moves)
        centre = parties.medins(facility)
        answer = centre.reconcile_totals(msgid=parties.new_msgid(facility), day=day, medfee_sumamt=totals[0],
                                         fund_pay_sumamt=totals[1], acct_pay=totals[2], setl_cnt=count)
        if answer.balanced:
            result.matched += len(settlements)
            continue
        details = []
        for moves in settlements.values():
            sign, total, fund, acct, r = moves[0]
            if r["setl_id"] is None:
                continue
            details.append(DetailIn(msgid=r["medins_msgid"], setl_id=r["setl_id"], medfee_sumamt=total,
                                    fund_pay_sumamt=fund, acct_pay=acct, reversed=sum(m[0] for m in moves) <= 0))
        mismatches = centre.reconcile_details(msgid=parties.new_msgid(facility), day=day, details=details)
        kinds = {"missing_at_centre": "missing_at_party", "missing_at_hospital": "missing_at_platform",
                 "amounts_differ": "amount_differs", "state_differs": "state_differs"}
        for m in mismatches:
            if m.reason == "missing_at_hospital" and m.msgid in reversed_msgids:
                continue  # explained: its answer never came back, and the platform reversed it (2601)
            result.differences.append(Difference(m.setl_id or m.msgid or facility, kinds[m.reason], None, None,
                                                 f"{facility}: {m.description}"))
        result.matched += max(len(settlements) - len(mismatches), 0)
        if not mismatches:  # the totals differ but no settlement does: say so rather than nothing
            result.differences.append(Difference(facility, "amount_differs", totals[0], answer.centre_medfee_sumamt,
                                                 f"{facility}: {answer.description}"))
    return result


def _reversed_messages(session: Session, day: date) -> list[str]:
    return list(session.scalars(text("""
        SELECT e.detail ->> 'omsgid' FROM payment.settlement_event e
         WHERE e.step = 'reverse_2601' AND e.outcome = 'ok'
           AND e.at >= (CAST(:day AS date))::timestamp AT TIME ZONE 'Asia/Shanghai'
           AND e.at < (CAST(:day AS date) + 1)::timestamp AT TIME ZONE 'Asia/Shanghai'"""), {"day": day}))


def run(session: Session, parties: Parties, *, day: date, actor: str = "system") -> list[PartyResult]:
    """Reconcile ``day`` with every party; store the runs and the differences (caller commits)."""
    rows = _platform_moves(session, day)
    results = []
    for name in ("medins", "insurer", *CHANNELS):
        for attempt in range(ATTEMPTS):  # reading a bill file changes nothing: ask again if it did not come
            try:
                result = (_medins(session, parties, rows, day) if name == "medins" else
                          _insurer(parties, rows, day) if name == "insurer" else _channel(parties, rows, name, day))
                break
            except (OutcomeUnknown, Refused) as exc:
                result = PartyResult(name, error=str(exc))
                log.warning("reconciliation of %s with %s failed (attempt %d): %s", day, name, attempt + 1, exc)
        results.append(result)
        _store(session, day, result)
    audit.record(session, actor=actor, action="payment.reconcile", target=f"day:{day}",
                 detail={r.party: {"matched": r.matched, "differences": len(r.differences), "error": r.error}
                         for r in results})
    return results


def _store(session: Session, day: date, result: PartyResult) -> None:
    session.execute(insert(ReconRun).values(day=day, party=result.party, matched=result.matched,
                                            mismatched=len(result.differences),
                                            detail={"error": result.error} if result.error else {})
                    .on_conflict_do_update(index_elements=["day", "party"],
                                           set_={"ran_at": china_now(), "matched": result.matched,
                                                 "mismatched": len(result.differences),
                                                 "detail": {"error": result.error} if result.error else {}}))
    found = {(d.reference, d.kind) for d in result.differences}
    for item in session.scalars(select(ReconItem).where(ReconItem.day == day, ReconItem.party == result.party,
                                                        ReconItem.state == "open")):
        if (item.reference, item.kind) not in found and result.error is None:
            item.state, item.resolution, item.resolved_by, item.resolved_at = (
                "resolved", "no longer differs on a later run", "reconciliation", china_now())
    for d in result.differences:
        session.execute(insert(ReconItem).values(day=day, party=result.party, reference=d.reference, kind=d.kind,
                                                 platform_amount=d.platform_amount, party_amount=d.party_amount,
                                                 reason=d.reason)
                        .on_conflict_do_update(index_elements=["day", "party", "reference", "kind"],
                                               set_={"platform_amount": d.platform_amount,
                                                     "party_amount": d.party_amount, "reason": d.reason},
                                               where=ReconItem.state == "open"))


def resolve(session: Session, *, item_id: int, resolution: str, actor: str) -> ReconItem:
    """A person's decision on a difference (e.g. 'refunded by hand, ticket 123'); audited."""
    item = session.get(ReconItem, item_id)
    if item is None:
        raise NotFound(f"no reconciliation item {item_id}", field="item_id")
    if item.state == "resolved":
        raise Conflict(f"item {item_id} is resolved already", field="item_id")
    if not resolution.strip():
        raise InvalidInput("say how it was resolved", field="resolution")
    item.state, item.resolution, item.resolved_by, item.resolved_at = "resolved", resolution.strip(), actor, china_now()
    audit.record(session, actor=actor, action="payment.recon.resolve", target=f"recon:{item_id}",
                 detail={"party": item.party, "reference": item.reference, "kind": item.kind})
    return item
