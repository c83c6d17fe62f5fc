"""The rules-as-code commands, which need no running service: ``check-config`` and ``simulate``
(with ``--compare``), and reading event files for them."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from routing.config import Rules, RulesError, load_rules
from routing.events import EventError, iso, parse_time


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit 1."""




def rules_arg(path: str | None) -> Rules:
    from worker.adapters.settings import get_settings

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
            yield BadLine(n, f"{path}:{n}: malformed JSON: {exc.msg} at column {exc.colno}")
        except ValueError as exc:   # not a JSONDecodeError: an integer too long to convert
            yield BadLine(n, f"{path}:{n}: malformed JSON: {exc}")


class BadLine(dict):  # type: ignore[type-arg]
    """A line that is not JSON: carried through so it is reported in order, never silently dropped."""

    def __init__(self, line: int, message: str):
        super().__init__()
        self.line, self.message = line, message


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], align: str = "") -> str:
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


def parse_ts(text: str) -> datetime:
    try:
        return parse_time(text, "--as-of")
    except EventError as exc:
        raise CliError(str(exc)) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    from worker.adapters.settings import get_settings

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

    rules = rules_arg(args.config)
    # load both rule sets before replaying anything: a bad --compare file fails at once
    other_rules = rules_arg(args.compare) if args.compare else None
    events = list(read_events(args.events))
    bad = [e for e in events if isinstance(e, BadLine)]
    good = [e for e in events if not isinstance(e, BadLine)]
    as_of = parse_ts(args.as_of) if args.as_of else None
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
        lines += [table(rows, ["lead", "score", "behavior", "fit", "tier", "hot at", "red-hot at", "rep", "route"],
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
        lines += ["", table([(rep, v["leads"], _share(v["share"])) for rep, v in s["per_rep"].items()],
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
        lines += ["", table(rows, ["lead", "tier before -> after", "rep before -> after", "score"])]
    if cmp["per_rep"]:
        rows = [(rep, v["before"], v["after"], f"{v['change']:+d}", _share(v["share_before"]),
                 _share(v["share_after"]), f"{v['share_change'] * 100:+.0f} pts")
                for rep, v in cmp["per_rep"].items()]
        lines += ["", table(rows, ["rep", "leads before", "leads after", "change", "share before", "share after", "shift"],
                             align="lrrrrrr")]
    outcomes = [("went hot", "hot_crossings"), ("red-hot", "red_hot_crossings"), ("routed", "routed"),
                ("after hours", "after_hours"), ("on-call", "on_call"), ("unrouted", "unrouted")]
    rows = [(name, cmp[key][0], cmp[key][1], f"{cmp[key][1] - cmp[key][0]:+d}") for name, key in outcomes]
    lines += ["", table(rows, ["outcome", "before", "after", "change"], align="lrrr")]
    return "\n".join(lines)
