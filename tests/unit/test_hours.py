"""Working hours: parsing, availability across weekends, overnight shifts, holidays and DST."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.hours import Shift, describe_off, is_working, next_shift_start, parse_hours

NY = "America/New_York"
SYDNEY = "Australia/Sydney"
BERLIN = "Europe/Berlin"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def local(text: str, tz: str, fold: int = 0) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz), fold=fold)


def working(hours: str, tz: str, now: datetime, holidays: tuple[str, ...] = ()) -> bool:
    return is_working(parse_hours(hours), tz, holidays, now)


def next_start(hours: str, tz: str, now: datetime, holidays: tuple[str, ...] = ()) -> datetime | None:
    return next_shift_start(parse_hours(hours), tz, holidays, now)


# ---------------------------------------------------------------- parsing


def test_parses_a_weekday_range() -> None:
    hours = parse_hours("Mon-Fri 08:00-18:00")
    assert hours.shifts == tuple(Shift(d, 8 * 60, 18 * 60) for d in range(5))
    assert hours.text == "Mon-Fri 08:00-18:00"


def test_parses_several_comma_separated_ranges_and_single_days() -> None:
    hours = parse_hours("Mon-Thu 08:00-17:00, Fri 08:00-12:00,Sat 10:00-14:00")
    assert [(s.weekday, s.start, s.end) for s in hours.shifts] == [
        (0, 480, 1020), (1, 480, 1020), (2, 480, 1020), (3, 480, 1020), (4, 480, 720), (5, 600, 840)
    ]


def test_day_ranges_wrap_the_week() -> None:
    assert [s.weekday for s in parse_hours("Fri-Mon 09:00-17:00").shifts] == [4, 5, 6, 0]


def test_time_ranges_wrap_past_midnight_into_the_next_morning() -> None:
    shifts = parse_hours("Sun-Thu 22:00-06:00").shifts
    assert [s.weekday for s in shifts] == [6, 0, 1, 2, 3]
    assert {(s.start, s.end) for s in shifts} == {(22 * 60, 30 * 60)}


def test_24_00_is_the_end_of_the_day() -> None:
    assert parse_hours("Mon-Sun 00:00-24:00").shifts[0] == Shift(0, 0, 1440)
    assert parse_hours("Sat 20:00-24:00").shifts == (Shift(5, 1200, 1440),)


def test_day_names_are_case_insensitive_and_spacing_is_forgiving() -> None:
    assert parse_hours("mon - FRI  8:00 - 18:00").shifts == parse_hours("Mon-Fri 08:00-18:00").shifts


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("Mon-Fry 08:00-18:00", "unknown day 'Fry'"),
        ("Monday 08:00-18:00", "unknown day 'Monday'"),
        ("Mon-Fri 25:00-26:00", "impossible time '25:00'"),
        ("Mon-Fri 08:70-18:00", "impossible time '08:70'"),
        ("Mon-Fri 08:00-24:30", "impossible time '24:30'"),
        ("Mon 24:00-08:00", "cannot start at 24:00"),
        ("Mon-Fri 08:00-08:00", "empty time range 08:00-08:00"),
        ("Mon-Fri 08:00-18:00,", "empty range"),
        ("Mon-Fri 08:00-18:00,, Sat 10:00-12:00", "empty range"),
        ("Mon-Fri 8-18", "cannot read working hours"),
        ("08:00-18:00", "cannot read working hours"),
        ("Mon-Fri", "cannot read working hours"),
    ],
)
def test_bad_hours_are_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hours(text)


# ---------------------------------------------------------------- plain weeks


def test_inside_and_outside_a_weekday_shift_boundaries_half_open() -> None:
    h = "Mon-Fri 08:00-18:00"
    assert not working(h, NY, local("2026-11-23 07:59", NY))  # Monday
    assert working(h, NY, local("2026-11-23 08:00", NY))
    assert working(h, NY, local("2026-11-23 17:59", NY))
    assert not working(h, NY, local("2026-11-23 18:00", NY))


def test_weekends_are_off_and_the_next_shift_is_monday() -> None:
    saturday = local("2026-11-21 12:00", NY)
    assert not working("Mon-Fri 08:00-18:00", NY, saturday)
    assert next_start("Mon-Fri 08:00-18:00", NY, saturday) == local("2026-11-23 08:00", NY)


def test_the_rep_zone_decides_not_the_instant_zone() -> None:
    now = utc("2026-11-23 13:30")  # 08:30 in New York, 14:30 in Berlin, 00:30 in Sydney
    assert working("Mon-Fri 08:00-09:00", NY, now)
    assert not working("Mon-Fri 08:00-09:00", BERLIN, now)
    assert working("Mon-Fri 00:00-01:00", SYDNEY, now)  # already Tuesday there


def test_next_shift_start_is_now_while_working() -> None:
    now = local("2026-11-23 10:00", NY)
    assert next_start("Mon-Fri 08:00-18:00", NY, now) == now


def test_several_ranges_on_one_day_leave_a_gap_between_them() -> None:
    h = "Mon-Fri 08:00-12:00, Mon-Fri 13:00-17:00"
    lunch = local("2026-11-23 12:30", NY)
    assert not working(h, NY, lunch)
    assert next_start(h, NY, lunch) == local("2026-11-23 13:00", NY)


def test_overnight_shift_belongs_to_the_evening_it_starts() -> None:
    h = "Sun-Thu 22:00-06:00"
    assert working(h, NY, local("2026-11-22 23:00", NY))  # Sunday night
    assert working(h, NY, local("2026-11-23 05:59", NY))  # Monday morning, Sunday's shift
    assert not working(h, NY, local("2026-11-23 06:00", NY))
    assert working(h, NY, local("2026-11-27 03:00", NY))  # Friday morning: Thursday's shift
    assert not working(h, NY, local("2026-11-27 23:00", NY))  # no Friday shift
    assert not working(h, NY, local("2026-11-28 03:00", NY))
    assert next_start(h, NY, local("2026-11-27 07:00", NY)) == local("2026-11-29 22:00", NY)


def test_wrapping_day_range_covers_the_weekend() -> None:
    h = "Fri-Mon 10:00-16:00"
    assert working(h, NY, local("2026-11-22 11:00", NY))  # Sunday
    assert not working(h, NY, local("2026-11-25 11:00", NY))  # Wednesday
    assert next_start(h, NY, local("2026-11-24 11:00", NY)) == local("2026-11-27 10:00", NY)


def test_24_00_end_joins_the_next_day_without_a_gap() -> None:
    h = "Mon-Sun 00:00-24:00"
    assert working(h, NY, local("2026-11-23 00:00", NY))
    assert working(h, NY, local("2026-11-23 23:59", NY))


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_start("Mon-Fri 08:00-18:00", NY, datetime(2026, 11, 23, 10))


# ---------------------------------------------------------------- holidays


def test_a_holiday_blanks_the_whole_local_date() -> None:
    h, christmas = "Mon-Fri 08:00-18:00", ("2026-12-25",)  # a Friday
    assert not working(h, NY, local("2026-12-25 10:00", NY), christmas)
    assert working(h, NY, local("2026-12-24 10:00", NY), christmas)
    assert next_start(h, NY, local("2026-12-24 19:00", NY), christmas) == local("2026-12-28 08:00", NY)


def test_holidays_are_dates_in_the_rep_zone() -> None:
    # 2026-12-25 10:00 in Sydney is still 2026-12-24 in New York.
    now = local("2026-12-25 10:00", SYDNEY)
    assert not working("Mon-Sun 00:00-24:00", SYDNEY, now, ("2026-12-25",))
    assert working("Mon-Sun 00:00-24:00", NY, now, ("2026-12-25",))


def test_holidays_may_be_date_objects() -> None:
    hours = parse_hours("Mon-Fri 08:00-18:00")
    assert not is_working(hours, NY, [date(2026, 12, 25)], local("2026-12-25 10:00", NY))


def test_overnight_shift_into_a_holiday_stops_at_midnight() -> None:
    h, christmas = "Sun-Thu 22:00-06:00", ("2026-12-25",)  # Thursday night runs into Christmas
    assert working(h, NY, local("2026-12-24 23:30", NY), christmas)
    assert not working(h, NY, local("2026-12-25 01:00", NY), christmas)


def test_overnight_shift_starting_on_a_holiday_works_after_midnight() -> None:
    # Documented choice: a holiday blanks its own date only.
    h, eve = "Sun-Thu 22:00-06:00", ("2026-12-24",)
    assert not working(h, NY, local("2026-12-24 23:30", NY), eve)
    assert working(h, NY, local("2026-12-25 01:00", NY), eve)
    assert next_start(h, NY, local("2026-12-24 21:00", NY), eve) == local("2026-12-25 00:00", NY)


def test_a_long_run_of_holidays_is_skipped() -> None:
    leave = tuple((date(2026, 12, 1) + timedelta(days=k)).isoformat() for k in range(40))
    assert next_start("Mon 09:00-10:00", NY, local("2026-11-30 12:00", NY), leave) == local("2027-01-11 09:00", NY)


# ---------------------------------------------------------------- daylight saving, New York


def test_new_york_spring_forward_moves_the_utc_start_of_a_normal_shift() -> None:
    h = "Mon-Fri 08:00-18:00"
    assert next_start(h, NY, utc("2026-03-06 23:30")) == utc("2026-03-09 12:00")  # EDT: 08:00 is 12:00Z
    assert next_start(h, NY, utc("2026-03-05 23:30")) == utc("2026-03-06 13:00")  # EST: 08:00 is 13:00Z


def test_a_shift_starting_in_the_skipped_hour_starts_at_the_jump() -> None:
    # 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00Z); 02:30 never shows.
    h = "Sun 02:30-04:00"
    assert next_start(h, NY, utc("2026-03-08 05:00")) == utc("2026-03-08 07:00")
    assert not working(h, NY, utc("2026-03-08 06:59"))
    assert working(h, NY, utc("2026-03-08 07:00"))
    assert not working(h, NY, utc("2026-03-08 08:00"))  # 04:00 EDT


def test_an_overnight_shift_across_spring_forward_is_an_hour_shorter() -> None:
    h = "Sat 22:00-06:00"  # 22:00 EST (03:00Z) to 06:00 EDT (10:00Z): 7 hours
    assert working(h, NY, utc("2026-03-08 03:00"))
    assert working(h, NY, utc("2026-03-08 09:59"))
    assert not working(h, NY, utc("2026-03-08 10:00"))


def test_new_york_fall_back_a_shift_ends_at_the_first_showing_of_its_end() -> None:
    # 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:00-02:00 shows twice.
    h = "Sun 00:00-01:30"
    assert working(h, NY, local("2026-11-01 01:15", NY, fold=0))  # 05:15Z
    assert not working(h, NY, utc("2026-11-01 05:30"))  # first 01:30
    assert not working(h, NY, local("2026-11-01 01:15", NY, fold=1))  # the repeat: no second shift


def test_new_york_fall_back_a_shift_starts_at_the_first_showing_and_lasts_the_longer_night() -> None:
    h = "Sun 01:30-03:00"
    assert next_start(h, NY, utc("2026-11-01 03:00")) == utc("2026-11-01 05:30")  # 01:30 EDT
    assert working(h, NY, local("2026-11-01 01:10", NY, fold=1))  # inside, during the repeat
    assert working(h, NY, utc("2026-11-01 07:59"))
    assert not working(h, NY, utc("2026-11-01 08:00"))  # 03:00 EST


# ---------------------------------------------------------------- daylight saving, southern hemisphere


def test_sydney_april_fall_back() -> None:
    # 2026-04-05: 03:00 AEDT (+11) falls back to 02:00 AEST (+10).
    assert next_start("Mon-Fri 09:00-17:00", SYDNEY, utc("2026-04-04 01:00")) == utc("2026-04-05 23:00")
    assert next_start("Sun 02:30-09:00", SYDNEY, utc("2026-04-04 12:00")) == utc("2026-04-04 15:30")
    assert working("Sun 02:30-09:00", SYDNEY, utc("2026-04-04 22:59"))  # 08:59 AEST
    assert not working("Sun 02:30-09:00", SYDNEY, utc("2026-04-04 23:00"))


def test_sydney_october_spring_forward() -> None:
    # 2026-10-04: 02:00 AEST (+10) jumps to 03:00 AEDT (+11) at 16:00Z the day before.
    h = "Sun 02:00-04:00"
    assert next_start(h, SYDNEY, utc("2026-10-03 12:00")) == utc("2026-10-03 16:00")
    assert working(h, SYDNEY, utc("2026-10-03 16:30"))
    assert not working(h, SYDNEY, utc("2026-10-03 17:00"))  # 04:00 AEDT


def test_a_shift_wholly_inside_a_skipped_hour_never_happens_that_day() -> None:
    h = "Sun 02:10-02:50"
    assert next_start(h, SYDNEY, utc("2026-10-03 12:00")) == local("2026-10-11 02:10", SYDNEY)


# ---------------------------------------------------------------- daylight saving, Europe


def test_berlin_spring_forward_and_fall_back() -> None:
    h = "Mon-Fri 09:00-17:30"
    assert next_start(h, BERLIN, utc("2026-03-27 12:00")) == utc("2026-03-27 12:00")
    assert next_start(h, BERLIN, utc("2026-03-28 12:00")) == utc("2026-03-30 07:00")  # CEST
    assert next_start(h, BERLIN, utc("2026-10-24 12:00")) == utc("2026-10-26 08:00")  # CET again
    night = "Sat 22:00-06:00"  # 22:00 CEST (20:00Z) to 06:00 CET (05:00Z): 9 hours
    assert working(night, BERLIN, utc("2026-10-24 20:00"))
    assert working(night, BERLIN, utc("2026-10-25 04:59"))
    assert not working(night, BERLIN, utc("2026-10-25 05:00"))


# ---------------------------------------------------------------- describe_off


@pytest.mark.parametrize(
    ("hours", "when", "text"),
    [
        ("Mon-Fri 08:00-18:00", "2026-11-23 19:00", "outside hours 18:00-08:00 America/New_York"),
        ("Mon-Fri 08:00-18:00", "2026-11-24 06:00", "outside hours 18:00-08:00 America/New_York"),
        ("Mon-Fri 08:00-18:00", "2026-11-22 05:00", "outside hours 18:00-08:00 America/New_York"),  # Sunday
        ("Mon-Thu 08:00-17:00, Fri 08:00-12:00", "2026-11-27 13:00", "outside hours 12:00-08:00 America/New_York"),
        ("Mon-Fri 08:00-12:00, Mon-Fri 13:00-17:00", "2026-11-23 12:30", "outside hours 12:00-13:00 America/New_York"),
        ("Sun-Thu 22:00-06:00", "2026-11-23 12:00", "outside hours 06:00-22:00 America/New_York"),
        ("Mon-Fri 08:00-18:00", "2026-11-23 10:00", "inside hours 08:00-18:00 America/New_York"),
    ],
)
def test_describe_off_names_the_gap_in_local_time(hours: str, when: str, text: str) -> None:
    assert describe_off(parse_hours(hours), NY, local(when, NY)) == text


def test_describe_off_uses_the_rep_zone_across_a_dst_change() -> None:
    saturday = utc("2026-03-28 12:00")
    assert describe_off(parse_hours("Mon-Fri 09:00-17:30"), BERLIN, saturday) == "outside hours 17:30-09:00 Europe/Berlin"


def test_describe_off_joins_shifts_across_midnight() -> None:
    text = describe_off(parse_hours("Mon-Sun 00:00-24:00"), NY, local("2026-11-23 10:00", NY))
    assert text.startswith("inside hours")


# ---------------------------------------------------------------- properties

ZONES = [NY, SYDNEY, BERLIN, "Asia/Kolkata", "Australia/Lord_Howe", "UTC"]
hhmm = st.tuples(st.integers(0, 23), st.sampled_from([0, 15, 30, 45])).map(lambda t: f"{t[0]:02d}:{t[1]:02d}")
part = st.tuples(st.sampled_from(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]), st.booleans(), hhmm, hhmm)


def _hours_text(parts: list[tuple[str, bool, str, str]]) -> str:
    out = []
    for day, weekdays, start, end in parts:
        if start == end:
            end = "24:00" if start == "00:00" else "00:00"
        out.append(f"{day}-Fri {start}-{end}" if weekdays else f"{day} {start}-{end}")
    return ", ".join(out)


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(part, min_size=1, max_size=3),
    zone=st.sampled_from(ZONES),
    now=st.datetimes(datetime(2026, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC)),
)
def test_next_shift_start_agrees_with_is_working(parts: list[tuple[str, bool, str, str]], zone: str, now: datetime) -> None:
    hours = parse_hours(_hours_text(parts))
    start = next_shift_start(hours, zone, (), now)
    assert start is not None and start >= now
    assert is_working(hours, zone, (), start)
    assert is_working(hours, zone, (), now) == (start == now)
    if start > now:  # off all the way to the next start
        assert not is_working(hours, zone, (), now + (start - now) / 2)
        assert not is_working(hours, zone, (), start - timedelta(seconds=1))
        assert describe_off(hours, zone, now).startswith("outside hours")
