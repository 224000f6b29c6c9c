"""Logging: one line per event, text or JSON (`LOG_FORMAT=json`), with email addresses masked.

bday never logs an address on purpose (log lines name message and user ids); the mask is a
safety net for anything a library or an exception message might carry.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import UTC, datetime

# RFC 5322 atext (plus dots) in the local part, so o'brien@ or a!b@ are caught too.
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]"
EMAIL = re.compile(rf"({_LOCAL}){_LOCAL}*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{{2,}})")


def mask_emails(text: str) -> str:
    """'ada.lovelace@example.com' -> 'a***@example.com'."""
    return EMAIL.sub(r"\1***@\2", text)


class MaskEmails(logging.Filter):
    """Mask addresses in INFO-and-above records: the message and any exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.INFO:
            message = record.getMessage()
            masked = mask_emails(message)
            if masked != message:
                record.msg, record.args = masked, None
            if record.exc_info and not record.exc_text:
                # Formatters reuse exc_text when set, so the traceback is printed masked.
                record.exc_text = mask_emails(logging.Formatter().formatException(record.exc_info))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(handlers: list[logging.Handler] | None = None) -> None:
    """Apply bday's format and mask to `handlers` (default: the root logger's)."""
    root = logging.getLogger()
    handlers = handlers if handlers is not None else root.handlers
    for handler in handlers:
        if not any(isinstance(f, MaskEmails) for f in handler.filters):
            handler.addFilter(MaskEmails())
        if os.environ.get("LOG_FORMAT", "").lower() == "json":
            handler.setFormatter(JsonFormatter())
    # One line per send is ours to write (bday.delivery.attempt, with the message id). httpx logs
    # every request and Celery every task received/succeeded at INFO: three more lines per message,
    # and the handler lock they share costs throughput. LOG_CELERY_TASKS=true brings Celery's back.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if os.environ.get("LOG_CELERY_TASKS", "").lower() not in ("1", "true", "yes"):
        for name in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)
