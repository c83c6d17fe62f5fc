"""``leadrouter worker``: the Celery workers, with separate capacity for events and for alerts.

Two Celery worker processes groups run side by side: one drains the normal
event lane, the other serves the fast lane and alert steps, so a backlog of
page views never delays a demo request or a reminder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid


def celery_command(queues: str, concurrency: int, name: str, loglevel: str = "INFO") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", queues, "-c", str(concurrency),
            "--pool", "prefork", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle",
            "-l", loglevel]


def run_worker(concurrency: int = 2, alert_concurrency: int = 2) -> int:
    procs = [
        subprocess.Popen(celery_command("events", concurrency, "events")),
        subprocess.Popen(celery_command("fast,alerts", alert_concurrency, "alerts")),
    ]

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
                    stop(signal.SIGTERM, None)  # one part died: stop the other, let the supervisor restart
    except ChildProcessError:
        pass
    return code
