"""The ``leadrouter`` command."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from routing.config import Rules, RulesError, load_rules
from routing.durations import parse_duration
from routing.events import EventError, iso, parse_time


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit 1."""


# ---------------------------------------------------------------- helpers


def _rules(path: str | None) -> Rules:
    from worker.settings import get_settings

    p = Path(path) if path else get_settings().config_path
    try:
        return load_rules(p)
    except RulesError as exc:
        raise CliError(f"{p}: invalid rules\n" + "\n".join(f"  {e}" for e in exc.errors)) from None


def read_events(path: str) -> Iterator[Any]:
    """JSON (an object, a list, or a Segment batch ``{"batch": [...]}``) or JSON lines, from a file or ``-``."""
    if path == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}") from None
    stripped = text.strip()
    if not stripped:
        return iter(())
    if stripped[0] in "[{":
        try:
            doc = json.loads(stripped)
        except ValueError:
            doc = None
        if isinstance(doc, list):
            return iter(doc)
        if isinstance(doc, dict):
            return iter(doc["batch"] if isinstance(doc.get("batch"), list) else [doc])
    return _json_lines(stripped, path)


def _json_lines(text: str, path: str) -> Iterator[Any]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            yield _BadLine(n, f"{path}:{n}: malformed JSON: {exc.msg} at column {exc.colno}")
        except ValueError as exc:   # not a JSONDecodeError: an integer too long to convert
            yield _BadLine(n, f"{path}:{n}: malformed JSON: {exc}")


class _BadLine(dict):  # type: ignore[type-arg]
    """A line that is not JSON: carried through so it is reported in order, never silently dropped."""

    def __init__(self, line: int, message: str):
        super().__init__()
        self.line, self.message = line, message


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str], align: str = "") -> str:
    """Columns padded to their widest cell; ``align`` holds one ``l``/``r`` per column (default left)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = [j < len(align) and align[j] == "r" for j in range(len(headers))]
    out = []
    for i, r in enumerate(cells):
        out.append("  ".join(c.rjust(widths[j]) if right[j] else c.ljust(widths[j])
                             for j, c in enumerate(r)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _num(x: float) -> str:
    return f"{x:g}"


def _parse_ts(text: str) -> datetime:
    try:
        return parse_time(text, "--as-of")
    except EventError as exc:
        raise CliError(str(exc)) from None


# ---------------------------------------------------------------- commands


def cmd_check_config(args: argparse.Namespace) -> int:
    from worker.settings import get_settings

    path = Path(args.path) if args.path else get_settings().config_path
    try:
        rules = load_rules(path)
    except RulesError as exc:
        print(f"{path}: {len(exc.errors)} error(s)", file=sys.stderr)
        for e in exc.errors:
            print(f"  {path}:{e.line or '?'}: {e.path or '(top)'}: {e.message}", file=sys.stderr)
        return 1
    print(f"{path}: ok (rules {rules.hash}: {len(rules.scoring.events)} events, {len(rules.scoring.fit)} fit rules, "
          f"{len(rules.reps)} reps, {len(rules.teams)} teams)")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from routing.simulate import compare, simulate

    rules = _rules(args.config)
    # load both rule sets before replaying anything: a bad --compare file fails at once
    other_rules = _rules(args.compare) if args.compare else None
    events = list(read_events(args.events))
    bad = [e for e in events if isinstance(e, _BadLine)]
    good = [e for e in events if not isinstance(e, _BadLine)]
    as_of = _parse_ts(args.as_of) if args.as_of else None
    replay = simulate(good, rules, as_of=as_of)
    errors = [{"line": b.line, "error": b.message} for b in bad] + replay.errors
    other = simulate(good, other_rules, as_of=as_of) if other_rules is not None else None
    if args.json:
        out = replay.to_json()
        out["errors"] = errors
        if other is not None and other_rules is not None:
            out["compare"] = {"config": args.compare, "rules": [rules.hash, other_rules.hash],
                              **compare(replay, other)}
        json.dump(out, sys.stdout, indent=1)
        print()
    else:
        print(_render_replay(replay, len(good), rules.hash))
        if other is not None and other_rules is not None:
            print()
            print(_render_compare(compare(replay, other), args.compare, rules.hash, other_rules.hash))
        for e in errors:
            print(f"error: {_describe_event_error(e)}", file=sys.stderr)
    return 0


def _describe_event_error(e: dict[str, Any]) -> str:
    if "index" in e:
        field = f"{e['field']}: " if e.get("field") else ""
        return f"event #{e['index'] + 1}: {field}{e['error']}"
    return str(e["error"])


def _share(x: float) -> str:
    return f"{x:.0%}"


def _arrows(pairs: Sequence[tuple[Any, ...]]) -> list[str]:
    """``before -> after`` with the arrows lined up down the column; None shows as ``-``."""
    shown = [("-" if a is None else str(a), "-" if b is None else str(b)) for a, b in pairs]
    width = max((len(a) for a, _ in shown), default=0)
    return [f"{a.ljust(width)} -> {b}" for a, b in shown]


def _render_replay(replay: Any, n_events: int, rules_hash: str) -> str:
    s = replay.summary
    lines = [f"replayed {n_events} event(s) under rules {rules_hash}, scores as of {s['as_of'] or '-'}", ""]
    rows = [(r.lead_id, _num(r.score), _num(r.behavior), _num(r.fit), r.tier.replace("_", "-"),
             iso(r.hot_at) or "-", iso(r.red_hot_at) or "-", r.rep or "-", (r.route or "-").replace("_", "-"))
            for r in replay.leads]
    if rows:
        lines += [_table(rows, ["lead", "score", "behavior", "fit", "tier", "hot at", "red-hot at", "rep", "route"],
                         align="lrrrl"), ""]
    tiers = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in s["tiers"].items())
    summary = [
        ("leads", s["leads"], tiers),
        ("went hot", s["hot_crossings"], f"{s['red_hot_crossings']} red-hot"),
        ("routed", s["routed"], "assigned a rep (after-hours and on-call included)"),
        ("after hours", s["after_hours"], "queued for the rep's next shift"),
        ("on-call", s["on_call"], "sent to the on-call rep"),
        ("unrouted", s["unrouted"], "nobody to route to: unrouted_notify alerted"),
    ]
    lines.append("summary")
    lines += [f"  {name.ljust(11)} {str(n).rjust(5)}  {note}".rstrip() for name, n, note in summary]
    if s["per_rep"]:
        lines += ["", _table([(rep, v["leads"], _share(v["share"])) for rep, v in s["per_rep"].items()],
                             ["rep", "leads", "share"], align="lrr")]
    return "\n".join(lines)


def _render_compare(cmp: dict[str, Any], path: str, before_hash: str, after_hash: str) -> str:
    changed = cmp["changed"]
    lines = [f"compared with {path} (rules {before_hash} -> {after_hash}): "
             f"{len(changed)} of {cmp['leads'][0]} lead(s) change rep or tier"]
    if changed:
        tiers = _arrows([tuple(t.replace("_", "-") if t else t for t in c["tier"]) for c in changed])
        reps = _arrows([tuple(c["rep"]) for c in changed])
        scores = _arrows([tuple(_num(x) if x is not None else None for x in c["score"]) for c in changed])
        rows: list[tuple[Any, ...]] = [(c["lead_id"], t, r, sc)
                                       for c, t, r, sc in zip(changed, tiers, reps, scores, strict=True)]
        lines += ["", _table(rows, ["lead", "tier before -> after", "rep before -> after", "score"])]
    if cmp["per_rep"]:
        rows = [(rep, v["before"], v["after"], f"{v['change']:+d}", _share(v["share_before"]),
                 _share(v["share_after"]), f"{v['share_change'] * 100:+.0f} pts")
                for rep, v in cmp["per_rep"].items()]
        lines += ["", _table(rows, ["rep", "leads before", "leads after", "change", "share before", "share after", "shift"],
                             align="lrrrrrr")]
    outcomes = [("went hot", "hot_crossings"), ("red-hot", "red_hot_crossings"), ("routed", "routed"),
                ("after hours", "after_hours"), ("on-call", "on_call"), ("unrouted", "unrouted")]
    rows = [(name, cmp[key][0], cmp[key][1], f"{cmp[key][1] - cmp[key][0]:+d}") for name, key in outcomes]
    lines += ["", _table(rows, ["outcome", "before", "after", "change"], align="lrrr")]
    return "\n".join(lines)


def cmd_send(args: argparse.Namespace) -> int:
    from worker.publish import publish
    from worker.runtime import get_runtime

    rt = get_runtime()
    items = list(read_events(args.file))
    bad = [e for e in items if isinstance(e, _BadLine)]
    good = [e for e in items if not isinstance(e, _BadLine)]
    result = publish(rt.redis, good, rt.rules)
    for b in bad:
        print(f"error: {b.message}", file=sys.stderr)
    for e in result.errors:
        print(f"error: event {e['index']} ({e['messageId'] or 'no messageId'}): {e['field'] or 'event'}: {e['error']}",
              file=sys.stderr)
    print(f"queued {result.accepted} event(s)" + (f", {result.fast} in the fast lane" if result.fast else "")
          + (f"; {len(result.errors) + len(bad)} rejected" if result.errors or bad else ""))
    return 1 if (result.errors or bad) else 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from worker.migrate import upgrade
    from worker.settings import get_settings

    url = get_settings().database_url
    upgrade(url)
    print("database schema is up to date")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from worker.explain import explain, render_explain
    from worker.runtime import get_runtime

    rt = get_runtime()
    with rt.sessions() as session:
        data = explain(session, args.lead_id, rt.rules)
    if data is None:
        raise CliError(f"no lead {args.lead_id!r}")
    if args.json:
        json.dump(data, sys.stdout, indent=1, default=str)
        print()
    else:
        print(render_explain(data))
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from worker import operator
    from worker.runtime import get_runtime

    rt = get_runtime()
    if args.action == "retry":
        if args.id is None:
            raise CliError("dead-letters retry needs an ID (see dead-letters list)")
        try:
            with rt.sessions.begin() as session:
                msg = operator.retry_dead_letter(session, rt.redis, rt.rules, args.id)
        except operator.OpsError as exc:
            raise CliError(str(exc)) from None
        print(msg)
        return 0
    with rt.sessions() as session:
        rows = operator.list_dead_letters(session)
    if args.json:
        json.dump(rows, sys.stdout, indent=1, default=str)
        print()
    elif not rows:
        print("no dead letters")
    else:
        print(_table([(r["id"], r["created_at"], r["source"], r["message_id"] or "-", r["error"][:80],
                       r["attempts"], r["retried_at"] or "-") for r in rows],
                     ["id", "when", "source", "messageId", "error", "attempts", "retried"]))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.service import run_worker
    from worker.startup import check_or_exit

    check_or_exit("worker")
    return run_worker(concurrency=args.concurrency, alert_concurrency=args.alert_concurrency)


def cmd_beat(args: argparse.Namespace) -> int:
    import threading

    from worker.logs import dump_stacks_on_sigusr1, setup_logging
    from worker.outbound import start_background
    from worker.scheduler import run_forever
    from worker.startup import check_or_exit

    check_or_exit("beat")
    setup_logging()
    dump_stacks_on_sigusr1()
    stop = threading.Event()
    sender = start_background(stop)      # outbound webhooks and Slack, on threads of their own
    try:
        run_forever()
    finally:
        stop.set()
        sender.join(timeout=5)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from worker.logs import dump_stacks_on_sigusr1, setup_logging
    from worker.startup import check_or_exit

    check_or_exit("api")
    setup_logging()
    dump_stacks_on_sigusr1()
    uvicorn.run("worker.api:create_app", factory=True, host=args.host, port=args.port, log_config=None,
                access_log=False)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from worker.dev import run_dev

    return run_dev(demo=args.demo, port=args.port)


def cmd_status(args: argparse.Namespace) -> int:
    from worker import status, tables
    from worker.runtime import get_runtime
    from worker.startup import rules_problems

    rt = get_runtime()
    path = rt.settings.config_path
    errors = rules_problems(path)   # a broken file on disk is news for status, not a reason to fail
    rules = None if errors else rt.rules
    with rt.sessions() as session:
        data = status.status(session, rt.redis, rules,
                             rules_file={"path": str(path), "ok": not errors, "errors": errors})
    if args.json:
        json.dump(data.as_json(), sys.stdout, indent=1, default=str)
        print()
    else:
        print(tables.render_status(data))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from worker import reports, tables
    from worker.runtime import get_runtime

    since = _duration_arg(args.since)
    rt = get_runtime()
    with rt.sessions() as session:
        data = reports.report(session, rt.rules, since)
    if args.json:
        json.dump(data.as_json(), sys.stdout, indent=1, default=str)
        print()
    else:
        print(tables.render_report(data))
    return 0


def _duration_arg(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _at_least_one(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {n}")
    return n


def cmd_rep(args: argparse.Namespace) -> int:
    from worker import operator
    from worker.db import now_utc
    from worker.runtime import get_runtime

    rt = get_runtime()
    if rt.rules.rep(args.rep) is None:
        raise CliError(f"unknown rep {args.rep!r} (reps: {', '.join(r.id for r in rt.rules.reps)})")
    try:
        with rt.sessions.begin() as session:
            if args.action == "away":
                until = None
                if args.until:
                    until = _parse_ts(args.until)
                elif args.for_:
                    until = now_utc() + _duration_arg(args.for_)
                end = operator.set_away(session, rt.rules, args.rep, until, actor=_actor(),
                                   reason=getattr(args, "reason", None))
                print(f"{args.rep} is away" + (f" until {iso(end)}" if until else " until `leadrouter rep back`"))
            else:
                operator.set_back(session, rt.rules, args.rep, actor=_actor())
                print(f"{args.rep} is back")
    except operator.OpsError as exc:
        raise CliError(str(exc)) from None
    return 0


def _actor() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER", "operator")


def cmd_lead(args: argparse.Namespace) -> int:
    from worker import operator
    from worker.runtime import get_runtime
    from worker.tasks import dispatch_steps

    rt = get_runtime()
    try:
        with rt.sessions.begin() as session:
            result = operator.lead_command(session, rt.rules, args.action, args.lead_id, getattr(args, "rep", None),
                                           actor=_actor(), reason=args.reason)
    except operator.OpsError as exc:
        raise CliError(str(exc)) from None
    dispatch_steps(result.due_steps)  # after the commit, as the pipeline does
    print(result.message)
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    from worker import ops
    from worker.runtime import get_runtime

    paused = args.command == "pause"
    with get_runtime().sessions.begin() as session:
        ops.set_paused(session, paused, actor=_actor(), reason=getattr(args, "reason", None))
    print("alerting paused: events are still scored" if paused else "alerting resumed")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from worker import operator
    from worker.runtime import get_runtime

    try:
        with get_runtime().sessions.begin() as session:
            msg = operator.forget(session, args.lead_id, actor=_actor())
    except operator.OpsError as exc:
        raise CliError(str(exc)) from None
    print(msg)
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="leadrouter", description="Speed-to-lead routing worker.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("dev", help="run the whole stack locally (Redis, SQLite, worker, scheduler, API)")
    s.add_argument("--demo", action="store_true", help="replay a demo stream so a lead goes hot")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=cmd_dev)
    s = sub.add_parser("worker", help="run the Celery workers (events, fast lane, alerts)")
    s.add_argument("--concurrency", type=_at_least_one, default=2, help="event worker processes")
    s.add_argument("--alert-concurrency", type=_at_least_one, default=2,
                   help="fast-lane worker processes, and as many alert processes")
    s.set_defaults(func=cmd_worker)
    s = sub.add_parser("beat", help="run the scheduler tick (alert timers, drains, rule reloads) and the outbound webhook sender")
    s.set_defaults(func=cmd_beat)
    s = sub.add_parser("api", help="run the HTTP API")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=cmd_api)
    s = sub.add_parser("migrate", help="bring the database schema up to date")
    s.set_defaults(func=cmd_migrate)
    s = sub.add_parser("check-config", help="validate a rules file")
    s.add_argument("path", nargs="?")
    s.set_defaults(func=cmd_check_config)
    s = sub.add_parser("send", help="publish JSON or JSON-lines events")
    s.add_argument("file", nargs="?", default="-")
    s.set_defaults(func=cmd_send)
    s = sub.add_parser("simulate", help="replay events through the scoring and routing core")
    s.add_argument("--events", required=True)
    s.add_argument("--config")
    s.add_argument("--compare")
    s.add_argument("--as-of", dest="as_of")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_simulate)
    s = sub.add_parser("explain", help="a lead's whole trace")
    s.add_argument("lead_id")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_explain)
    s = sub.add_parser("status", help="queues, hot leads, alerts due, reps")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("report", help="speed-to-lead and per-rep report")
    s.add_argument("--since", default="7d")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_report)
    s = sub.add_parser("rep", help="rep availability")
    rs = s.add_subparsers(dest="action", required=True)
    a = rs.add_parser("away")
    a.add_argument("rep")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--until")
    g.add_argument("--for", dest="for_")
    a.add_argument("--reason")
    b = rs.add_parser("back")
    b.add_argument("rep")
    b.add_argument("--reason")
    s.set_defaults(func=cmd_rep)
    s = sub.add_parser("lead", help="assign, release or close a lead by hand")
    ls = s.add_subparsers(dest="action", required=True)
    la = ls.add_parser("assign")
    la.add_argument("lead_id")
    la.add_argument("rep")
    la.add_argument("--reason")
    for name in ("release", "close"):
        x = ls.add_parser(name)
        x.add_argument("lead_id")
        x.add_argument("--reason")
    s.set_defaults(func=cmd_lead)
    for name in ("pause", "resume"):
        s = sub.add_parser(name, help=f"{name} all alerting")
        s.add_argument("--reason")
        s.set_defaults(func=cmd_pause)
    s = sub.add_parser("forget", help="erase a lead's personal data")
    s.add_argument("lead_id")
    s.add_argument("--reason")
    s.set_defaults(func=cmd_forget)
    s = sub.add_parser("dead-letters", help="inspect and replay failed events")
    s.add_argument("action", nargs="?", choices=["list", "retry"], default="list")
    s.add_argument("id", nargs="?", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_dead_letters)
    return p


def _where(url: str) -> str:
    """``scheme://host:port/path`` of a URL, without user name or password."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _unreachable(exc: BaseException) -> str | None:
    """One line naming the service an operator's command could not reach, or None for any other error."""
    import redis
    from sqlalchemy.exc import DBAPIError, OperationalError

    from worker.settings import get_settings

    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return (f"Redis is unreachable at {_where(get_settings().redis_url)} ({type(exc).__name__}); "
                "is it running, and is REDIS_URL right?")
    orig = getattr(exc, "orig", None)
    sqlite_schema = type(orig).__module__.startswith("sqlite3") and "unable to open" not in str(orig)
    if (isinstance(exc, OperationalError) and not sqlite_schema) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return (f"the database is unreachable at {_where(get_settings().database_url)} "
                f"({type(orig or exc).__name__}); "
                "is it running, and is DATABASE_URL right?")
    return None


# ---------------------------------------------------------------- terminal safety

# What an operator's terminal must never receive raw from event data: C0 controls but newline and
# tab (escape sequences can rewrite the screen, retitle the window, or hide text with \r), DEL, C1
# controls, line and paragraph separators, and bidirectional overrides (text that reads one way
# and is another).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u200e\u200f]")


def escape_controls(text: str) -> str:
    """``text`` with every character a terminal would act on written as a visible escape (``\x1b``)."""
    return _UNSAFE.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


class _EscapingStream(io.TextIOBase):
    """A text stream that escapes control characters on their way to the real one."""

    def __init__(self, inner: Any):
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(escape_controls(text))
        return len(text)

    def flush(self) -> None:
        self._inner.flush()

    def isatty(self) -> bool:
        return bool(self._inner.isatty())

    def fileno(self) -> int:
        return int(self._inner.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self._inner, "encoding", "utf-8"))


# Long-running parts and `dev` print their own (console alerts, coloured progress): left as they are.
_RAW_OUTPUT = {"dev", "worker", "beat", "api"}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    streams = sys.stdout, sys.stderr
    if args.command not in _RAW_OUTPUT and not isinstance(sys.stdout, _EscapingStream):
        sys.stdout, sys.stderr = _EscapingStream(sys.stdout), _EscapingStream(sys.stderr)
    try:
        return _run(args)
    finally:
        sys.stdout, sys.stderr = streams


def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"leadrouter: {exc}", file=sys.stderr)
        return 1
    except RulesError as exc:
        print("leadrouter: invalid rules\n" + "\n".join(f"  {e}" for e in exc.errors), file=sys.stderr)
        return 1
    except ValidationError as exc:   # settings: the refused values are not in the message (hide_input_in_errors)
        print(f"leadrouter: invalid settings: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        unreachable = _unreachable(exc)
        if unreachable is None:
            raise
        print(f"leadrouter: {unreachable}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
