"""The launcher that ``leadrouter dev``, the benchmark and the tests start their stack with: a private
redis-server that keeps what it acknowledged across a restart, and processes stopped as whole trees."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import redis

from tests.support.stack import wait_until
from worker.adapters.launcher import LaunchError, Processes, RedisServer, port_answers


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_a_private_redis_restarts_on_its_port_with_its_data_and_removes_its_own_directory() -> None:
    server = RedisServer()
    directory = server.dir
    server.start()
    try:
        r = redis.Redis.from_url(server.url)
        r.set("k", "kept")
        wait_until(lambda: r.info("persistence")["aof_buffer_length"] == 0, timeout=10,
                   message="the write in the AOF")
        server.kill()
        assert not port_answers(server.port)
        server.start()                       # same port, same AOF
        assert redis.Redis.from_url(server.url).get("k") == b"kept"
        server.pause()
        server.stop()                        # a paused server stops too
        assert not server.running()
    finally:
        server.stop()
    assert not directory.exists()


def test_stop_all_ends_every_process_of_each_tree_and_a_dead_one_is_reported(tmp_path: Path) -> None:
    procs = Processes({}, tmp_path)
    # a parent that leaves a child behind in its session
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);" \
             " print('child started', flush=True); time.sleep(600)"
    parent = procs.start(sys.executable, "-c", script, name="parent")
    log = tmp_path / "parent-0.log"
    wait_until(lambda: log.exists() and "child started" in log.read_text(), timeout=30, message="the child")
    children = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == parent.pid]
    assert children, "the parent started no child"
    procs.start(sys.executable, "-c", "raise SystemExit(3)", name="short")
    with pytest.raises(LaunchError, match="exit 3"):
        wait_until(lambda: procs.check_alive(), timeout=30, message="the short process to end")
    procs.stop_all(grace=2)
    assert parent.poll() is not None
    # signalled by stop_all: gone as soon as the kernel has torn it down (a moment on a busy machine)
    wait_until(lambda: not any(_alive(pid) for pid in children), timeout=10, message="the left-behind child to end")


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return -1
