"""What every email provider is to delivery: the greeting to send (`Email`), a success
(`Receipt`), the two failures (`TransientSendError`, `PermanentSendError`), and the protocols a
provider's client (`OneSender`) and a batch's sender (`Sends`) meet. The HTTP client
(`sender.py`) and the SMTP client (`smtp.py`) both build on this module and neither on the
other."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class SendError(Exception):
    """Base of the two outcomes that are not success."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        throttled: bool = False,
    ):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s
        # The provider says we go too fast (HTTP 429, an SMTP throttling answer): pacing,
        # not a failure (no retry spent, the shared rate lowered).
        self.throttled = throttled


class TransientSendError(SendError):
    """Worth trying again later: timeout, connection error, 429 or 5xx (for SMTP: 4xx)."""


class PermanentSendError(SendError):
    """Trying again will not help: a 4xx other than 429, or an unexpected status."""


@dataclass(frozen=True, slots=True)
class Email:
    """One greeting to send: what a sender's `send_email` takes. The HTTP service gets the
    address and the plain-text `message`; mail also carries the subject, the HTML part and
    the recipient's display name."""

    email: str
    message: str
    idempotency_key: str
    subject: str = ""
    html: str | None = None
    name: str = ""


T = TypeVar("T")
R = TypeVar("R")


Answer = tuple[int, "Receipt | SendError"]  # (position in the batch, what the service said)


class Sends(Protocol):
    """What delivery needs to send: many greetings at once, their answers yielded as they
    arrive (so each can be recorded at once), and a job run on each of many items
    (`EmailSender` does both one after another; `SendPool` concurrently)."""

    def send_many(self, emails: Sequence[Email]) -> Iterator[list[Answer]]: ...

    def each(self, job: Callable[[T], R], items: Sequence[T]) -> list[R]: ...


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the service answered to a successful send."""

    status: int
    body: str
    elapsed_s: float


class OneSender(Protocol):
    """A provider's client: one greeting, a Receipt or a raised SendError."""

    def send_email(self, email: Email) -> Receipt: ...

    def close(self) -> None: ...


def send_in_turn(sender: OneSender, emails: Sequence[Email]) -> Iterator[list[Answer]]:
    """Each greeting in turn, each answer yielded on its own; a failure is yielded in its
    place, not raised."""
    for position, email in enumerate(emails):
        yield [(position, sent_or_error(sender, email))]


def sent_or_error(sender: OneSender, email: Email) -> Receipt | SendError:
    try:
        return sender.send_email(email)
    except SendError as exc:
        return exc
