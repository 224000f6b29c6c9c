"""`bday fake-smtp-service`: a real SMTP server (aiosmtpd) that keeps what it receives, for
tests, the demo and newcomers trying templates without a mail account.

It accepts every greeting, unless told to answer otherwise: `refuse` maps a recipient to the
reply its RCPT gets (`550 5.1.1 no such user`), and `script()` queues what the next DATA
commands meet: a reply (`451 4.7.0 rate limited`, `421 4.7.0 closing`, after which the
session is closed as a real server does), `DROP_AFTER_ACCEPT` (the message is kept, the
connection closed before the 250: the ambiguous case), `DROP` (closed, nothing kept) or
`ACCEPT` (as usual: spaces the others out). The chaos suite's controls besides: `down` (every
new connection is closed before the greeting banner, as a server in maintenance behind a load
balancer is; each one counted in `turned_away`) and `rate_limit` (messages accepted per whole
second; DATA above it meets `451 4.7.0 rate limit exceeded`). `failure_rate` answers that
share of DATAs `451 4.3.0` at random (retried, as the fake email service's 500s), after
`latency_ms`. `attempts` records every DATA's arrival, Message-ID and outcome (`run(record=)`
writes them as JSON lines: the demo's table reads them).

aiosmtpd is in the `fake` extra, imported only here.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from bday.telemetry.logs import mask_emails

DROP = "drop"
DROP_AFTER_ACCEPT = "drop-after-accept"
ACCEPT = "accept"
THROTTLED = "451 4.7.0 rate limit exceeded, slow down"
FAILED = "451 4.3.0 temporary failure, try again"
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^@>]*)@", re.IGNORECASE | re.MULTILINE)
_CLOSE_AFTER_S = 0.05  # a 421's session is closed just after the reply is on its way


@dataclass(frozen=True)
class Received:
    """One message the server accepted."""

    mail_from: str
    recipients: tuple[str, ...]
    data: bytes
    session: int  # which connection brought it (1, 2, ...)

    @property
    def message(self) -> EmailMessage:
        # As a mail client reads it: the wire's CRLF line ends become \n.
        parsed = message_from_bytes(self.data.replace(b"\r\n", b"\n"), policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass(frozen=True)
class Attempt:
    """One DATA the server answered (or dropped): when it arrived and what it met."""

    arrived: float  # Unix seconds
    outcome: str  # sent | throttled | failed | dropped | dropped-after-accept | a reply's code
    key: str = ""  # the Message-ID's local part: bday's message id


class FakeSmtp:
    """The server, on a thread of its own: `start()`, then point an smtp:// URL at `.url`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        on_message=None,
        on_attempt=None,
        *,
        tls: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        logins: dict[str, str] | None = None,
    ):
        """`tls`, a server context: offered by STARTTLS (and then required before MAIL), or
        from the first byte with `implicit_tls` (smtps://). `logins`: user -> password, and
        AUTH is then required (over TLS only, as real servers require)."""
        self.host, self.port = host, port or _free_port(host)
        self.tls, self.implicit_tls, self.logins = tls, implicit_tls, logins
        self.logged_in: list[str] = []  # each AUTH that succeeded, by user
        self.received: list[Received] = []
        self.refuse: dict[str, str] = {}
        self.sessions = 0
        self.idle_before = 0  # sessions up to this number are told they sat idle too long
        self.down = False
        self.turned_away: list[float] = []  # when each connection met `down`
        self.rate_limit = 0  # messages accepted per whole second (0: no limit)
        self.failure_rate = 0.0
        self.latency_ms = 0.0
        self._on_attempt = on_attempt
        self.attempts: list[Attempt] = []
        self._second = (0, 0)  # (whole second, messages accepted in it)
        self._script: deque[str] = deque()
        self._lock = threading.Lock()
        self._on_message = on_message
        self._controller: Any = None

    @property
    def url(self) -> str:
        if self.implicit_tls:
            return f"smtps://{self.host}:{self.port}"
        plain = "" if self.tls else "?starttls=off"
        return f"smtp://{self.host}:{self.port}{plain}"

    def script(self, *answers: str) -> None:
        """What the next DATA commands meet, in order (then 250 again)."""
        with self._lock:
            self._script.extend(answers)

    def close_idle_sessions(self) -> None:
        """The next MAIL on a session opened before now meets the 421 a server sends when it
        closes a session that sat idle too long."""
        with self._lock:
            self.idle_before = self.sessions

    def start(self) -> FakeSmtp:
        self._controller = _controller_class()(
            self,
            _Handler(self),
            hostname=self.host,
            port=self.port,
            enable_SMTPUTF8=True,
            ready_timeout=10,
            **self._security(),
        )
        self._controller.start()
        return self

    def _security(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.tls is not None and self.implicit_tls:
            options["ssl_context"] = self.tls
        elif self.tls is not None:
            options.update(tls_context=self.tls, require_starttls=True)
        if self.logins is not None:
            # aiosmtpd knows TLS only by STARTTLS: under implicit TLS it must not ask for it.
            options.update(
                authenticator=self._authenticate,
                auth_required=True,
                auth_require_tls=not self.implicit_tls,
            )
        return options

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if not isinstance(auth_data, LoginPassword) or self.logins is None:
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        ok = self.logins.get(user) == auth_data.password.decode("utf-8", "replace")
        if ok:
            with self._lock:
                self.logged_in.append(user)
        return AuthResult(success=ok, handled=False)

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> FakeSmtp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        until = time.monotonic() + timeout_s
        while len(self.received) < count and time.monotonic() < until:
            time.sleep(0.01)
        return list(self.received)

    # --- called by the handler (on the server's thread) ---

    def _session_number(self, session: Any) -> int:
        """1, 2, ... for each connection, in the order they first sent MAIL (kept on the
        session object: an id() could be reused by the next one)."""
        with self._lock:
            number: int | None = getattr(session, "bday_number", None)
            if number is None:
                self.sessions += 1
                number = session.bday_number = self.sessions
            return number

    def _next_answer(self, content: bytes) -> str | None:
        arrived = time.time()
        found = _MESSAGE_ID.search(content)
        with self._lock:
            answer = self._script.popleft() if self._script else None
            if answer in (None, ACCEPT) and self._over_limit(arrived):
                answer = THROTTLED
            elif answer in (None, ACCEPT) and random.random() < self.failure_rate:
                answer = FAILED
            outcome = _OUTCOMES.get(answer or ACCEPT, (answer or "")[:3])
            attempt = Attempt(
                arrived, outcome, found[1].decode("ascii", "replace") if found else ""
            )
            self.attempts.append(attempt)
        if self._on_attempt is not None:
            self._on_attempt(attempt)
        return None if answer == ACCEPT else answer

    def _over_limit(self, arrived: float) -> bool:
        """Count a message against its whole second; True if that second is full."""
        if not self.rate_limit:
            return False
        second, accepted = self._second
        if int(arrived) != second:
            second, accepted = int(arrived), 0
        if accepted >= self.rate_limit:
            return True
        self._second = (second, accepted + 1)
        return False

    def _turn_away(self) -> bool:
        if self.down:
            with self._lock:
                self.turned_away.append(time.time())
        return self.down

    def _keep(self, envelope: Any, session: Any) -> Received:
        received = Received(
            envelope.mail_from,
            tuple(envelope.rcpt_tos),
            bytes(envelope.original_content or envelope.content),
            self._session_number(session),
        )
        with self._lock:
            self.received.append(received)
        if self._on_message is not None:
            self._on_message(received)
        return received


_OUTCOMES = {
    ACCEPT: "sent",
    THROTTLED: "throttled",
    FAILED: "failed",
    DROP: "dropped",
    DROP_AFTER_ACCEPT: "dropped-after-accept",
}


def _controller_class() -> type:
    """aiosmtpd's Controller, serving `_Session`s (built on first use: aiosmtpd is only in
    the dev extra)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP

    class _Session(SMTP):
        """A connection; while the server is `down` it is closed before the banner."""

        def __init__(self, fake: FakeSmtp, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._fake, self._turned_away = fake, False

        def connection_made(self, transport: Any) -> None:
            if self._fake._turn_away():
                self._turned_away = True
                transport.close()
                return
            super().connection_made(transport)

        def connection_lost(self, error: Exception | None) -> None:
            if not self._turned_away:
                super().connection_lost(error)

    class _ControllerOfSessions(Controller):
        def __init__(self, fake: FakeSmtp, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._fake = fake

        def factory(self) -> SMTP:
            return _Session(self._fake, self.handler, **self.SMTP_kwargs)

    return _ControllerOfSessions


class _Handler:
    def __init__(self, fake: FakeSmtp):
        self.fake = fake

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        number = self.fake._session_number(session)
        if number <= self.fake.idle_before:
            server.loop.call_later(_CLOSE_AFTER_S, server.transport.close)
            return "421 4.4.2 idle timeout, closing connection"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        refusal = self.fake.refuse.get(address.lower())
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.fake.latency_ms:
            await asyncio.sleep(self.fake.latency_ms / 1000)
        answer = self.fake._next_answer(bytes(envelope.original_content or envelope.content))
        if answer == DROP:
            server.transport.close()
            return "421 closing"  # never arrives: the connection is gone
        if answer == DROP_AFTER_ACCEPT:
            self.fake._keep(envelope, session)
            server.transport.close()
            return "250 queued"  # never arrives
        if answer is not None:
            if answer.startswith("421"):
                server.loop.call_later(_CLOSE_AFTER_S, server.transport.close)
            return answer
        received = self.fake._keep(envelope, session)
        return f"250 2.0.0 queued as {len(self.fake.received)} (session {received.session})"


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def describe(received: Received) -> str:
    """One line per message for `bday fake-smtp-service`'s output, the addresses masked as in
    every bday log (the words are shown: seeing them is what the fake is for)."""
    message = received.message
    addresses = f"{received.mail_from} -> {', '.join(received.recipients)}"
    return (
        f"{time.strftime('%H:%M:%S')} {mask_emails(addresses)} "
        f"{message['Message-ID']} subject {str(message['Subject'])!r} "
        f"body {message.get_body(('plain',)).get_content().strip()[:80]!r}"  # type: ignore[union-attr]
    )


def run(
    host: str,
    port: int,
    refuse: dict[str, str] | None = None,
    *,
    failure_rate: float = 0.0,
    latency_ms: float = 0.0,
    record: str | None = None,
    quiet: bool = False,
) -> None:
    """Serve until interrupted, printing one line per message received (none if `quiet`);
    with `record`, each DATA's {at, key, outcome} appended to that file as a JSON line."""
    keep = open(record, "a", encoding="utf-8", buffering=1) if record else None  # noqa: SIM115

    def write(attempt: Attempt) -> None:
        if keep is not None:
            line = {"at": attempt.arrived, "key": attempt.key, "outcome": attempt.outcome}
            keep.write(json.dumps(line) + "\n")

    show = None if quiet else lambda r: print(describe(r), flush=True)
    fake = FakeSmtp(host, port, on_message=show, on_attempt=write)
    fake.refuse.update(refuse or {})
    fake.failure_rate, fake.latency_ms = failure_rate, latency_ms
    with fake:
        print(f"fake SMTP service on {fake.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            if keep is not None:
                keep.close()
