"""The worker layer: Celery tasks (thin), beat's scheduler, and the worker/beat signal handlers.

`celery -A bday ...` reaches the app through `celery_app()`, which is also where a Flower
command line that would open Flower to the network without authentication is refused.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery


def celery_app() -> Celery:
    """The Celery app, after refusing an unauthenticated Flower beyond localhost."""
    from bday.broker.app import app, refuse_open_flower

    refusal = refuse_open_flower(sys.argv, dict(os.environ))
    if refusal:
        print(f"bday: {refusal}", file=sys.stderr)
        raise SystemExit(2)
    return app
