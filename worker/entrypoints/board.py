"""``/board``: the operator's live board, served by ``leadrouter api``.

Never public: an operator signs in with a token from ``LEADROUTER_OPERATOR_TOKENS``
(``name:token,name:token``) and gets a signed cookie (HMAC-SHA256 keyed with
``LEADROUTER_SECRET_KEY``, 12 h, ``HttpOnly``, ``SameSite=Strict``) naming them; a token
taken out of the setting stops its cookies at once. The page is server-rendered
(:mod:`worker.entrypoints.board_html`, every value escaped) and refreshes its live part every 2 s;
its figures come from :mod:`worker.services.reports`, as ``leadrouter report``'s do. The
operator buttons run :mod:`worker.services.operator`'s commands, recorded with the operator's
name; they need the page's CSRF token as well as the cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import time
from functools import partial
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from worker.adapters import db
from worker.adapters.runtime import get_runtime
from worker.entrypoints import board_html
from worker.entrypoints.webhooks import in_db_thread
from worker.services import operator, reports

log = logging.getLogger("leadrouter.board")
router = APIRouter(prefix="/board", include_in_schema=False)

COOKIE = "leadrouter_board"
COOKIE_TTL = 12 * 3600
MAX_FORM = 4096
DAY_TTL = 3.0
HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
           "X-Content-Type-Options": "nosniff",
           "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
                                      "connect-src 'self'; form-action 'self'; frame-ancestors 'none'"}


class BoardSettingError(ValueError):
    pass


def operator_tokens(text: str) -> dict[str, str]:
    """token -> operator name, from ``name:token,name:token``; a malformed entry or a token under 16
    characters is refused with the entry's position (never its text: it is a secret)."""
    out: dict[str, str] = {}
    for i, part in enumerate((p.strip() for p in text.split(",")), start=1):
        if not part:
            continue
        name, sep, token = part.partition(":")
        if not sep or not name.strip() or len(token.strip()) < 16:
            raise BoardSettingError(f"LEADROUTER_OPERATOR_TOKENS entry {i}: write name:token with a token of "
                                    "at least 16 characters")
        out[token.strip()] = name.strip()[:40]
    return out


def _key() -> bytes:
    return hashlib.sha256(b"leadrouter board cookie\0" + get_runtime().settings.secret_key.encode()).digest()


def _sign(text: str) -> str:
    return base64.urlsafe_b64encode(hmac.new(_key(), text.encode(), hashlib.sha256).digest()).decode().rstrip("=")


def make_cookie(name: str, now: float | None = None) -> str:
    expires = int((now or time.time()) + COOKIE_TTL)
    body = f"{base64.urlsafe_b64encode(name.encode()).decode()}.{expires}"
    return f"{body}.{_sign(body)}"


def who(request: Request, now: float | None = None) -> str | None:
    """The signed-in operator's name, or None (no cookie, tampered, expired, or a revoked name)."""
    raw = request.cookies.get(COOKIE) or ""
    parts = raw.split(".")
    if len(parts) != 3 or len(raw) > 400:
        return None
    body = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_sign(body), parts[2]):
        return None
    try:
        name = base64.urlsafe_b64decode(parts[0].encode()).decode()
        expires = int(parts[1])
    except ValueError:
        return None
    if expires < (now or time.time()):
        return None
    if name not in operator_tokens(get_runtime().settings.operator_tokens).values():
        return None
    return name


def csrf_token(request: Request) -> str:
    return _sign("csrf:" + (request.cookies.get(COOKIE) or ""))[:32]


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def _refused() -> JSONResponse:
    return JSONResponse({"success": False, "code": "unauthorized", "message": "sign in at /board/login"},
                        status_code=401, headers=HEADERS)


async def _form(request: Request) -> dict[str, str] | None:
    body = await request.body()
    if len(body) > MAX_FORM:
        return None
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in fields.items()}


# ---------------------------------------------------------------- sign in


@router.get("/login", response_class=HTMLResponse)
async def login_page() -> HTMLResponse:
    return _html(board_html.login_form())


@router.post("/login", response_model=None)
async def login(request: Request) -> Response:
    form = await _form(request)
    tokens = operator_tokens(get_runtime().settings.operator_tokens)
    given = (form or {}).get("token", "").strip()
    name = next((n for t, n in tokens.items() if hmac.compare_digest(t.encode(), given.encode())), None)
    if name is None:
        log.warning("board: refused sign-in")
        problem = "The board has no operator tokens configured." if not tokens else "That token is not valid."
        return _html(board_html.login_form(problem), 401)
    response = RedirectResponse("/board", status_code=303, headers=HEADERS)
    response.set_cookie(COOKIE, make_cookie(name), max_age=COOKIE_TTL, path="/board", httponly=True,
                        samesite="strict", secure=get_runtime().settings.public_url.startswith("https://"))
    return response


@router.post("/logout", response_model=None)
async def logout() -> Response:
    response = RedirectResponse("/board/login", status_code=303, headers=HEADERS)
    response.delete_cookie(COOKIE, path="/board")
    return response


# ---------------------------------------------------------------- the board


def _board(today: bool = True) -> reports.Board:
    rt = get_runtime()
    with rt.sessions() as session:
        return reports.board(session, rt.rules, today=today)


_day_cache: list[tuple[float, reports.Today]] = []
_day_lock = threading.Lock()


def _today() -> reports.Today:
    """The day's figures, computed at most once every ``DAY_TTL`` seconds for every operator watching:
    they read every episode of the last 24 hours."""
    with _day_lock:
        if _day_cache and time.monotonic() - _day_cache[0][0] < DAY_TTL:
            return _day_cache[0][1]
        with get_runtime().sessions() as session:
            figures = reports.day(session, db.now_utc())
        _day_cache[:] = [(time.monotonic(), figures)]
        return figures


@router.get("", response_model=None)
async def board_page(request: Request) -> Response:
    name = who(request)
    if name is None:
        return RedirectResponse("/board/login", status_code=303, headers=HEADERS)
    data = await in_db_thread(_board)
    assert data.today is not None
    rep_ids = [r.id for r in get_runtime().rules.reps]
    body = (f'<p id="flash" class="note" role="status" style="margin:.5rem 1.2rem 0"></p><main>'
            f'<div id="live">{board_html.live(data, rep_ids)}</div>'
            f'<div id="today">{board_html.today(data.today)}</div></main>')
    return _html(board_html.page("Live", body, who=name, csrf=csrf_token(request)))


@router.get("/live", response_model=None)
async def board_live(request: Request) -> Response:
    if who(request) is None:
        return _refused()
    data = await in_db_thread(_board, False)
    return _html(board_html.live(data, [r.id for r in get_runtime().rules.reps]))


@router.get("/today", response_model=None)
async def board_today(request: Request) -> Response:
    if who(request) is None:
        return _refused()
    return _html(board_html.today(await in_db_thread(_today)))


@router.get("/data.json", response_model=None)
async def board_data(request: Request) -> Response:
    if who(request) is None:
        return _refused()
    data = await in_db_thread(_board)
    return JSONResponse(data.as_json(), headers=HEADERS)


def _story(lead_id: str) -> dict[str, object] | None:
    from worker.services.explain import explain

    rt = get_runtime()
    with rt.sessions() as session:
        return explain(session, lead_id, rt.rules)


@router.get("/leads/{lead_id:path}", response_model=None)
async def lead_page(lead_id: str, request: Request) -> Response:
    name = who(request)
    if name is None:
        return RedirectResponse("/board/login", status_code=303, headers=HEADERS)
    if len(lead_id) > 220:
        return _html(board_html.page("No such lead", "<p>No such lead.</p>", who=name), 404)
    story = await in_db_thread(_story, lead_id)
    if story is None:
        return _html(board_html.page("No such lead", "<p>No such lead.</p>", who=name), 404)
    return _html(board_html.page(f"Lead {story['lead_id']}", board_html.timeline(story), who=name))


# ---------------------------------------------------------------- operator buttons


def _act(action: str, lead_id: str, rep: str | None, reason: str | None, actor: str) -> tuple[str, list[int]]:
    rt = get_runtime()
    with rt.sessions.begin() as session:
        result = operator.lead_command(session, rt.rules, action, lead_id, rep, actor=actor, reason=reason)
    return result.message, result.due_steps


@router.post("/action", response_model=None)
async def board_action(request: Request) -> Response:
    name = who(request)
    if name is None:
        return _refused()
    if not hmac.compare_digest(request.headers.get("x-board-csrf", ""), csrf_token(request)):
        return JSONResponse({"success": False, "code": "forbidden", "message": "stale page: reload the board"},
                            status_code=403, headers=HEADERS)
    form = await _form(request)
    if form is None or form.get("action") not in ("assign", "release", "close") or not form.get("lead"):
        return JSONResponse({"success": False, "code": "invalid_request",
                             "message": "action (assign, release or close) and lead are required"},
                            status_code=422, headers=HEADERS)
    try:
        message, due = await in_db_thread(partial(_act, form["action"], form["lead"], form.get("rep") or None,
                                                  (form.get("reason") or "")[:200] or None, f"board:{name}"))
    except operator.OpsError as exc:
        return JSONResponse({"success": False, "code": "refused", "message": str(exc)}, status_code=409,
                            headers=HEADERS)
    from worker.services.dispatch import dispatch_steps  # the tasks module pulls in Celery: only once a button is used

    await in_db_thread(dispatch_steps, get_runtime(), due)
    log.info("board: %s by %s", form["action"], name)
    return JSONResponse({"success": True, "message": message}, headers=HEADERS)


@router.get("/board.js", response_model=None)
async def board_js() -> Response:
    return Response(SCRIPT, media_type="text/javascript",
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


SCRIPT = r"""
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const live = document.getElementById("live");
  const today = document.getElementById("today");
  const flash = document.getElementById("flash");
  function fmt(ms) {
    const late = ms < 0, s = Math.floor(Math.abs(ms) / 1000);
    const text = Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
    return late ? "overdue " + text : "in " + text;
  }
  function tick() {
    const now = Date.now();
    document.querySelectorAll("[data-due]").forEach(function (el) {
      const at = Date.parse(el.dataset.due);
      if (isNaN(at)) return;
      el.textContent = fmt(at - now);
      el.classList.toggle("overdue", at < now);
    });
  }
  async function refresh() {
    if (!live) return;
    try {
      const r = await fetch("/board/live", {credentials: "same-origin", cache: "no-store"});
      if (r.status === 401) { location.href = "/board/login"; return; }
      if (r.ok && !live.contains(document.activeElement)) { live.innerHTML = await r.text(); tick(); }
    } catch (e) { /* the next round tries again */ }
  }
  async function refreshToday() {
    if (!today) return;
    try {
      const r = await fetch("/board/today", {credentials: "same-origin", cache: "no-store"});
      if (r.ok) today.innerHTML = await r.text();
    } catch (e) { /* the next round tries again */ }
  }
  async function act(action, lead, rep, reason) {
    const body = new URLSearchParams({action: action, lead: lead});
    if (rep) body.set("rep", rep);
    if (reason) body.set("reason", reason);
    const r = await fetch("/board/action", {method: "POST", credentials: "same-origin", body: body,
      headers: {"X-Board-CSRF": csrf}});
    const answer = await r.json();
    if (flash) flash.textContent = answer.message;
    refresh();
    refreshToday();
  }
  document.addEventListener("click", function (ev) {
    const b = ev.target.closest("button.act");
    if (!b) return;
    const row = b.closest("tr[data-lead]");
    if (row) act(b.dataset.action, row.dataset.lead, null, b.dataset.reason || null);
  });
  document.addEventListener("submit", function (ev) {
    const f = ev.target.closest("form.act");
    if (!f) return;
    ev.preventDefault();
    const row = f.closest("tr[data-lead]");
    if (row) act("assign", row.dataset.lead, f.elements.rep.value, null);
  });
  tick();
  setInterval(tick, 1000);
  setInterval(refresh, 2000);
  setInterval(refreshToday, 10000);
})();
"""
