"""Process-wide wiring: settings, database, Redis and the current rules, built once per process."""

from __future__ import annotations

import gc
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import redis
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from routing.config import Rules, RulesError, load_rules
from worker.adapters.engines import make_engine, make_sessionmaker
from worker.adapters.settings import Settings, get_settings

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
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._engine: Engine | None = None
        self._sm: sessionmaker | None = None  # type: ignore[type-arg]
        self._redis: redis.Redis | None = None
        self._rules: RulesHolder | None = None
        self.pid = os.getpid()

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
