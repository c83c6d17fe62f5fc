"""Process-wide wiring: settings, database, Redis, the current rules, the clock and the provider channels.

A :class:`Runtime` is what the services are handed: an entry point (a task, a CLI command, an API
route, the scheduler) looks up the process's own with :func:`get_runtime` and passes it on, and a
test builds one with the clock or the channels it wants. No service looks it up itself."""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import cast

import redis
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from routing.config import Rules, RulesError, load_rules
from worker.adapters.channels import Channel, ConsoleChannel, SendGridEmailChannel, TwilioSmsChannel
from worker.adapters.db import now_utc
from worker.adapters.engines import make_engine, make_sessionmaker
from worker.adapters.settings import Settings, get_settings
from worker.adapters.sms_pool import sms_pool
from worker.adapters.voice_channel import voice_channel

log = logging.getLogger("leadrouter.runtime")


@dataclass
class RulesHolder:
    """The last good rules; a changed file is picked up at the next ``refresh()``."""

    path: Path
    rules: Rules
    mtime: float = 0.0
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, path: Path) -> RulesHolder:
        rules = load_rules(path)
        return cls(path, rules, _mtime(path))

    def refresh(self) -> bool:
        """Reload when the file changed; an invalid file is refused and the last good rules stay."""
        m = _mtime(self.path)
        if m == self.mtime:
            return False
        with self._lock:
            if m == self.mtime:
                return False
            self.mtime = m
            try:
                new = load_rules(self.path)
            except RulesError as exc:
                self.errors = [str(e) for e in exc.errors]
                log.error("rules file %s refused, keeping rules %s: %s", self.path, self.rules.hash,
                          "; ".join(self.errors))
                return False
            changed = new.hash != self.rules.hash
            self.rules, self.errors = new, []
            if changed:
                log.info("rules reloaded from %s: %s", self.path, new.hash)
            return changed


def _mtime(path: Path) -> float:
    try:
        st = os.stat(path)
        return st.st_mtime_ns / 1e9 + st.st_size
    except OSError:
        return -1.0


class Runtime:
    """The dependencies of the services: built lazily, once per process (connections do not survive a fork).

    ``clock`` is what :meth:`now` reads; ``channels`` stand in for the provider channels the settings would
    build (``sms``, ``email``, ``voice``), as a test's fakes do."""

    def __init__(self, settings: Settings | None = None, *, clock: Callable[[], datetime] = now_utc,
                 channels: Mapping[str, Channel] | None = None):
        self.settings = settings or get_settings()
        self.clock = clock
        self._engine: Engine | None = None
        self._sm: sessionmaker | None = None  # type: ignore[type-arg]
        self._redis: redis.Redis | None = None
        self._rules: RulesHolder | None = None
        self._given = dict(channels or {})
        self._channels = dict(self._given)
        self._channels_lock = threading.Lock()
        self.pid = os.getpid()

    def now(self) -> datetime:
        return self.clock()

    def channel(self, kind: str) -> Channel:
        """The process's channel for ``sms``, ``email`` or ``voice``; the console when its provider is not set up."""
        with self._channels_lock:
            ch = self._channels.get(kind)
            if ch is None:
                ch = self._channels[kind] = self._build_channel(kind)
            return ch

    def _build_channel(self, kind: str) -> Channel:
        s = self.settings
        if kind == "voice":
            return cast(Channel, voice_channel(s, lambda: self.redis, lambda: self.rules))
        if kind == "sms" and s.twilio_account_sid and s.twilio_auth_token and (
                s.sms_senders() or s.twilio_messaging_service_sid):
            return TwilioSmsChannel(s.twilio_account_sid, s.twilio_auth_token, from_number=s.twilio_from_number,
                                    messaging_service_sid=s.twilio_messaging_service_sid,
                                    status_callback_url=f"{s.public_url.rstrip('/')}/webhooks/twilio/status",
                                    api_base_url=s.twilio_api_base_url, timeout=10,
                                    from_numbers=s.sms_senders(), pool=sms_pool(s, self.redis))
        if kind == "email" and s.sendgrid_api_key and s.sendgrid_from_email:
            return SendGridEmailChannel(s.sendgrid_api_key, s.sendgrid_from_email,
                                        api_base_url=s.sendgrid_api_base_url, timeout=10)
        return ConsoleChannel()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.settings.database_url, self.settings.db_statement_timeout)
        return self._engine

    @property
    def sessions(self) -> sessionmaker:  # type: ignore[type-arg]
        if self._sm is None:
            self._sm = make_sessionmaker(self.engine)
        return self._sm

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=10,
                                               socket_connect_timeout=5, health_check_interval=15,
                                               retry_on_timeout=True)
        return self._redis

    @property
    def rules_holder(self) -> RulesHolder:
        if self._rules is None:
            self._rules = RulesHolder.load(self.settings.config_path)
        return self._rules

    @property
    def rules(self) -> Rules:
        return self.rules_holder.rules

    def after_fork(self) -> None:
        """Connections are not shared across a fork."""
        if self._engine is not None:
            self._engine.dispose(close=False)
        self._engine, self._sm, self._redis = None, None, None
        with self._channels_lock:   # their HTTP connections and rate limiters belong to the parent
            self._channels = dict(self._given)
        self.pid = os.getpid()


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        if _runtime is not None:
            _runtime.after_fork()
        else:
            _runtime = Runtime()
    return _runtime


def reset_runtime() -> None:
    global _runtime
    _runtime = None


def settle_process() -> None:
    """Once a long-running process is set up: what start-up built (modules, the rules, the engine,
    the provider clients) lives as long as the process, so the garbage collector stops scanning
    it. A full collection of a worker's start-up objects takes about 40 ms and came every few
    batches; afterwards it scans only what the batches left behind."""
    gc.collect()
    gc.freeze()
