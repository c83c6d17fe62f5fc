"""`make run` is `leadrouter dev --demo`: it starts its own redis-server, plays the story, stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.stack import CONFIG, ROOT, free_port


def test_dev_demo_alerts_reminds_claims_and_stops_cleanly(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({"LEADROUTER_CONFIG": str(CONFIG), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    proc = subprocess.Popen([sys.executable, "-m", "worker.entrypoints.cli", "dev", "--demo", "--port", str(free_port())],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(b"claim answered" in ln for ln in lines):
            assert proc.poll() is None, b"".join(lines).decode(errors="replace")
            time.sleep(0.2)
        out = b"".join(lines).decode(errors="replace")
        assert "claim answered 200" in out, out
        assert "sms alert to" in out and "Reply 1 to claim, 2 to pass" in out   # the console channel
        assert "first reminder went out" in out
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert (tmp_path / "var" / "leadrouter.db").exists() and (tmp_path / "var" / "redis").is_dir()
    # nothing it started is left running
    assert subprocess.run(["pgrep", "-f", str(tmp_path / "var" / "redis")], capture_output=True).returncode == 1
