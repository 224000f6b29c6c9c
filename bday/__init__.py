"""bday: birthday and work-anniversary greetings at SEND_TIME local time, exactly once.

`bday.app` is the Celery application (`celery -A bday worker`, `celery -A bday beat`).
"""

from bday.celery_app import app

__all__ = ["app"]
