"""Logging: JSON lines when not a terminal; phone numbers, emails and secrets masked everywhere."""

from __future__ import annotations

import faulthandler
import json
import logging
import re
import signal
import sys
import time

_PHONE = re.compile(r"(?<![\w])\+?\d[\d\s().-]{7,}\d")
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_SECRET = re.compile(r"(?i)(token|secret|password|api[_-]?key|authorization|auth)([\"'=:\s]+)([^\s\"',&]+)")
_URL_CREDS = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")


def mask(text: str) -> str:
    text = _URL_CREDS.sub(r"\1***\3", text)
    text = _SECRET.sub(r"\1\2***", text)
    text = _EMAIL.sub(r"\1***@\2", text)
    return _PHONE.sub(lambda m: m.group(0)[:3] + "***" + m.group(0)[-2:], text)


class MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:
            return True
        record.msg, record.args = mask(msg), ()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = mask(self.formatException(record.exc_info))
        return json.dumps(out)


_done = False


def dump_stacks_on_sigusr1() -> None:
    """``kill -USR1`` writes the stack of each of this process's threads to its stderr and the process
    carries on: what a process that looks stuck is doing (code locations only, no data). For the
    scheduler and the API; a Celery worker's main process has a SIGUSR1 handler of its own that logs
    the same, and in its pool processes SIGUSR1 is the soft time limit."""
    faulthandler.register(signal.SIGUSR1, file=sys.__stderr__ or sys.stderr, all_threads=True)


def setup_logging(level: int = logging.INFO) -> None:
    global _done
    if _done:
        return
    _done = True
    stream = sys.__stderr__ or sys.stderr   # not a wrapper a framework put in its place
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskingFilter())
    if stream.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("celery", "uvicorn", "uvicorn.access", "uvicorn.error", "kombu", "amqp"):
        lg = logging.getLogger(name)
        lg.addFilter(MaskingFilter())
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
