"""A worker process, once set up, keeps what start-up built out of the garbage collector's scans."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import gc, json
from worker.app import _init_process
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
