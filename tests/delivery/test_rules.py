"""The batch pipeline's rules without a database: `deliver_many` with an in-memory breaker and
pacer (the protocols of bday.delivery.interfaces), an in-memory sender, and the four row
statements delivery makes (`bday.store.messages`) answered from a dict. What each answer does
to its job and its row; the same rules meet the real database in test_attempt.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import time_machine

from bday.config import load_settings
from bday.delivery import provider
from bday.delivery.attempt import SendJob, deliver_many
from bday.delivery.breaker import Permit, Snapshot
from bday.delivery.interfaces import BreakerService, PacerService
from bday.delivery.outcomes import Action
from bday.delivery.pacing import Slot
from bday.delivery.provider import Email, Receipt, TransientSendError
from bday.store import db, messages
from bday.store.messages import Claimed
from bday.store.models import Status

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _at_now() -> Iterator[None]:
    """Each test starts at NOW (its clock ticking): slots and deadlines written as NOW + n s
    are n s ahead whenever the test runs, not n s after this module was imported (a suite
    that runs the chaos tests first reaches these minutes later)."""
    with time_machine.travel(NOW):
        yield


CLOSED = Permit(True, "closed")


@dataclass
class FakeBreaker:
    """Closed unless given `answers`: the permits of each successive `permits` call."""

    answers: list[list[Permit]] = field(default_factory=list)
    open_until: datetime | None = None
    told: list[tuple[str, Permit]] = field(default_factory=list)

    def permits(self, now: datetime, count: int) -> list[Permit]:
        return self.answers.pop(0) if self.answers else [CLOSED] * count

    def release(self, permit: Permit, now: datetime) -> None:
        self.told.append(("release", permit))

    def record_success(self, permit: Permit, now: datetime) -> None:
        self.told.append(("success", permit))

    def record_failure(self, permit: Permit, now: datetime, exc: TransientSendError) -> None:
        self.told.append(("failure", permit))

    def snapshot(self, *, fresh: bool = False) -> Snapshot:
        return Snapshot("open", self.open_until, 5.0, None, None)


@dataclass
class FakePacer:
    """A rate in force (`limit`), and the slot each successive `acquire` answers (None: go)."""

    limit: float | None = 10.0
    slots: list[Slot | None] = field(default_factory=list)
    sent: int = 0
    throttles: list[float | None] = field(default_factory=list)

    def rate(self, now: datetime) -> float | None:
        return self.limit

    def acquire(self, now: datetime, held: Slot | None = None) -> Slot | None:
        return self.slots.pop(0) if self.slots else None

    def note_sent(self, now: datetime) -> None:
        self.sent += 1

    def throttled(self, now: datetime, retry_after_s: float | None) -> bool:
        self.throttles.append(retry_after_s)
        return True


@dataclass
class FakeSender:
    """Answers by address: its SendError, else a 200. `calls`: the addresses of each batch sent."""

    fails: dict[str, provider.SendError] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)

    def send_many(self, emails: Sequence[Email]) -> Iterator[list[provider.Answer]]:
        if emails:  # the batch calls it with none when every job was settled before sending
            self.calls.append([e.email for e in emails])
        for position, email in enumerate(emails):
            failure = self.fails.get(email.email)
            yield [(position, failure or Receipt(200, '{"status":"sent"}', 0.01))]

    def each(self, job: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return [job(item) for item in items]


class Rows:
    """The messages table as delivery's four statements see it, in a dict."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, dict[str, Any]] = {}
        self.outcomes: list[tuple[str, uuid.UUID, dict[str, Any]]] = []

    def add(self, email: str, *, retry_count: int = 0, token: uuid.UUID | None = None) -> str:
        row_id = uuid.uuid4()
        claimed = Claimed(
            row_id, "BIRTHDAY", NOW - timedelta(seconds=5), retry_count, email, "Ada",
            "Lovelace", False, None, NOW.date(), date(1990, 1, 1), None,
        )  # fmt: skip
        self.rows[row_id] = {"status": Status.QUEUED, "token": token, "claimed": claimed}
        return str(row_id)

    def status(self, row_id: str) -> Status:
        return self.rows[uuid.UUID(row_id)]["status"]

    def claim_many(self, jobs: Any, now: datetime, lease_until: datetime, *, days=None) -> dict:
        claimed = {}
        for row_id, token in jobs:
            row = self.rows.get(row_id)
            if row and row["status"] == Status.QUEUED and token in (None, row["token"]):
                row["status"] = Status.SENDING
                claimed[row_id] = row["claimed"]
        return claimed

    def record_sent(self, sent: Any, now: datetime, via: str = "queue", *, days=None) -> int:
        for row_id, _status, _response, subject, body in sent:
            self.rows[row_id].update(status=Status.SENT, subject=subject, body=body)
        return len(sent)

    def record_outcome(
        self, kind: str, row_id: uuid.UUID, now: datetime, *, occasion_date=None, **values: Any
    ) -> int:
        self.outcomes.append((kind, row_id, values))
        row = self.rows[row_id]
        row["status"] = {
            "retry": Status.QUEUED,
            "put_back": Status.QUEUED,
            "failed": Status.FAILED,
            "cancelled": Status.CANCELLED,
        }.get(kind, row["status"])
        row["next_at"] = values.get("next_at")
        return 1

    def current_state(self, row_id: uuid.UUID, occasion_date=None) -> tuple | None:
        row = self.rows.get(row_id)
        return (row["status"], row["token"], NOW, None) if row else None


@pytest.fixture
def rows(monkeypatch: pytest.MonkeyPatch) -> Rows:
    """The in-memory rows, and any real database connection an error."""
    table = Rows()
    for name in ("claim_many", "record_sent", "record_outcome", "current_state"):
        monkeypatch.setattr(messages, name, getattr(table, name))

    def no_database() -> Any:
        raise AssertionError("these tests use no database")

    for module, name in (
        (db, "fast_autocommit"),
        (db, "autocommit"),
        (messages, "fast_autocommit"),
    ):
        monkeypatch.setattr(module, name, no_database)
    return table


SETTINGS = load_settings(
    EMAIL_SERVICE_URL="http://email.test", QUEUE_MAX_RETRIES=2, QUEUE_RETRY_DELAY=2000
)


def run(
    ids: list[str], sender: FakeSender, breaker: BreakerService, pacer: PacerService | None = None
):
    return deliver_many(
        [SendJob(i) for i in ids],
        sender=sender,
        breaker=breaker,
        settings=SETTINGS,
        now=NOW,
        pacer=pacer,
    )


def test_accepted_greetings_are_sent_with_their_words_and_each_answer_told(rows):
    ids = [rows.add(f"p{n}@example.com") for n in range(3)]
    breaker, pacer, sender = FakeBreaker(), FakePacer(limit=None), FakeSender()

    outcomes = run(ids, sender, breaker, pacer)

    assert [o.action for o in outcomes] == [Action.DONE] * 3
    assert sender.calls == [[f"p{n}@example.com" for n in range(3)]]  # one batch, at once
    row = rows.rows[uuid.UUID(ids[0])]
    assert (row["status"], row["subject"]) == (Status.SENT, "Happy birthday, Ada!")
    assert row["body"] == "Hey, Ada Lovelace it's your birthday"
    assert breaker.told == [("success", CLOSED)] * 3 and pacer.sent == 3


def test_an_open_breaker_defers_every_job_and_sends_nothing(rows):
    ids = [rows.add(f"p{n}@example.com") for n in range(2)]
    denied = [Permit(False, "open", 4.0), Permit(False, "open", 6.0)]
    sender = FakeSender()

    outcomes = run(ids, sender, FakeBreaker([denied]))

    assert [(o.action, o.delay_s) for o in outcomes] == [(Action.DEFER, 4.0), (Action.DEFER, 6.0)]
    assert sender.calls == []
    assert [(kind, values["next_at"]) for kind, _, values in rows.outcomes] == [
        ("deferred", NOW + timedelta(seconds=4)),
        ("deferred", NOW + timedelta(seconds=6)),
    ]


def test_while_a_probe_is_out_the_rest_of_the_batch_goes_after_its_answer(rows):
    ids = [rows.add(f"p{n}@example.com") for n in range(3)]
    probe = Permit(True, "probe", probe_token=uuid.uuid4())
    breaker, sender = FakeBreaker([[probe]]), FakeSender()

    outcomes = run(ids, sender, breaker)

    assert [o.action for o in outcomes] == [Action.DONE] * 3
    assert sender.calls == [["p0@example.com"], ["p1@example.com", "p2@example.com"]]
    assert breaker.told[0] == ("success", probe)


def test_a_transient_failure_spends_a_retry_until_none_is_left(rows):
    fresh, last = rows.add("a@example.com"), rows.add("b@example.com", retry_count=2)
    down = TransientSendError("HTTP 503", status=503)
    breaker = FakeBreaker()

    outcomes = run(
        [fresh, last], FakeSender({"a@example.com": down, "b@example.com": down}), breaker
    )

    assert outcomes[0].action is Action.RETRY and 2.0 <= outcomes[0].delay_s <= 3.0
    assert outcomes[1].action is Action.DEAD_LETTER and "retries exhausted" in outcomes[1].reason
    assert (rows.status(fresh), rows.status(last)) == (Status.QUEUED, Status.FAILED)
    assert [kind for kind, _ in breaker.told] == ["failure", "failure"]


def test_a_permanent_refusal_dead_letters_and_says_the_service_is_up(rows):
    row_id = rows.add("a@example.com")
    breaker = FakeBreaker()
    refused = provider.PermanentSendError("HTTP 400: bad address", status=400)

    [outcome] = run([row_id], FakeSender({"a@example.com": refused}), breaker)

    assert outcome.action is Action.DEAD_LETTER and rows.status(row_id) == Status.FAILED
    assert breaker.told == [("success", CLOSED)]


def test_a_throttle_slows_the_pace_and_defers_to_a_new_slot_without_a_retry(rows):
    row_id = rows.add("a@example.com")
    slot = Slot(NOW.timestamp() + 30, epoch=2)
    pacer = FakePacer(limit=None, slots=[None, slot])  # the send goes; after the 429, a slot
    throttle = TransientSendError("HTTP 429", status=429, retry_after_s=3.0, throttled=True)

    [outcome] = run([row_id], FakeSender({"a@example.com": throttle}), FakeBreaker(), pacer)

    assert (outcome.action, outcome.slot) == (Action.DEFER, slot) and outcome.delay_s > 3.0
    assert pacer.throttles == [3.0]
    assert [kind for kind, _, _ in rows.outcomes] == ["put_back"]


def test_a_paced_job_waits_for_its_slot_and_gives_its_permit_back(rows):
    row_id = rows.add("a@example.com")
    slot = Slot(NOW.timestamp() + 12, epoch=1)
    probe = Permit(True, "probe", probe_token=uuid.uuid4())
    breaker, sender = FakeBreaker([[probe]]), FakeSender()

    [outcome] = run([row_id], sender, breaker, FakePacer(slots=[slot]))

    assert (outcome.action, outcome.reason, outcome.slot) == (Action.DEFER, "paced", slot)
    assert outcome.delay_s == pytest.approx(12)
    assert sender.calls == [] and breaker.told == [("release", probe)]
    assert rows.outcomes[0][2]["next_at"] == NOW + timedelta(seconds=12)


def test_a_failed_probe_puts_the_row_back_until_the_breaker_may_close(rows):
    row_id = rows.add("a@example.com")
    probe = Permit(True, "probe", probe_token=uuid.uuid4())
    breaker = FakeBreaker([[probe]], open_until=datetime.now(UTC) + timedelta(seconds=20))
    down = TransientSendError("connection error", status=None)

    [outcome] = run([row_id], FakeSender({"a@example.com": down}), breaker)

    assert outcome.action is Action.DEFER and 18 < outcome.delay_s <= 20
    assert rows.status(row_id) == Status.QUEUED and rows.outcomes[0][0] == "put_back"


def test_a_sent_greeting_whose_record_fails_comes_back_only_to_be_recorded(rows, monkeypatch):
    import psycopg

    row_id = rows.add("a@example.com")

    def away(*args: Any, **kwargs: Any) -> int:
        raise psycopg.OperationalError("server closed the connection")

    monkeypatch.setattr(messages, "record_sent", away)
    [outcome] = run([row_id], FakeSender(), FakeBreaker())

    assert outcome.action is Action.RECORD
    assert outcome.delivered is not None
    assert (outcome.delivered["id"], outcome.delivered["body"]) == (
        row_id,
        "Hey, Ada Lovelace it's your birthday",
    )


def test_a_job_that_is_not_a_uuid_is_dead_lettered_and_the_rest_go(rows):
    row_id = rows.add("a@example.com")

    outcomes = run(["not-a-uuid", row_id], FakeSender(), FakeBreaker())

    assert [o.action for o in outcomes] == [Action.DEAD_LETTER, Action.DONE]


def test_a_superseded_job_ends_without_a_send(rows):
    row_id = rows.add("a@example.com", token=uuid.uuid4())
    sender = FakeSender()

    [outcome] = deliver_many(
        [replace(SendJob(row_id), token=str(uuid.uuid4()))],
        sender=sender,
        breaker=FakeBreaker(),
        settings=SETTINGS,
        now=NOW,
    )

    assert (outcome.action, outcome.reason) == (Action.DONE, "superseded job")
    assert sender.calls == []
