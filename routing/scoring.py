"""Lead scoring, pure: behaviour points from track events plus fit points from traits.

Everything takes the evaluation instant ``at`` as an argument. The score at
time T counts exactly the events timestamped at or before T, decayed by their
age at T, and the traits as they stood at T.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from routing.config import Condition, FitRule, Scoring

COLD, WARM, HOT, RED_HOT = "cold", "warm", "hot", "red_hot"
_MISSING = object()


@dataclass(frozen=True)
class Signal:
    """One track event in a lead's history."""

    name: str
    timestamp: datetime
    message_id: str = ""
    seq: int = 0            # arrival order: breaks timestamp ties on the lead's timeline


@dataclass(frozen=True)
class TraitUpdate:
    """The traits one identify carried, with its timestamp; ``seq`` breaks timestamp ties by arrival."""

    timestamp: datetime
    traits: Mapping[str, Any]
    seq: int = 0
    trusted: bool = True    # from a server source (a CRM, a backend), not a public browser key


@dataclass(frozen=True)
class EventPoints:
    name: str
    occurrences: int      # how many happened by the evaluation time
    counted: int          # how many scored (max_count, decay > 0)
    points: float


@dataclass(frozen=True)
class Breakdown:
    """A lead's score at one instant, with where every point came from."""

    at: datetime
    behavior: float
    fit: float
    tier: str
    hot: bool
    red_hot: bool
    events: tuple[EventPoints, ...] = ()
    fit_rules: tuple[tuple[str, float], ...] = ()
    qualification: tuple[tuple[str, bool], ...] = ()

    @property
    def score(self) -> float:
        return self.behavior + self.fit

    def top_signals(self, n: int = 3) -> list[EventPoints]:
        positive = [e for e in self.events if e.points > 0]
        return sorted(positive, key=lambda e: -e.points)[:n]

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": _num(self.score),
            "behavior": _num(self.behavior),
            "fit": _num(self.fit),
            "tier": self.tier,
            "events": {e.name: {"occurrences": e.occurrences, "counted": e.counted, "points": _num(e.points)}
                       for e in self.events},
            "fit_rules": {name: _num(p) for name, p in self.fit_rules},
            "qualification": {text: met for text, met in self.qualification},
        }


def _num(x: float) -> float:
    return float(round(x, 6))


# ---------------------------------------------------------------- traits


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Nested objects merge key by key; anything else is replaced."""
    out = dict(base)
    for key, value in update.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = deep_merge(old, value)
        elif isinstance(value, Mapping):
            out[key] = deep_merge({}, value)
        else:
            out[key] = value
    return out


def merge_into(target: dict[str, Any], update: Mapping[str, Any]) -> None:
    """:func:`deep_merge` in place: the cost of the update, not of the traits it lands on."""
    for key, value in update.items():
        old = target.get(key)
        if isinstance(value, Mapping) and isinstance(old, dict):
            merge_into(old, value)
        elif isinstance(value, Mapping):
            target[key] = deep_merge({}, value)
        else:
            target[key] = value


def traits_as_of(updates: Iterable[TraitUpdate], at: datetime | None = None) -> dict[str, Any]:
    """Traits as they stood at ``at``: for each trait the value with the latest timestamp wins."""
    merged: dict[str, Any] = {}
    for u in sorted(updates, key=lambda u: (u.timestamp, u.seq)):
        if at is None or u.timestamp <= at:
            merge_into(merged, u.traits)
    return merged


def trait(traits: Mapping[str, Any], path: str) -> Any:
    """Read a dotted path (``company.industry``); ``_MISSING`` when absent."""
    node: Any = traits
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def get_trait(traits: Mapping[str, Any], path: str, default: Any = None) -> Any:
    value = trait(traits, path)
    return default if value is _MISSING else value


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
    except (ValueError, OverflowError):
        return None
    return None


def _same(value: Any, expected: Any) -> bool:
    if isinstance(expected, bool):
        if isinstance(value, str):
            return value.strip().lower() in (("true", "yes", "1") if expected else ("false", "no", "0"))
        return isinstance(value, bool) and value is expected
    if isinstance(expected, str):
        return isinstance(value, str) and value.strip().casefold() == expected.casefold()
    if isinstance(expected, (int, float)):
        n = _as_number(value)
        return n is not None and n == float(expected)
    return bool(value == expected)


def test_value(value: Any, *, equals: Any = None, in_: Sequence[Any] | None = None,
               min: float | None = None, max: float | None = None) -> bool:
    """True when ``value`` passes every test given; a missing or wrong-typed value passes none."""
    if value is _MISSING or value is None:
        return False
    if equals is not None and not _same(value, equals):
        return False
    if in_ is not None and not any(_same(value, option) for option in in_):
        return False
    if min is not None or max is not None:
        n = _as_number(value)
        if n is None or (min is not None and n < min) or (max is not None and n > max):
            return False
    return True


def condition_holds(traits: Mapping[str, Any], cond: Condition) -> bool:
    return test_value(trait(traits, cond.trait), equals=cond.equals, in_=cond.in_, min=cond.min, max=cond.max)


def describe_condition(cond: Condition) -> str:
    if cond.equals is not None:
        shown = str(cond.equals).lower() if isinstance(cond.equals, bool) else cond.equals
        return f"{cond.trait} is {shown}"
    if cond.in_ is not None:
        return f"{cond.trait} in {', '.join(map(str, cond.in_))}"
    if cond.min is not None and cond.max is not None:
        return f"{cond.trait} between {cond.min:g} and {cond.max:g}"
    if cond.min is not None:
        return f"{cond.trait} ≥ {cond.min:g}"
    return f"{cond.trait} ≤ {cond.max:g}"


def fit_points(traits: Mapping[str, Any], rule: FitRule) -> float:
    value = trait(traits, rule.trait)
    if rule.map is not None:
        if isinstance(value, str):
            for key, pts in rule.map.items():
                if key.casefold() == value.strip().casefold():
                    return pts
        return 0.0
    ok = test_value(value, equals=rule.equals, in_=rule.in_, min=rule.min, max=rule.max)
    return float(rule.points or 0) if ok else 0.0


# ---------------------------------------------------------------- behaviour


def decay_factor(age: timedelta, scoring: Scoring) -> float:
    factor = 1.0
    for step in scoring.decay:
        if age >= step.from_age:
            factor = step.factor
    return factor


def event_rule(scoring: Scoring, name: str):  # type: ignore[no-untyped-def]
    rule = scoring.events.get(name)
    if rule is None:
        lowered = name.casefold()
        for key, candidate in scoring.events.items():
            if key.casefold() == lowered:
                return candidate
    return rule


Fit = tuple[tuple[tuple[str, float], ...], float, tuple[tuple[str, bool], ...]]


def fit_of(traits: Mapping[str, Any], scoring: Scoring) -> Fit:
    """What ``traits`` are worth: the points of each fit rule, their sum, and each red-hot condition met or not."""
    fit_parts = tuple((r.name, fit_points(traits, r)) for r in scoring.fit)
    qualification = tuple((describe_condition(c), condition_holds(traits, c)) for c in scoring.red_hot.all)
    return fit_parts, sum(p for _, p in fit_parts), qualification


def score(signals: Iterable[Signal], traits: Mapping[str, Any], scoring: Scoring, at: datetime) -> Breakdown:
    """The breakdown at ``at``: signals after ``at`` do not count."""
    return _score(signals, fit_of(traits, scoring), scoring, at)


def _score(signals: Iterable[Signal], fit: Fit, scoring: Scoring, at: datetime) -> Breakdown:
    by_name: dict[str, list[datetime]] = {}
    for s in signals:
        if s.timestamp <= at:
            by_name.setdefault(s.name, []).append(s.timestamp)
    behavior = 0.0
    parts = []
    for name, stamps in by_name.items():
        rule = event_rule(scoring, name)
        if rule is None:
            parts.append(EventPoints(name, len(stamps), 0, 0.0))
            continue
        recent = sorted(stamps, reverse=True)[: rule.max_count]
        pts, counted = 0.0, 0
        for ts in recent:
            f = decay_factor(at - ts, scoring)
            if f > 0:
                counted += 1
                pts += rule.points * f
        behavior += pts
        parts.append(EventPoints(name, len(stamps), counted, pts))
    parts.sort(key=lambda e: (-abs(e.points), e.name))

    fit_parts, fit_points_total, qualification = fit
    total = behavior + fit_points_total
    hot = total >= scoring.thresholds.hot
    red_hot = hot and all(met for _, met in qualification)
    tier = RED_HOT if red_hot else HOT if hot else WARM if total >= scoring.thresholds.warm else COLD
    return Breakdown(at, behavior, fit_points_total, tier, hot, red_hot, tuple(parts), fit_parts, qualification)


# ---------------------------------------------------------------- one event's effect


@dataclass(frozen=True)
class LeadHistory:
    signals: tuple[Signal, ...] = ()
    trait_updates: tuple[TraitUpdate, ...] = ()
    # The fit as of an instant, by which trait updates are in force then. Histories that differ only
    # in their signals share it: one event's before and after, and the score stored after it.
    _fits: dict[tuple[int, tuple[bool, ...]], tuple[Scoring, Fit]] = field(
        default_factory=dict, compare=False, repr=False)
    # The traits with every update in force (the newest update's order key, the merged traits), kept
    # as updates arrive in order: scoring as of the newest instant never re-reads the whole history.
    _current: list[tuple[tuple[datetime, int], dict[str, Any]]] = field(
        default_factory=list, compare=False, repr=False)

    def score(self, scoring: Scoring, at: datetime) -> Breakdown:
        newest = self._newest_update()
        if newest is None or at >= newest[0]:
            key: tuple[int, tuple[bool, ...]] = (id(scoring), (True,))
            known = self._fits.get(key)
            if known is None or known[0] is not scoring:
                known = (scoring, fit_of(self.traits(), scoring))
                self._fits[key] = known
            return _score(self.signals, known[1], scoring, at)
        key = (id(scoring), tuple(u.timestamp <= at for u in self.trait_updates))
        known = self._fits.get(key)
        if known is None or known[0] is not scoring:
            known = (scoring, fit_of(traits_as_of(self.trait_updates, at), scoring))
            self._fits[key] = known
        return _score(self.signals, known[1], scoring, at)

    def _newest_update(self) -> tuple[datetime, int] | None:
        if self._current:
            return self._current[0][0]
        if not self.trait_updates:
            return None
        return max((u.timestamp, u.seq) for u in self.trait_updates)

    def traits(self, at: datetime | None = None) -> dict[str, Any]:
        """The traits as they stood at ``at`` (default: with every update in force)."""
        newest = self._newest_update()
        if newest is None:
            return {}
        if at is not None and at < newest[0]:
            return traits_as_of(self.trait_updates, at)
        if not self._current:
            self._current.append((newest, traits_as_of(self.trait_updates)))
        return self._current[0][1]

    def merged(self, other: LeadHistory) -> LeadHistory:
        return LeadHistory(self.signals + other.signals, self.trait_updates + other.trait_updates)

    def with_signal(self, s: Signal) -> LeadHistory:
        return LeadHistory(self.signals + (s,), self.trait_updates, self._fits, self._current)

    def with_traits(self, u: TraitUpdate) -> LeadHistory:
        """This history and ``u``; an update that comes last on the timeline merges into the kept traits."""
        newest = self._newest_update()
        current: list[tuple[tuple[datetime, int], dict[str, Any]]] = []
        if newest is None or (u.timestamp, u.seq) >= newest:
            base = self.traits() if newest is not None else {}
            current.append(((u.timestamp, u.seq), deep_merge(base, u.traits)))
        return LeadHistory(self.signals, self.trait_updates + (u,), _current=current)


def first_crossings(history: LeadHistory, scoring: Scoring) -> tuple[datetime | None, datetime | None]:
    """``hot_at`` and ``red_hot_at`` on the lead's timeline: its events in timestamp order (ties by arrival).

    An event crosses when the score at its instant, counting the events before it, is below the
    threshold and, counting it too, at or above; decay between events never crosses. Events that
    share a timestamp are one moment and cross together, so the answer does not depend on the order
    in which tied events arrived, and a crossing never names an instant whose score is below the
    threshold. One pass, keeping each event name's most recent ``max_count`` timestamps: linear in
    the history.
    """
    timeline: list[tuple[datetime, int, Signal | TraitUpdate]] = [(s.timestamp, s.seq, s) for s in history.signals]
    timeline += [(u.timestamp, u.seq, u) for u in history.trait_updates]
    timeline.sort(key=lambda item: (item[0], item[1]))
    recent: dict[str, list[datetime]] = {}       # event name -> its newest max_count timestamps, oldest first
    limits: dict[str, tuple[int, float]] = {}    # event name -> (max_count, points), for names that score
    traits: dict[str, Any] = {}
    fit = fit_of(traits, scoring)
    hot_at: datetime | None = None
    red_hot_at: datetime | None = None
    hot_line = scoring.thresholds.hot

    def state_at(at: datetime) -> tuple[bool, bool]:
        behavior = 0.0
        for name, stamps in recent.items():
            points = limits[name][1]
            for ts in stamps:
                behavior += points * decay_factor(at - ts, scoring)
        hot = behavior + fit[1] >= hot_line
        return hot, hot and all(met for _, met in fit[2])

    i = 0
    while i < len(timeline) and (hot_at is None or red_hot_at is None):
        at = timeline[i][0]
        was_hot, was_red_hot = state_at(at)
        changed_traits = False
        while i < len(timeline) and timeline[i][0] == at:
            item = timeline[i][2]
            i += 1
            if isinstance(item, TraitUpdate):
                merge_into(traits, item.traits)
                changed_traits = True
                continue
            if item.name not in limits:
                rule = event_rule(scoring, item.name)
                if rule is None:        # an unknown event name scores nothing
                    continue
                limits[item.name] = (rule.max_count, float(rule.points))
            stamps = recent.setdefault(item.name, [])
            stamps.append(item.timestamp)
            del stamps[: -limits[item.name][0]]
        if changed_traits:
            fit = fit_of(traits, scoring)
        hot, red_hot = state_at(at)
        if hot_at is None and hot and not was_hot:
            hot_at = at
        if red_hot_at is None and red_hot and not was_red_hot:
            red_hot_at = at
    return hot_at, red_hot_at


@dataclass(frozen=True)
class Transition:
    """What one event at ``at`` did: the score at ``at`` without it and with it."""

    before: Breakdown
    after: Breakdown

    @property
    def crossed_hot(self) -> bool:
        return not self.before.hot and self.after.hot

    @property
    def crossed_red_hot(self) -> bool:
        return not self.before.red_hot and self.after.red_hot


def transition(before: LeadHistory, after: LeadHistory, scoring: Scoring, at: datetime) -> Transition:
    return Transition(before.score(scoring, at), after.score(scoring, at))


# ---------------------------------------------------------------- episodes

ROUTE, FYI, PRIORITY = "route", "fyi", "priority"


@dataclass(frozen=True)
class EpisodeState:
    """What the episode logic needs to remember about a lead between events."""

    hot_at: datetime | None = None          # first hot crossing (any, stale included)
    red_hot_at: datetime | None = None
    last_routed_at: datetime | None = None
    hot_unalerted: bool = False             # hot by a stale event; the next fresh event opens the episode


@dataclass(frozen=True)
class Outcome:
    state: EpisodeState
    action: str | None = None               # ROUTE (open an episode), FYI (owner note), PRIORITY (red-hot)
    red_hot: bool = False                   # the alert should read as red-hot
    stale: bool = False
    notes: tuple[str, ...] = field(default=())


def decide(
    state: EpisodeState,
    tr: Transition,
    *,
    event_at: datetime,
    now: datetime,
    max_event_age: timedelta,
    rehot_after: timedelta,
    crossings: tuple[datetime | None, datetime | None] | None = None,
) -> Outcome:
    """Apply SPEC §3's episode rules to one event's arrival.

    ``tr`` is the lead's score as of its newest event without and with this one: an episode opens
    (or an FYI goes out) only when the event turns the lead hot as it stands now, so a late event
    on a lead that is hot throughout does nothing. ``crossings`` are ``hot_at`` and ``red_hot_at`` on
    the timeline with the event (:func:`first_crossings`); without them, a crossing at ``event_at``
    is taken to be the timeline's first when none was recorded. ``event_at`` is the event's
    timestamp, ``now`` the processing instant.
    """
    stale = now - event_at > max_event_age
    if crossings is None:
        crossings = (state.hot_at if state.hot_at is not None or not tr.crossed_hot else event_at,
                     state.red_hot_at if state.red_hot_at is not None or not tr.crossed_red_hot else event_at)
    hot_at, red_hot_at = crossings
    new = EpisodeState(hot_at, red_hot_at, state.last_routed_at, state.hot_unalerted)

    opens = tr.crossed_hot or (state.hot_unalerted and tr.after.hot)
    if stale:
        if tr.crossed_hot:
            new = EpisodeState(hot_at, red_hot_at, state.last_routed_at, True)
            return Outcome(new, None, stale=True, notes=("stale event: hot without an alert",))
        return Outcome(new, None, stale=True)
    if opens:
        cleared = EpisodeState(hot_at, red_hot_at, state.last_routed_at, False)
        recent = state.last_routed_at is not None and event_at - state.last_routed_at < rehot_after
        if recent:
            return Outcome(cleared, FYI, red_hot=tr.after.red_hot)
        routed = EpisodeState(hot_at, red_hot_at, max(now, event_at), False)
        return Outcome(routed, ROUTE, red_hot=tr.after.red_hot)
    if tr.crossed_red_hot and tr.before.hot:
        return Outcome(new, PRIORITY, red_hot=True)
    if not tr.after.hot and state.hot_unalerted:
        new = EpisodeState(hot_at, red_hot_at, state.last_routed_at, False)
    return Outcome(new)
