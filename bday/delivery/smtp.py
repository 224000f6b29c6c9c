"""The SMTP provider: `EMAIL_SERVICE_URL=smtp://...` or `smtps://...` sends each greeting as
one RFC 5322 message through a mail server (docs/contract.md, "Mail through SMTP").

`SmtpSender` has the HTTP sender's interface (`send_email` returns a `Receipt` or raises
`TransientSendError` / `PermanentSendError`), so the batch, the breaker, pacing, retries and
the DLQ work as they do over HTTP. One sender per sending thread keeps its session open across
greetings (one EHLO/STARTTLS/AUTH per connection, not per greeting).

Replies, in one place (`classify_reply`):
* 2xx: sent;
* a throttling answer (SES `454 Throttling failure`, a 421/451 with a rate-limit enhanced
  status, or a 4xx whose text says rate/throttle/too many/too fast): `throttled`, paced as an
  HTTP 429 is;
* any other 4xx, a dropped connection, a timeout, a session that cannot be set up: transient;
* 5xx: permanent (the greeting is FAILED with the server's text).
"""

from __future__ import annotations

import functools
import queue
import re
import smtplib
import ssl
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from bday.config import Settings
from bday.core.mail import sender_address, starttls_wanted
from bday.delivery.provider import (
    Answer,
    Email,
    PermanentSendError,
    Receipt,
    SendError,
    TransientSendError,
    send_in_turn,
)
from bday.telemetry import metrics

SCHEMES = ("smtp", "smtps")
_KEEP_CHARS = 500
T = TypeVar("T")
R = TypeVar("R")


def is_smtp(url: str) -> bool:
    return urlsplit(url).scheme in SCHEMES


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    """Where and how to send: parsed once from the settings."""

    host: str
    port: int
    implicit_tls: bool  # smtps://: TLS from the first byte
    starttls: bool  # smtp://: upgrade before anything else is said (off only for a relay)
    username: str | None
    password: str | None
    sender: Address
    timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpTarget:
        parts = urlsplit(settings.email_service_url)
        implicit = parts.scheme == "smtps"
        starttls = not implicit and starttls_wanted(parts.query)
        password = settings.email_service_password
        return cls(
            host=parts.hostname or "",
            port=parts.port or (465 if implicit else 587 if starttls else 25),
            implicit_tls=implicit,
            starttls=starttls,
            username=unquote(parts.username) if parts.username else None,
            password=password.get_secret_value()
            if password
            else unquote(parts.password)
            if parts.password
            else None,
            sender=sender_address(settings.email_from or ""),
            timeout_s=settings.email_service_timeout_s,
        )


# --- the message -------------------------------------------------------------------------------

# 7bit: a non-ASCII body goes quoted-printable, so any server accepts it (no 8BITMIME needed).
_BUILD = policy.SMTP.clone(cte_type="7bit")


def build_message(email: Email, sender: Address, *, date: str | None = None) -> EmailMessage:
    """One greeting as an RFC 5322 message. Header values are built from parts by the email
    package (names encoded per RFC 2047 for any script) after control characters are
    replaced, so no value can end a header or start another."""
    message = EmailMessage(policy=_BUILD)
    message["From"] = sender
    name = _one_line(email.name)[:_NAME_MAX]
    message["To"] = Address(display_name=name, addr_spec=email.email)
    message["Subject"] = _one_line(email.subject)
    message["Date"] = date or formatdate(usegmt=True)
    message["Message-ID"] = message_id(email.idempotency_key, sender.domain)
    message.set_content(email.message)
    if email.html:
        message.add_alternative(email.html, subtype="html")
    return message


def message_id(key: str, domain: str) -> str:
    """The Message-ID of the greeting with idempotency key `key`: the same for every attempt,
    so a second send after a crash carries the one the first did (receivers de-duplicate)."""
    safe = re.sub(r"[^A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]", "-", key)
    return f"<{safe}@{domain.encode('idna').decode('ascii')}>"


def _one_line(text: str) -> str:
    """`text` safe as a header value: line breaks and other controls become spaces, a lone
    surrogate (not encodable) U+FFFD."""
    return "".join(_SAFE.get(unicodedata.category(char), char) for char in text)


_SAFE = {"Cc": " ", "Zl": " ", "Zp": " ", "Cs": "\ufffd"}


def _wire(message: EmailMessage, utf8: bool) -> bytes:
    wire = policy.SMTPUTF8 if utf8 else policy.SMTP
    if _quoted_and_long(message):
        wire = wire.clone(max_line_length=998)
    return message.as_bytes(policy=wire)


# The email package's folding of a long quoted display name drops its quotes:
# `"aaa...@example.com" <ada@...>` came out as an unquoted name that reads as another address
# (found by the hostile-name property test). Such a To header is written unfolded, on one
# line of at most 998 characters (RFC 5322's limit; a name is at most 100 characters). Other
# headers keep the usual 78, so encoded words stay within RFC 2047's 75.
# Names are at most 100 characters (bday.users.api); a longer one (never stored) is cut, so a
# To header always fits one line.
_NAME_MAX = 200
_SPECIALS = frozenset('()<>[]:;@\\,."')


def _quoted_and_long(message: EmailMessage) -> bool:
    to = message["To"].addresses[0]
    name = to.display_name
    return (
        name.isascii()
        and any(char in _SPECIALS for char in name)
        and len(name) + len(to.addr_spec) > 60
    )


# --- replies -----------------------------------------------------------------------------------

# Answers that mean "slow down" (pacing, not failure). Enhanced status codes (RFC 3463):
# 4.7.0 is what Gmail and Microsoft 365 send with their rate-limit 421/451s, 4.4.5 "system
# congestion"; SES says `454 Throttling failure: Maximum sending rate exceeded`.
_THROTTLE_CODES = frozenset({421, 450, 451, 452, 454})
_THROTTLE_STATUS = frozenset({"4.7.0", "4.4.5", "4.7.28"})
_THROTTLE_TEXT = re.compile(
    r"throttl|\brate\b|rate.?limit|too many (messages|mails|emails|recipients|connections)"
    r"|too fast|slow down|sending rate",
    re.IGNORECASE,
)
_ENHANCED = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")
# 5xx that refuse the sender's session, not a recipient: TLS or AUTH required (530, RFC 3207
# and 4954), mechanism too weak (534), bad credentials (535), encryption required (538). Every
# greeting would meet it until the settings are fixed: transient, so the breaker opens and
# nothing is marked FAILED, as when the AUTH command itself is refused.
_SENDER_REFUSED = frozenset({530, 534, 535, 538})


def classify_reply(code: int, text: str) -> SendError | None:
    """None for a 2xx; else the error the reply means (see the module's table)."""
    if 200 <= code < 300:
        return None
    detail = f"SMTP {code} {text}".strip()[:200]
    if 400 <= code < 500:
        enhanced = _ENHANCED.match(text)
        throttled = bool(_THROTTLE_TEXT.search(text)) or (
            code in _THROTTLE_CODES and enhanced is not None and enhanced[1] in _THROTTLE_STATUS
        )
        return TransientSendError(detail, status=code, throttled=throttled)
    if code in _SENDER_REFUSED:  # the account or the channel, not this greeting's address
        return TransientSendError(detail, status=code)
    if 500 <= code < 600:
        return PermanentSendError(detail, status=code)
    return TransientSendError(f"unexpected SMTP reply: {detail}", status=code)


def _text(reply: bytes | str) -> str:
    raw = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(raw.split())[:_KEEP_CHARS]


class _Refused(Exception):
    """The server answered a command with an error (raised inside a transaction)."""

    def __init__(self, code: int, reply: bytes | str):
        super().__init__(code)
        self.code, self.text = code, _text(reply)


# --- the sender ----------------------------------------------------------------------------------


class SmtpSender:
    """Sends greetings over one SMTP session, opened on first use and kept."""

    def __init__(self, target: SmtpTarget, tls: ssl.SSLContext | None = None):
        self.target = target
        self._tls = tls
        self._session: smtplib.SMTP | None = None

    def send_email(self, email: Email) -> Receipt:
        """Deliver one greeting. Raises `TransientSendError` or `PermanentSendError`."""
        started = time.perf_counter()
        try:
            code, text = self._deliver(email)
        except SendError as exc:
            metrics.record_email_call(time.perf_counter() - started, _kind(exc))
            raise
        elapsed = time.perf_counter() - started
        metrics.record_email_call(elapsed, None)
        return Receipt(code, f"{code} {text}", elapsed)

    def send_many(self, emails: Sequence[Email]) -> Iterator[list[Answer]]:
        return send_in_turn(self, emails)

    def each(self, job: Callable[[T], R], items: Sequence[T]) -> list[R]:
        return [job(item) for item in items]

    def probe(self) -> str:
        """Open a session (or reuse this one) and ask NOOP: the server's answer, or raise
        `TransientSendError` (what `bday health` reports)."""
        try:
            session = self._open()
            code, reply = session.noop()
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise _connection_error(exc) from exc
        if code != 250:
            self.close()
            raise TransientSendError(f"NOOP answered SMTP {code} {_text(reply)}", status=code)
        return f"{code} {_text(reply)}"

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.quit()
            except (OSError, smtplib.SMTPException):
                session.close()

    def _deliver(self, email: Email) -> tuple[int, str]:
        reused = self._session is not None
        try:
            return self._transaction(self._open(), email, reused=reused)
        except _Stale as stale:
            if not reused:
                raise stale.error from None
        # The server closed the idle session before this greeting said anything: nothing was
        # sent, so one fresh session is safe (and costs the greeting no retry).
        try:
            return self._transaction(self._open(), email, reused=False)
        except _Stale as stale:
            raise stale.error from None

    def _transaction(self, session: smtplib.SMTP, email: Email, *, reused: bool) -> tuple[int, str]:
        message = build_message(email, self.target.sender)
        utf8 = not (email.email.isascii() and str(self.target.sender).isascii())
        options = ["SMTPUTF8"] if utf8 else []
        sender = self.target.sender.addr_spec
        try:
            try:
                code, reply = session.mail(sender, options)
            except (OSError, smtplib.SMTPServerDisconnected) as exc:
                self._drop()
                raise _Stale(_connection_error(exc)) from exc
            if code == 421 and reused and not _error(code, _text(reply)).throttled:
                # What a server says when it closes a session that sat idle too long.
                self._drop()
                raise _Stale(_error(code, _text(reply)))
            if code != 250:
                raise _Refused(code, reply)
            code, reply = session.rcpt(email.email)
            if code not in (250, 251):
                raise _Refused(code, reply)
            code, reply = session.data(_wire(message, utf8))
        except smtplib.SMTPDataError as exc:  # DATA itself refused (no 354)
            self._reset(exc.smtp_code)
            raise _error(exc.smtp_code, _text(exc.smtp_error)) from None
        except _Refused as refused:
            self._reset(refused.code)
            raise _error(refused.code, refused.text) from None
        except (OSError, smtplib.SMTPException) as exc:
            # Dropped or timed out mid-transaction, possibly after the message was accepted:
            # the ambiguous case. No second try here; the retry carries the same Message-ID.
            self._drop()
            raise _connection_error(exc) from exc
        if not 200 <= code < 300:
            self._reset(code)
            raise _error(code, _text(reply))
        return code, _text(reply)

    def _open(self) -> smtplib.SMTP:
        if self._session is not None:
            return self._session
        target = self.target
        try:
            session: smtplib.SMTP
            if target.implicit_tls:
                session = smtplib.SMTP_SSL(
                    target.host, target.port, timeout=target.timeout_s, context=self._context()
                )
            else:
                session = smtplib.SMTP(target.host, target.port, timeout=target.timeout_s)
            self._session = session
            session.ehlo()
            if target.starttls:
                if not session.has_extn("starttls"):
                    raise smtplib.SMTPNotSupportedError(
                        "the server offers no STARTTLS (?starttls=off only for a local relay)"
                    )
                session.starttls(context=self._context())
                session.ehlo()
            if target.username:
                session.login(target.username, target.password or "")
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise _connection_error(exc) from exc
        return session

    def _context(self) -> ssl.SSLContext:
        return self._tls or _tls()

    def _reset(self, code: int) -> None:
        """After a refused command: RSET keeps the session for the next greeting; a 421 (the
        server is closing it) or a failed RSET drops it."""
        if code == 421 or self._session is None:
            self._drop()
            return
        try:
            self._session.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()

    def _drop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


class SmtpPool:
    """Up to `size` sessions shared by many callers, each greeting on a session no one else is
    using (SMTP is one conversation at a time per connection). For Celery's gevent pool, where
    a greenlet per task would otherwise open a session per greeting and leave it open."""

    def __init__(self, target: SmtpTarget, size: int):
        self._idle: queue.LifoQueue[SmtpSender] = queue.LifoQueue()
        for _ in range(size):
            self._idle.put(SmtpSender(target))

    def send_email(self, email: Email) -> Receipt:
        sender = self._idle.get()  # the most recently used: its session is the likeliest open
        try:
            return sender.send_email(email)
        finally:
            self._idle.put(sender)

    def send_many(self, emails: Sequence[Email]) -> Iterator[list[Answer]]:
        return send_in_turn(self, emails)

    def each(self, job: Callable[[T], R], items: Sequence[T]) -> list[R]:
        return [job(item) for item in items]

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()


class _Stale(Exception):
    """A kept session turned out to be closed at the first command of a greeting; `error` is
    what the greeting meets if a fresh session cannot be had either."""

    def __init__(self, error: SendError):
        super().__init__(str(error))
        self.error = error


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def _error(code: int, text: str) -> SendError:
    error = classify_reply(code, text)
    assert error is not None  # only called for non-2xx replies
    return error


def _connection_error(exc: BaseException) -> TransientSendError:
    if isinstance(exc, smtplib.SMTPResponseException):  # setup refused: AUTH, EHLO, STARTTLS
        return TransientSendError(
            f"SMTP session refused: {exc.smtp_code} {_text(exc.smtp_error)}", status=exc.smtp_code
        )
    kind = "timeout" if isinstance(exc, TimeoutError) else "connection error"
    return TransientSendError(f"{kind}: {type(exc).__name__}: {exc}"[:200])


def _kind(exc: SendError) -> str:
    if exc.throttled:
        return "429"  # the pacing answer, whatever the protocol says it with
    if exc.status is None:
        return "timeout" if str(exc).startswith("timeout") else "connection"
    return f"{exc.status // 100}xx"
