"""What the benchmark runs against: a private Redis and the worker processes (the launcher's), a fresh
database per scenario."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from worker.adapters.launcher import ROOT, LaunchError, Processes, RedisServer, free_port, wait_for

__all__ = ["CONFIG", "ROOT", "Databases", "LaunchError", "Processes", "RedisServer", "free_port", "tree_rss_kb",
           "wait_for"]

CONFIG = ROOT / "config" / "routing.yaml"


class Databases:
    """A fresh, migrated database per scenario: a SQLite file, or a PostgreSQL database of our own."""

    def __init__(self, directory: Path, server_url: str | None):
        self.dir = directory
        self.server_url = _psycopg(server_url) if server_url else None
        self.created: list[str] = []

    @property
    def kind(self) -> str:
        return "postgresql" if self.server_url else "sqlite"

    def create(self, label: str) -> str:
        if self.server_url is None:
            url = f"sqlite:///{self.dir / f'{label}.db'}"
        else:
            import sqlalchemy as sa

            name = f"lr_bench_{label}_{uuid.uuid4().hex[:8]}"
            admin = sa.create_engine(self.server_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(sa.text(f'CREATE DATABASE "{name}"'))
            admin.dispose()
            self.created.append(name)
            url = f"{self.server_url.rpartition('/')[0]}/{name}"
        from worker.adapters.migrate import upgrade

        upgrade(url)
        return url

    def drop_all(self) -> None:
        if self.server_url is None or not self.created:
            return
        import sqlalchemy as sa

        admin = sa.create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            for name in self.created:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        self.created.clear()


def _psycopg(url: str) -> str:
    return "postgresql+psycopg://" + url.removeprefix("postgresql://") if url.startswith("postgresql://") else url


def tree_rss_kb(root_pid: int) -> int:
    """VmRSS of a process and all its descendants, in kB."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total
