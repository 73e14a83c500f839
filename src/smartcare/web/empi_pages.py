"""Console pages of the master patient index: the review queue of possible matches.

Administrators decide, so they see both cards in full (every view is audited); auditors see the same
pages masked and cannot decide. URLs carry review ids only, never personal data.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import Depends, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from smartcare.empi import review
from smartcare.empi.schemas import masked_golden
from smartcare.empi.scoring import weight_to_probability
from smartcare.platform import audit, auth
from smartcare.platform.auth import Role
from smartcare.platform.errors import NotFound, SmartCareError
from smartcare.registry import service as registry_service
from smartcare.web.deps import action, db, require
from smartcare.web.pages import CONSOLE_ROLES, templates
from smartcare.web.routing import Router

router = Router(prefix="/admin/empi", include_in_schema=False)

FIELDS = (("name", "姓名"), ("id_number", "身份证号"), ("sex", "性别"), ("birth_date", "出生日期"), ("phone", "电话"),
          ("address", "地址"))
SEX = {"1": "男", "2": "女", "0": "未知", "9": "未说明"}
COMPARISONS = {"prior": "先验", "id_number": "身份证号", "name": "姓名", "birth_date": "出生日期",
               "sex": "性别", "phone": "电话", "district": "区县"}
VIEWS = {"pending": review.PENDING, "decided": review.DECIDED}
PAGE = 50
DONE = {"link": "已关联为同一人", "not_match": "已标记为不是同一人", "defer": "已推迟"}


def _age(when: datetime) -> str:
    minutes = int((datetime.now(UTC) - when).total_seconds() // 60)
    if minutes < 60:
        return f"{max(minutes, 0)} 分钟"
    return f"{minutes // 60} 小时" if minutes < 24 * 60 else f"{minutes // (24 * 60)} 天"


def _shown(values: dict, full: bool) -> dict:
    out = {k: str(values[k]) for k, _ in FIELDS if values.get(k) not in (None, "")}
    return out if full else masked_golden(out)


def waterfall(terms: list[dict]) -> dict:
    """The bars of the waterfall, positioned in percent of the chart's width: each term runs from the
    total before it to the total after it (prior first), then the whole weight from zero, so a reviewer
    sees which field pushed the score up or down and by how much."""
    ordered = sorted(terms, key=lambda t: t["comparison"] != "prior")
    totals = [0.0]
    for t in ordered:
        totals.append(totals[-1] + float(t["weight"]))
    lo, hi = min(totals), max(totals)
    span = (hi - lo) or 1.0

    def pct(x: float) -> float:
        return round((x - lo) / span * 100, 2)

    bars = [{"comparison": t["comparison"], "label": COMPARISONS.get(t["comparison"], t["comparison"]),
             "level": t["level"], "weight": float(t["weight"]), "tf": float(t.get("tf_adjustment") or 0),
             "total": after, "left": pct(min(before, after)), "width": max(abs(pct(after) - pct(before)), 0.4)}
            for t, before, after in zip(ordered, totals, totals[1:])]
    return {"bars": bars, "zero": pct(0.0), "total": totals[-1], "total_left": pct(min(0.0, totals[-1])),
            "total_width": max(abs(pct(totals[-1]) - pct(0.0)), 0.4)}


def _item_context(session: Session, item: review.Item, who: auth.Principal) -> dict:
    full = who.has(Role.ADMIN)
    audit.record(session, actor=who.username, action="empi.review.read", target=f"review:{item.review.id}",
                 detail={"full": full})
    a, b = item.source.source, item.other.source
    cards = []
    for side in (item.source, item.other):
        s = side.source
        norm = dict(s.norm)
        norm["sex"] = SEX.get(norm.get("sex") or "", norm.get("sex"))
        cards.append({"source": s, "person": side.person, "recorded": _shown(s.recorded, full),
                      "norm": _shown(norm, full), "repairs": norm.get("repairs", []), "conflicts": norm.get("conflicts", [])})
    rows = [(key, label, cards[0]["norm"].get(key, ""), cards[1]["norm"].get(key, "")) for key, label in FIELDS]
    return {"item": item, "r": item.review, "cards": cards, "rows": rows, "fields": FIELDS,
            "wf": waterfall(item.review.terms), "probability": weight_to_probability(item.review.weight),
            "facilities": registry_service.facility_names(session, {a.facility_code, b.facility_code}), "age": _age(item.review.created_at),
            "can_decide": full and item.review.state in review.PENDING, "full": full}


@router.get("/review", response_class=HTMLResponse)
def review_queue(request: Request, view: str = Query("pending", pattern="^(pending|decided)$"), page: int = Query(1, ge=1),
                 session: Session = Depends(db), who: auth.Principal = Depends(require(*CONSOLE_ROLES))):
    rows = review.queue(session, state=VIEWS[view], limit=PAGE + 1, offset=(page - 1) * PAGE)
    facilities = registry_service.facility_names(session, {s.facility_code for _, a, b in rows for s in (a, b)})
    items = [{"r": r, "a": a, "b": b, "probability": weight_to_probability(r.weight), "age": _age(r.created_at)}
             for r, a, b in rows[:PAGE]]
    return templates.TemplateResponse(request, "empi/review_list.html", {
        "who": who, "items": items, "facilities": facilities, "view": view, "page": page, "more": len(rows) > PAGE})


@router.get("/review/{review_id}", response_class=HTMLResponse)
def review_page(request: Request, review_id: int, session: Session = Depends(db),
                who: auth.Principal = Depends(require(*CONSOLE_ROLES))):
    return templates.TemplateResponse(request, "empi/review.html", {
        "who": who, **_item_context(session, review.get(session, review_id), who)})


@router.post("/review/{review_id}/{decision}", response_class=HTMLResponse, dependencies=[action])
def decide(request: Request, review_id: int, decision: str, session: Session = Depends(db),
           who: auth.Principal = Depends(require(Role.ADMIN))):
    """Carry out the decision and answer with the next open item (htmx swaps it in place of this one)."""
    try:
        review.decide(session, review_id=review_id, decision=decision, actor=who.username)
    except SmartCareError as exc:
        session.rollback()
        try:
            context = _item_context(session, review.get(session, review_id), who)
        except NotFound:
            context = {"item": None}
        return templates.TemplateResponse(request, "empi/_item.html", {"who": who, **context, "error": exc.message},
                                          status_code=exc.status)
    following = review.next_open(session)
    notice = f"评审 #{review_id} {DONE[decision]}。"
    context = _item_context(session, review.get(session, following.id), who) if following else {"item": None}
    response = templates.TemplateResponse(request, "empi/_item.html", {"who": who, **context, "notice": notice})
    response.headers["HX-Push-Url"] = f"/admin/empi/review/{following.id}" if following else "/admin/empi/review"
    return response
