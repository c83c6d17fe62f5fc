"""Metrics shared by every process: counters and histograms kept in Redis, rendered for Prometheus.

API processes, Celery workers and the scheduler all write to the same Redis
hashes (HINCRBYFLOAT), so ``GET /metrics`` on any API process shows the whole
service. Gauges (lag, fast-lane depth, dead letters) are computed when rendered.

Recording a metric must never break the work it measures: every Redis error
is logged and swallowed.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

log = logging.getLogger("leadrouter.metrics")

PREFIX = "leadrouter_"
COUNTERS_KEY = "lr:metrics:counters"          # field: series ('name{labels}') -> value
HIST_KEY = "lr:metrics:hist:{name}"           # field: '<labels>\x1f<le|sum|count>' -> value
SEP = "\x1f"

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str             # counter | histogram | gauge
    help: str
    buckets: tuple[float, ...] = ()


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("leadrouter_events_ingested_total", "counter", "Events accepted by the HTTP API and durably queued."),
    Metric("leadrouter_events_rejected_total", "counter", "Events or requests refused at ingestion, by reason."),
    Metric("leadrouter_requests_refused_total", "counter",
           "Tracking requests answered with a 4xx, by route, source, status and reason."),
    Metric("leadrouter_events_processed_total", "counter", "Events scored and committed by the workers."),
    Metric("leadrouter_processing_lag_seconds", "gauge", "Age of the oldest event not yet processed (0 when none)."),
    Metric("leadrouter_fast_lane_depth", "gauge", "High-value events waiting or in progress in the fast lane."),
    Metric("leadrouter_hot_crossings_total", "counter", "Leads that crossed the hot threshold."),
    Metric("leadrouter_speed_to_lead_seconds", "histogram",
           "From the crossing event's arrival to the first alert sent to a rep.",
           (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)),
    Metric("leadrouter_time_to_claim_seconds", "histogram", "From the first alert to the rep's claim.",
           (10.0, 30.0, 60.0, 90.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 86400.0)),
    Metric("leadrouter_deliveries_total", "counter", "Alert delivery attempts, by channel and outcome."),
    Metric("leadrouter_scheduler_lateness_seconds", "histogram", "How late a scheduled alert step fired.",
           (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)),
    Metric("leadrouter_dead_letters", "gauge", "Events in the dead-letter store not yet retried."),
)}


REFUSALS_KEY = "lr:ingest:refusals"          # the latest refused tracking requests, newest first (JSON)
REFUSALS_KEPT = 50


def latest_refusals(r: redis.Redis, limit: int = 10) -> list[dict[str, Any]]:
    """The latest refused tracking requests, newest first: what ``status`` shows."""
    import json

    return [json.loads(raw) for raw in r.lrange(REFUSALS_KEY, 0, max(limit, 1) - 1)]


# Counters only ever recorded with labels: no unlabelled zero is shown for them.
LABELLED_ONLY = ("leadrouter_events_rejected_total", "leadrouter_deliveries_total", "leadrouter_requests_refused_total")


def full_name(name: str) -> str:
    return name if name.startswith(PREFIX) else PREFIX + name


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, Any]) -> str:
    """Prometheus label text, sorted so the same labels always make the same series."""
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


_client: tuple[int, str, redis.Redis] | None = None


def _redis() -> redis.Redis:
    """A client of this process with short timeouts: a metric never holds up real work for long."""
    global _client
    from worker.adapters.settings import get_settings

    url = get_settings().redis_url
    if _client is None or _client[0] != os.getpid() or _client[1] != url:
        _client = (os.getpid(), url, redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1))
    return _client[2]


def inc(name: str, amount: float = 1, **labels: Any) -> None:
    """Add ``amount`` to the counter ``name`` (``leadrouter_`` prefix optional). Never raises."""
    try:
        _redis().hincrbyfloat(COUNTERS_KEY, full_name(name) + _labels(labels), amount)
    except Exception as exc:
        log.warning("metric %s not recorded: %s", name, exc)


def _le(bound: float) -> str:
    """A bucket bound as Prometheus clients write it (``1.0``, ``0.25``, ``+Inf``)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _bucket_for(value: float, buckets: Iterable[float]) -> str:
    for b in buckets:
        if value <= b:
            return _le(b)
    return "+Inf"


def observe(name: str, seconds: float, **labels: Any) -> None:
    """Record one observation in the histogram ``name``. Never raises."""
    try:
        metric_name = full_name(name)
        value = float(seconds)
        if math.isnan(value):
            return
        spec = METRICS.get(metric_name)
        buckets = spec.buckets if spec and spec.buckets else DEFAULT_BUCKETS
        series = _labels(labels)
        pipe = _redis().pipeline(transaction=False)
        key = HIST_KEY.format(name=metric_name)
        pipe.hincrbyfloat(key, series + SEP + _bucket_for(value, buckets), 1)
        pipe.hincrbyfloat(key, series + SEP + "sum", value)
        pipe.hincrbyfloat(key, series + SEP + "count", 1)
        pipe.execute()
    except Exception as exc:
        log.warning("metric %s not recorded: %s", name, exc)


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x)) if abs(x) >= 1 or x == 0 else repr(float(x))
    return repr(float(x))


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _split_series(series: str) -> tuple[str, str]:
    i = series.find("{")
    return (series, "") if i < 0 else (series[:i], series[i:])


def _header(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def _counters(r: redis.Redis) -> dict[str, dict[str, float]]:
    by_name: dict[str, dict[str, float]] = {}
    for k, v in r.hgetall(COUNTERS_KEY).items():
        name, labels = _split_series(_text(k))
        by_name.setdefault(name, {})[labels] = float(_text(v))
    return by_name


def _with_le(labels: str, le: str) -> str:
    inner = labels[1:-1] if labels else ""
    return "{" + (inner + "," if inner else "") + f'le="{le}"' + "}"


def _histogram_lines(out: list[str], spec: Metric, raw: dict[Any, Any]) -> None:
    series: dict[str, dict[str, float]] = {}
    for k, v in raw.items():
        labels, _, part = _text(k).rpartition(SEP)
        series.setdefault(labels, {})[part] = float(_text(v))
    if not series:
        series[""] = {}      # an unlabelled histogram shows zeros before its first observation
    buckets = spec.buckets or DEFAULT_BUCKETS
    for labels in sorted(series):
        fields = series[labels]
        running = 0.0
        for b in buckets:
            running += fields.get(_le(b), 0.0)
            out.append(f"{spec.name}_bucket{_with_le(labels, _le(b))} {_fmt(running)}")
        running += fields.get("+Inf", 0.0)
        out.append(f"{spec.name}_bucket{_with_le(labels, '+Inf')} {_fmt(fields.get('count', running))}")
        out.append(f"{spec.name}_sum{labels} {_fmt(fields.get('sum', 0.0))}")
        out.append(f"{spec.name}_count{labels} {_fmt(fields.get('count', running))}")


def _lag_seconds(r: redis.Redis) -> float:
    """Age of the oldest entry still in a lane (entries leave the stream once acknowledged)."""
    from worker.adapters import stream

    secs, micros = r.time()
    now_ms = int(secs) * 1000 + int(micros) // 1000
    oldest: int | None = None
    for lane in stream.LANES:
        first = r.xrange(stream.stream_key(lane), "-", "+", count=1)
        if first:
            ms = int(_text(first[0][0]).split("-", 1)[0])
            oldest = ms if oldest is None else min(oldest, ms)
    return 0.0 if oldest is None else max(0.0, (now_ms - oldest) / 1000)


def _fast_depth(r: redis.Redis) -> int:
    from worker.adapters import stream

    b = stream.backlog(r, stream.FAST)
    return b["waiting"] + b["pending"]


def _dead_letters(session: Any) -> int:
    from sqlalchemy import func, select

    from worker.adapters.db import DeadLetter

    return int(session.execute(select(func.count()).select_from(DeadLetter)
                               .where(DeadLetter.retried_at.is_(None))).scalar_one())


def render(r: redis.Redis, session: Any) -> str:
    """Prometheus text exposition (format 0.0.4) of every metric; a failing part is left out, not fatal."""
    out: list[str] = []
    counters_ok = True
    try:
        counters = _counters(r)
    except Exception as exc:   # unknown values are left out rather than shown as zeros
        log.warning("metrics: counters unavailable: %s", exc)
        counters, counters_ok = {}, False
    gauges: dict[str, float] = {}
    for name, compute, arg in (("leadrouter_processing_lag_seconds", _lag_seconds, r),
                               ("leadrouter_fast_lane_depth", _fast_depth, r),
                               ("leadrouter_dead_letters", _dead_letters, session)):
        try:
            gauges[name] = float(compute(arg))
        except Exception as exc:
            log.warning("metrics: %s unavailable: %s", name, exc)
    for spec in METRICS.values():
        _header(out, spec.name, spec.kind, spec.help)
        if spec.kind == "gauge":
            if spec.name in gauges:
                out.append(f"{spec.name} {_fmt(gauges[spec.name])}")
        elif spec.kind == "counter":
            series = counters.pop(spec.name, {})
            if counters_ok and not series and spec.name not in LABELLED_ONLY:
                series = {"": 0.0}
            for labels in sorted(series):
                out.append(f"{spec.name}{labels} {_fmt(series[labels])}")
        else:
            try:
                _histogram_lines(out, spec, r.hgetall(HIST_KEY.format(name=spec.name)))
            except Exception as exc:
                log.warning("metrics: %s unavailable: %s", spec.name, exc)
    for name in sorted(counters):   # counters recorded under names this module does not describe
        _header(out, name, "counter", name.removeprefix(PREFIX).replace("_", " ") + ".")
        for labels in sorted(counters[name]):
            out.append(f"{name}{labels} {_fmt(counters[name][labels])}")
    return "\n".join(out) + "\n"
