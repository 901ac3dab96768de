"""How the daemon's log lines look: plain text for a terminal or a file, plain text
without a timestamp of its own when stderr is the systemd journal (which stamps every
line and reads the level from a ``<N>`` prefix), or one JSON object per line for log
shippers.

The JSON fields are fixed so that a shipper's pipeline can rely on them: ``time``
(RFC 3339, UTC), ``level``, ``logger``, ``event`` (``query`` for a logged query, else
``message``), ``message``, ``pid``, and for a query also ``peer``, ``ports``, ``uid``,
``answer`` and ``reason`` (what the query log line says in words).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import Any, Final, Literal, TextIO

__all__ = ["LOG_FORMATS", "JsonFormatter", "LogFormat", "configure_logging", "stderr_is_journal"]

LogFormat = Literal["plain", "json"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("plain", "json")

#: The fields a query's log record carries (``extra=`` of the responder's line).
QUERY_FIELDS: Final = ("peer", "ports", "uid", "answer", "reason")
_PLAIN: Final = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
#: The journal adds the time and the pid; ``<N>`` is the syslog priority it files it under.
_JOURNAL: Final = "<%(priority)d>%(levelname)s %(name)s: %(message)s"
_PRIORITIES: Final = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (stderr) is connected to the journal: systemd sets
    ``JOURNAL_STREAM=DEV:INODE`` of the stream it gave the service, and a program must
    compare it with its own stderr (the variable is inherited by children whose stderr
    is something else)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelno, 6)
        record.__dict__["priority"] = priority  # read by the format string
        text = super().format(record)
        # Every line is its own journal entry: each gets the record's priority.
        return text.replace("\n", f"\n<{priority}>")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        document: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", "message"),
            "message": record.getMessage(),
            "pid": record.process,
        }
        for name in QUERY_FIELDS:
            if hasattr(record, name):
                document[name] = getattr(record, name)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: LogFormat = "plain") -> None:
    """Log to stderr at ``level`` in ``log_format`` (plain lines lose their timestamp
    when stderr is the journal)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif stderr_is_journal():
        handler.setFormatter(_JournalFormatter(_JOURNAL))
    else:
        handler.setFormatter(logging.Formatter(_PLAIN))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
