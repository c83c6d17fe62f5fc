"""Logging: JSON lines when not a terminal; phone numbers, emails and secrets masked everywhere."""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import threading
import time
import traceback

_PHONE = re.compile(r"(?<![\w])\+?\d[\d\s().-]{7,}\d")
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_SECRET = re.compile(r"(?i)(token|secret|password|api[_-]?key|authorization|auth)([\"'=:\s]+)([^\s\"',&]+)")
_URL_CREDS = re.compile(r"(://[^:/@\s]*:)([^@\s]+)(@)")
_CLAIM_LINK = re.compile(r"/claim/[^\s\"'?#<>]+")   # a claim token is a bearer credential
# What the phone pattern also matches but is no phone: a decimal (a duration, 0.004572s), an IPv4
# address, a date or time stamp.
_NOT_A_PHONE = re.compile(r"\d+\.\d+|\d{1,3}(?:\.\d{1,3}){3}|\d{4}-\d{2}-\d{2}.*|\d{2}:\d{2}.*")


def _mask_phone(m: re.Match[str]) -> str:
    found = m.group(0)
    if _NOT_A_PHONE.fullmatch(found):
        return found
    return found[:3] + "***" + found[-2:]


def mask(text: str) -> str:
    text = _URL_CREDS.sub(r"\1***\3", text)
    text = _CLAIM_LINK.sub("/claim/[redacted]", text)
    text = _SECRET.sub(r"\1\2***", text)
    text = _EMAIL.sub(r"\1***@\2", text)
    return _PHONE.sub(_mask_phone, text)


class MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:
            return True
        record.msg, record.args = mask(msg), ()
        return True


class AccessLogFilter(logging.Filter):
    """For uvicorn's access log, whose formatter takes its five arguments apart (client, method,
    path, HTTP version, status): the path is masked in place (claim tokens, emails), the rest kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            client, method, path, version, status = args
            record.args = (client, method, mask(str(path)), version, status)
            return True
        return MaskingFilter().filter(record)


def mask_web_server_logs() -> None:
    """Mask uvicorn's own loggers, however uvicorn was started (``leadrouter api`` or
    ``uvicorn worker.entrypoints.api:create_app --factory`` with uvicorn's logging configuration)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, AccessLogFilter) for f in access.filters):
        access.filters = [f for f in access.filters if not isinstance(f, MaskingFilter)]
        access.addFilter(AccessLogFilter())
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, MaskingFilter) for f in lg.filters):
            lg.addFilter(MaskingFilter())


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
    the same, and in its pool processes SIGUSR1 is the soft time limit.

    A Python handler, not :func:`faulthandler.register`: faulthandler reads the other threads' frames
    without the interpreter lock, and a scheduler whose threads are busy died of it (SIGSEGV). The
    handler runs in the main thread between two bytecodes, with the lock, so it reads them safely;
    a main thread blocked in a database call dumps when the call returns (statement timeouts bound it)."""
    signal.signal(signal.SIGUSR1, _dump_stacks)


def _dump_stacks(_signum: int, _frame: object) -> None:
    """Every thread's stack, newest call first, in faulthandler's format."""
    names = {t.ident: t.name for t in threading.enumerate()}
    current = threading.get_ident()
    out = []
    for ident, frame in sys._current_frames().items():
        head = "Current thread" if ident == current else "Thread"
        out.append(f"{head} 0x{ident:016x} ({names.get(ident, '?')}; most recent call first):")
        for summary in reversed(traceback.extract_stack(frame)):
            out.append(f'  File "{summary.filename}", line {summary.lineno} in {summary.name}')
        out.append("")
    stream = sys.__stderr__ or sys.stderr
    stream.write("\n".join(out) + "\n")
    stream.flush()


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
    for name in ("celery", "kombu", "amqp"):
        lg = logging.getLogger(name)
        lg.addFilter(MaskingFilter())
    mask_web_server_logs()
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
