"""`bday health`: is every part that delivery needs up? One line per check, for probes.

Checks: RabbitMQ reachable with the queues declared; PostgreSQL reachable and migrated to head;
at least one worker answering a ping; beat ticked within two enqueue intervals (+30 s). An
open email-service breaker is reported as degraded: the system is alive and will catch up.
With an SMTP provider the email-service check also opens a session and asks NOOP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from celery.schedules import crontab

from bday.config import get_settings

PING_TIMEOUT_S = 2.0
BEAT_GRACE_S = 30


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    degraded: bool = False

    def line(self) -> str:
        mark = "ok  " if self.ok and not self.degraded else ("WARN" if self.ok else "FAIL")
        return f"{mark} {self.name}: {self.detail}"


def check_rabbitmq() -> Check:
    from bday.ops import status

    try:
        broker = status.read_broker()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return Check("rabbitmq", False, f"unreachable or queues missing ({_short(exc)})")
    return Check(
        "rabbitmq", True, f"reachable; {broker.queue_depth} ready, {broker.dlq_depth} in DLQ"
    )


def check_postgresql() -> Check:
    from bday.ops import migrate

    try:
        current, head = migrate.current_revision(), migrate.head_revision()
    except Exception as exc:  # noqa: BLE001
        return Check("postgresql", False, f"unreachable ({_short(exc)})")
    if current != head:
        return Check(
            "postgresql",
            False,
            f"at revision {current or 'base'}, code needs {head}: run `bday db upgrade`",
        )
    return Check("postgresql", True, f"reachable, schema at {head}")


def check_workers() -> Check:
    from bday.broker.app import app

    try:
        replies = app.control.ping(timeout=PING_TIMEOUT_S) or []
    except Exception as exc:  # noqa: BLE001
        return Check("workers", False, f"cannot ask ({_short(exc)})")
    if not replies:
        return Check("workers", False, f"no worker answered a ping within {PING_TIMEOUT_S:.0f} s")
    names = sorted(name for reply in replies for name in reply)
    return Check("workers", True, f"{len(names)} answering ({', '.join(names)})")


def check_beat(now: datetime | None = None) -> Check:
    from bday.ops import status

    now = now or datetime.now(UTC)
    try:
        beats = status.read_database(now).heartbeats
    except Exception as exc:  # noqa: BLE001
        return Check("beat", False, f"cannot read heartbeats ({_short(exc)})")
    allowed = 2 * enqueue_interval(now) + timedelta(seconds=BEAT_GRACE_S)
    last = beats.get("beat")
    if last is None:
        return Check("beat", False, "beat has never run against this database")
    age = now - last
    if age > allowed:
        return Check(
            "beat",
            False,
            f"last tick {age.total_seconds():.0f} s ago (allowed {allowed.total_seconds():.0f} s)",
        )
    return Check("beat", True, f"last tick {age.total_seconds():.0f} s ago")


def check_email_service(now: datetime | None = None) -> Check:
    from bday.ops import status

    try:
        state = status.read_database(now)
    except Exception as exc:  # noqa: BLE001
        return Check("email-service", False, f"cannot read breaker ({_short(exc)})")
    probed = _smtp_probe()
    if probed is not None and not probed.ok:
        return probed
    said = f"; {probed.detail}" if probed is not None else ""
    if state.breaker_state == "closed":
        return Check("email-service", True, f"breaker closed{said}")
    return Check(
        "email-service",
        True,
        f"breaker {state.breaker_state} for {state.breaker_open_s:.0f} s "
        f"({state.breaker_last_error or 'no error recorded'}); sends are deferred{said}",
        degraded=True,
    )


def _smtp_probe() -> Check | None:
    """For an SMTP provider, a session of its own (EHLO, STARTTLS, AUTH as configured) and a
    NOOP: a wrong host, port, certificate or password fails here before any greeting does.
    None for the HTTP provider (its health is the breaker's)."""
    from bday.delivery.provider import SendError
    from bday.delivery.smtp import SmtpSender, SmtpTarget, is_smtp

    settings = get_settings()
    if not is_smtp(settings.email_service_url):
        return None
    target = SmtpTarget.from_settings(settings)
    where = f"SMTP {target.host}:{target.port}"
    sender = SmtpSender(target)
    try:
        answer = sender.probe()
    except SendError as exc:
        return Check("email-service", False, f"{where}: {exc}")
    finally:
        sender.close()
    return Check("email-service", True, f"{where} answers NOOP with {answer}")


def enqueue_interval(now: datetime, expression: str | None = None) -> timedelta:
    """Time between the two enqueue runs following `now` (cron read in CRON_TIMEZONE)."""
    settings = get_settings()
    schedule = crontab.from_string(expression or settings.cron_minute_schedule)
    minute = now.astimezone(settings.cron_zone).replace(second=0, microsecond=0)
    fires = []
    for step in range(1, 2 * 24 * 60 * 31):
        candidate = minute + timedelta(minutes=step)
        if _matches(schedule, candidate):
            fires.append(candidate)
            if len(fires) == 2:
                return fires[1] - fires[0]
    return timedelta(days=31)


def _matches(schedule: crontab, at: datetime) -> bool:
    return (
        at.minute in schedule.minute
        and at.hour in schedule.hour
        and at.isoweekday() % 7 in schedule.day_of_week
        and at.day in schedule.day_of_month
        and at.month in schedule.month_of_year
    )


CHECKS: dict[str, Callable[[], Check]] = {
    "rabbitmq": check_rabbitmq,
    "postgresql": check_postgresql,
    "workers": check_workers,
    "beat": check_beat,
    "email-service": check_email_service,
}


def run(names: list[str] | None = None) -> list[Check]:
    return [CHECKS[name]() for name in (names or list(CHECKS))]


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
