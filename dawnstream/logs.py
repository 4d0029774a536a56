"""Structured logging: one line per event, ``key=value`` pairs after the event name.

Library code logs through :func:`get_logger` and :func:`event`; nothing prints.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

_CONFIGURED = False


def _fmt_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    """Formats records as ``ts=... level=... logger=... event=... k=v ...``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        parts = [
            f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_fmt_value(record.getMessage())}",
        ]
        parts.extend(f"{k}={_fmt_value(v)}" for k, v in fields.items())
        if record.exc_info:
            parts.append(f"exc={_fmt_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


def configure(level: str | None = None) -> None:
    """Install the key=value formatter on the root ``dawnstream`` logger (idempotent).

    Args:
        level: logging level name; defaults to ``$DAWNSTREAM_LOG_LEVEL`` or ``INFO``.
    """
    global _CONFIGURED
    logger = logging.getLogger("dawnstream")
    logger.setLevel((level or os.environ.get("DAWNSTREAM_LOG_LEVEL", "INFO")).upper())
    if _CONFIGURED:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    _CONFIGURED = True


def get_logger(name: str) -> logging.Logger:
    """Return a logger below ``dawnstream`` (``name`` is usually ``__name__``)."""
    return logging.getLogger(name if name.startswith("dawnstream") else f"dawnstream.{name}")


def event(logger: logging.Logger, name: str, level: int = logging.INFO, exc_info: BaseException | None = None,
          **fields: Any) -> None:
    """Log one structured event: ``event(log, "batch.done", rows=10000, ms=3.2)``.

    ``exc_info``: an exception whose traceback is appended as the ``exc`` field (for bugs, where
    the traceback is what someone needs to fix it)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields}, exc_info=exc_info)
