"""``api``, ``worker`` and ``beat``, however they are started, refuse to run with a guessable
``LEADROUTER_SECRET_KEY`` or a rules file that does not load: the reason, exit status 1, and never
a running service that hands out forgeable links or answers 500."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.stack import ROOT, SECRET_KEY, free_port

WORKER = ["-m", "worker.entrypoints.cli", "worker"]
BEAT = ["-m", "worker.entrypoints.cli", "beat"]
API = ["-m", "worker.entrypoints.cli", "api", "--port", "0"]
UVICORN = ["-m", "uvicorn", "worker.entrypoints.api:create_app", "--factory", "--host", "127.0.0.1", "--port", "0"]
CELERY = ["-m", "celery", "-A", "worker.app", "worker", "-Q", "events", "-c", "1", "--pool", "solo",
          "--without-gossip", "--without-mingle", "--without-heartbeat"]


def run(args: list[str], env: dict[str, str], **changes: str | None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    for k, v in changes.items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    # A refusal comes before anything listens or consumes; a process that started instead runs until killed.
    try:
        return subprocess.run([sys.executable, *args], env=full, cwd=ROOT, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{args} started instead of refusing: {exc.stderr!r}") from None


@pytest.mark.parametrize("secret,why", [(None, "is not set"), ("", "is not set"),
                                        ("dev-insecure-secret-change-me", "published default"),
                                        ("test-secret", "published default"),
                                        ("x" * 31, "shorter than 32 bytes")])
def test_the_api_refuses_a_missing_default_or_short_secret(service_env, secret, why):
    done = run(API, service_env, LEADROUTER_SECRET_KEY=secret)
    assert done.returncode == 1, done.stderr
    assert "leadrouter api: refusing to start" in done.stderr and why in done.stderr
    assert "Traceback" not in done.stderr
    if secret:
        assert secret not in done.stderr          # the refusal never repeats the key


@pytest.mark.parametrize("command,role", [(WORKER, "worker"), (BEAT, "beat"), (UVICORN, "api"), (CELERY, "worker")])
def test_every_long_running_part_refuses_the_published_default(service_env, command, role):
    done = run(command, service_env, LEADROUTER_SECRET_KEY="dev-insecure-secret-change-me")
    assert done.returncode == 1, done.stderr
    assert f"leadrouter {role}: refusing to start" in done.stderr and "published default" in done.stderr


def _break_rules(path: Path) -> int:
    """``routing.on_call`` names a rep that does not exist; returns that line."""
    lines = path.read_text().splitlines()
    n = next(i for i, line in enumerate(lines) if line.strip().startswith("on_call:"))
    lines[n] = "  on_call: nobody-here"
    path.write_text("\n".join(lines) + "\n")
    return n + 1


@pytest.mark.parametrize("command,role", [(API, "api"), (WORKER, "worker"), (BEAT, "beat"), (UVICORN, "api"),
                                          (CELERY, "worker")])
def test_broken_rules_stop_every_part_at_start_naming_the_line(service_env, command, role):
    rules = Path(service_env["LEADROUTER_CONFIG"])
    line = _break_rules(rules)
    done = run(command, service_env)
    assert done.returncode == 1, done.stderr
    assert f"leadrouter {role}: refusing to start" in done.stderr
    assert f"{rules}:{line}: routing.on_call:" in done.stderr and "nobody-here" in done.stderr
    assert "LEADROUTER_SECRET_KEY" not in done.stderr      # the key given is fine: only the rules are named


def test_a_good_key_and_good_rules_start_the_api(service_env):
    import httpx

    from tests.support.stack import wait_until

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "worker.entrypoints.cli", "api", "--port", str(port)],
                            env={**os.environ, **service_env}, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                return False

        wait_until(healthy, timeout=30, message="the API to answer /healthz")
        assert len(SECRET_KEY.encode()) >= 32
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_bad_reload_keeps_the_running_rules_and_healthz_and_status_say_the_file_is_refused(service_env):
    import httpx

    from tests.support.stack import wait_until

    port = free_port()
    env = {**os.environ, **service_env, "LEADROUTER_WRITE_KEY": "wk-reload-3c"}
    proc = subprocess.Popen([sys.executable, "-m", "worker.entrypoints.cli", "api", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def health() -> dict[str, str] | None:
            assert proc.poll() is None
            try:
                r = httpx.get(f"{url}/healthz", timeout=5)
            except httpx.TransportError:
                return None
            return r.json() if r.status_code == 200 else None

        good = wait_until(health, timeout=30, message="the API")
        assert good["rules"].startswith("ok ")
        rules = Path(service_env["LEADROUTER_CONFIG"])
        line = _break_rules(rules)
        refused = wait_until(lambda: (h := health()) is not None and h["rules"].startswith("refused") and h,
                             timeout=10, message="/healthz to report the refused file")
        assert f"line {line}: routing.on_call" in refused["rules"]
        assert good["rules"].removeprefix("ok ") in refused["rules"]          # the rules that keep running
        r = httpx.post(f"{url}/v1/track", auth=("wk-reload-3c", ""), timeout=10,
                       json={"type": "track", "messageId": "m-reload", "userId": "u-1", "event": "Page Viewed"})
        assert r.status_code == 200, r.text                                   # still serving, no 500
        status = subprocess.run([sys.executable, "-m", "worker.entrypoints.cli", "status"], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert "RULES FILE REFUSED" in status.stdout and f"{rules}:{line}: routing.on_call" in status.stdout
    finally:
        proc.terminate()
        proc.wait(10)


def test_status_with_redis_down_says_so_in_one_line(service_env):
    port = free_port()
    done = run(["-m", "worker.entrypoints.cli", "status"], service_env, REDIS_URL=f"redis://:hunter2-pw@127.0.0.1:{port}/0")
    assert done.returncode == 1
    assert done.stderr.strip() == (f"leadrouter: Redis is unreachable at redis://127.0.0.1:{port}/0 "
                                   "(ConnectionError); is it running, and is REDIS_URL right?"), done.stderr


def test_an_invalid_database_url_is_refused_without_its_password(service_env):
    done = run(API, service_env, DATABASE_URL="mysql://admin:s3cr3t-pw@db.example:3306/leads")
    assert done.returncode == 1
    assert "DATABASE_URL" in done.stderr and "s3cr3t-pw" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("url", ["postgresql+psycopg://lr:s3cr3t-pw@db.example:notaport/lr",
                                 "postgresql+nosuchdriver://lr:s3cr3t-pw@db.example/lr",
                                 "postgres://lr:s3cr3t-pw@db.example/lr"])
def test_operator_commands_refuse_a_bad_database_url_in_one_message_without_its_password(service_env, url):
    done = run(["-m", "worker.entrypoints.cli", "status"], service_env, DATABASE_URL=url)
    assert done.returncode == 1 and "leadrouter: invalid settings" in done.stderr
    assert "s3cr3t-pw" not in done.stderr and "Traceback" not in done.stderr, done.stderr
