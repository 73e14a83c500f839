"""Master patient index HTTP API (PIX/PDQ-like): register a visit card and get its EMPI id at once,
cross-reference a person's cards, look a patient up by a hospital's old card number, merge, unmerge."""

from __future__ import annotations

from fastapi import Body, Depends, Query
from sqlalchemy.orm import Session

from smartcare.empi import matching, service
from smartcare.empi.models import Person
from smartcare.empi.schemas import CandidateOut, CardOut, PersonOut, QueryIn, RegisterOut, SourceIn, masked_golden
from smartcare.platform import audit
from smartcare.platform.auth import Principal, Role
from smartcare.web.deps import db, require, signed_client
from smartcare.web.routing import Router

router = Router(prefix="/api/v1/empi", tags=["empi"])
READERS = (Role.ADMIN, Role.AUDITOR, Role.DOCTOR, Role.HOSPITAL_STAFF)


def _person_out(session: Session, person: Person, who: Principal) -> PersonOut:
    person, cards = service.xref(session, person.empi_id)
    audit.record(session, actor=who.username, action="empi.person.read", target=f"person:{person.id}")
    golden = person.golden if who.has(Role.ADMIN) else masked_golden(person.golden)
    return PersonOut(empi_id=person.empi_id, state=person.state, golden=golden,
                     cards=[CardOut(facility_code=c.facility_code, card_no=c.card_no) for c in cards])


@router.post("/sources", response_model=RegisterOut, status_code=201)
def register(data: SourceIn, session: Session = Depends(db), who: Principal = Depends(signed_client)):
    """A hospital system registers a visit card (HMAC-signed) and gets the regional EMPI id in the answer."""
    decision = matching.register(session, facility_code=who.facility(), card_no=data.card_no,
                                 record=data.model_dump(exclude={"card_no"}), actor=who.username)
    out = _person_out(session, decision.person, who)
    return RegisterOut(**out.model_dump(), outcome=decision.outcome, weight=decision.weight, method=decision.method)


@router.post("/query", response_model=list[CandidateOut])
def query(data: QueryIn, session: Session = Depends(db), who: Principal = Depends(require(*READERS))):
    """Ranked candidate persons for some demographics (PDQ-like), each with its match weight and why."""
    ranked = matching.query(session, data.model_dump(exclude={"limit"}), limit=data.limit)
    audit.record(session, actor=who.username, action="empi.query", target="empi",
                 detail={"candidates": len(ranked)})
    out = []
    for r in ranked:
        person = session.get(Person, r.person_id)
        golden = person.golden if who.has(Role.ADMIN) else masked_golden(person.golden)
        terms = [{"comparison": t.comparison, "level": t.level, "weight": round(t.weight, 3)} for t in r.score.terms] \
            if r.score else []
        out.append(CandidateOut(empi_id=person.empi_id, weight=None if r.score is None else round(r.weight, 3),
                                probability=None if r.score is None else r.score.probability, rule=r.rule,
                                golden=golden, terms=terms))
    return out


@router.get("/persons/{empi_id}", response_model=PersonOut)
def person(empi_id: str, session: Session = Depends(db), who: Principal = Depends(require(*READERS))):
    """A person's golden record (masked unless you are an administrator) and every linked visit card."""
    found, _ = service.xref(session, empi_id)
    return _person_out(session, found, who)


@router.get("/lookup", response_model=PersonOut)
def lookup(facility: str = Query(..., max_length=32), card_no: str = Query(..., max_length=64),
           session: Session = Depends(db), who: Principal = Depends(require(*READERS))):
    """Find the person behind a hospital's own (old) visit card number."""
    return _person_out(session, service.person_by_card(session, facility_code=facility, card_no=card_no), who)


@router.post("/persons/{empi_id}/merge")
def merge(empi_id: str, other: str = Body(..., embed=True, description="EMPI id of the person folded into this one"),
          reason: str = Body("", embed=True), session: Session = Depends(db), who: Principal = Depends(require(Role.ADMIN))):
    entry = service.merge(session, survivor_id=service.person_id_of(session, empi_id),
                          merged_id=service.person_id_of(session, other),
                          actor=who.username, reason=reason)
    return {"merge": entry.id, "survivor": empi_id, "merged": other}


@router.post("/merges/{merge_id}/unmerge")
def unmerge(merge_id: int, reason: str = Body("", embed=True), session: Session = Depends(db),
            who: Principal = Depends(require(Role.ADMIN))):
    restored = service.unmerge(session, merge_history_id=merge_id, actor=who.username, reason=reason)
    return {"restored": restored.empi_id}
