"""Time as the platform counts it: stored in UTC, shown and counted by day and year in China Standard
Time (Asia/Shanghai). China has had no daylight saving since 1991, so a fixed offset needs no tz database."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Final

CHINA_TZ: Final = timezone(timedelta(hours=8), "Asia/Shanghai")


def china_now() -> datetime:
    return datetime.now(CHINA_TZ)


def china_today() -> date:
    return china_now().date()
