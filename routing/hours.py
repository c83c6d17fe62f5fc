"""Working hours: when a rep can take a lead, in the rep's own wall-clock time.

Operators write hours the way a team would say them: ``Mon-Fri 08:00-18:00``,
``Mon-Thu 08:00-17:00, Fri 08:00-12:00``, ``Sat 10:00-14:00``, ``Fri-Mon …``
(day ranges wrap the week) and ``Sun-Thu 22:00-06:00`` (the shift starts on the
listed day and ends the next morning). ``24:00`` is the end of the day.

Hours are wall-clock times in the rep's IANA zone. A shift begins (or ends) at
the first instant the rep's clock reads that time or later, which settles the
two daylight-saving oddities without special cases in the callers:

- spring forward: a time the clock skips (02:30 in New York in March) is
  reached at the jump itself (03:00 local), so a shift "starting at 02:30"
  starts at 03:00;
- fall back: a time the clock shows twice (01:30 in New York in November) is
  reached at its first showing, so a shift never ends, restarts and ends again.

Holidays are ISO dates in the rep's zone and blank the whole local date. A
shift is not "owned" by its start date: for ``Sun-Thu 22:00-06:00`` and a
holiday on 2026-12-25 (a Friday), the 00:00-06:00 part of the Thursday night
shift is off, and a shift starting on the holiday evening would work again
after midnight. One rule, by local date, is what a rep reads on a calendar.

Everything here is pure: ``now`` is an aware datetime passed in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_INDEX = {name.lower(): i for i, name in enumerate(DAY_NAMES)}
_DAY_MINUTES = 24 * 60
_EXAMPLE = "write e.g. Mon-Fri 08:00-18:00"
_PART = re.compile(
    r"^(?P<first>[A-Za-z]+)(?:\s*-\s*(?P<last>[A-Za-z]+))?"
    r"\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})$"
)


@dataclass(frozen=True)
class Shift:
    """One weekly shift.

    It starts on ``weekday`` (0 = Monday) ``start`` minutes after local midnight
    and ends ``end`` minutes after that same midnight; ``end`` above 1440 means
    the shift runs into the next morning. ``start < end <= start + 1440``.
    """

    weekday: int
    start: int
    end: int


@dataclass(frozen=True)
class WorkingHours:
    """Parsed working hours: the weekly shifts, and the text they came from."""

    text: str
    shifts: tuple[Shift, ...]


# ---------------------------------------------------------------- parsing


@lru_cache(maxsize=512)
def parse_hours(text: str) -> WorkingHours:
    """Parse ``Mon-Fri 08:00-18:00`` (comma-separated ranges); ValueError names the bad part."""
    parts = [p.strip() for p in str(text).split(",")]
    if parts == [""]:
        raise ValueError(f"working hours are empty ({_EXAMPLE})")
    shifts: list[Shift] = []
    for part in parts:
        shifts.extend(_parse_part(part))
    return WorkingHours(text=str(text), shifts=tuple(shifts))


def _parse_part(part: str) -> list[Shift]:
    if not part:
        raise ValueError(f"empty range in working hours (a stray comma?); {_EXAMPLE}")
    m = _PART.match(part)
    if m is None:
        raise ValueError(f"cannot read working hours {part!r} ({_EXAMPLE})")
    first = _day(m["first"], part)
    last = _day(m["last"], part) if m["last"] else first
    start = _minutes(m["start"], part, is_end=False)
    end = _minutes(m["end"], part, is_end=True)
    if start == end:
        raise ValueError(f"empty time range {m['start']}-{m['end']} in {part!r} (a whole day is 00:00-24:00)")
    if end < start:
        end += _DAY_MINUTES  # e.g. 22:00-06:00 ends the next morning
    days = [(first + k) % 7 for k in range((last - first) % 7 + 1)]  # Fri-Mon wraps the week
    return [Shift(weekday=d, start=start, end=end) for d in days]


def _day(name: str, part: str) -> int:
    try:
        return _DAY_INDEX[name.lower()]
    except KeyError:
        raise ValueError(f"unknown day {name!r} in {part!r} (use {', '.join(DAY_NAMES)})") from None


def _minutes(hhmm: str, part: str, *, is_end: bool) -> int:
    hours, minutes = (int(x) for x in hhmm.split(":"))
    if hours == 24 and minutes == 0:
        if not is_end:
            raise ValueError(f"a shift cannot start at 24:00 in {part!r} (use 00:00)")
        return _DAY_MINUTES
    if hours > 23 or minutes > 59:
        raise ValueError(f"impossible time {hhmm!r} in {part!r} (hours 00-24, minutes 00-59)")
    return hours * 60 + minutes


# ---------------------------------------------------------------- instants


def _windows_on(hours: WorkingHours, day: date) -> list[tuple[int, int]]:
    """Minute ranges ``[start, end)`` of the local date ``day`` that are working time.

    Includes the after-midnight tail of yesterday's overnight shifts.
    """
    today, yesterday = day.weekday(), (day.weekday() - 1) % 7
    out = []
    for s in hours.shifts:
        if s.weekday == today:
            out.append((s.start, min(s.end, _DAY_MINUTES)))
        if s.weekday == yesterday and s.end > _DAY_MINUTES:
            out.append((0, s.end - _DAY_MINUTES))
    return sorted(out)


def _instant(day: date, minute: int, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the wall clock in ``tz`` reads ``day`` + ``minute`` or later.

    ``fold=0`` already picks the first showing of a repeated time. A skipped
    time (inside a spring-forward gap) has no instant of its own; the answer is
    the jump, found by bisecting the few hours between its two candidate
    readings, because zoneinfo does not expose its transition table.
    """
    wall = datetime.combine(day, time()) + timedelta(minutes=minute)  # calendar arithmetic, not elapsed time
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    lo = int(wall.replace(tzinfo=tz, fold=1).timestamp())  # before the jump: the clock reads less than wall
    hi = int(first.timestamp())  # after the jump: the clock reads more than wall
    while lo < hi:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid + 1
    return datetime.fromtimestamp(hi, UTC)


def _spans(
    hours: WorkingHours, tz: ZoneInfo, first_day: date, days: int
) -> Iterator[tuple[date, datetime, datetime]]:
    """Working spans ``(local date, start, end)`` in UTC, day by day, each half-open and non-empty."""
    for k in range(days):
        day = first_day + timedelta(days=k)
        for start, end in _windows_on(hours, day):
            a, b = _instant(day, start, tz), _instant(day, end, tz)
            if a < b:  # a window wholly inside a skipped hour never happens
                yield day, a, b


def _merged(spans: Iterable[tuple[date, datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Touching or overlapping spans joined, so midnight inside a shift is not a gap."""
    out: list[tuple[datetime, datetime]] = []
    for _, a, b in sorted(spans, key=lambda s: s[1]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _holiday_dates(holidays: Iterable[str | date]) -> frozenset[date]:
    return frozenset(d if isinstance(d, date) else date.fromisoformat(d) for d in holidays)


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")


# ---------------------------------------------------------------- questions


def is_working(hours: WorkingHours, tz_name: str, holidays: Iterable[str | date], now: datetime) -> bool:
    """Is ``now`` inside a shift, on a local date that is not a holiday?"""
    return next_shift_start(hours, tz_name, holidays, now) == now


def next_shift_start(
    hours: WorkingHours, tz_name: str, holidays: Iterable[str | date], now: datetime
) -> datetime | None:
    """The earliest instant at or after ``now`` when the rep is working; ``now`` itself if working.

    Returned in UTC (``now`` when working, in whatever zone it came). None only
    if no working time exists at all, which parsed hours cannot produce.
    """
    _require_aware(now)
    tz = ZoneInfo(tz_name)
    off = _holiday_dates(holidays)
    today = now.astimezone(tz).date()
    # Each holiday can blank at most one week's occurrence of a shift, so this
    # horizon always reaches working time when there is any.
    horizon = 7 * (len(off) + 2)
    for day, start, end in _spans(hours, tz, today - timedelta(days=1), horizon):
        if day in off or end <= now:
            continue
        return now if start <= now else start
    return None


def describe_off(hours: WorkingHours, tz_name: str, now: datetime) -> str:
    """Why the rep is off at ``now``: ``outside hours 18:00-08:00 America/New_York``.

    The gap is the rep's local time from the end of the last shift to the start
    of the next one (holidays aside: a holiday is its own reason). Weekends
    read the same way (``18:00-08:00`` on a Saturday for Mon-Fri hours), the
    form operators already read in the spec. Inside a shift it answers
    ``inside hours 08:00-18:00 <zone>``.
    """
    _require_aware(now)
    tz = ZoneInfo(tz_name)
    today = now.astimezone(tz).date()
    spans = _merged(_spans(hours, tz, today - timedelta(days=8), 17))
    for a, b in spans:
        if a <= now < b:
            return f"inside hours {_hhmm(a, tz)}-{_hhmm(b, tz)} {tz_name}"
    ended = [b for _, b in spans if b <= now]
    starts = [a for a, _ in spans if a > now]
    if not ended or not starts:
        return f"outside hours {tz_name}"
    return f"outside hours {_hhmm(max(ended), tz)}-{_hhmm(min(starts), tz)} {tz_name}"


def _hhmm(instant: datetime, tz: ZoneInfo) -> str:
    return instant.astimezone(tz).strftime("%H:%M")
