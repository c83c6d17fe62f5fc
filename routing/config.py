"""The rules file, parsed once into typed models.

Everything an operator tunes lives here: scoring, page mapping, reps, teams,
accounts, routing policy, alert cadence and outbound integrations. Loading a
file returns either a :class:`Rules` or a list of :class:`ConfigError`, each
naming the key path and the line it came from.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from routing.durations import parse_duration

Duration = timedelta


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _duration(v: Any) -> timedelta:
    return parse_duration(v)


# ---------------------------------------------------------------- conditions


class Condition(_Model):
    """A test on one trait, read by dotted path: ``equals``, ``in``, ``min``/``max``."""

    trait: str
    equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        if self.equals is None and self.in_ is None and self.min is None and self.max is None:
            raise ValueError("a condition needs one of equals, in, min, max")
        return self


class RedHotRule(_Model):
    all: list[Condition] = Field(default_factory=list)


# ---------------------------------------------------------------- scoring


class EventRule(_Model):
    points: float
    max_count: int = Field(default=1, ge=1)


class DecayStep(_Model):
    """From ``from`` age on, behaviour points count ``factor`` times."""

    from_age: Duration = Field(alias="from")
    factor: float = Field(ge=0)

    _v = field_validator("from_age", mode="before")(_duration)


class FitRule(_Model):
    """Points from one trait; scores at most once.

    ``in`` / ``min``-``max`` / ``equals`` award ``points``; ``map`` awards per value.
    """

    name: str
    trait: str
    points: float | None = None
    in_: list[Any] | None = Field(default=None, alias="in")
    min: float | None = None
    max: float | None = None
    equals: Any = None
    map: dict[str, float] | None = None

    @model_validator(mode="after")
    def _shape(self) -> FitRule:
        if self.map is not None:
            if self.points is not None or self.in_ is not None or self.min is not None or self.max is not None:
                raise ValueError("a fit rule with map takes no points, in, min or max")
        else:
            if self.points is None:
                raise ValueError("a fit rule needs points (or a map of value: points)")
            if self.in_ is None and self.min is None and self.max is None and self.equals is None:
                raise ValueError("a fit rule needs one of in, min, max, equals, map")
        return self


class Thresholds(_Model):
    warm: float = 40
    hot: float = 75

    @model_validator(mode="after")
    def _order(self) -> Thresholds:
        if self.warm > self.hot:
            raise ValueError("warm must not be above hot")
        return self


class Scoring(_Model):
    thresholds: Thresholds = Thresholds()
    red_hot: RedHotRule = RedHotRule()
    decay: list[DecayStep] = Field(default_factory=list)
    events: dict[str, EventRule] = Field(default_factory=dict)
    fit: list[FitRule] = Field(default_factory=list)
    rehot_after_days: float = Field(default=30, ge=0)

    @field_validator("decay")
    @classmethod
    def _sorted(cls, v: list[DecayStep]) -> list[DecayStep]:
        ages = [s.from_age for s in v]
        if ages != sorted(ages):
            raise ValueError("decay steps must be in increasing age order")
        return v

    @field_validator("fit")
    @classmethod
    def _unique_names(cls, v: list[FitRule]) -> list[FitRule]:
        names = [r.name for r in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"fit rule names must be unique: {sorted(dup)}")
        return v


class PageRule(_Model):
    """A ``page`` call becomes the track event ``event`` when its path or name matches."""

    event: str
    path: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _some(self) -> PageRule:
        if self.path is None and self.name is None:
            raise ValueError("a page rule needs path or name")
        return self


# ---------------------------------------------------------------- people


def _zone(v: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {v!r} (use an IANA name such as America/New_York)") from None
    return v


Channel = Literal["sms", "email", "console", "voice"]
DEFAULT_CHANNELS: tuple[Channel, ...] = ("sms", "email")


class Rep(_Model):
    id: str
    name: str | None = None
    phone: str | None = None
    email: str | None = None
    timezone: str = "UTC"
    hours: str = "Mon-Sun 00:00-24:00"
    channels: list[Channel] = Field(default_factory=lambda: list(DEFAULT_CHANNELS))
    weight: float = Field(default=1, gt=0)
    max_open: int | None = Field(default=None, ge=1)
    skills: list[str] = Field(default_factory=list)
    manager: str | None = None
    holidays: list[str] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _zone(v)

    @model_validator(mode="after")
    def _voice_needs_phone(self) -> Rep:
        if "voice" in self.channels and not self.phone:
            raise ValueError("the voice channel needs the rep's phone")
        return self

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str) -> str:
        from routing.hours import parse_hours

        parse_hours(v)
        return v

    @field_validator("holidays")
    @classmethod
    def _dates(cls, v: list[Any]) -> list[str]:
        from datetime import date

        out = []
        for d in v:
            out.append(date.fromisoformat(str(d)).isoformat())
        return out

    @property
    def display(self) -> str:
        return self.name or self.id


class Team(_Model):
    id: str
    match: dict[str, Any] = Field(default_factory=dict)
    reps: list[str]

    @field_validator("match")
    @classmethod
    def _match(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, test in v.items():
            if isinstance(test, dict):
                extra = set(test) - {"min", "max"}
                if extra or not test:
                    raise ValueError(f"match {key}: a range is {{min, max}}")
                if any(not isinstance(x, int | float) or isinstance(x, bool) for x in test.values()):
                    raise ValueError(f"match {key}: min and max are numbers")
        return v

    @field_validator("reps")
    @classmethod
    def _unique_reps(cls, v: list[str]) -> list[str]:
        dup = sorted({r for r in v if v.count(r) > 1})
        if dup:
            raise ValueError(f"a rep is listed twice in the team: {', '.join(dup)}")
        return v


class AutoAway(_Model):
    """``routing.auto_away``: a rep who lets ``after_missed`` first alerts in a row pass the
    first-contact SLA unclaimed is set away ``for`` this long; their manager is told."""

    after_missed: int = Field(default=3, ge=1)
    for_: Duration = Field(default=timedelta(hours=1), alias="for")

    _v = field_validator("for_", mode="before")(_duration)

    @field_validator("for_")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("auto_away.for must be a positive duration such as 1h")
        return v


class Fairness(_Model):
    """``routing.fairness``: ``credit_back`` takes a lead reassigned away from a rep, or closed as junk
    within ``junk_within`` of its assignment, off that rep's 7-day round-robin count."""

    credit_back: bool = False
    junk_within: Duration = timedelta(hours=1)

    _v = field_validator("junk_within", mode="before")(_duration)


class RoutingPolicy(_Model):
    after_hours: Literal["queue", "on_call"] = "queue"
    on_call: str | None = None
    unrouted_notify: list[str] = Field(default_factory=list)
    open_window: Duration = timedelta(hours=24)
    # when a voice alert's bridge must not ring the lead, in the lead's own zone (off when unset)
    quiet_hours: str | None = None
    quiet_hours_timezone: str = "UTC"   # the zone of a lead that names none
    auto_away: AutoAway | None = None      # off unless the block is there
    fairness: Fairness = Fairness()

    _v = field_validator("open_window", mode="before")(_duration)

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, v: str | None) -> str | None:
        from routing.hours import parse_hours

        if v is not None:
            parse_hours(v)
        return v

    @field_validator("quiet_hours_timezone")
    @classmethod
    def _quiet_tz(cls, v: str) -> str:
        return _zone(v)

    @model_validator(mode="after")
    def _on_call_needed(self) -> RoutingPolicy:
        # after_hours: on_call with nobody on call would make every night lead unrouted
        if self.after_hours == "on_call" and self.on_call is None:
            raise ValueError("after_hours: on_call needs routing.on_call (a rep id)")
        return self


# ---------------------------------------------------------------- alerts, outbound


AlertKindName = Literal["first", "retry", "escalation", "reassign", "priority", "fyi", "unrouted"]


class AlertChannels(_Model):
    """Per alert kind, the channels it goes out on (a rep still needs them in their own ``channels``).
    A kind left out uses the rep's channels as they are."""

    first: list[Channel] | None = None
    retry: list[Channel] | None = None
    escalation: list[Channel] | None = None
    reassign: list[Channel] | None = None
    priority: list[Channel] | None = None
    fyi: list[Channel] | None = None
    unrouted: list[Channel] | None = None

    def allows(self, kind: str, channel: str) -> bool:
        wanted = getattr(self, kind, None)
        return wanted is None or channel in wanted


class Voice(_Model):
    """Voice alerts: a call that reads the lead and bridges the rep to it on a keypress."""

    caller_ids: list[str] = Field(default_factory=list)   # E.164; empty: TWILIO_FROM_NUMBER
    contact_after: Duration = timedelta(seconds=20)       # a bridged call this long is first contact
    calls_per_second: float = Field(default=1, gt=0, le=100)   # Twilio's default: 1 call a second per account
    ring_timeout: Duration = timedelta(seconds=25)        # the rep's phone rings this long
    machine_detection: bool = True                        # voicemail counts as no answer

    _v = field_validator("contact_after", "ring_timeout", mode="before")(_duration)

    @field_validator("caller_ids")
    @classmethod
    def _e164(cls, v: list[str]) -> list[str]:
        import re

        bad = [n for n in v if not isinstance(n, str) or not re.fullmatch(r"\+[1-9][0-9]{6,14}", n)]
        if bad:
            raise ValueError(f"caller ids are E.164 numbers such as +14155550100, not {bad[0]!r}")
        if len(set(v)) != len(v):
            raise ValueError("a caller id is listed twice")
        return v

    @field_validator("ring_timeout")
    @classmethod
    def _ring(cls, v: timedelta) -> timedelta:
        if not timedelta(seconds=5) <= v <= timedelta(seconds=600):
            raise ValueError("ring_timeout is between 5s and 600s (Twilio's limits)")
        return v


class Alerts(_Model):
    first_contact_sla: Duration = timedelta(seconds=90)
    retries: list[Duration] = Field(
        default_factory=lambda: [parse_duration(x) for x in ("90s", "3m", "5m", "10m", "20m", "40m", "60m")]
    )
    escalate_from_retry: int = Field(default=3, ge=1)
    max_reassignments: int = Field(default=2, ge=0)
    max_event_age: Duration = timedelta(hours=24)
    hourly_cap: int = Field(default=30, ge=1)
    fast_lane_min_points: float = 15
    claim_token_ttl: Duration = timedelta(hours=24)

    channels: AlertChannels = AlertChannels()   # per alert kind: e.g. first: [voice, sms], retry: [sms]

    _v1 = field_validator("first_contact_sla", "max_event_age", "claim_token_ttl", mode="before")(_duration)

    @field_validator("retries", mode="before")
    @classmethod
    def _retries(cls, v: Any) -> list[timedelta]:
        if not isinstance(v, list):
            raise ValueError("retries is a list of offsets such as [90s, 3m]")
        out = [parse_duration(x) for x in v]
        if any(b <= a for a, b in zip(out, out[1:], strict=False)):
            raise ValueError("retries must be strictly increasing offsets from the first alert")
        if out and out[0] <= timedelta(0):
            raise ValueError("retry offsets must be positive")
        return out


LEAD_EVENTS = ("lead.hot", "lead.assigned", "lead.claimed", "lead.reassigned", "lead.contacted", "lead.unrouted")
LeadEventName = Literal["lead.hot", "lead.assigned", "lead.claimed", "lead.reassigned", "lead.contacted",
                        "lead.unrouted"]
SlackNotice = Literal["lead.hot", "lead.unrouted", "escalation"]
SLACK_NOTICES: tuple[SlackNotice, ...] = ("lead.hot", "lead.unrouted", "escalation")


class Webhook(_Model):
    """One receiver of signed lead events (a CRM, a data pipeline)."""

    url: str
    events: list[LeadEventName] | None = None   # None: all of them

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")) or len(v) < 10:
            raise ValueError("url must be an http:// or https:// address")
        return v

    def wants(self, event: str) -> bool:
        return self.events is None or event in self.events


class Slack(_Model):
    """Team-wide notices to a Slack incoming webhook (its URL is the SLACK_WEBHOOK_URL setting)."""

    notices: list[SlackNotice] = Field(default_factory=lambda: list(SLACK_NOTICES))


class Outbound(_Model):
    webhooks: list[Webhook] = Field(default_factory=list)
    slack: Slack = Slack()
    timeout: Duration = timedelta(seconds=10)            # per attempt
    retry_initial: Duration = timedelta(seconds=10)      # first backoff; doubles per attempt
    retry_max: Duration = timedelta(hours=1)             # longest wait between attempts
    retry_for: Duration = timedelta(hours=24)            # then the delivery is marked failed

    _v = field_validator("timeout", "retry_initial", "retry_max", "retry_for", mode="before")(_duration)

    @model_validator(mode="after")
    def _sane(self) -> Outbound:
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must be at least retry_initial")
        if self.timeout <= timedelta(0) or self.retry_initial <= timedelta(0):
            raise ValueError("timeout and retry_initial must be positive")
        return self


# ---------------------------------------------------------------- cross-references

_REFERENCES = "rule_references"
KeyPath = tuple[str | int, ...]


def _dotted(path: KeyPath) -> str:
    return ".".join(str(p) for p in path)


def reference_problems(data: Any) -> list[tuple[KeyPath, str]]:
    """Rep and team ids that point nowhere or repeat, read from plain (possibly invalid) data.

    It reads the raw mapping rather than the typed model so that an unknown rep in
    ``teams`` is still reported when, say, a time zone elsewhere in the file is wrong:
    an operator fixing a file wants every problem in one pass.
    """
    if not isinstance(data, dict):
        return []
    reps = data.get("reps", [])
    # without a readable list of reps every reference would look unknown: that noise helps nobody
    readable = isinstance(reps, list)
    reps = reps if readable else []
    ids = [r.get("id") for r in reps if isinstance(r, dict) and isinstance(r.get("id"), str)]
    known = set(ids)
    problems: list[tuple[KeyPath, str]] = []
    seen: set[str] = set()
    for i, rep in enumerate(reps):
        rep_id = rep.get("id") if isinstance(rep, dict) else None
        if not isinstance(rep_id, str):
            continue
        if rep_id in seen:
            problems.append((("reps", i, "id"), f"duplicate rep id {rep_id!r}"))
        seen.add(rep_id)

    def check(path: KeyPath, rid: Any) -> None:
        if readable and isinstance(rid, str) and rid not in known:
            problems.append((path, f"unknown rep {rid!r}"))

    for i, rep in enumerate(reps):
        if isinstance(rep, dict) and rep.get("manager") is not None:
            check(("reps", i, "manager"), rep["manager"])
    teams = data.get("teams")
    teams = teams if isinstance(teams, list) else []
    team_ids: set[Any] = set()
    for i, team in enumerate(teams):
        if not isinstance(team, dict):
            continue
        team_id = team.get("id")
        if isinstance(team_id, str) and team_id in team_ids:
            problems.append((("teams", i, "id"), f"duplicate team id {team_id!r}"))
        team_ids.add(team_id)
        members = team.get("reps")
        for j, rid in enumerate(members if isinstance(members, list) else []):
            check(("teams", i, "reps", j), rid)
    accounts = data.get("accounts")
    for domain, rid in (accounts.items() if isinstance(accounts, dict) else ()):
        check(("accounts", str(domain)), rid)
    routing = data.get("routing")
    if isinstance(routing, dict) and routing.get("on_call") is not None:
        check(("routing", "on_call"), routing["on_call"])
    return problems


# ---------------------------------------------------------------- the whole file


class Rules(_Model):
    scoring: Scoring = Scoring()
    pages: list[PageRule] = Field(default_factory=list)
    reps: list[Rep] = Field(default_factory=list)
    teams: list[Team] = Field(default_factory=list)
    accounts: dict[str, str] = Field(default_factory=dict)
    routing: RoutingPolicy = RoutingPolicy()
    alerts: Alerts = Alerts()
    outbound: Outbound = Outbound()
    voice: Voice = Voice()
    free_mail_domains: list[str] = Field(
        default_factory=lambda: [
            "gmail.com", "googlemail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com",
            "aol.com", "live.com", "msn.com", "proton.me", "protonmail.com", "gmx.com", "mail.com",
            "yandex.com", "zoho.com", "me.com",
        ]
    )
    hash: str = ""

    @model_validator(mode="after")
    def _references(self) -> Rules:
        problems = reference_problems(self.model_dump(include={"reps", "teams", "accounts", "routing"}))
        if problems:
            raise PydanticCustomError(
                _REFERENCES, "{problems}", {"problems": "; ".join(f"{_dotted(p)}: {m}" for p, m in problems)}
            )
        return self

    def rep(self, rep_id: str) -> Rep | None:
        for r in self.reps:
            if r.id == rep_id:
                return r
        return None


# ---------------------------------------------------------------- loading


@dataclass(frozen=True)
class ConfigError:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '(top)'}: {self.message}"


class RulesError(Exception):
    def __init__(self, errors: list[ConfigError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def _line_of(doc: Any, path: list[str | int]) -> int | None:
    """Walk the ruamel document along ``path``; the line of the deepest key found (1-based)."""
    node, line = doc, None
    for part in path:
        try:
            lc: Any = getattr(node, "lc", None)   # ruamel's line and column records
            if lc is not None and isinstance(node, dict) and part in node:
                line = lc.key(part)[0] + 1
                node = node[part]
            elif lc is not None and isinstance(node, list) and isinstance(part, int) and part < len(node):
                line = lc.item(part)[0] + 1
                node = node[part]
            else:
                break
        except Exception:
            break
    if line is None and hasattr(doc, "lc"):
        line = (doc.lc.line or 0) + 1
    return line


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def parse_rules(text: str, source: str = "<rules>") -> Rules:
    """Parse and validate rules text; raise :class:`RulesError` listing every problem."""
    yaml = YAML(typ="rt")
    try:
        doc = yaml.load(io.StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise RulesError([ConfigError("", (mark.line + 1) if mark else None, f"invalid YAML: {exc.problem}")]) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise RulesError([ConfigError("", 1, "the rules file must be a mapping of blocks (scoring, reps, …)")])
    data = _plain(doc)
    data.pop("hash", None)
    try:
        rules = Rules.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            if err["type"] == _REFERENCES:
                continue  # reported below from the raw data, whether or not the rest parsed
            loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "list[", "dict[")))]
            msg = err["msg"].removeprefix("Value error, ")
            loc = ["in" if p == "in_" else "from" if p == "from_age" else p for p in loc]
            errors.append(ConfigError(".".join(str(p) for p in loc), _line_of(doc, loc), msg))
        errors += [ConfigError(_dotted(p), _line_of(doc, list(p)), m) for p, m in reference_problems(data)]
        errors.sort(key=lambda e: e.line or 0)
        raise RulesError(errors) from None
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return rules.model_copy(update={"hash": digest})


def load_rules(path: str | Path) -> Rules:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise RulesError([ConfigError("", None, f"cannot read {p}: {exc.strerror}")]) from None
    return parse_rules(text, str(p))
