"""How a long-running process is set up: start-up objects kept out of the garbage collector's scans;
thread stacks on ``kill -USR1``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.support.stack import ROOT, handles_sigusr1, wait_until

PROBE = """
import gc, json
from worker.entrypoints.tasks import _init_process
_init_process()
print(json.dumps({"frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())}))
"""


def test_a_worker_process_freezes_its_start_up_objects(service_env):
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**service_env, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    # the modules, rules, engine and provider clients: tens of thousands of objects, never scanned again;
    # what is left to scan is a small part of it
    assert probe["frozen"] > 20_000
    assert probe["tracked"] < probe["frozen"] / 10


def test_kill_usr1_writes_the_schedulers_thread_stacks_to_its_log_and_it_carries_on(service_env, processes):
    beat = processes.leadrouter("beat", name="beat")
    log = next(processes.logdir.glob("beat-*.log"))
    # a busy machine starts a Python process slowly: wait for the handler itself, not for a fixed time
    wait_until(lambda: beat.poll() is None and "scheduler running" in log.read_text(), timeout=90,
               message="the scheduler to start")
    wait_until(lambda: handles_sigusr1(beat.pid), timeout=30, message="the scheduler's SIGUSR1 handler")

    def dumped() -> bool:
        assert beat.poll() is None, f"the scheduler exited with {beat.returncode}"
        os.kill(beat.pid, signal.SIGUSR1)   # as often as it takes: the handler stays, the process carries on
        time.sleep(0.5)
        text = log.read_text()
        # its main loop (the current thread), then its housekeeping threads once they run; other threads go on
        # logging while a dump is written, so each frame is looked for on a line of its own
        lines = text.splitlines()
        return "Current thread 0x" in text and any(line.endswith(" in run_forever") for line in lines) \
            and any(line.endswith(" in loop") for line in lines)

    wait_until(dumped, timeout=60, interval=0.5, message="the scheduler's stacks")
    assert beat.poll() is None
