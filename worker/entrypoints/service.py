"""``leadrouter worker``: the Celery workers, with separate capacity for events, the fast lane and alerts.

Three Celery worker groups run side by side, so a backlog of page views never
delays a demo request, and neither event lane delays a reminder:

- ``events``: prefork processes draining the normal lane (CPU-bound scoring in
  batch transactions);
- ``fast``: prefork processes for the fast lane (high-value events); each fires
  the first alerts of the crossings it routes itself, claimed in the routing
  transaction and sent on threads of its own (``worker.entrypoints.tasks.drain_once``);
- ``alerts``: processes whose threads fire alert steps, one process per unit
  of ``--alert-concurrency``. Firing a batch of steps mostly waits, on the
  providers and on the database, so threads keep several batches in flight
  where a process would sit idle; and building requests and messages is
  Python work that one process (one GIL) cannot spread over the cores, so a
  busy minute of reminders needs a process per core.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

ALERT_THREADS = 2   # alert batches in flight per alert process


def celery_command(queues: str, concurrency: int, name: str, loglevel: str = "INFO",
                   pool: str = "prefork") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", queues, "-c", str(concurrency),
            "--pool", pool, "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle",
            "-l", loglevel]


def worker_commands(concurrency: int = 2, alert_concurrency: int = 2, loglevel: str = "INFO"
                    ) -> list[tuple[str, list[str]]]:
    """(name, command) of each worker process group; ``alert_concurrency`` sizes the fast lane and the number
    of alert processes."""
    return [
        ("events", celery_command("events", concurrency, "events", loglevel)),
        ("fast", celery_command("fast", alert_concurrency, "fast", loglevel)),
    ] + [("alerts", celery_command("alerts", ALERT_THREADS, f"alerts{n}", loglevel, pool="threads"))
         for n in range(max(1, alert_concurrency))]


def run_worker(concurrency: int = 2, alert_concurrency: int = 2) -> int:
    procs = [subprocess.Popen(command) for _name, command in worker_commands(concurrency, alert_concurrency)]

    def stop(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    try:
        while procs:
            pid, status = os.wait()
            for p in list(procs):
                if p.pid == pid:
                    procs.remove(p)
                    code = code or os.waitstatus_to_exitcode(status)
                    stop(signal.SIGTERM, None)  # one part died: stop the others, let the supervisor restart
    except ChildProcessError:
        pass
    return code
