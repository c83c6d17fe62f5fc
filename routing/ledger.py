"""The routing history kept in memory, for ``leadrouter simulate``.

A replay records each assignment, first contact and release here, and asks
:meth:`RoutingLedger.state` for the :class:`RoutingState` that the next
routing decision reads. The live worker computes the same state from its
database; the definitions below are the contract both follow:

- **assignment**: ``(lead, rep, team_id, domain, at)``, one per routing,
  reassignment or pass to a new rep. The newest assignment of a lead is its
  *current* one; a later assignment of the same lead replaces it, and
  ``released`` (an operator's release, or a pass nobody took over) leaves the
  lead with none.
- **open_leads** of a rep at ``now``: leads whose current assignment is the
  rep's, made in ``(now - routing.open_window, now]`` (24 h by default: an
  assignment exactly 24 h old no longer counts), with no contact at or after
  the assignment's time and at or before ``now``.
- **assigned_7d[team]** of a rep at ``now``: the rep's assignments carrying
  that ``team_id`` made in ``(now - 7 days, now]``, current or not (a
  reassigned lead still counted for the rep it first went to). Assignments
  without a team id (account owners) count nowhere.
- **domain_owners[domain]** at ``now``: the rep of the latest assignment with
  that domain made at or before ``now`` (ties: the later recorded).

Pure: no I/O, no clock; times are aware datetimes passed in.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from routing.config import Rules
from routing.selection import RepState, RoutingState

ROUND_ROBIN_WINDOW = timedelta(days=7)


@dataclass(frozen=True)
class Assignment:
    """One routing of a lead to a rep. ``seq`` orders records made at the same instant."""

    lead_id: str
    rep_id: str
    team_id: str | None
    domain: str | None
    at: datetime
    seq: int


class RoutingLedger:
    """Assignments, contacts and releases of a replay; see the module docstring for the definitions."""

    def __init__(self) -> None:
        self._by_time: list[tuple[datetime, int]] = []  # (at, seq), sorted: windows by bisection
        self._assignments: list[Assignment] = []  # indexed by seq
        self._current: dict[str, Assignment] = {}  # lead id -> current assignment
        self._contacts: dict[str, list[datetime]] = defaultdict(list)  # lead id -> contact times, sorted
        self._by_domain: dict[str, list[tuple[datetime, int]]] = defaultdict(list)  # sorted (at, seq)

    def record(self, lead_id: str, rep_id: str, team_id: str | None, domain: str | None, at: datetime) -> None:
        """The lead was assigned to ``rep_id`` at ``at`` (``team_id`` as in ``Decision.team_id``)."""
        seq = len(self._assignments)
        domain = domain.lower() if domain else None
        a = Assignment(lead_id, rep_id, team_id, domain, at, seq)
        self._assignments.append(a)
        insort(self._by_time, (at, seq))
        self._current[lead_id] = a
        if domain:
            insort(self._by_domain[domain], (at, seq))

    def contacted(self, lead_id: str, at: datetime) -> None:
        """A ``Lead Contacted`` for the lead at ``at``: frees the slot of an assignment made at or before it."""
        insort(self._contacts[lead_id], at)

    def released(self, lead_id: str) -> None:
        """The lead has no current assignment any more (its slot frees at once)."""
        self._current.pop(lead_id, None)

    def current(self, lead_id: str) -> Assignment | None:
        """The lead's current assignment, if any (e.g. to find the previous rep to exclude)."""
        return self._current.get(lead_id)

    def state(self, rules: Rules, now: datetime) -> RoutingState:
        """The routing state as of ``now``, for every rep in the rules (and any rep seen in the history)."""
        open_leads = self._open_leads(now, rules.routing.open_window)
        assigned = self._assigned(now)
        rep_ids = dict.fromkeys([r.id for r in rules.reps] + [a.rep_id for a in self._assignments])
        reps = {
            rid: RepState(open_leads=open_leads.get(rid, 0), assigned_7d=dict(assigned.get(rid, {})))
            for rid in rep_ids
        }
        return RoutingState(reps=reps, domain_owners=_DomainOwners(self, now, len(self._assignments)))

    # ------------------------------------------------------------ windows

    def _made_in(self, start: datetime, now: datetime) -> Iterator[Assignment]:
        """Assignments with ``start < at <= now``."""
        lo = bisect_right(self._by_time, (start, len(self._assignments)))
        hi = bisect_right(self._by_time, (now, len(self._assignments)))
        for _, seq in self._by_time[lo:hi]:
            yield self._assignments[seq]

    def _open_leads(self, now: datetime, window: timedelta) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for a in self._made_in(now - window, now):
            if self._current.get(a.lead_id) is a and not self._contacted_since(a, now):
                counts[a.rep_id] += 1
        return counts

    def _contacted_since(self, a: Assignment, now: datetime) -> bool:
        times = self._contacts.get(a.lead_id, [])
        i = bisect_left(times, a.at)
        return i < len(times) and times[i] <= now

    def _assigned(self, now: datetime) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for a in self._made_in(now - ROUND_ROBIN_WINDOW, now):
            if a.team_id is not None:
                counts[a.rep_id][a.team_id] += 1
        return counts

    def _owner(self, domain: str, now: datetime, limit: int) -> str | None:
        """The rep of the latest assignment of ``domain`` at or before ``now`` among the first ``limit`` records."""
        entries = self._by_domain.get(domain, [])
        i = bisect_right(entries, (now, len(self._assignments)))
        for _, seq in reversed(entries[:i]):
            if seq < limit:
                return self._assignments[seq].rep_id
        return None

    def _domains(self) -> Iterator[str]:
        return iter(self._by_domain)


class _DomainOwners(Mapping[str, str]):
    """``domain_owners`` as of one instant, looked up on demand.

    A replay may touch thousands of domains and routing asks about one, so
    nothing is copied; ``limit`` (the number of records when the state was
    taken) keeps it a snapshot even if the ledger grows afterwards.
    """

    def __init__(self, ledger: RoutingLedger, now: datetime, limit: int) -> None:
        self._ledger, self._now, self._limit = ledger, now, limit

    def __getitem__(self, domain: str) -> str:
        owner = self._ledger._owner(domain.lower(), self._now, self._limit)
        if owner is None:
            raise KeyError(domain)
        return owner

    def __iter__(self) -> Iterator[str]:
        return (d for d in self._ledger._domains() if self._ledger._owner(d, self._now, self._limit) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)
