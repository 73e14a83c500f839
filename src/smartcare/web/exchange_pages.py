"""Console pages of the exchange hub: live monitoring, messages, dead letters, channels."""

from __future__ import annotations

from html import escape

from fastapi import Depends, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from smartcare.exchange import channels, monitor, service
from smartcare.platform import auth
from smartcare.platform.auth import Role
from smartcare.web.deps import action, db, require
from smartcare.web.pages import CONSOLE_ROLES, templates
from smartcare.web.routing import Router

router = Router(prefix="/admin/exchange", include_in_schema=False)


@router.get("", response_class=HTMLResponse)
def monitoring(request: Request, session: Session = Depends(db), who: auth.Principal = Depends(require(*CONSOLE_ROLES))):
    return templates.TemplateResponse(request, "exchange/monitor.html", {
        "who": who, "snapshot": jsonable_encoder(monitor.snapshot(session))})


@router.get("/messages", response_class=HTMLResponse)
def messages(request: Request, channel: str | None = None, facility: str | None = None, state: str | None = None,
             session: Session = Depends(db), who: auth.Principal = Depends(require(*CONSOLE_ROLES))):
    flt = service.MessageFilter(channel or None, facility or None, state or None)
    template = "exchange/_message_rows.html" if request.headers.get("HX-Request") else "exchange/messages.html"
    return templates.TemplateResponse(request, template, {
        "who": who, "rows": service.list_messages(session, flt, limit=100), "states": service.STATES,
        "channels": channels.list_all(session), "flt": flt})


@router.get("/messages/{message_id}", response_class=HTMLResponse)
def message(request: Request, message_id: int, session: Session = Depends(db),
            who: auth.Principal = Depends(require(*CONSOLE_ROLES))):
    return templates.TemplateResponse(request, "exchange/message.html", {
        "who": who, "m": service.get_message(session, message_id), "deliveries": service.deliveries(session, message_id),
        "can_rerun": who.has(Role.ADMIN)})


@router.post("/messages/{message_id}/rerun", response_class=HTMLResponse, dependencies=[action])
def rerun_message(request: Request, message_id: int, session: Session = Depends(db),
                  who: auth.Principal = Depends(require(Role.ADMIN))):
    n = service.rerun(session, message_ids=[message_id], actor=who.username)
    return HTMLResponse(f'<p class="notice">已重新投递 {n} 条消息，路由完成后刷新查看。</p>')


@router.get("/dead-letters", response_class=HTMLResponse)
def dead_letters(request: Request, channel: str | None = Query(None), session: Session = Depends(db),
                 who: auth.Principal = Depends(require(*CONSOLE_ROLES))):
    return templates.TemplateResponse(request, "exchange/dead_letters.html", {
        "who": who, "letters": service.dead_letters(session, channel_id=channel or None), "channel": channel or ""})


@router.post("/dead-letters/rerun", response_class=HTMLResponse, dependencies=[action])
def rerun_dead_letters(request: Request, channel: str | None = Query(None), session: Session = Depends(db),
                       who: auth.Principal = Depends(require(Role.ADMIN))):
    n = service.rerun_dead_letters(session, actor=who.username, channel_id=channel or None)
    return HTMLResponse(f'<p class="notice">已重新投递 {n} 条死信。</p>')


@router.get("/channels", response_class=HTMLResponse)
def channel_list(request: Request, session: Session = Depends(db), who: auth.Principal = Depends(require(*CONSOLE_ROLES))):
    return templates.TemplateResponse(request, "exchange/channels.html", {
        "who": who, "channels": channels.list_all(session), "can_change": who.has(Role.ADMIN)})


@router.get("/channels/{channel_id}", response_class=HTMLResponse)
def channel_page(request: Request, channel_id: str, session: Session = Depends(db),
                 who: auth.Principal = Depends(require(*CONSOLE_ROLES))):
    c = channels.get(session, channel_id)
    return templates.TemplateResponse(request, "exchange/channel.html", {
        "who": who, "c": c, "yaml": channels.to_yaml([channels.ChannelConfig.model_validate(c.config)]),
        "versions": channels.versions(session, channel_id), "can_change": who.has(Role.ADMIN)})


@router.post("/channels/{channel_id}/{verb}", response_class=HTMLResponse, dependencies=[action])
def channel_action(request: Request, channel_id: str, verb: str, version: int | None = Query(None),
                   session: Session = Depends(db), who: auth.Principal = Depends(require(Role.ADMIN))):
    if verb in ("stop", "start"):
        channels.set_enabled(session, channel_id, verb == "start", actor=who.username)
        return HTMLResponse(f'<p class="notice">通道 {escape(channel_id)} 已{"启动" if verb == "start" else "停止"}。</p>')
    if verb == "rollback" and version:
        c = channels.rollback(session, channel_id, version=version, actor=who.username)
        return HTMLResponse(f'<p class="notice">已回滚到 v{version}（新版本 v{c.version}）。</p>')
    return HTMLResponse('<p class="error">未知操作</p>', status_code=400)
