"""Who may read whose health records, and the trail every read leaves.

GB/T 39725 separates the patient's own query (患者查询) from a doctor's consultation (医生调阅):

- a resident reads the records of each person whose health card they hold: themselves, and the
  children they are guardian of (basis ``self`` / ``guardian``), everything including sensitive categories;
- a doctor (role ``doctor``, bound to a hospital) reads a patient's records only under an active consent
  of that patient — for every doctor at the hospital or for that doctor by name, for a purpose, while it
  is valid, limited to the records of a period, sensitive categories only where the patient opted in —
  or, in an emergency, by breaking the glass: a stated reason, four hours, flagged for an auditor's review;
- nobody else: administrators and auditors run the platform, they do not read patients' records.

Every decision is written to the hash-chained audit log: reads (who, role, hospital, patient, what,
purpose, basis, consent or break-glass) and refusals alike, so a resident sees who looked at their
records and an auditor sees who tried.
"""

from __future__ import annotations

from collections.abc import Iterable
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Final

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from smartcare.empi import service as empi
from smartcare.healthcard import service as healthcard
from smartcare.platform import audit
from smartcare.platform.auth import Principal, Role
from smartcare.platform.errors import Conflict, Forbidden, InvalidInput, NotFound
from smartcare.records.clinical import SENSITIVE
from smartcare.records.models import AccessRequest, BreakGlass, Consent
from smartcare.registry import service as registry

PURPOSES: Final = {"treatment": "诊疗", "referral": "转诊", "second_opinion": "会诊"}
BREAK_GLASS_HOURS: Final = 4
MAX_CONSENT_DAYS: Final = 366
READ: Final = "records.phr.read"
REFUSED: Final = "records.phr.refused"


@dataclass(frozen=True)
class Access:
    """What one caller may read of one person's records, and on what basis."""

    person_id: int
    empi_id: str
    basis: str  # self | guardian | consent | break_glass
    purpose: str
    consent_id: int | None = None
    break_glass_id: int | None = None
    records_since: date | None = None
    records_until: date | None = None
    sensitive: frozenset[str] = frozenset(SENSITIVE)  # the sensitive categories this caller may see
    #: the person's golden record as the decision read it (the FHIR Patient); personal data: never in a repr
    golden: dict = field(default_factory=dict, repr=False, compare=False)

    def shows(self, sensitive: Iterable[str], on: date | None) -> bool:
        """Whether a record of these sensitive categories (all must be shared) and service day is within what
        the caller may see (``on`` may be None when the access has no records period)."""
        if not set(sensitive) <= self.sensitive:
            return False
        return (self.records_since is None or on >= self.records_since) and (
            self.records_until is None or on <= self.records_until)


def _now() -> datetime:
    return datetime.now(UTC)


EMPI_ID: Final = re.compile(r"E[0-9]{11}")


def _person(session: Session, empi_id: str) -> tuple[int, str]:
    """The active person behind an EMPI id (following merges). Anything that is not an EMPI id is refused
    before it reaches a query, an error message or the audit log (a typed ID number must not)."""
    if not EMPI_ID.fullmatch(empi_id or ""):
        raise InvalidInput("not an EMPI id (E and 11 digits)", field="empi_id")
    person = empi.current_person(session, empi_id)
    return person.id, person.empi_id


ADULT_AGE: Final = 18  # a guardian's access ends when the child comes of age
PRIVATE_AGE: Final = 14  # from here on, a guardian no longer sees the child's sensitive categories


def _age(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def held_persons(session: Session, username: str) -> dict[str, str]:
    """EMPI ids of the people whose cards the account holds -> ``self``, ``guardian`` (a child under 14) or
    ``guardian_teen`` (14–17: no sensitive categories). A card keeps the EMPI id it was issued under; after a
    merge the person's current id is listed too, so consents, requests and the trail filed under either are
    the holder's. A guardian's card of a child who has come of age gives nothing."""
    out: dict[str, str] = {}
    today = datetime.now(UTC).date()
    for card_empi_id, now_empi_id, relation, birth_date in healthcard.held_persons_now(session, username):
        if relation == "self":
            role = "self"
        else:
            age = _age(birth_date, today)
            if age >= ADULT_AGE:
                continue
            role = "guardian" if age < PRIVATE_AGE else "guardian_teen"
        out[card_empi_id] = role
        if now_empi_id:
            out.setdefault(now_empi_id, role)
    return out


def audit_refusal(session: Session, who: Principal, empi_id: str, what: str, why: str) -> None:
    """A refusal is audited in a transaction of its own: the request that asked fails and rolls back.
    (So a refusal comes before any audited write of the same request, which would hold the log's lock.)"""
    audit.record_apart(session, actor=who.username, action=REFUSED, target=f"person:{empi_id}",
                       detail={"role": _role(who), "facility_code": who.facility_code, "what": what, "reason": why})


def people(session: Session, username: str) -> dict[str, str]:
    """The people the account may read, once each, by their current EMPI id -> relation."""
    out: dict[str, str] = {}
    for empi_id, relation in held_persons(session, username).items():
        try:
            out.setdefault(empi.current_person(session, empi_id).empi_id, relation)
        except NotFound:
            continue
    return out


def _refuse(session: Session, who: Principal, empi_id: str, what: str, why: str) -> Forbidden:
    audit_refusal(session, who, empi_id, what, why)
    return Forbidden(why, field="patient")


def _role(who: Principal) -> str:
    for role in (Role.RESIDENT, Role.DOCTOR, Role.ADMIN, Role.AUDITOR, Role.HOSPITAL_STAFF):
        if who.has(role):
            return role.value
    return "unknown"


def decide(session: Session, who: Principal, empi_id: str, *, what: str) -> Access:
    """The caller's access to a person's records, or Forbidden — audited either way, each in a transaction
    of its own: a read by the caller's ``record_read``, a refusal here. Unknown and forbidden
    persons are refused alike, so a guessed id reveals nothing."""
    if not EMPI_ID.fullmatch(empi_id or ""):
        raise _refuse(session, who, "(not an EMPI id)", what, "no access to this patient's records")
    try:
        person = empi.current_person(session, empi_id)
    except NotFound:
        raise _refuse(session, who, empi_id, what, "no access to this patient's records") from None
    person_id, current, golden = person.id, person.empi_id, person.golden
    if who.has(Role.RESIDENT):
        held = held_persons(session, who.username)
        relation = held.get(current) or held.get(empi_id)
        if relation is None:
            raise _refuse(session, who, empi_id, what, "no access to this patient's records")
        if relation == "guardian_teen":
            return Access(person_id, current, "guardian", "self", sensitive=frozenset(), golden=golden)
        return Access(person_id, current, relation, "self", golden=golden)
    if who.has(Role.DOCTOR) and who.facility_code:
        now = _now()
        consent = session.scalar(
            select(Consent).where(Consent.person_id == person_id, Consent.state == "active",
                                  Consent.facility_code == who.facility_code,
                                  (Consent.doctor.is_(None)) | (Consent.doctor == who.username),
                                  Consent.valid_from <= now, Consent.valid_until > now)
            .order_by(Consent.doctor.is_(None), Consent.valid_until.desc()).limit(1))
        glass = session.scalar(select(BreakGlass).where(BreakGlass.person_id == person_id,
                                                        BreakGlass.doctor == who.username,
                                                        BreakGlass.facility_code == who.facility_code,
                                                        BreakGlass.expires_at > now)
                               .order_by(BreakGlass.expires_at.desc()).limit(1))
        if glass is not None:  # an emergency sees the whole history, whatever a narrower consent shares
            return Access(person_id, current, "break_glass", "emergency", break_glass_id=glass.id,
                          consent_id=consent.id if consent else None,
                          sensitive=frozenset(consent.sensitive) if consent else frozenset(), golden=golden)
        if consent is not None:
            return Access(person_id, current, "consent", consent.purpose, consent_id=consent.id,
                          records_since=consent.records_since, records_until=consent.records_until,
                          sensitive=frozenset(consent.sensitive), golden=golden)
        raise _refuse(session, who, empi_id, what, "no consent of this patient for you or your hospital")
    raise _refuse(session, who, empi_id, what, "only the patient, their guardian or a consented doctor reads records")


def record_read(session: Session, who: Principal, access: Access, *, what: str) -> None:
    """The audit entry of one read of personal health data, committed (in a transaction of its own) before
    this returns, so before the data is sent, whatever becomes of the request's transaction."""
    audit.record_apart(session, actor=who.username, action=READ, target=f"person:{access.empi_id}", detail={
        "role": _role(who), "facility_code": who.facility_code, "what": what, "purpose": access.purpose,
        "basis": access.basis, "consent_id": access.consent_id, "break_glass_id": access.break_glass_id})


# --- consent ----------------------------------------------------------------------------------------


def _resident_person(session: Session, username: str, empi_id: str) -> tuple[int, str]:
    held = held_persons(session, username)
    if empi_id not in held:
        raise Forbidden("you hold no card of this person", field="empi_id")
    return _person(session, empi_id)


def grant(session: Session, *, username: str, empi_id: str, facility_code: str, doctor: str | None = None,
          purpose: str = "treatment", days: int = 30, records_since: date | None = None,
          records_until: date | None = None, sensitive: tuple[str, ...] = ()) -> Consent:
    """A resident lets the doctors of a hospital (or one doctor there) read a person's records."""
    person_id, current = _resident_person(session, username, empi_id)
    if purpose not in PURPOSES:
        raise InvalidInput(f"purpose must be one of {', '.join(PURPOSES)}", field="purpose")
    if not 1 <= days <= MAX_CONSENT_DAYS:
        raise InvalidInput(f"a consent lasts 1 to {MAX_CONSENT_DAYS} days", field="days")
    unknown = set(sensitive) - set(SENSITIVE)
    if unknown:
        raise InvalidInput(f"sensitive categories are {', '.join(SENSITIVE)}", field="sensitive")
    if records_since and records_until and records_since > records_until:
        raise InvalidInput("records_since must not be after records_until", field="records_since")
    if not registry.facility_names(session, [facility_code]):
        raise InvalidInput("no registered hospital has this code", field="facility_code")
    now = _now()
    consent = Consent(person_id=person_id, empi_id=current, facility_code=facility_code, doctor=doctor or None,
                      purpose=purpose, valid_from=now, valid_until=now + timedelta(days=days),
                      records_since=records_since, records_until=records_until, sensitive=sorted(set(sensitive)),
                      created_by=username)
    session.add(consent)
    session.flush()
    audit.record(session, actor=username, action="records.consent.grant", target=f"person:{current}", detail={
        "consent_id": consent.id, "facility_code": facility_code, "doctor": doctor, "purpose": purpose,
        "days": days, "sensitive": consent.sensitive})
    return consent


def revoke(session: Session, *, username: str, consent_id: int) -> Consent:
    """Revoked at once: the next read under it is refused."""
    consent = session.get(Consent, consent_id, with_for_update=True)
    if consent is None or consent.empi_id not in held_persons(session, username):
        raise NotFound(f"no consent {consent_id}", field="consent_id")
    if consent.state != "revoked":
        consent.state, consent.revoked_at, consent.revoked_by = "revoked", _now(), username
        audit.record(session, actor=username, action="records.consent.revoke", target=f"person:{consent.empi_id}",
                     detail={"consent_id": consent.id})
    return consent


def consents(session: Session, *, username: str) -> list[Consent]:
    """Every consent about the people whose cards the account holds, newest first."""
    held = list(held_persons(session, username))
    return list(session.scalars(select(Consent).where(Consent.empi_id.in_(held)).order_by(Consent.id.desc())))


# --- doctors' requests and break-glass ---------------------------------------------------------------


def _doctor(who: Principal) -> str:
    if not (who.has(Role.DOCTOR) and who.facility_code):
        raise Forbidden("only a doctor of a hospital asks for access", field="role")
    return who.facility_code


def request_access(session: Session, *, who: Principal, empi_id: str, purpose: str, reason: str) -> AccessRequest:
    facility = _doctor(who)
    if purpose not in PURPOSES:
        raise InvalidInput(f"purpose must be one of {', '.join(PURPOSES)}", field="purpose")
    reason = reason.strip()
    if not 4 <= len(reason) <= 500:
        raise InvalidInput("say why, in 4 to 500 characters", field="reason")
    person_id, current = _person(session, empi_id)
    req = AccessRequest(person_id=person_id, empi_id=current, doctor=who.username, facility_code=facility,
                        purpose=purpose, reason=reason)
    session.add(req)
    session.flush()
    audit.record(session, actor=who.username, action="records.access.request", target=f"person:{current}",
                 detail={"request_id": req.id, "facility_code": facility, "purpose": purpose})
    return req


def requests_for(session: Session, *, username: str, pending_only: bool = True) -> list[AccessRequest]:
    held = list(held_persons(session, username))
    stmt = select(AccessRequest).where(AccessRequest.empi_id.in_(held))
    if pending_only:
        stmt = stmt.where(AccessRequest.state == "pending")
    return list(session.scalars(stmt.order_by(AccessRequest.id.desc())))


def answer(session: Session, *, username: str, request_id: int, approve: bool, days: int = 30,
           sensitive: tuple[str, ...] = ()) -> AccessRequest:
    """The resident approves (a consent for that doctor, for the purpose asked) or denies a request."""
    req = session.get(AccessRequest, request_id, with_for_update=True)
    if req is None or req.empi_id not in held_persons(session, username):
        raise NotFound(f"no request {request_id}", field="request_id")
    if req.state != "pending":
        raise Conflict(f"request {request_id} was already {req.state}", field="request_id")
    if approve:
        consent = grant(session, username=username, empi_id=req.empi_id, facility_code=req.facility_code,
                        doctor=req.doctor, purpose=req.purpose, days=days, sensitive=sensitive)
        req.consent_id = consent.id
    req.state, req.decided_at, req.decided_by = ("approved" if approve else "denied"), _now(), username
    audit.record(session, actor=username, action="records.access.answer", target=f"person:{req.empi_id}",
                 detail={"request_id": req.id, "approved": approve})
    return req


def break_glass(session: Session, *, who: Principal, empi_id: str, reason: str) -> BreakGlass:
    """Emergency access for four hours with a stated reason, flagged for review (sensitive categories stay hidden)."""
    facility = _doctor(who)
    reason = reason.strip()
    if not 10 <= len(reason) <= 500:
        raise InvalidInput("an emergency access states its reason in 10 to 500 characters", field="reason")
    person_id, current = _person(session, empi_id)
    glass = BreakGlass(person_id=person_id, empi_id=current, doctor=who.username, facility_code=facility,
                       reason=reason, expires_at=_now() + timedelta(hours=BREAK_GLASS_HOURS))
    session.add(glass)
    session.flush()
    audit.record(session, actor=who.username, action="records.break_glass", target=f"person:{current}",
                 detail={"break_glass_id": glass.id, "facility_code": facility, "reason": reason})
    return glass


def review_break_glass(session: Session, *, id: int, reviewer: str, note: str) -> BreakGlass:
    glass = session.get(BreakGlass, id, with_for_update=True)
    if glass is None:
        raise NotFound(f"no break-glass access {id}", field="id")
    if glass.doctor == reviewer:
        raise Forbidden("an emergency access is reviewed by someone other than the doctor who opened it", field="id")
    if glass.reviewed_at is not None:
        raise Conflict(f"break-glass access {id} was reviewed by {glass.reviewed_by}", field="id")
    glass.reviewed_at, glass.reviewed_by, glass.review_note = _now(), reviewer, note.strip()[:500] or "reviewed"
    audit.record(session, actor=reviewer, action="records.break_glass.review", target=f"person:{glass.empi_id}",
                 detail={"break_glass_id": id})
    return glass


# --- the trail ------------------------------------------------------------------------------------


def same_person(session: Session, username: str, empi_id: str) -> list[str]:
    """The ids the account holds for the person ``empi_id`` is now (the card's and, after a merge, the
    current one): the trail and the consents about them are filed under either."""
    current = empi.current_person(session, empi_id).empi_id
    return sorted({e for e in held_persons(session, username) if e in (empi_id, current)} | {current})


def accesses(session: Session, *, empi_ids: list[str], limit: int = 100) -> list:
    """Who read (or tried to read) these people's records, newest first: the resident's "who looked"."""
    return audit.entries(session, targets=[f"person:{e}" for e in empi_ids], actions=(READ, REFUSED), limit=limit)


def audit_report(session: Session, *, since: datetime, reads_per_day: int = 30) -> dict:
    """For auditors: every break-glass access since a time (reviewed or not), refused attempts per
    caller, and callers who read more distinct patients in a day than ``reads_per_day`` (unusual)."""
    glass = list(session.scalars(select(BreakGlass).where(BreakGlass.opened_at >= since)
                                 .order_by(BreakGlass.opened_at.desc())))
    refused = session.execute(text(
        "SELECT actor, count(*) AS attempts, count(DISTINCT target) AS patients FROM platform.audit_log "
        "WHERE action = :a AND at >= :since GROUP BY actor ORDER BY attempts DESC"),
        {"a": REFUSED, "since": since}).mappings().all()
    heavy = session.execute(text(
        "SELECT actor, (at AT TIME ZONE 'Asia/Shanghai')::date AS day, count(DISTINCT target) AS patients "
        "FROM platform.audit_log WHERE action = :a AND at >= :since AND detail->>'role' = 'doctor' "
        "GROUP BY 1, 2 HAVING count(DISTINCT target) > :n ORDER BY 3 DESC"),
        {"a": READ, "since": since, "n": reads_per_day}).mappings().all()
    return {"break_glass": glass, "refused": [dict(r) for r in refused], "unusual": [dict(r) for r in heavy]}
