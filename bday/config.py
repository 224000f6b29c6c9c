"""Settings: every knob bday reads, validated once, from the environment and `.env`.

`get_settings()` is the way in for every setting of the service. A bad value raises
`SettingsError`, whose message is one line naming the variable, the value and what was
expected; entry points (CLI, Celery app) turn that into a clean exit instead of a traceback.

Read from `os.environ` directly, on purpose, outside these settings:
* LOG_FORMAT, LOG_CELERY_TASKS (bday.telemetry.logs): logging is set up before settings are
  validated, so a bad setting can still be reported in the chosen format;
* WORKER_METRICS_PORT, WORKER_METRICS_ADDR (bday.worker.signals): per-process, read in the
  worker's start-up signal;
* FLOWER_ADDRESS, FLOWER_BASIC_AUTH (bday.worker, bday.broker.app.refuse_open_flower): Flower's
  own variables, checked before Flower starts;
* DATABASE_URL, RABBITMQ_URL again in bday.devtools.sandbox, only to find the admin database
  and broker host for a sandbox of its own (never validated as the service's settings).
"""

from __future__ import annotations

import functools
import re
from datetime import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from bday.core.mail import sender_address, starttls_wanted
from bday.core.occasions import is_known_zone
from bday.core.templates import BUILT_IN, Catalogue, TemplateError, parse_catalogue


class SettingsError(Exception):
    """A setting is missing or malformed. `str()` is a single line fit for stderr."""


_HHMM = re.compile(r"^(?P<h>[01]\d|2[0-3]):(?P<m>[0-5]\d)$")


def _env(name: str, default: Any, **constraints: Any) -> Any:
    """A field read from exactly one environment variable (no prefix, case-sensitive name)."""
    return Field(default, validation_alias=AliasChoices(name), **constraints)


# Seconds settings become `timedelta`s and PostgreSQL intervals: `inf`, `nan` or 1e300 would
# overflow both (or turn the breaker off in all but name), so they are finite and at most a day.
DAY_S = 86_400
# Jobs a worker holds per pool thread (Celery's worker_prefetch_multiplier; bday.broker.config).
PREFETCH_MULTIPLIER = 2


# The lowest EMAIL_SERVICE_RATE_LIMIT other than 0 (none): one send every 1,000 s, 86 a day.
# A lower rate is a slip (1e-15 for 0, or a unit), not a provider's limit: it could not send a
# day's greetings in a day, and the pacer's slots, tokens / rate seconds ahead, would leave the
# range of dates Python and PostgreSQL hold (1e-15/s: 31 million years per send).
MIN_RATE_LIMIT = 0.001


def _seconds(name: str, default: float, **constraints: Any) -> Any:
    return _env(name, default, allow_inf_nan=False, le=DAY_S, **constraints)


class Settings(BaseSettings):
    """The whole configuration. The contract's names (docs/contract.md) are env names below."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    rabbitmq_url: str = _env("RABBITMQ_URL", "amqp://guest:guest@localhost:5672//")
    database_url: str = _env("DATABASE_URL", "postgresql+psycopg://postgres@localhost:5432/bday")
    email_service_url: str = _env(
        "EMAIL_SERVICE_URL", "https://email-service.digitalenvision.com.au"
    )
    email_service_timeout_ms: int = _env("EMAIL_SERVICE_TIMEOUT", 10_000, gt=0, le=600_000)
    # Mail through SMTP (EMAIL_SERVICE_URL=smtp://... or smtps://...): the sender, and the
    # password when it is not in the URL (never shown: SecretStr).
    email_from: str | None = _env("EMAIL_FROM", None)
    email_service_password: SecretStr | None = _env("EMAIL_SERVICE_PASSWORD", None)
    send_time: time = _env("SEND_TIME", time(9, 0))
    feb29_policy: Literal["feb28", "mar1"] = _env("FEB29_POLICY", "feb28")
    catch_up_hours: int = _env("CATCH_UP_HOURS", 48, gt=0, le=24 * 366)
    plan_ahead_hours: int = _env("PLAN_AHEAD_HOURS", 26, gt=0, le=24 * 31)
    # A plan of more users than this fans out into ranges of about this many users, which
    # every worker helps plan (bday.scheduling.plan_ranges); 0: always plan in one process.
    plan_range_users: int = _env("PLAN_RANGE_USERS", 1_000_000, ge=0, le=10**10)
    queue_concurrency: int = _env("QUEUE_CONCURRENCY", 5, ge=1, le=1000)
    # A worker runs greetings in batches: one claim and one SENT statement per batch, the
    # sends concurrent (docs/architecture.md, "Batched delivery"). 1 starts each job as its
    # own batch the moment it arrives (no wait; still through the batcher, with one claim and
    # one SENT statement per greeting).
    send_batch_size: int = _env("SEND_BATCH_SIZE", 32, ge=1, le=1000)
    # How long the first job of a batch waits for others before the batch starts anyway.
    send_batch_wait_s: float = _env("SEND_BATCH_WAIT", 0.05, allow_inf_nan=False, ge=0, le=5)
    queue_max_retries: int = _env("QUEUE_MAX_RETRIES", 5, ge=0, le=100)
    queue_retry_delay_ms: int = _env("QUEUE_RETRY_DELAY", 2000, ge=0, le=86_400_000)
    queue_retry_max_delay_ms: int = _env("QUEUE_RETRY_MAX_DELAY", 600_000, ge=0, le=DAY_S * 1000)
    queue_retry_backoff: Literal["exponential", "fixed"] = _env(
        "QUEUE_RETRY_BACKOFF", "exponential"
    )
    cron_minute_schedule: str = _env("CRON_MINUTE_SCHEDULE", "* * * * *")
    cron_plan_schedule: str = _env("CRON_PLAN_SCHEDULE", "0 * * * *")
    cron_recovery_schedule: str = _env("CRON_RECOVERY_SCHEDULE", "*/5 * * * *")
    cron_retention_schedule: str = _env("CRON_RETENTION_SCHEDULE", "17 3 * * *")
    # Finished rows (SENT, FAILED, CANCELLED) older than this are deleted. Rows of the last
    # 366 days are kept whatever the value (see bday.store.messages.delete_finished).
    message_retention_days: int = _env("MESSAGE_RETENTION_DAYS", 400, ge=1, le=36_500)
    retention_batch: int = _env("RETENTION_BATCH", 5000, ge=1, le=100_000)
    # Seconds between two retention batches: the job yields the database (and its CPU) to the
    # hot path; measured in docs/operations.md, Retention.
    retention_pause_s: float = _seconds("RETENTION_PAUSE", 0.5, ge=0)
    cron_timezone: str = _env("CRON_TIMEZONE", "UTC")
    enqueue_lead_s: int = _env("ENQUEUE_LEAD_SECONDS", 70, ge=5, le=600)
    recovery_grace_s: int = _env("RECOVERY_GRACE_SECONDS", 120, ge=10, le=DAY_S)
    enqueue_batch: int = _env("ENQUEUE_BATCH", 1000, ge=1, le=100_000)
    # A minute enqueue that finds more due rows than this splits them into slices that several
    # workers claim and publish at once (bday.scheduling.enqueue_slices; docs/capacity.md has
    # the rate of one publisher it is derived from).
    enqueue_fanout_rows: int = _env("ENQUEUE_FANOUT_ROWS", 10_000, ge=1, le=100_000_000)
    queue_delivery_limit: int = _env("QUEUE_DELIVERY_LIMIT", 20, ge=1, le=1000)
    exchange_name: str = _env("RABBITMQ_EXCHANGE", "birthday.messages", min_length=1)
    queue_name: str = _env("RABBITMQ_QUEUE", "birthday.messages.queue", min_length=1)
    scheduler_queue_name: str = _env(
        "RABBITMQ_SCHEDULER_QUEUE", "birthday.scheduler.queue", min_length=1
    )
    dead_letter_exchange_name: str = _env("RABBITMQ_DLX", "birthday.messages.dlx", min_length=1)
    dead_letter_queue_name: str = _env("RABBITMQ_DLQ", "birthday.messages.dlq", min_length=1)
    direct_send_fallback: bool = _env("DIRECT_SEND_FALLBACK", False)
    db_pool_size: int = _env("DB_POOL_SIZE", 10, ge=1, le=500)
    # "transaction": DATABASE_URL is a transaction-pooling proxy (PgBouncer pool_mode=transaction)
    database_pooler: Literal["none", "transaction"] = _env("DATABASE_POOLER", "none")
    worker_task_events: bool = _env("WORKER_TASK_EVENTS", False)
    breaker_enabled: bool = _env("BREAKER_ENABLED", True)
    breaker_failures: int = _env("BREAKER_FAILURES", 5, ge=1, le=10_000)
    breaker_window_s: float = _seconds("BREAKER_WINDOW", 30.0, gt=0)
    breaker_cooldown_s: float = _seconds("BREAKER_COOLDOWN", 5.0, gt=0)
    breaker_cooldown_max_s: float = _seconds("BREAKER_COOLDOWN_MAX", 15.0, gt=0)
    breaker_idle_s: float = _seconds("BREAKER_IDLE", 30.0, ge=0)
    breaker_probe_wait_s: float = _seconds("BREAKER_PROBE_WAIT", 3.0, ge=0)
    # Pacing (docs/pacing.md): one send rate for every worker together; 0 = unlimited.
    email_service_rate_limit: float = _env(
        "EMAIL_SERVICE_RATE_LIMIT", 0.0, ge=0, le=100_000, allow_inf_nan=False
    )
    email_service_burst: int = _env("EMAIL_SERVICE_BURST", 5, ge=1, le=100_000)
    lateness_budget_s: float = _seconds("LATENESS_BUDGET", 3600.0, gt=0)
    # The greetings' words (bday.core.templates); unset: the built-in texts.
    templates_dir: Path | None = _env("TEMPLATES_DIR", None)

    @field_validator("send_time", mode="before")
    @classmethod
    def _parse_hhmm(cls, value: Any) -> Any:
        if isinstance(value, time):
            return value
        match = _HHMM.match(str(value).strip())
        if not match:
            raise ValueError("expected HH:MM between 00:00 and 23:59")
        return time(int(match["h"]), int(match["m"]))

    @field_validator("rabbitmq_url")
    @classmethod
    def _check_amqp_url(cls, value: str) -> str:
        # A cluster's nodes separated by ';' (kombu's failover list): each must be a URL.
        for part in value.split(";"):
            _check_url(part.strip(), ("amqp", "amqps", "pyamqp"))
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        _check_url(value, ("postgresql", "postgresql+psycopg", "postgres"))
        return _check_libpq_options(value)

    @field_validator("email_service_url")
    @classmethod
    def _check_service_url(cls, value: str) -> str:
        _check_url(value, ("http", "https", "smtp", "smtps"))
        parts = urlsplit(value)
        if parts.scheme.startswith("smtp"):
            if parts.path not in ("", "/"):
                raise ValueError("an SMTP URL has no path (smtp://user:password@host:port)")
            if parts.scheme == "smtps" and parts.query:
                raise ValueError("smtps:// takes no options (TLS from the start)")
            starttls_wanted(parts.query)
        return value.rstrip("/")

    @field_validator("email_from")
    @classmethod
    def _check_email_from(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        sender_address(value.strip())
        return value.strip()

    @field_validator("templates_dir", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("templates_dir")
    @classmethod
    def _check_templates(cls, value: Path | None) -> Path | None:
        # Checked with the settings, so the worker, beat and every command refuse a bad
        # template at start (one line naming the file), never at the first send.
        if value is not None:
            load_catalogue(value)
        return value

    @field_validator(
        "cron_minute_schedule",
        "cron_plan_schedule",
        "cron_recovery_schedule",
        "cron_retention_schedule",
    )
    @classmethod
    def _check_cron(cls, value: str) -> str:
        # local: settings must not need Celery to import
        from celery.schedules import crontab

        if len(value.split()) != 5:
            raise ValueError("expected a five-field cron expression such as '*/5 * * * *'")
        try:
            crontab.from_string(value)
        except Exception as exc:  # noqa: BLE001 - celery raises ValueError or its ParseException
            raise ValueError(f"not a valid cron expression ({exc})") from None
        return value

    @field_validator("email_service_rate_limit")
    @classmethod
    def _check_rate_floor(cls, value: float) -> float:
        if 0 < value < MIN_RATE_LIMIT:
            raise ValueError(
                f"must be 0 (no limit) or at least {MIN_RATE_LIMIT} messages per second"
            )
        return value

    @field_validator("cron_timezone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        if not is_known_zone(value):
            raise ValueError("unknown IANA time zone")
        return value

    @model_validator(mode="after")
    def _smtp_needs_a_sender(self) -> Settings:
        if self.email_service_url.startswith("smtp") and self.email_from is None:
            raise ValueError(
                "EMAIL_FROM is required with an smtp:// or smtps:// EMAIL_SERVICE_URL "
                "(e.g. 'Greetings <hello@example.com>')"
            )
        return self

    @model_validator(mode="after")
    def _max_delay_covers_first_delay(self) -> Settings:
        if self.queue_retry_max_delay_ms < self.queue_retry_delay_ms:
            raise ValueError(
                f"QUEUE_RETRY_MAX_DELAY ({self.queue_retry_max_delay_ms}) must not be below "
                f"QUEUE_RETRY_DELAY ({self.queue_retry_delay_ms})"
            )
        return self

    @property
    def email_service_timeout_s(self) -> float:
        return self.email_service_timeout_ms / 1000

    @property
    def send_pool_size(self) -> int:
        """Threads sending a worker process's greetings: one per job the worker may hold, so
        a claimed greeting's request starts at once (never queued behind others for longer
        than its lease)."""
        return self.queue_concurrency * PREFETCH_MULTIPLIER

    @property
    def send_lease_s(self) -> float:
        """How long a worker may hold a message in SENDING before others may take it over."""
        return self.email_service_timeout_s + 10

    @property
    def cron_zone(self) -> ZoneInfo:
        return ZoneInfo(self.cron_timezone)

    @property
    def catalogue(self) -> Catalogue:
        """The greetings' templates: TEMPLATES_DIR's, or the built-in ones."""
        return load_catalogue(self.templates_dir) if self.templates_dir else BUILT_IN


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a non-numeric port
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc})") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"expected a {'/'.join(schemes)} URL with a host")
    return value


def _check_libpq_options(value: str) -> str:
    """Refuse what libpq would refuse at the first connection (`?foo=bar`), naming it now."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict("postgresql://" + value.split("://", 1)[1])
    except ProgrammingError as exc:
        raise ValueError(str(exc).strip().splitlines()[0]) from None
    return value


# Names an editor or a file manager leaves beside the files (`.birthday.body.txt.swp`).
_HIDDEN = "."


@functools.cache
def load_catalogue(directory: Path) -> Catalogue:
    """The templates in `directory` (layout: docs/contract.md, "Templates"), read once per
    process. Raises `TemplateError` (one line naming the file)."""
    if not directory.is_dir():
        raise TemplateError(f"{directory}: not a directory")
    files = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if path.is_dir() or any(part.startswith(_HIDDEN) for part in relative.parts):
            continue
        try:
            files[relative.as_posix()] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TemplateError(f"{path}: not valid UTF-8 (byte at offset {exc.start})") from None
        except OSError as exc:
            raise TemplateError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_catalogue(files, str(directory))


_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*@")


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    problem = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a rule across settings: the message names them
        return f"invalid settings: {problem}"
    shown = first.get("input")
    if isinstance(shown, str):
        shown = _PASSWORD.sub(r"\1***@", shown)  # URLs may carry a password: never echo it
    value = f"={shown!r}" if isinstance(shown, str | int) else ""
    return f"invalid setting {first['loc'][0]}{value}: {problem}"


def load_settings(**overrides: Any) -> Settings:
    """Read and validate settings; raise `SettingsError` (one line) when any is bad."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None
    except UnicodeDecodeError as exc:  # python-dotenv reads .env strictly as UTF-8
        raise SettingsError(
            f"cannot read .env: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call `get_settings.cache_clear()`."""
    return load_settings()
