"""The Celery application object, shared by the worker and by everything that publishes.

Configuration is read lazily (on first use), so importing this module never needs a valid
environment; a bad setting stops the worker or beat with one line naming the variable.
Tasks live in `bday.worker` (listed in `include`, imported by the worker and beat); code that
publishes names them (`app.signature("bday.tasks.send_message")`) instead of importing them.
"""

from __future__ import annotations

import logging
import os
import sys

from celery import Celery
from celery.worker.consumer import Consumer

log = logging.getLogger(__name__)

app = Celery("bday", include=["bday.worker.tasks", "bday.worker.signals"])
app.config_from_object("bday.broker.config")


class DeadLetteringConsumer(Consumer):
    """Celery's consumer, except that an undecodable message is dead-lettered, not dropped.

    Celery acks a message it cannot decode (bad JSON, unknown content type) so it cannot loop;
    rejecting it without requeue does the same and keeps it in the DLQ for inspection.
    """

    def on_decode_error(self, message, exc):
        log.error("undecodable job dead-lettered (%s; content-type %r)", exc, message.content_type)
        message.reject(requeue=False)


def refuse_open_flower(argv: list[str], environ: dict) -> str | None:
    """Flower must not listen beyond localhost without basic auth; the reason if it would."""
    program = argv[0].replace("\\", "/") if argv else ""
    is_celery = os.path.basename(program) == "celery" or program.endswith("celery/__main__.py")
    if not is_celery or "flower" not in argv:
        return None
    address = environ.get("FLOWER_ADDRESS", "")
    for index, arg in enumerate(argv):
        if arg.startswith("--address="):
            address = arg.split("=", 1)[1]
        elif arg == "--address" and index + 1 < len(argv):
            address = argv[index + 1]
    has_auth = environ.get("FLOWER_BASIC_AUTH") or any(
        a.startswith(("--basic-auth", "--basic_auth")) for a in argv
    )
    if address in ("127.0.0.1", "localhost", "::1") or has_auth:
        return None
    return (
        f"Flower would listen on {address or 'all interfaces'} without authentication: set "
        "FLOWER_BASIC_AUTH=user:password, or bind it to localhost with --address=127.0.0.1"
    )


def exit_on_bad_settings(error: Exception) -> None:
    """Print the one-line settings error and stop (worker/beat start-up)."""
    print(f"bday: {error}", file=sys.stderr)
    raise SystemExit(2)
