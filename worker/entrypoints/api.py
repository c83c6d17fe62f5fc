"""The HTTP API: event ingestion, provider webhooks, the claim page, health and metrics.

Run with ``leadrouter api`` or ``uvicorn worker.entrypoints.api:create_app --factory``.
Every refusal is a JSON ``{"success": false, "code", "message"}`` with a 4xx
status; an unreachable Redis or database is a 503, never a 500.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import redis
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from worker.adapters import metrics
from worker.adapters.logs import mask_web_server_logs
from worker.adapters.runtime import get_runtime
from worker.adapters.settings import get_settings
from worker.entrypoints import api_ingest, board, http_common, voice, webhooks
from worker.entrypoints.api_ingest import error_response

log = logging.getLogger("leadrouter.api")

METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Health(BaseModel):
    redis: str = Field(description='"ok", or what went wrong reaching Redis.')
    database: str = Field(description='"ok", or what went wrong reaching the database.')
    rules: str = Field(description='"ok <hash>", or that the rules file on disk is refused and which rules '
                                   'keep running (not an outage: the status stays 200).')


HEALTH_TIMEOUT = 2.0   # seconds each check may take; a stalled Redis or database is reported, not waited for
_health_threads: weakref.WeakKeyDictionary[Any, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()


def _problem(exc: BaseException) -> str:
    # The class name only: driver messages can carry host names or credentials.
    return f"unreachable ({type(exc).__name__})"


def _check_redis() -> str:
    try:
        return "ok" if get_runtime().redis.ping() else "unreachable (no PONG)"
    except Exception as exc:
        return _problem(exc)


def _check_database() -> str:
    try:
        with get_runtime().engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:
        return _problem(exc)


def _check_rules() -> str:
    holder = get_runtime().rules_holder
    holder.refresh()   # the file on disk, as a worker's next tick would see it
    if holder.errors:
        return (f"refused: {holder.path} does not load ({len(holder.errors)} error(s), first: {holder.errors[0]}); "
                f"running rules {holder.rules.hash}")
    return f"ok {holder.rules.hash}"


async def _bounded(check: Callable[[], str], timeout: float) -> str:
    """``check`` on a thread of the health checks' own; past ``timeout`` the answer is that it did not
    answer (the thread is left to finish: at most a few of them, as their limiter allows)."""
    try:
        with anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(check, abandon_on_cancel=True,
                                                  limiter=http_common.limiter_for_this_loop(_health_threads, 6))
    except TimeoutError:
        return f"unreachable (no answer within {timeout:g} s)"


async def check_health(timeout: float = HEALTH_TIMEOUT) -> dict[str, str]:
    """Redis, the database and the rules, checked side by side, each within ``timeout``."""
    out: dict[str, str] = {}

    async def run(name: str, check: Callable[[], str]) -> None:
        out[name] = await _bounded(check, timeout)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "redis", _check_redis)
        tg.start_soon(run, "database", _check_database)
        tg.start_soon(run, "rules", _check_rules)
    return {name: out[name] for name in ("redis", "database", "rules")}


def render_metrics() -> str:
    rt = get_runtime()
    try:
        session = rt.sessions()
    except Exception as exc:   # the database is reported missing by the gauge; the rest still renders
        log.warning("metrics: no database session: %s", exc)
        session = None
    try:
        return metrics.render(rt.redis, session)
    finally:
        if session is not None:
            session.close()


def _cors_origins() -> list[str]:
    return [o.strip().rstrip("/") for o in get_settings().cors_origins.split(",") if o.strip()]


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if request.method == "POST" and exc.status_code in (404, 405):
            # a tracking client posting to a route we do not serve drops the 404 without a retry: the
            # events are lost, and that must show in the log, the metrics and status
            await run_in_threadpool(api_ingest.record_refusal, request, "unmatched", "none", exc.status_code,
                                    f"http_{exc.status_code}", detail)
        response = error_response(exc.status_code, f"http_{exc.status_code}", detail, dict(exc.headers or {}))
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only location, message and type: the offending input may be anything (bytes, huge, not UTF-8).
        problems = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                    for e in exc.errors()]
        summary = "; ".join(f"{'.'.join(p['loc'])}: {p['msg']}" for p in problems[:5]) or "invalid request"
        return JSONResponse({"success": False, "code": "invalid_request", "message": summary, "detail": problems},
                            status_code=422)

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.error("redis error on %s: %s", request.url.path, exc)
        return error_response(503, "unavailable", "the event queue is unavailable; retry later", {"Retry-After": "5"})

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        log.error("database error on %s: %s", request.url.path, type(exc).__name__)
        return error_response(503, "unavailable", "the database is unavailable; retry later", {"Retry-After": "5"})


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["writeKey"] = {
        "type": "http", "scheme": "basic",
        "description": "The source's write key as the user name, with an empty password (as Segment's SDKs send it).",
    }
    app.openapi_schema = schema
    return schema


def create_app() -> FastAPI:
    from worker.entrypoints.startup import check_or_exit

    check_or_exit("api")   # also under `uvicorn worker.entrypoints.api:create_app --factory`
    mask_web_server_logs()  # that command logs through uvicorn's own configuration: mask it too
    settings = get_settings()
    sources = settings.sources()   # a malformed LEADROUTER_(PUBLIC_)WRITE_KEYS fails here, at start, loudly
    if not sources:
        log.warning("no write key configured (LEADROUTER_WRITE_KEY or LEADROUTER_WRITE_KEYS): "
                    "every tracking request will be refused")
    app = FastAPI(title="leadrouter", version="0.1.0",
                  description="Speed-to-lead routing: Segment-compatible event ingestion, provider webhooks, "
                              "the claim page, health and metrics.")
    _install_handlers(app)
    origins = _cors_origins()
    if origins:
        # Any request header: browser clients add their own, and a refused preflight loses the event
        # silently (analytics.js retries with X-Retry-Count; RudderStack's SDK sends AnonymousId, SentAt
        # and Rsa-Retry-* headers). No credentials are allowed, and the write key is public anyway.
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["POST", "GET", "OPTIONS"],
                           allow_headers=["*"], expose_headers=["Retry-After"], max_age=600)
    app.include_router(api_ingest.router)
    app.include_router(webhooks.router)
    app.include_router(voice.router)
    board.operator_tokens(settings.operator_tokens)   # a malformed setting fails here, at start, loudly
    app.include_router(board.router)

    @app.get("/healthz", tags=["operations"], summary="Redis and database reachable", response_model=Health,
             responses={200: {"model": Health, "description": "Both reachable."},
                        503: {"model": Health, "description": "Redis or the database (named) is unreachable."}})
    async def healthz() -> JSONResponse:
        status = await check_health()
        ok = status["redis"] == "ok" and status["database"] == "ok"
        return JSONResponse(status, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text exposition format 0.0.4.",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus_metrics() -> PlainTextResponse:
        body = await webhooks.in_db_thread(render_metrics)   # reads the database: never on ingestion's threads
        return PlainTextResponse(body, media_type=METRICS_MEDIA_TYPE)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
