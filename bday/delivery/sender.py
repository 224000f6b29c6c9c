"""The email-service client: one `send()`, success returns, failure raises a typed error.

All HTTP status classification lives here (docs/contract.md, "The email service"):

* 2xx: sent.
* timeouts, connection errors, 5xx and 429: `TransientSendError` (429 and 503 carry the
  server's `Retry-After`, in seconds, when it sent one).
* any other status: `PermanentSendError`.

There is no retry loop here: retrying is the task's job (Celery's retry, one layer).
"""

from __future__ import annotations

import functools
import json
import os
import queue
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar

import httpx

from bday.config import Settings, get_settings
from bday.delivery.provider import (
    Answer,
    Email,
    OneSender,
    PermanentSendError,
    Receipt,
    SendError,
    Sends,
    TransientSendError,
    send_in_turn,
    sent_or_error,
)
from bday.delivery.smtp import SmtpSender, SmtpTarget
from bday.telemetry import metrics

_RESPONSE_KEEP_CHARS = 500
T = TypeVar("T")
R = TypeVar("R")


class EmailSender:
    """POSTs greetings to `{base_url}/send-email` over one pooled httpx client."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        max_connections: int = 10,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = httpx.URL(f"{base_url.rstrip('/')}/send-email")
        self._timeout = {"timeout": httpx.Timeout(timeout_s).as_dict()}
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        # The transport, not httpx.Client: the client's request building, header merging,
        # cookie, auth and redirect layers were a third of the cost of a send (py-spy) and none
        # of them applies to one JSON POST (redirects were never followed).
        self._transport = transport or httpx.HTTPTransport(verify=_tls(), limits=limits)

    def send(self, *, email: str, message: str, idempotency_key: str) -> Receipt:
        """Deliver one greeting. Raises `TransientSendError` or `PermanentSendError`."""
        started = time.perf_counter()
        request = httpx.Request(
            "POST",
            self.url,
            content=_json({"email": email, "message": message}),
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": idempotency_key,
                "User-Agent": _USER_AGENT,
            },
            extensions=self._timeout,
        )
        try:
            response = self._transport.handle_request(request)
            try:
                response.read()
            finally:
                response.close()
            receipt = classify(response, time.perf_counter() - started)
        except httpx.TimeoutException as exc:
            metrics.record_email_call(time.perf_counter() - started, "timeout")
            raise TransientSendError(f"timeout: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            metrics.record_email_call(time.perf_counter() - started, "connection")
            raise TransientSendError(f"connection error: {type(exc).__name__}: {exc}") from exc
        except SendError as exc:
            metrics.record_email_call(time.perf_counter() - started, _status_kind(exc.status))
            raise
        metrics.record_email_call(receipt.elapsed_s, None)
        return receipt

    def send_email(self, email: Email) -> Receipt:
        return self.send(
            email=email.email, message=email.message, idempotency_key=email.idempotency_key
        )

    def send_many(self, emails: Sequence[Email]) -> Iterator[list[Answer]]:
        return send_in_turn(self, emails)

    def each(self, job: Callable[[T], R], items: Sequence[T]) -> list[R]:
        return [job(item) for item in items]

    def close(self) -> None:
        self._transport.close()


class SendPool:
    """Sends a batch's greetings concurrently: `size` threads, each with its own keep-alive
    client (`get_sender()`), so a batch takes as long as its slowest send, not their sum.

    One greeting is sent in the calling thread (no hand-off)."""

    def __init__(self, size: int):
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="bday-send")

    def send_many(self, emails: Sequence[Email]) -> Iterator[list[Answer]]:
        """All at once; yields the answers in the groups they arrive in (see GATHER_S), so the
        caller records a 200 while the slower requests are still out (a crash between a 200
        and its record is what sends a greeting twice)."""
        if len(emails) <= 1:
            yield from send_in_turn(get_sender(), emails)
            return
        arrived: queue.SimpleQueue[tuple[int, Future[Receipt | SendError]]] = queue.SimpleQueue()
        for position, email in enumerate(emails):
            future = self._executor.submit(_send_here, email)
            future.add_done_callback(functools.partial(_arrive, arrived, position))
        left = len(emails)
        while left:
            group = _gather(arrived, left)
            left -= len(group)
            yield [(position, future.result()) for position, future in group]

    def each(self, job: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if len(items) <= 1:
            return [job(item) for item in items]
        return list(self._executor.map(job, items))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# After an answer arrives, how long a batch waits for more before writing them SENT in one
# statement. Short against a request's own time on the wire (what a crash can double anyway),
# long enough that answers landing together share a statement.
GATHER_S = 0.002


def _arrive(
    arrived: queue.SimpleQueue[tuple[int, Future[Receipt | SendError]]],
    position: int,
    future: Future[Receipt | SendError],
) -> None:
    arrived.put((position, future))


def _gather(arrived: queue.SimpleQueue[T], most: int) -> list[T]:
    """The next answer (waiting for it), and those that arrive within GATHER_S of it."""
    group = [arrived.get()]
    until = time.monotonic() + GATHER_S
    while len(group) < most:
        try:
            group.append(arrived.get(timeout=max(0.0, until - time.monotonic())))
        except queue.Empty:
            break
    return group


def _send_here(email: Email) -> Receipt | SendError:
    return sent_or_error(get_sender(), email)


_USER_AGENT = f"bday python-httpx/{httpx.__version__}"


def _json(value: dict[str, str]) -> bytes:
    """The body httpx's `json=` writes: compact, UTF-8, no NaN."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context per process, shared by every client: building one loads the CA bundle,
    24 ms of CPU (measured), which a worker paid again for each of its sending threads."""
    return httpx.create_ssl_context()


def classify(response: httpx.Response, elapsed_s: float = 0.0) -> Receipt:
    """Map one HTTP response to a Receipt or the matching error."""
    status = response.status_code
    body = response.text[:_RESPONSE_KEEP_CHARS]
    if 200 <= status < 300:
        return Receipt(status, body, elapsed_s)
    detail = f"HTTP {status}: {body[:200]}".strip()
    if status == 429 or status >= 500:
        raise TransientSendError(
            detail,
            status=status,
            retry_after_s=retry_after_seconds(response.headers.get("Retry-After")),
            throttled=status == 429,
        )
    raise PermanentSendError(detail, status=status)


def _status_kind(status: int | None) -> str:
    if status == 429:
        return "429"
    return f"{status // 100}xx" if status else "other"


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


_local = threading.local()
_shared: dict[tuple[Any, ...], Provider] = {}


def _green() -> bool:
    """True under Celery's gevent pool: greenlets are spawned per task, so a per-"thread" client
    would be a client per message; one shared pool is cheap there (no GIL contention).

    Looked up in sys.modules, not imported: a failed `import gevent` on every send cost 4% of
    a worker's CPU (py-spy), and gevent that was never imported has patched nothing."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


def _shared_sender(key: tuple[Any, ...], settings: Settings, smtp: bool) -> Provider:
    if key not in _shared:
        if smtp:
            from bday.delivery.smtp import SmtpPool, SmtpTarget  # smtp imports this module

            target = SmtpTarget.from_settings(settings)
            _shared[key] = SmtpPool(target, settings.queue_concurrency + 2)
        else:
            _shared[key] = EmailSender(
                settings.email_service_url,
                settings.email_service_timeout_s,
                max_connections=settings.queue_concurrency + 2,
            )
    return _shared[key]


class Provider(OneSender, Sends, Protocol):
    """A sender the batch can use directly (one greeting at a time)."""


def get_sender() -> Provider:
    """This thread's sender for the current settings (rebuilt after fork): the HTTP client,
    or an SMTP session for an smtp:// or smtps:// EMAIL_SERVICE_URL (the provider's seam).

    One keep-alive client per worker thread rather than one shared pool: with 64 threads on
    one httpx pool, py-spy showed most worker time waiting on httpcore's pool lock (its
    request-to-connection assignment runs under one lock), and throughput fell with it. For
    SMTP a session is one conversation at a time anyway: the process holds at most one per
    sending thread (`send_pool_size`), each kept open across greetings.
    """
    settings = get_settings()
    key = (
        os.getpid(),
        settings.email_service_url,
        settings.email_service_timeout_ms,
        settings.email_from,
        settings.email_service_password,
    )
    smtp = settings.email_service_url.startswith("smtp")
    if _green():
        return _shared_sender(key, settings, smtp)
    sender: Provider | None = getattr(_local, "sender", None)
    if sender is None or _local.key != key:
        if sender is not None:
            sender.close()
        sender = _new_sender(settings, smtp)
        _local.sender, _local.key = sender, key
    return sender


def _new_sender(settings: Settings, smtp: bool) -> Provider:
    if smtp:
        return SmtpSender(SmtpTarget.from_settings(settings))
    return EmailSender(
        settings.email_service_url, settings.email_service_timeout_s, max_connections=1
    )


_pools: dict[tuple[int, int], SendPool] = {}
_pools_lock = threading.Lock()


def get_send_pool() -> SendPool:
    """This process's SendPool (`Settings.send_pool_size` threads; rebuilt after fork)."""
    key = (os.getpid(), get_settings().send_pool_size)
    pool = _pools.get(key)
    if pool is None:
        with _pools_lock:
            pool = _pools.setdefault(key, SendPool(key[1]))
    return pool
