"""The terminal's view of :mod:`worker.services.reports`: ``status`` and ``report`` as aligned text tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.services.reports import Report, Spread
from worker.services.status import Status


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Plain aligned columns with a rule under the headers."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for i, r in enumerate(cells):
        out.append("  ".join(c.ljust(widths[j]) for j, c in enumerate(r)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def secs(x: float | None) -> str:
    """``4.2s``, ``3.5m``, ``1.2h``; ``-`` for nothing."""
    if x is None:
        return "-"
    if x < 120:
        return f"{round(x, 1):g}s"
    if x < 3600:
        return f"{x / 60:.1f}m"
    return f"{x / 3600:.1f}h"


def _pct(n: int, d: int) -> str:
    return f"{n / d:.0%}" if d else "-"


def render_status(data: Status) -> str:
    q = data.queues
    lines = []
    if data.paused:
        p = data.pause
        lines.append(f"ALERTING PAUSED since {p.get('at')} by {p.get('actor') or '?'}"
                     + (f": {p['reason']}" if p.get("reason") else "") + " (events are still scored)")
        lines.append("")
    summary: list[tuple[str, Any]] = [
        ("events waiting", q.events_waiting),
        ("  fast lane", q.fast_lane),
        ("dead letters", f"{q.dead_letters} ({q.dead_letters_not_retried} not retried, "
                         f"{q.trait_updates_refused} trait updates over a lead's cap)"),
        ("hot leads open", data.hot_leads_open),
        ("alerts due now", data.alerts_due),
        ("alerts scheduled", data.alerts_scheduled),
        ("unrouted leads", data.unrouted),
        ("alerting", "paused" if data.paused else "on"),
    ]
    ob = data.outbound
    summary.append(("webhooks pending", ob["pending"] if ob["oldest_pending_seconds"] is None
                    else f"{ob['pending']} (oldest {ob['oldest_pending_seconds']:.0f}s)"))
    summary.append(("webhooks failed", ob["failed"]))
    lines.append(table(summary, ["", "now"]))
    if ob["recent_failures"]:
        lines.append("")
        lines.append(table([(f["at"], f["event"], f["lead"], f["receiver"], f["attempts"], f["error"] or "")
                            for f in ob["recent_failures"]],
                           ["failed webhook", "event", "lead", "receiver", "attempts", "last error"]))
    if data.ingest_refusals:
        lines.append("")
        lines.append(table([(f["at"], f"{f['status']} {f['reason']}", f["path"], f["source"], f["message"][:80])
                            for f in data.ingest_refusals],
                           ["refused request", "answer", "route", "source", "why"]))
    if data.unrouted_leads:
        lines.append("")
        lines.append("unrouted: " + ", ".join(data.unrouted_leads))
    lines.append("")
    lines.append(table([(r.rep, r.open_hot_leads,
                         ("away until " + (r.away_until or "rep back") if r.away else "available")
                         + (f" ({r.away_reason})" if r.away_reason else ""),
                         ", ".join(f"{ch}: {why}" for ch, why in r.disabled_channels.items()) or "-")
                        for r in data.reps], ["rep", "open", "availability", "disabled channels"]))
    lines.append("")
    rf = data.rules_file
    if not rf["ok"]:
        lines.append(f"RULES FILE REFUSED: {rf.get('path')} does not load; running processes keep their last "
                     "good rules and a restart would fail:")
        lines += [f"  {e}" for e in rf["errors"]]
    else:
        lines.append(f"rules {data.rules_hash}")
    if data.workers:
        lines.append(table([(w.name, w.rules_hash, "yes" if w.current else "NO", w.seen_at,
                             "refused: " + "; ".join(w.refused_file) if w.refused_file else "-")
                            for w in data.workers], ["worker", "rules", "current", "seen", "file on disk"]))
    else:
        lines.append("no worker has reported its rules yet")
    return "\n".join(lines)


def render_report(data: Report) -> str:
    t = data.totals
    rows = [(r.rep, r.assigned, r.claimed, r.claimed_within_sla, _pct(r.claimed_within_sla, r.claimed),
             secs(r.median_time_to_claim)) for r in data.reps]
    rows.append(("all", t.assigned, t.claimed, t.claimed_within_sla, _pct(t.claimed_within_sla, t.claimed),
                 secs(t.median_time_to_claim)))
    sla = secs(data.first_contact_sla_seconds)
    lines = [f"from {data.since} to {data.until} (first-contact SLA {sla})", "",
             table(rows, ["rep", "assigned", "claimed", f"within {sla}", "share", "median to claim"]), ""]
    s = data.speed_to_lead
    lines.append(f"speed to lead over {s.hot_episodes} hot episode(s)"
                 + (f", {s.queued_after_hours} queued after hours (not counted as system delay)"
                    if s.queued_after_hours else ""))
    spreads: list[tuple[str, Spread]] = [
        ("system delay (event received -> first alert accepted)", s.system_delay),
        ("human delay (first alert -> claim)", s.human_delay),
        ("contact delay (claim -> first contact)", s.contact_delay)]
    lines.append(table([(name, d.count, secs(d.median), secs(d.p90), secs(d.max)) for name, d in spreads],
                       ["", "count", "median", "p90", "max"]))
    if s.by_rep:
        lines.append("")
        lines.append(table([(r.rep, r.alerted, secs(r.system_delay_median), secs(r.human_delay_median),
                             secs(r.contact_delay_median)) for r in s.by_rep],
                           ["rep (first alerted)", "episodes", "median system delay", "median human delay",
                            "median contact delay"]))
    return "\n".join(lines)
