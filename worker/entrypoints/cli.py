"""The ``leadrouter`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import timedelta

from routing.config import RulesError
from routing.durations import parse_duration
from routing.events import iso
from worker.entrypoints.cli_offline import (
    BadLine,
    CliError,
    cmd_check_config,
    cmd_simulate,
    parse_ts,
    read_events,
    table,
)
from worker.entrypoints.terminal import EscapingStream

# ---------------------------------------------------------------- commands


def cmd_send(args: argparse.Namespace) -> int:
    from worker.adapters.runtime import get_runtime
    from worker.services.publish import publish

    rt = get_runtime()
    items = list(read_events(args.file))
    bad = [e for e in items if isinstance(e, BadLine)]
    good = [e for e in items if not isinstance(e, BadLine)]
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
    from worker.adapters.migrate import upgrade
    from worker.adapters.settings import get_settings

    url = get_settings().database_url
    upgrade(url)
    print("database schema is up to date")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from worker.adapters.runtime import get_runtime
    from worker.services.explain import explain, render_explain

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
    from worker.adapters.runtime import get_runtime
    from worker.services import operator

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
        print(table([(r["id"], r["created_at"], r["source"], r["message_id"] or "-", r["error"][:80],
                       r["attempts"], r["retried_at"] or "-") for r in rows],
                     ["id", "when", "source", "messageId", "error", "attempts", "retried"]))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.entrypoints.service import run_worker
    from worker.entrypoints.startup import check_or_exit

    check_or_exit("worker")
    return run_worker(concurrency=args.concurrency, alert_concurrency=args.alert_concurrency)


def cmd_beat(args: argparse.Namespace) -> int:
    import threading

    from worker.adapters.logs import dump_stacks_on_sigusr1, setup_logging
    from worker.adapters.runtime import get_runtime, settle_process
    from worker.entrypoints.scheduler import Beat, run_forever
    from worker.entrypoints.startup import check_or_exit
    from worker.services.outbound import start_background

    check_or_exit("beat")
    setup_logging()
    dump_stacks_on_sigusr1()
    rt = get_runtime()
    stop = threading.Event()
    sender = start_background(rt, stop)      # outbound webhooks and Slack, on threads of their own
    settle_process()
    try:
        run_forever(Beat.of(rt), rt.settings.tick_seconds)
    finally:
        stop.set()
        sender.join(timeout=5)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from worker.adapters.logs import dump_stacks_on_sigusr1, setup_logging
    from worker.entrypoints.startup import check_or_exit

    check_or_exit("api")
    setup_logging()
    dump_stacks_on_sigusr1()
    uvicorn.run("worker.entrypoints.api:create_app", factory=True, host=args.host, port=args.port, log_config=None,
                access_log=False)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from worker.entrypoints.dev import run_dev

    return run_dev(demo=args.demo, port=args.port)


def cmd_status(args: argparse.Namespace) -> int:
    from worker.adapters.runtime import get_runtime
    from worker.entrypoints.startup import rules_problems
    from worker.services import status, tables

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
    from worker.adapters.runtime import get_runtime
    from worker.services import reports, tables

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
    from worker.adapters.db import now_utc
    from worker.adapters.runtime import get_runtime
    from worker.services import availability

    rt = get_runtime()
    if rt.rules.rep(args.rep) is None:
        raise CliError(f"unknown rep {args.rep!r} (reps: {', '.join(r.id for r in rt.rules.reps)})")
    try:
        with rt.sessions.begin() as session:
            if args.action == "away":
                until = None
                if args.until:
                    until = parse_ts(args.until)
                elif args.for_:
                    until = now_utc() + _duration_arg(args.for_)
                end = availability.set_away(session, rt.rules, args.rep, until, actor=_actor(),
                                   reason=getattr(args, "reason", None))
                print(f"{args.rep} is away" + (f" until {iso(end)}" if until else " until `leadrouter rep back`"))
            else:
                availability.set_back(session, rt.rules, args.rep, actor=_actor())
                print(f"{args.rep} is back")
    except availability.OpsError as exc:
        raise CliError(str(exc)) from None
    return 0


def _actor() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER", "operator")


def cmd_lead(args: argparse.Namespace) -> int:
    from worker.adapters.runtime import get_runtime
    from worker.services import operator
    from worker.services.dispatch import dispatch_steps

    rt = get_runtime()
    try:
        with rt.sessions.begin() as session:
            result = operator.lead_command(session, rt.rules, args.action, args.lead_id, getattr(args, "rep", None),
                                           actor=_actor(), reason=args.reason)
    except operator.OpsError as exc:
        raise CliError(str(exc)) from None
    dispatch_steps(rt, result.due_steps)  # after the commit, as the pipeline does
    print(result.message)
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    from worker.adapters.runtime import get_runtime
    from worker.services.pause import set_paused

    paused = args.command == "pause"
    with get_runtime().sessions.begin() as session:
        set_paused(session, paused, actor=_actor(), reason=getattr(args, "reason", None))
    print("alerting paused: events are still scored" if paused else "alerting resumed")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from worker.adapters.runtime import get_runtime
    from worker.services import operator

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

    from worker.adapters.settings import get_settings

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


# Long-running parts and `dev` print their own (console alerts, coloured progress): left as they are.
_RAW_OUTPUT = {"dev", "worker", "beat", "api"}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    streams = sys.stdout, sys.stderr
    if args.command not in _RAW_OUTPUT and not isinstance(sys.stdout, EscapingStream):
        sys.stdout, sys.stderr = EscapingStream(sys.stdout), EscapingStream(sys.stderr)
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
