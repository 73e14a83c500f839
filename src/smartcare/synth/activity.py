"""A year of a region's hospital activity — visits, admissions with discharges and surgeries, charges,
settlements by payer, bookings, health-card uses, documents with QC scores and hub messages — in the
shape of the warehouse's landing tables, at a city's proportions:

- outpatient visits per day ≈ 3 per bed at a tertiary hospital, fewer at lower levels, half on Sundays;
- an admission per day for every ~9 beds (occupancy ≈ 90 %, stays of 2–20 days, mean ≈ 9);
- outpatient bills of ¥150–¥600, inpatient bills of ¥6,000–¥40,000, ~20 % of it drugs;
- insured: ~60 % employee, ~35 % resident insurance; commercial insurance on ~5 % of stays;
- ~45 % of visits booked, ~70 % with the health card, documents mostly within a day, ~1 % bad messages;
- the wards full on the first day: stays admitted in the 30 days before and still in hospital.

It lands straight in ``warehouse.src_*`` (through COPY), not through the hub or the payment engine: a year
of a city through them would take hours. Deterministic for a seed. Personal data: none (EMPI ids only).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from smartcare.platform.clock import CHINA_TZ

DRUGS = (("XJ01DDK019", "头孢克肟", "乙", 4_800), ("XC10AAA072", "阿托伐他汀", "乙", 3_600),
         ("XA02BCA017", "奥美拉唑", "甲", 2_100), ("ZA04AAA001", "连花清瘟胶囊", "甲", 3_200),
         ("XN02BEA001", "对乙酰氨基酚", "甲", 900), ("T000100011", "黄芪饮片", "丙", 1_500))
SERVICES = (("001102000010000", "普通门诊诊查费", "甲", 1_000), ("002502000010000", "血常规", "甲", 2_500),
            ("002101000020000", "CT 平扫", "乙", 32_000), ("002201000010000", "心电图", "甲", 2_000),
            ("001107000010000", "床位费", "甲", 6_000), ("003310000010000", "阑尾切除术", "甲", 180_000),
            ("003101000030000", "静脉输液", "甲", 1_200), ("C001", "进口敷料", "丙", 6_000))
DIAGNOSES = ("J06.900", "I10.x00", "E11.900", "K29.700", "M54.500", "J18.900", "N39.000", "I25.100", "K35.800", "F32.900")
LABS = (("718-7", "g/L"), ("2345-7", "mmol/L"), ("2160-0", "μmol/L"), ("6690-2", "10*9/L"))
DOCUMENT_TYPES = ("C0002", "C0004", "C0007", "C0032", "C0053")
CHANNELS = ("wechat", "alipay", "unionpay")
#: Stays admitted this many days before the first day that are still in hospital on it are generated too.
WARM_UP_DAYS = 30

TABLES = {
    "src_encounter": ("facility_code", "encounter_id", "empi_id", "class", "department_code", "practitioner_code",
                      "start_at", "end_at", "recorded_at", "status", "surgeries"),
    "src_settlement": ("settlement_no", "facility_code", "bill_no", "encounter_id", "empi_id", "insurance_type", "state",
                       "settled_at", "total", "fund_pay", "account_pay", "insurer_pay", "cash_pay", "insurer", "channel"),
    "src_charge": ("facility_code", "bill_no", "line", "settlement_no", "encounter_id", "empi_id", "code", "name",
                   "category", "amount", "charged_at"),
    "src_document": ("record_id", "facility_code", "type_code", "empi_id", "service_at", "received_at", "current",
                     "qc_score"),
    "src_document_item": ("record_id", "position", "kind", "code", "name", "value_number", "unit", "at"),
    "src_message": ("message_id", "facility_code", "sender", "kind", "message_type", "state", "received_at",
                    "processed_at"),
    "src_card_use": ("use_id", "card_id", "facility_code", "step", "channel", "used_at"),
    "src_booking": ("appointment_no", "empi_id", "facility_code", "department_code", "practitioner_code", "visit_date",
                    "state", "booked_at"),
    "src_person": ("empi_id", "valid_from", "birth_year", "sex", "district_code", "insurance_type"),
}


@dataclass(frozen=True)
class Hospital:
    code: str
    level: int
    beds: int
    district_code: str
    departments: tuple[str, ...]


class _Ids:
    """Ids of the synthetic rows, far above anything the platform hands out (no collision with real rows)."""

    def __init__(self, base: int):
        self.record = base
        self.message = base
        self.use = base

    def next(self, name: str) -> int:
        value = getattr(self, name) + 1
        setattr(self, name, value)
        return value


def _at(day: date, rng: random.Random, start_hour: int = 7, end_hour: int = 18) -> datetime:
    seconds = rng.randint(start_hour * 3600, end_hour * 3600)
    return datetime(day.year, day.month, day.day, tzinfo=CHINA_TZ) + timedelta(seconds=seconds)


def _pay(rng: random.Random, total: int, insurance: str, commercial: bool) -> tuple[int, int, int, int]:
    """(fund, account, insurer, cash) splitting ``total``."""
    if insurance == "none":
        return 0, 0, 0, total
    ratio = 0.75 if insurance == "employee" else 0.6
    fund = int(total * ratio * rng.uniform(0.8, 1.0))
    account = min(total - fund, int(total * 0.1)) if insurance == "employee" else 0
    insurer = int((total - fund - account) * 0.8) if commercial else 0
    return fund, account, insurer, total - fund - account - insurer


def activity(hospitals: list[Hospital], *, start: date, days: int, seed: int = 2026,
             persons: int = 200_000, now: datetime | None = None) -> Iterator[tuple[str, tuple]]:
    """(landing table, row) for every day of every hospital; persons first. Nothing happens after ``now``
    (default: the present): later visits are left out, stays that would end later are still open (no
    discharge, bill or discharge documents yet), documents not yet received are not there."""
    now = now or datetime.now(UTC)
    rng = random.Random(seed)
    ids = _Ids(9_000_000_000)
    districts = sorted({h.district_code for h in hospitals}) or ["000000"]
    insurance_of = {}
    for n in range(persons):
        empi_id = f"E9{n:010d}"
        insurance = rng.choices(("employee", "resident", "none"), (60, 35, 5))[0]
        insurance_of[empi_id] = insurance
        yield "src_person", (empi_id, datetime(1900, 1, 1, tzinfo=UTC), rng.randint(1935, 2024), rng.choice("12"),
                             rng.choice(districts), insurance)
    people = list(insurance_of)
    # the wards are not empty on the first day: stays admitted in the month before, still in hospital then
    first = datetime(start.year, start.month, start.day, tzinfo=CHINA_TZ)
    for offset in range(-WARM_UP_DAYS, 0):
        day = start + timedelta(days=offset)
        for h in hospitals:
            for _ in range(int(h.beds / 9 * rng.uniform(0.8, 1.2))):
                rows = list(_encounter(rng, ids, h, day, True, rng.choice(people), insurance_of, now))
                if rows and (rows[0][1][7] is None or rows[0][1][7] >= first):
                    yield from rows
    for offset in range(days):
        day = start + timedelta(days=offset)
        weekday_factor = 0.5 if day.weekday() == 6 else (0.8 if day.weekday() == 5 else 1.0)
        for h in hospitals:
            level_factor = {3: 3.0, 2: 2.0}.get(h.level, 1.2)
            visits = max(1, int(h.beds * level_factor * weekday_factor * rng.uniform(0.9, 1.1)))
            admissions = max(0, int(h.beds / 9 * weekday_factor * rng.uniform(0.8, 1.2)))
            for n in range(visits + admissions):
                inpatient = n >= visits
                yield from _encounter(rng, ids, h, day, inpatient, rng.choice(people), insurance_of, now)


def _encounter(rng: random.Random, ids: _Ids, h: Hospital, day: date, inpatient: bool, empi_id: str,
               insurance_of: dict[str, str], now: datetime) -> Iterator[tuple[str, tuple]]:
    start_at = _at(day, rng)
    if start_at > now:
        return
    encounter_id = f"{'Z' if inpatient else 'M'}{day:%y%m%d}{rng.getrandbits(40):012x}"
    department = rng.choice(h.departments) if h.departments else None
    if inpatient:
        stay = max(1, min(30, int(rng.gauss(9, 4))))
        end_at = start_at + timedelta(days=stay, hours=rng.randint(-3, 3))
        surgeries = 1 if rng.random() < 0.35 else 0
        if end_at > now:  # still in hospital: admitted, nothing more yet
            yield "src_encounter", (h.code, encounter_id, empi_id, "IMP", department, None, start_at, None, start_at,
                                    "in-progress", 0)
            yield "src_message", (ids.next("message"), h.code, h.code, "hl7v2", "ADT^A01", "processed",
                                  start_at + timedelta(seconds=5), start_at + timedelta(seconds=5, milliseconds=30))
            return
        yield "src_encounter", (h.code, encounter_id, empi_id, "IMP", department, None, start_at, end_at, start_at,
                                "finished", surgeries)
        lines = [*rng.sample(DRUGS, 3), *rng.sample(SERVICES[:5], 3)]
        quantities = [rng.randint(stay, stay * 3) for _ in lines]
        settled_at = end_at
    else:
        end_at, surgeries = None, 0
        yield "src_encounter", (h.code, encounter_id, empi_id, "EMER" if rng.random() < 0.08 else "AMB", department,
                                None, start_at, None, start_at, "in-progress", 0)
        lines = rng.sample(DRUGS, rng.randint(0, 2)) + rng.sample(SERVICES[:4], rng.randint(1, 2))
        quantities = [rng.randint(1, 3) for _ in lines]
        settled_at = start_at + timedelta(minutes=rng.randint(20, 120))
    if settled_at > now:
        settled_at = now
    bill_no = f"B{encounter_id}"
    settlement_no = f"S{encounter_id}"
    total = 0
    for line, ((code, name, category, price), qty) in enumerate(zip(lines, quantities), start=1):
        amount = price * qty
        total += amount
        yield "src_charge", (h.code, bill_no, line, settlement_no, encounter_id, empi_id, code, name, category, amount,
                             settled_at)
    insurance = insurance_of[empi_id]
    fund, account, insurer, cash = _pay(rng, total, insurance, inpatient and rng.random() < 0.05)
    yield "src_settlement", (settlement_no, h.code, bill_no, encounter_id, empi_id, insurance, "completed", settled_at,
                             total, fund, account, insurer, cash, "PICC" if insurer else None, rng.choice(CHANNELS))
    if not inpatient and rng.random() < 0.45:
        booked_at = start_at - timedelta(days=rng.randint(1, 7))
        yield "src_booking", (f"A{encounter_id}"[:24], empi_id, h.code, department or "0000", None, day,
                              "checked_in", booked_at)
    if rng.random() < 0.7:
        yield "src_card_use", (ids.next("use"), rng.getrandbits(31), h.code, "registration", "window", start_at)
    for type_code in (("C0032", "C0053") if inpatient else ("C0002",)):
        record_id = ids.next("record")
        service_at = end_at if inpatient else start_at
        delay = timedelta(hours=rng.choice((1, 2, 4, 8, 20, 30, 50)) if rng.random() < 0.9 else rng.randint(24, 96))
        if service_at + delay > now:
            continue
        yield "src_document", (record_id, h.code, type_code, empi_id, service_at, service_at + delay, True,
                               round(min(100.0, max(40.0, rng.gauss(88, 7))), 2))
        yield "src_document_item", (record_id, 1, "condition", rng.choice(DIAGNOSES), None, None, None, service_at)
        if rng.random() < 0.4:
            code, unit = rng.choice(LABS)
            yield "src_document_item", (record_id, 2, "lab", code, None, round(rng.uniform(1, 200), 1), unit, service_at)
    for kind in (("A01", "A03") if inpatient else ("A04",)):
        received = min(now, start_at + timedelta(seconds=rng.randint(1, 30)))
        failed = rng.random() < 0.01
        yield "src_message", (ids.next("message"), h.code, h.code, "hl7v2", f"ADT^{kind}",
                              "failed" if failed else "processed", received, received + timedelta(milliseconds=rng.randint(5, 80)))
