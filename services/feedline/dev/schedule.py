"""Pure: when a CronJob-mode subscription runs next (croniter, with the spec's timeZone)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter


def next_run(schedule: str, after: datetime, time_zone: str | None = None) -> datetime:
    """The first time strictly after ``after`` (aware) that ``schedule`` fires, in UTC's terms.

    Without ``timeZone`` the schedule is read in the local time zone of this
    machine (the CronJob controller uses its own, usually UTC).
    """
    zone = ZoneInfo(time_zone) if time_zone else after.astimezone().tzinfo
    start = after.astimezone(zone)
    fired: datetime = croniter(schedule, start).get_next(datetime)
    return fired.astimezone(after.tzinfo)
