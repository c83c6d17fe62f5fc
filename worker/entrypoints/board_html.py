"""The board's HTML: the live page, its SVG histogram, and the per-lead timeline. Every value that
came from the database is escaped here, with :func:`e`: traits are attacker-controlled text."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from worker.services.reports import Board, OpenLead, RepBoard, Today
from worker.services.tables import secs

# histogram buckets, in seconds: [0,1), [1,2), ... [900, inf)
EDGES = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
LABELS = ("<1s", "1-2s", "2-5s", "5-10s", "10-30s", "30-60s", "1-2m", "2-5m", "5-15m", "15m+")

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1a1a1a;background:#f6f7f9}
header{background:#14213d;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:baseline}
header h1{font-size:1.15rem;margin:0}header .who{margin-left:auto;font-size:.85rem;opacity:.8}
main{padding:1rem 1.2rem;display:grid;gap:1rem;grid-template-columns:minmax(0,3fr) minmax(0,2fr)}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:.8rem 1rem}
section.wide{grid-column:1/-1}h2{font-size:1rem;margin:.1rem 0 .6rem}
table{border-collapse:collapse;width:100%;font-size:.85rem}th,td{text-align:left;padding:.3rem .4rem;
border-bottom:1px solid #eef0f3;vertical-align:top}th{color:#5a6270;font-weight:600}
.tier{font-weight:600;text-transform:uppercase;font-size:.75rem}.red_hot{color:#b3001b}.hot{color:#d35400}
.due{font-variant-numeric:tabular-nums;font-weight:600}.overdue{color:#b3001b}
.pill{display:inline-block;border-radius:9px;padding:0 .45rem;margin:0 .15rem .15rem 0;font-size:.75rem;background:#eef0f3}
.delivered,.sent{background:#d9f2e3}.failed,.undeliverable{background:#f8d7da}.maybe_sent,.pending{background:#fff3cd}
.away{color:#b3001b}.off{color:#888}button{font-size:.75rem;padding:.2rem .5rem;border-radius:5px;
border:1px solid #c4c9d2;background:#fff;cursor:pointer}select,input{font-size:.75rem}
.paused{background:#b3001b;color:#fff;font-weight:600}#live,#today{display:contents}.figures{display:flex;gap:1.5rem;flex-wrap:wrap}
.figure b{display:block;font-size:1.3rem}.note{color:#5a6270;font-size:.8rem}
.timeline li{margin:.25rem 0}.timeline time{color:#5a6270;font-variant-numeric:tabular-nums;margin-right:.5rem}
form.login{max-width:22rem;margin:4rem auto;background:#fff;padding:1.5rem;border-radius:8px;border:1px solid #dde1e7}
form.login input{width:100%;font-size:1rem;padding:.4rem;margin:.5rem 0 1rem}
"""


def e(value: Any) -> str:
    """Escaped text for HTML, attributes included; None shows as a dash."""
    return "-" if value is None else html.escape(str(value), quote=True)


def page(title: str, body: str, *, who: str | None = None, csrf: str = "") -> str:
    script = '<script src="/board/board.js" defer></script>' if who else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="robots" content="noindex">'
            f'<meta name="csrf" content="{e(csrf)}"><title>{e(title)}</title><style>{STYLE}</style>{script}</head>'
            f'<body><header><h1><a href="/board" style="color:inherit;text-decoration:none">leadrouter board</a></h1>'
            f'<span>{e(title)}</span>'
            + (f'<span class="who">signed in as {e(who)}</span>' if who else "") + f"</header>{body}</body></html>")


def login_form(problem: str | None = None) -> str:
    return page("Sign in", '<form class="login" method="post" action="/board/login">'
                '<label for="token">Operator token</label>'
                '<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>'
                + (f'<p class="away" role="alert">{e(problem)}</p>' if problem else "")
                + "<button type=\"submit\">Sign in</button></form>")


def live(board: Board, rep_ids: Sequence[str]) -> str:
    """The part of the board that refreshes every 2 s: open hot leads and reps."""
    paused = '<section class="wide paused">ALERTING PAUSED: events are still scored</section>' if board.paused else ""
    shown = f"{len(board.leads)} of {board.open_hot_leads}" if board.open_hot_leads > len(board.leads) \
        else str(board.open_hot_leads)
    leads = "".join(_lead_row(lead, rep_ids) for lead in board.leads) or \
        '<tr><td colspan="7" class="note">No open hot lead.</td></tr>'
    reps = "".join(_rep_row(r) for r in board.reps)
    return (f'{paused}<section class="wide" data-at="{e(board.at)}"><h2>Open hot leads ({e(shown)})</h2>'
            '<table id="leads"><thead><tr>'
            "<th>Lead</th><th>Score</th><th>Signals</th><th>Rep</th><th>Next step</th><th>Deliveries</th>"
            f"<th>Operator</th></tr></thead><tbody>{leads}</tbody></table></section>"
            f'<section><h2>Reps</h2><table id="reps"><thead><tr><th>Rep</th><th>Availability</th><th>Open</th>'
            f"<th>Week share</th><th>Disabled channels</th></tr></thead><tbody>{reps}</tbody></table></section>")


def today(t: Today) -> str:
    """The day's figures, refreshed every 10 s."""
    s = t.speed_to_lead
    return ('<section><h2>Today <span class="note">(last 24 h, as <code>leadrouter report --since 24h</code>)'
            '</span></h2><div class="figures">'
            + _figure("hot episodes", s.hot_episodes)
            + _figure("system delay, median", secs(s.system_delay.median), "system-median")
            + _figure("human delay, median", secs(s.human_delay.median), "human-median")
            + _figure("cadence lateness, max", secs(t.cadence_lateness.max))
            + _figure("unrouted", t.unrouted) + _figure("dead letters", t.dead_letters)
            + f"</div>{histogram(s._system, s._human)}"
            '<p class="note">System delay: event received &rarr; first alert accepted by the provider. '
            "Human delay: first alert &rarr; claim (or first contact).</p></section>")


def _figure(label: str, value: Any, ident: str = "") -> str:
    return f'<div class="figure"><b{f" id={chr(34)}{ident}{chr(34)}" if ident else ""}>{e(value)}</b>{e(label)}</div>'


def _lead_row(lead: OpenLead, rep_ids: Sequence[str]) -> str:
    who = " ".join(x for x in (lead.name, f"({lead.company})" if lead.company else None) if x) or lead.lead_id
    pills = "".join(f'<span class="pill {e(d.status)}" title="{e(d.kind)} step {d.step} to {e(d.recipient)}">'
                    f"{e(d.channel)} {e(d.status)}</span>" for d in lead.deliveries) or '<span class="note">none yet</span>'
    due = (f'<span class="due" data-due="{e(lead.next_due_at)}">{e(lead.next_due_at)}</span> '
           f'<span class="note">{e(lead.next_step)}</span>') if lead.next_due_at else '<span class="note">-</span>'
    options = "".join(f'<option value="{e(r)}">{e(r)}</option>' for r in rep_ids if r != lead.rep)
    return (f'<tr data-lead="{e(lead.lead_id)}"><td><a href="/board/leads/{e(_path(lead.lead_id))}">{e(who)}</a>'
            f'<div class="note">{e(lead.lead_id)}</div></td>'
            f'<td>{e(lead.score)} <span class="tier {e(lead.tier)}">{e(lead.tier)}</span></td>'
            f'<td>{e(", ".join(lead.signals)) if lead.signals else "-"}</td>'
            f'<td>{e(lead.rep)}<div class="note">{e(lead.route)}; SLA '
            f'<span class="due" data-due="{e(lead.sla_due_at)}">{e(lead.sla_due_at)}</span></div></td>'
            f"<td>{due}</td><td>{pills}</td>"
            f'<td><form class="act" data-action="assign"><select name="rep" aria-label="rep">{options}</select>'
            '<button>Assign</button></form>'
            '<button class="act" data-action="release">Release</button> '
            '<button class="act" data-action="close">Close</button> '
            '<button class="act" data-action="close" data-reason="junk">Junk</button></td></tr>')


def _path(lead_id: str) -> str:
    from urllib.parse import quote

    return quote(lead_id, safe="")


def _rep_row(r: RepBoard) -> str:
    if r.away:
        avail = f'<span class="away">away until {e(r.away_until or "rep back")}</span>' \
                + (f'<div class="note">{e(r.away_reason)}</div>' if r.away_reason else "")
    else:
        avail = "in hours" if r.in_hours else '<span class="off">off hours</span>'
    load = f"{r.open_leads}/{r.max_open}" if r.max_open is not None else str(r.open_leads)
    share = f"{r.week_share:.0%}" if r.week_share is not None else "-"
    credited = f' <span class="note">({r.week_credited} credited back)</span>' if r.week_credited else ""
    disabled = ", ".join(f"{ch}: {why}" for ch, why in r.disabled_channels.items()) or "-"
    return (f'<tr data-rep="{e(r.rep)}"><td>{e(r.name)}<div class="note">{e(r.rep)}</div></td><td>{avail}</td>'
            f"<td>{e(load)}</td><td>{e(share)} of {e(r.week_assigned)} <span class=\"note\">weight {r.weight_share:.0%}"
            f"</span>{credited}</td><td>{e(disabled)}</td></tr>")


def bucket_counts(values: Sequence[float]) -> list[int]:
    counts = [0] * len(EDGES)
    for v in values:
        i = max(i for i, edge in enumerate(EDGES) if v >= edge) if v >= 0 else 0
        counts[i] += 1
    return counts


def histogram(system: Sequence[float], human: Sequence[float]) -> str:
    """Two series of bars per bucket: system delay (blue) and human delay (orange)."""
    sys_c, hum_c = bucket_counts(system), bucket_counts(human)
    top = max([*sys_c, *hum_c, 1])
    width, height, pad = 560, 150, 22
    slot = (width - 10) / len(EDGES)
    bars = []
    for i, label in enumerate(LABELS):
        x = 5 + i * slot
        for j, (n, colour) in enumerate(((sys_c[i], "#2f6fdf"), (hum_c[i], "#e08a1e"))):
            h = (height - 2 * pad) * n / top
            bars.append(f'<rect x="{x + 4 + j * (slot - 8) / 2:.1f}" y="{height - pad - h:.1f}" '
                        f'width="{(slot - 8) / 2:.1f}" height="{h:.1f}" fill="{colour}"><title>{e(label)}: {n}</title></rect>')
        bars.append(f'<text x="{x + slot / 2:.1f}" y="{height - 6}" font-size="10" text-anchor="middle">{e(label)}</text>')
    legend = ('<text x="8" y="12" font-size="11" fill="#2f6fdf">&#9632; system delay</text>'
              '<text x="110" y="12" font-size="11" fill="#e08a1e">&#9632; human delay</text>')
    return (f'<svg id="histogram" viewBox="0 0 {width} {height}" width="100%" role="img" '
            f'aria-label="speed to lead histogram" data-system="{",".join(map(str, sys_c))}" '
            f'data-human="{",".join(map(str, hum_c))}">{legend}{"".join(bars)}</svg>')


def timeline(story: dict[str, Any]) -> str:
    """``explain`` as a page: every dated thing that happened to the lead, in order."""
    items: list[tuple[str, str]] = []
    for ev in story["events"]:
        items.append((ev["timestamp"], f"event <b>{e(ev['name'] or ev['type'])}</b> +{e(ev['points'])} points "
                                       f"&rarr; score {e(ev['score_after'])} ({e(ev['tier_after'])})"))
    for ep in story["episodes"]:
        items.append((ep["opened_at"], f"hot episode {e(ep['id'])} opened" + (" (red hot)" if ep["red_hot"] else "")))
    for a in story["assignments"]:
        reasons = "; ".join(f"{c['rep']}: {c['status']}: {c['reason']}" for c in a["candidates"])
        items.append((a["created_at"], f"assigned to <b>{e(a['rep'])}</b> ({e(a['route'])})"
                      + (f" by {e(a['actor'])}" if a["actor"] else "")
                      + (f'<div class="note">{e(reasons)}</div>' if reasons else "")
                      + "".join(f'<div class="note">{e(n)}</div>' for n in a["notes"])))
        if a["ended_at"]:
            items.append((a["ended_at"], f"assignment of {e(a['rep'])} ended: {e(a['end_reason'])}"))
    for s in story["alerts"]:
        when = s["fired_at"] or s["due_at"]
        sent = "".join(f'<span class="pill {e(d["status"])}">{e(d["channel"])} to {e(d["recipient"])}: '
                       f'{e(d["outcome"])}</span>' for d in s["deliveries"])
        items.append((when, f"{e(s['kind'])} alert (step {e(s['step'])}) to {e(s['rep'])}: {e(s['status'])}"
                      + (f" <span class=\"note\">{e(s['note'])}</span>" if s["note"] else "") + f"<div>{sent}</div>"))
    for c in story["claims"]:
        items.append((c["claimed_at"], f"claimed by <b>{e(c['claimed_by'] or c['rep'])}</b>"))
    for t in story["trace"]:
        items.append((t["at"], f"{e(t['kind'])}" + (f" by {e(t['actor'])}" if t["actor"] else "")
                      + f' <span class="note">{e(t["detail"])}</span>'))
    rows = "".join(f"<li><time>{e(at)}</time>{text}</li>" for at, text in sorted(items, key=lambda it: it[0] or ""))
    head = (f"<p><b>{e(story['lead_id'])}</b>: score {e(story['score'])} ({e(story['tier'])}), "
            f"owner {e(story['owner'])}</p>")
    return f'<main style="display:block"><section>{head}<ol class="timeline">{rows}</ol></section></main>'
