"""Choosing the rep for a hot lead (SPEC §4), with the reason for every candidate.

The steps, in order:

1. account owner: ``rules.accounts`` for the lead's domain, else the rep a lead
   of that domain was last routed to (``RoutingState.domain_owners``); taken
   when available and not excluded;
2. team: the first team in config order whose ``match`` holds, else ``default``
   (the ``default`` team is only the fallback, wherever it sits in the file);
   routing never leaves that team;
3. available now: in hours, not on holiday, not away, under ``max_open``;
4. skills: reps whose ``skills`` hold the lead's ``company.industry`` first;
5. weighted round robin: lowest ``assigned_7d[team] / weight``, ties by the
   order of the team's ``reps`` list;
6. nobody available: after hours ``queue`` (assign now to the reps whose next
   shift starts earliest, alert from then) or ``on_call``; everyone in hours at
   capacity: ``routing.on_call``; otherwise unrouted.

Which assignments count where (the live worker computes the same in SQL):
``Decision.team_id`` is the team whose pool the rep was picked from or whose
fallback applied (routes ``team``, ``queued``, ``on_call``, and ``unrouted``
when a team matched); it is None for ``account_owner``, which happens before
any team is consulted. An assignment counts towards ``assigned_7d[team_id]``
of its rep only when ``team_id`` is set, so owned accounts do not skew a
team's round robin.

Pure: no I/O, and ``now`` is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any, Literal
from zoneinfo import ZoneInfo

from routing.config import Rep, Rules, Team
from routing.hours import describe_off, is_working, next_shift_start, parse_hours

Route = Literal["account_owner", "team", "queued", "on_call", "unrouted", "manual"]   # manual: `lead assign`
Status = Literal["chosen", "eligible", "skipped"]

AWAY_INDEFINITELY = datetime.max.replace(tzinfo=UTC)
"""``RepState.away_until`` for "away until they say BACK"."""

DEFAULT_TEAM = "default"
INDUSTRY_TRAIT = "company.industry"


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class RepState:
    """What routing needs to know about one rep beyond the rules file.

    ``away_until``: None when not away; an instant the away ends by itself; or
    :data:`AWAY_INDEFINITELY` (any year-9999 instant) until BACK.
    ``open_leads``: the rep's open hot leads (see ``RoutingLedger``: current
    assignment, made within ``routing.open_window``, no ``Lead Contacted``).
    ``assigned_7d``: team id -> assignments of this rep under that team id in
    the trailing 7 days (account-owner routes carry no team id and are not
    counted), after any ``credited_7d``.
    ``away_reason``: why the rep is away, when known (``auto-away: ...``).
    ``credited_7d``: team id -> assignments taken off ``assigned_7d`` by
    ``routing.fairness.credit_back`` (see :mod:`routing.healing`), shown in the reasons.
    """

    away_until: datetime | None = None
    open_leads: int = 0
    assigned_7d: Mapping[str, int] = field(default_factory=dict)
    away_reason: str | None = None
    credited_7d: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RoutingState:
    """Everything routing reads besides the rules: per-rep state and domain ownership.

    ``reps``: rep id -> state; a rep missing here has the default state.
    ``domain_owners``: lower-case company domain -> rep a lead of that domain
    was last routed to.
    """

    reps: Mapping[str, RepState] = field(default_factory=dict)
    domain_owners: Mapping[str, str] = field(default_factory=dict)

    def rep(self, rep_id: str) -> RepState:
        return self.reps.get(rep_id) or RepState()


# ---------------------------------------------------------------- outputs


@dataclass(frozen=True)
class CandidateReason:
    """One rep considered, and why it was (not) chosen: ``at capacity 10/10``, ``load 3/1=3.00``."""

    rep_id: str
    status: Status
    reason: str


@dataclass(frozen=True)
class Decision:
    """Where a lead goes, and why.

    ``rep_id``: the assigned rep; None when unrouted.
    ``team_id``: see the module docstring (None for account owners and when no team matched).
    ``route``: ``account_owner``, ``team``, ``queued`` (assigned now, alerting
    starts at ``start_at``, the rep's next shift), ``on_call`` or ``unrouted``.
    ``start_at``: when the alert cadence should start: ``now``, or the next
    shift start for ``queued``.
    ``candidates``: every rep of the team (or the account owner / on-call rep)
    with its status and reason. ``notes``: everything else worth knowing
    (wrong-typed traits, an unavailable owner, why nobody could be chosen).
    """

    rep_id: str | None
    team_id: str | None
    route: Route
    start_at: datetime
    candidates: tuple[CandidateReason, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def reasons(self) -> tuple[str, ...]:
        """Human-readable lines: ``alice: skipped: at capacity 10/10``, then the notes."""
        return tuple(f"{c.rep_id}: {c.status}: {c.reason}" for c in self.candidates) + self.notes

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, for storing the decision beside the assignment."""
        return {
            "rep_id": self.rep_id,
            "team_id": self.team_id,
            "route": self.route,
            "start_at": self.start_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "candidates": [{"rep_id": c.rep_id, "status": c.status, "reason": c.reason} for c in self.candidates],
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------- traits


_MISSING: Any = object()


def _trait(traits: Mapping[str, Any], path: str) -> tuple[Any, str | None]:
    """Read a dotted trait path: (value or _MISSING, note when a step has the wrong type)."""
    node: Any = traits
    walked: list[str] = []
    for key in path.split("."):
        if not isinstance(node, Mapping):
            return _MISSING, _wrong_type(".".join(walked), node)
        if key not in node or node[key] is None:
            return _MISSING, None
        node = node[key]
        walked.append(key)
    return node, None


def _wrong_type(path: str, value: Any) -> str:
    return f"trait {path} has wrong type {type(value).__name__}; treated as missing"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _same(value: Any, wanted: Any) -> bool:
    """Equality as operators mean it in a match list: numbers by value, text case-insensitively."""
    if _is_number(value) and _is_number(wanted):
        return bool(value == wanted)
    return _text(value) == _text(wanted)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # as YAML spells them
    return str(value).strip().casefold()


def _test_holds(path: str, test: Any, traits: Mapping[str, Any]) -> tuple[bool, str | None]:
    """Does one ``match`` entry hold? A wrong-typed trait counts as missing, with a note."""
    value, note = _trait(traits, path)
    if value is _MISSING:
        return False, note
    if isinstance(test, Mapping):  # {min, max}, inclusive
        if not _is_number(value):
            return False, _wrong_type(path, value)
        low, high = test.get("min"), test.get("max")
        return (low is None or value >= low) and (high is None or value <= high), None
    if not _is_scalar(value):
        return False, _wrong_type(path, value)
    options = test if isinstance(test, list) else [test]
    return any(_same(value, o) for o in options), None


def _team_accepts(team: Team, traits: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """Every key must hold; all keys are read anyway so each wrong-typed trait gets its note."""
    ok, notes = True, []
    for path, test in team.match.items():
        holds, note = _test_holds(path, test, traits)
        ok = ok and holds
        if note:
            notes.append(note)
    return ok, notes


def team_for(traits: Mapping[str, Any], rules: Rules) -> tuple[Team | None, tuple[str, ...]]:
    """The first non-default team in config order whose match holds, else ``default``, else None.

    Returns the notes about wrong-typed traits met on the way (each once).
    """
    notes: list[str] = []
    for team in rules.teams:
        if team.id == DEFAULT_TEAM:
            continue
        ok, team_notes = _team_accepts(team, traits)
        notes.extend(n for n in team_notes if n not in notes)
        if ok:
            return team, tuple(notes)
    default = next((t for t in rules.teams if t.id == DEFAULT_TEAM), None)
    return default, tuple(notes)


def lead_domain(traits: Mapping[str, Any], free_mail: Iterable[str]) -> str | None:
    """The lead's company domain, lower-case: ``company.domain``, else the email's domain.

    A free-mail domain never counts (a gmail.com "company" falls through to the
    email, which is usually free mail too).
    """
    free = {d.strip().lower() for d in free_mail}
    company, _ = _trait(traits, "company.domain")
    email, _ = _trait(traits, "email")
    for candidate in (_clean_domain(company), _email_domain(email)):
        if candidate and candidate not in free:
            return candidate
    return None


def _clean_domain(value: Any) -> str | None:
    """``https://www.Acme.com/about`` -> ``acme.com``: operators type domains, forms send URLs."""
    if not isinstance(value, str):
        return None
    d = value.strip().lower().split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].rstrip(".")
    d = d.removeprefix("www.")
    return d if "." in d else None


def _email_domain(value: Any) -> str | None:
    if not isinstance(value, str) or "@" not in value:
        return None
    return _clean_domain(value.rsplit("@", 1)[1])


def _industry(traits: Mapping[str, Any]) -> tuple[str | None, str | None]:
    value, note = _trait(traits, INDUSTRY_TRAIT)
    if value is _MISSING:
        return None, note
    if not isinstance(value, str):
        return None, _wrong_type(INDUSTRY_TRAIT, value)
    return value.strip().casefold() or None, None


# ---------------------------------------------------------------- one rep, now


Kind = Literal["excluded", "away", "holiday", "off_hours", "full", "available"]


@dataclass(frozen=True)
class _Look:
    """How one rep looks at ``now``: the first reason they cannot take a lead, if any."""

    rep: Rep
    kind: Kind
    reason: str


def _look(rep: Rep, state: RepState, now: datetime, exclude: frozenset[str]) -> _Look:
    # Order matters: time-based reasons (away, holiday, hours) come before
    # capacity, so "everyone in hours is full" only counts reps who are in hours.
    if rep.id in exclude:
        return _Look(rep, "excluded", "excluded (previously assigned)")
    if state.away_until is not None and state.away_until > now:
        why = f" ({state.away_reason})" if state.away_reason else ""
        return _Look(rep, "away", _away_reason(state.away_until) + why)
    today = now.astimezone(ZoneInfo(rep.timezone)).date().isoformat()
    if today in rep.holidays:
        return _Look(rep, "holiday", f"holiday {today}")
    hours = parse_hours(rep.hours)
    if not is_working(hours, rep.timezone, (), now):
        return _Look(rep, "off_hours", describe_off(hours, rep.timezone, now))
    if _is_full(rep, state):
        return _Look(rep, "full", f"at capacity {state.open_leads}/{rep.max_open}")
    return _Look(rep, "available", "available")


def _is_full(rep: Rep, state: RepState) -> bool:
    return rep.max_open is not None and state.open_leads >= rep.max_open


def _away_reason(until: datetime) -> str:
    if until.year >= AWAY_INDEFINITELY.year:
        return "away"
    return f"away until {until.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _next_available(rep: Rep, state: RepState, now: datetime) -> datetime | None:
    """When an off rep can next work: after any away ends, at their next shift outside holidays."""
    start = now
    if state.away_until is not None and state.away_until > now:
        if state.away_until.year >= AWAY_INDEFINITELY.year:
            return None
        start = state.away_until
    return next_shift_start(parse_hours(rep.hours), rep.timezone, rep.holidays, start)


def _local(instant: datetime, tz_name: str) -> str:
    return f"{instant.astimezone(ZoneInfo(tz_name)):%Y-%m-%d %H:%M} {tz_name}"


# ---------------------------------------------------------------- steps 4 and 5


def _ranked(pool: list[Rep], team: Team, industry: str | None, state: RoutingState) -> list[Rep]:
    """Skills first, then lowest count/weight (exact fractions), then the team's config order."""
    order = {rid: i for i, rid in enumerate(team.reps)}

    def key(rep: Rep) -> tuple[bool, Fraction, int]:
        count = state.rep(rep.id).assigned_7d.get(team.id, 0)
        return (not _has_skill(rep, industry), Fraction(count) / Fraction(rep.weight), order[rep.id])

    return sorted(pool, key=key)


def _has_skill(rep: Rep, industry: str | None) -> bool:
    return industry is not None and any(s.strip().casefold() == industry for s in rep.skills)


def _load_reason(rep: Rep, team: Team, industry: str | None, state: RoutingState) -> str:
    count = state.rep(rep.id).assigned_7d.get(team.id, 0)
    load = f"load {count}/{rep.weight:g}={count / rep.weight:.2f}"
    if credited := state.rep(rep.id).credited_7d.get(team.id, 0):
        load += f" ({credited} credited back)"
    return f"skill match {industry}, {load}" if _has_skill(rep, industry) else load


# ---------------------------------------------------------------- the decision


def choose_rep(
    traits: Mapping[str, Any],
    rules: Rules,
    state: RoutingState,
    now: datetime,
    *,
    exclude: frozenset[str] = frozenset(),
) -> Decision:
    """Pick the rep for a lead per SPEC §4; ``exclude`` holds previous assignees (reassignment, pass)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    owner_decision, owner_notes = _account_owner(traits, rules, state, now, exclude)
    if owner_decision is not None:
        return owner_decision
    team, match_notes = team_for(traits, rules)
    notes = owner_notes + match_notes
    if team is None:
        return _unrouted(None, now, (), notes + ("no team matched and there is no default team",))
    industry, industry_note = _industry(traits)
    if industry_note and industry_note not in notes:
        notes += (industry_note,)
    return _in_team(team, industry, rules, state, now, exclude, notes)


def _account_owner(
    traits: Mapping[str, Any], rules: Rules, state: RoutingState, now: datetime, exclude: frozenset[str]
) -> tuple[Decision | None, tuple[str, ...]]:
    """Step 1: the owner's decision when they can take it, else notes on why not."""
    domain = lead_domain(traits, rules.free_mail_domains)
    if domain is None:
        return None, ()
    accounts = {d.strip().lower(): rid for d, rid in rules.accounts.items()}
    owner_id, source = accounts.get(domain), "accounts"
    if owner_id is None:
        owner_id, source = state.domain_owners.get(domain), "last routed"
    if owner_id is None:
        return None, ()
    rep = rules.rep(owner_id)
    if rep is None:
        return None, (f"account owner {owner_id} of {domain} is no longer in the rules",)
    look = _look(rep, state.rep(rep.id), now, exclude)
    if look.kind != "available":
        return None, (f"account owner {rep.id} of {domain} not available: {look.reason}",)
    chosen = CandidateReason(rep.id, "chosen", f"account owner of {domain} ({source})")
    return Decision(rep.id, None, "account_owner", now, (chosen,)), ()


def _in_team(
    team: Team,
    industry: str | None,
    rules: Rules,
    state: RoutingState,
    now: datetime,
    exclude: frozenset[str],
    notes: tuple[str, ...],
) -> Decision:
    """Steps 3-6 inside one team."""
    looks = [_look(rep, state.rep(rep.id), now, exclude) for rep in _team_reps(team, rules)]
    available = [lk.rep for lk in looks if lk.kind == "available"]
    if available:
        chosen = _ranked(available, team, industry, state)[0]
        candidates = _candidates(looks, chosen, available, team, industry, state)
        return Decision(chosen.id, team.id, "team", now, candidates, notes)
    if any(lk.kind == "full" for lk in looks):
        return _on_call(team, rules, now, exclude, looks, notes, f"every rep in hours in team {team.id} is at capacity")
    if not any(lk.kind in ("away", "holiday", "off_hours") for lk in looks):
        why = f"team {team.id} has no reps" if not looks else f"every rep in team {team.id} is excluded"
        return _on_call(team, rules, now, exclude, looks, notes, why)
    if rules.routing.after_hours == "on_call":
        return _on_call(team, rules, now, exclude, looks, notes, f"nobody in team {team.id} is in hours")
    return _queue(team, industry, rules, state, now, exclude, looks, notes)


def _team_reps(team: Team, rules: Rules) -> list[Rep]:
    reps = (rules.rep(rid) for rid in dict.fromkeys(team.reps))  # a rep listed twice counts once
    return [r for r in reps if r is not None]


def _candidates(
    looks: list[_Look],
    chosen: Rep,
    pool: list[Rep],
    team: Team,
    industry: str | None,
    state: RoutingState,
    chosen_prefix: str = "",
) -> tuple[CandidateReason, ...]:
    """Every team rep: the chosen one, the others it was picked from, and the skipped with their reason."""
    out = []
    for lk in looks:
        if lk.rep.id == chosen.id:
            out.append(CandidateReason(lk.rep.id, "chosen", chosen_prefix + _load_reason(lk.rep, team, industry, state)))
        elif lk.rep in pool:
            out.append(CandidateReason(lk.rep.id, "eligible", _load_reason(lk.rep, team, industry, state)))
        else:
            out.append(CandidateReason(lk.rep.id, "skipped", lk.reason))
    return tuple(out)


def _queue(
    team: Team,
    industry: str | None,
    rules: Rules,
    state: RoutingState,
    now: datetime,
    exclude: frozenset[str],
    looks: list[_Look],
    notes: tuple[str, ...],
) -> Decision:
    """Step 6, ``after_hours: queue``: assign now among the reps whose next shift starts earliest.

    A rep already at ``max_open`` is left out: queueing more on a full rep
    would break the cap the operator set.
    """
    starts: dict[str, datetime] = {}
    for lk in looks:
        if lk.kind in ("away", "holiday", "off_hours") and not _is_full(lk.rep, state.rep(lk.rep.id)):
            at = _next_available(lk.rep, state.rep(lk.rep.id), now)
            if at is not None:
                starts[lk.rep.id] = at
    if not starts:
        return _on_call(team, rules, now, exclude, looks, notes, f"nobody in team {team.id} has a shift ahead")
    earliest = min(starts.values())
    pool = [lk.rep for lk in looks if starts.get(lk.rep.id) == earliest]
    chosen = _ranked(pool, team, industry, state)[0]
    prefix = f"queued for next shift {_local(earliest, chosen.timezone)}; "
    candidates = _candidates(looks, chosen, pool, team, industry, state, chosen_prefix=prefix)
    return Decision(chosen.id, team.id, "queued", earliest, candidates, notes)


def _on_call(
    team: Team,
    rules: Rules,
    now: datetime,
    exclude: frozenset[str],
    looks: list[_Look],
    notes: tuple[str, ...],
    why: str,
) -> Decision:
    """Step 6's last resort: ``routing.on_call`` at once, whatever their own hours; else unrouted."""
    on_call = rules.routing.on_call
    rep = rules.rep(on_call) if on_call else None
    if rep is None or rep.id in exclude:
        skipped = tuple(CandidateReason(lk.rep.id, "skipped", lk.reason) for lk in looks)
        problem = "no on_call rep is set" if on_call is None else f"on_call {on_call} is excluded or unknown"
        return _unrouted(team.id, now, skipped, notes + (f"{why}; {problem}",))
    candidates = [
        CandidateReason(lk.rep.id, "chosen", f"on call: {why} ({lk.reason})")
        if lk.rep.id == rep.id
        else CandidateReason(lk.rep.id, "skipped", lk.reason)
        for lk in looks
    ]
    if all(c.rep_id != rep.id for c in candidates):
        candidates.append(CandidateReason(rep.id, "chosen", f"on call: {why}"))
    return Decision(rep.id, team.id, "on_call", now, tuple(candidates), notes)


def _unrouted(
    team_id: str | None, now: datetime, candidates: tuple[CandidateReason, ...], notes: tuple[str, ...]
) -> Decision:
    return Decision(None, team_id, "unrouted", now, candidates, notes)
