"""Starting and stopping a leadrouter stack on one machine: a private redis-server and the product's processes.

``leadrouter dev``, the benchmark and the tests all start their stack through this module, so each
gets the same Redis settings (AOF, no eviction, as in production), the same Celery worker command
line, and the same clean stop: every process runs in a session of its own, so its whole tree
(a Celery worker and its pool) is signalled together and nothing outlives the stack. Readiness is
a condition (Redis answers ``PING``, a port accepts), never a fixed sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[2]   # the repository: worker/adapters/launcher.py
EVENT_AND_ALERT_QUEUES = "events,fast,alerts"
T = TypeVar("T")


class LaunchError(RuntimeError):
    """A part of the stack could not start, or stopped on its own."""


def free_port(preferred: int = 0) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port."""
    for port in dict.fromkeys((preferred, 0)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise LaunchError("no free port on 127.0.0.1")


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.05,
             processes: Processes | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Raises :class:`TimeoutError` naming ``what`` after ``timeout`` seconds, and :class:`LaunchError`
    at once when one of ``processes`` has stopped (nothing would ever come)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if processes is not None:
            processes.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_port(port: int, timeout: float = 15.0, what: str | None = None,
              processes: Processes | None = None) -> None:
    try:
        wait_for(lambda: port_answers(port), timeout, what or f"port {port}", interval=0.1, processes=processes)
    except TimeoutError as exc:
        raise LaunchError(f"nothing answered on port {port} ({exc})") from None


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------- Redis


class RedisServer:
    """A private redis-server on 127.0.0.1, configured like production (AOF ``everysec``, no eviction).

    Its data lives in ``directory`` (a temporary directory of its own, removed by :meth:`stop`, when
    none is given). The port is chosen once: after :meth:`kill` a :meth:`start` comes back on the same
    port with the same AOF, as a restarted server would. :meth:`pause` and :meth:`resume` freeze it."""

    def __init__(self, directory: Path | None = None, port: int | None = None):
        self._own_dir = directory is None
        self.dir = Path(tempfile.mkdtemp(prefix="leadrouter-redis-")) if directory is None else directory.resolve()
        self.port = port if port is not None else free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise LaunchError("redis-server is not on PATH. Install it (Debian/Ubuntu: `sudo apt-get install "
                              "redis-server`, macOS: `brew install redis`) or point REDIS_URL at a running Redis.")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction",
             "--daemonize", "no", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            wait_for(self._ready, timeout, f"redis-server on port {self.port}", interval=0.02)
        except TimeoutError as exc:
            raise LaunchError(f"redis-server did not start ({exc}); its log: {self.dir / 'redis.log'}") from None

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise LaunchError(f"redis-server exited with {self.proc.returncode}; its log: {self.dir / 'redis.log'}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as c:
                c.sendall(b"PING\r\n")
                return c.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise LaunchError(f"redis-server stopped unexpectedly (exit {self.proc.returncode}); "
                              f"its log: {self.dir / 'redis.log'}")

    def kill(self) -> None:
        """``kill -9``: what was acknowledged but not yet written to the AOF is lost, as in a crash."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)   # a paused server cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- the product's processes


def celery_worker_args(queues: str = EVENT_AND_ALERT_QUEUES, concurrency: int = 2, *, app: str = "worker.app",
                       hostname: str | None = None, name: str = "worker", heartbeat: bool = False,
                       loglevel: str = "WARNING") -> list[str]:
    """The command line of a Celery worker on ``queues``: prefork pool, no gossip or mingle (a fleet of
    one machine has nothing to learn at start-up); named ``hostname``, else ``name`` and a random tag."""
    args = [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queues, "-c", str(concurrency),
            "--pool", "prefork", "-n", hostname or f"{name}-{uuid.uuid4().hex[:6]}@%h"]
    if not heartbeat:
        args.append("--without-heartbeat")
    return [*args, "--without-gossip", "--without-mingle", "-l", loglevel]


class Processes:
    """The product processes of one stack, each in a session of its own.

    With a ``logdir`` each process writes ``<name>-<n>.log`` there; without one it shares this
    process's terminal (``leadrouter dev``). ``env`` is a dict the caller may still change: a process
    started later sees the change."""

    def __init__(self, env: dict[str, str], logdir: Path | None = None, cwd: Path | None = ROOT):
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.logdir = logdir
        self.cwd = cwd
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, name: str = "proc", extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = {**self.env, **(extra_env or {})}
        if self.logdir is None:
            proc = subprocess.Popen(list(args), env=env, cwd=self.cwd, start_new_session=True)
        else:
            with open(self.logdir / f"{name}-{len(self.procs)}.log", "wb") as log:   # the child keeps its copy
                proc = subprocess.Popen(list(args), env=env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.procs.append(proc)
        return proc

    def celery_worker(self, queues: str = EVENT_AND_ALERT_QUEUES, concurrency: int = 2, name: str = "worker", *,
                      app: str = "worker.app", hostname: str | None = None,
                      heartbeat: bool = False) -> subprocess.Popen[bytes]:
        return self.start(*celery_worker_args(queues, concurrency, app=app, hostname=hostname, name=name,
                                              heartbeat=heartbeat), name=name)

    def leadrouter(self, *args: str, name: str = "leadrouter") -> subprocess.Popen[bytes]:
        """A ``leadrouter`` command (``beat``, ``api --port N``, ...) as a process of its own."""
        return self.start(sys.executable, "-m", "worker.entrypoints.cli", *args, name=name)

    def beat(self, name: str = "beat") -> subprocess.Popen[bytes]:
        return self.leadrouter("beat", name=name)

    def api(self, port: int, host: str = "127.0.0.1", name: str = "api") -> subprocess.Popen[bytes]:
        return self.leadrouter("api", "--host", host, "--port", str(port), name=name)

    def check_alive(self) -> None:
        """Raise :class:`LaunchError` when a process started here has stopped."""
        for p in self.procs:
            if p.poll() is not None:
                cmd = p.args if isinstance(p.args, list | tuple) else [p.args]
                where = f"; logs in {self.logdir}" if self.logdir is not None else ""
                raise LaunchError(f"a process stopped unexpectedly (exit {p.returncode}): "
                                  f"{' '.join(map(str, cmd[:7]))}…{where}")

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to ``proc``'s whole tree and wait for it to end (``SIGKILL`` after 10 s)."""
        if proc.poll() is None:
            _signal_group(proc, sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()

    def logs(self, tail: int = 3000) -> str:
        if self.logdir is None:
            return ""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
                         for p in sorted(self.logdir.glob("*.log")))

    def stop_all(self, grace: float = 8.0) -> None:
        """``SIGTERM`` to every tree, newest first; after ``grace`` seconds ``SIGKILL`` to what is left,
        children a parent left behind included."""
        for p in reversed(self.procs):
            if p.poll() is None:
                _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in reversed(self.procs):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p, signal.SIGKILL)
            if p.poll() is None:
                p.wait()
        self.procs.clear()
