"""deliver(): one attempt at one message, against the real database, with the HTTP call mocked
at its single point (respx). Each outcome says what the task must do next."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime, timedelta

import httpx
import psycopg
import pytest
import respx
from sqlalchemy import text

from bday.config import load_settings
from bday.delivery.attempt import SendJob, deliver, deliver_many
from bday.delivery.breaker import Breaker
from bday.delivery.outcomes import Action
from bday.delivery.pacing import Pacer
from bday.delivery.sender import EmailSender
from bday.devtools import factories
from bday.store import messages
from bday.store.db import engine, transaction
from bday.store.models import Status

pytestmark = pytest.mark.usefixtures("database")

URL = "http://email.test"
NOW = datetime(2027, 3, 5, 9, 0, 5, tzinfo=UTC)
DUE = datetime(2027, 3, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def settings():
    return load_settings(
        EMAIL_SERVICE_URL=URL, QUEUE_MAX_RETRIES=2, QUEUE_RETRY_DELAY=2000, BREAKER_IDLE=0
    )


@pytest.fixture
def sender():
    client = EmailSender(URL, timeout_s=1)
    yield client
    client.close()


@pytest.fixture
def breaker(settings):
    return Breaker(settings)


def ada(
    status=Status.QUEUED,
    scheduled=DUE,
    token=None,
    retry_count=0,
    deleted=False,
    email="ada@example.com",
    locale=None,
) -> uuid.UUID:
    user = factories.user_row(
        "Ada",
        "Lovelace",
        email=email,
        birthday=date(1990, 3, 5),
        owed_from=datetime(2020, 1, 1, tzinfo=UTC),
        deleted_at=NOW if deleted else None,
        locale=locale,
    )
    message = factories.message_row(
        user["id"], scheduled, status=status, dispatch_token=token, retry_count=retry_count
    )
    with transaction() as session:
        factories.insert(session, [user], [message])
    return message["id"]


def row(message_id) -> dict:
    with engine().connect() as connection:
        return dict(
            connection.execute(text("SELECT * FROM messages WHERE id = :id"), {"id": message_id})
            .mappings()
            .one()
        )


def open_breaker(until: datetime) -> None:
    """The shared breaker row, open until `until` (cooldown 5 s)."""
    with transaction() as session:
        session.execute(
            text(
                "INSERT INTO circuit_breakers (name, state, open_until, cooldown_s) "
                "VALUES ('email-service', 'open', :until, 5)"
            ),
            {"until": until},
        )


def go(message_id, sender, breaker, settings, token=None, now=NOW):
    return deliver(
        str(message_id),
        token and str(token),
        sender=sender,
        breaker=breaker,
        settings=settings,
        now=now,
    )


@respx.mock
def test_a_due_message_is_sent_with_the_exact_text_and_its_id_as_idempotency_key(
    sender, breaker, settings
):
    route = respx.post(f"{URL}/send-email").mock(
        return_value=httpx.Response(200, json={"ok": True})
    )
    message_id = ada()
    outcome = go(message_id, sender, breaker, settings)
    assert outcome.action is Action.DONE and outcome.reason == "sent"
    request = route.calls.last.request
    assert request.headers["Idempotency-Key"] == str(message_id)
    assert (
        request.read()
        == b'{"email":"ada@example.com","message":"Hey, Ada Lovelace it\'s your birthday"}'
    )
    stored = row(message_id)
    assert (
        stored["status"],
        stored["provider_status"],
        stored["attempts"],
        stored["sent_via"],
    ) == (Status.SENT, 200, 1, "queue")
    assert stored["sent_at"] is not None and stored["lease_expires_at"] is None
    assert stored["subject"] == "Happy birthday, Ada!"
    assert stored["body"] == "Hey, Ada Lovelace it's your birthday"


@respx.mock
def test_the_users_language_picks_the_template_and_the_row_keeps_the_words_sent(
    breaker, sender, tmp_path
):
    for name, words in {
        "birthday.subject.txt": "Happy birthday",
        "birthday.body.txt": "Happy birthday, $first_name",
        "anniversary.subject.txt": "Anniversary",
        "anniversary.body.txt": "$years years",
        "de/birthday.subject.txt": "Alles Gute, $first_name!\n",
        "de/birthday.body.txt": "Liebe $full_name, alles Gute zum $age. Geburtstag!\n",
    }.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(words, encoding="utf-8")
    settings = load_settings(EMAIL_SERVICE_URL=URL, BREAKER_IDLE=0, TEMPLATES_DIR=str(tmp_path))
    route = respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(200))
    austrian, english = ada(locale="de-AT"), ada(email="ada2@example.com")
    for message_id in (austrian, english):
        assert go(message_id, sender, breaker, settings).action is Action.DONE
    bodies = [call.request.read().decode() for call in route.calls]
    assert "Liebe Ada Lovelace, alles Gute zum 37. Geburtstag!" in bodies[0]
    assert '"message":"Happy birthday, Ada"' in bodies[1]
    assert (row(austrian)["subject"], row(austrian)["body"]) == (
        "Alles Gute, Ada!",
        "Liebe Ada Lovelace, alles Gute zum 37. Geburtstag!",
    )
    assert row(english)["body"] == "Happy birthday, Ada"


@respx.mock
def test_a_transient_failure_requeues_the_row_and_asks_for_a_retry_with_backoff(
    sender, breaker, settings
):
    respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(503, text="busy"))
    message_id = ada()
    outcome = go(message_id, sender, breaker, settings)
    assert outcome.action is Action.RETRY and 2.0 <= outcome.delay_s <= 2.5
    stored = row(message_id)
    assert (stored["status"], stored["retry_count"], stored["provider_status"]) == (
        Status.QUEUED,
        1,
        503,
    )
    assert "503" in stored["last_error"] and stored["next_attempt_at"] is not None


@respx.mock
def test_a_429_defers_for_its_retry_after_without_spending_a_retry_or_touching_the_breaker(
    sender, breaker, settings
):
    respx.post(f"{URL}/send-email").mock(
        return_value=httpx.Response(429, headers={"Retry-After": "30"})
    )
    message_id = ada(retry_count=2)  # the last retry: a 429 must not spend it
    outcome = go(message_id, sender, breaker, settings)
    assert outcome.action is Action.DEFER and outcome.delay_s == 30
    stored = row(message_id)
    assert (stored["status"], stored["retry_count"], stored["deferrals"]) == (Status.QUEUED, 2, 1)
    assert stored["provider_status"] == 429
    assert breaker.snapshot(fresh=True).state == "closed" and breaker.snapshot().trips == 0


@respx.mock
def test_a_429_lowers_the_shared_rate_and_defers_the_send_to_a_slot(sender, breaker, settings):
    respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(429))
    paced = Pacer(load_settings(EMAIL_SERVICE_RATE_LIMIT=10, EMAIL_SERVICE_BURST=1))
    message_id = ada()
    outcome = deliver(
        str(message_id),
        None,
        sender=sender,
        breaker=breaker,
        settings=settings,
        now=NOW,
        pacer=paced,
    )
    assert outcome.action is Action.DEFER and outcome.slot is not None
    assert paced.rate(datetime.now(UTC)) == pytest.approx(7)  # 10 x 0.7, for every worker
    assert row(message_id)["retry_count"] == 0


@respx.mock
def test_a_paced_send_is_deferred_to_its_slot_and_sent_when_it_comes_back(
    sender, breaker, settings
):
    route = respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(200))
    paced = Pacer(load_settings(EMAIL_SERVICE_RATE_LIMIT=0.5, EMAIL_SERVICE_BURST=1))
    first, second = ada(), ada(email="ada.two@example.com")
    kwargs = {"sender": sender, "breaker": breaker, "settings": settings, "pacer": paced}
    assert deliver(str(first), None, now=NOW, **kwargs).action is Action.DONE
    waiting = deliver(str(second), None, now=NOW, **kwargs)
    assert (waiting.action, waiting.reason, waiting.delay_s) == (Action.DEFER, "paced", 2.0)
    assert row(second)["deferrals"] == 1 and row(second)["status"] == Status.QUEUED
    turn = NOW + timedelta(seconds=2)
    assert deliver(str(second), None, now=turn, slot=waiting.slot, **kwargs).action is Action.DONE
    assert route.call_count == 2 and row(second)["retry_count"] == 0


@respx.mock
def test_exhausted_retries_fail_the_row_and_dead_letter_the_job(sender, breaker, settings):
    respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(500))
    message_id = ada(retry_count=2)
    outcome = go(message_id, sender, breaker, settings)
    assert outcome.action is Action.DEAD_LETTER
    stored = row(message_id)
    assert (stored["status"], stored["failure_reason"]) == (Status.FAILED, "retries_exhausted")


@respx.mock
def test_a_permanent_error_fails_at_once_without_retrying(sender, breaker, settings):
    route = respx.post(f"{URL}/send-email").mock(
        return_value=httpx.Response(400, text="bad address")
    )
    message_id = ada()
    outcome = go(message_id, sender, breaker, settings)
    assert outcome.action is Action.DEAD_LETTER and route.call_count == 1
    stored = row(message_id)
    assert (stored["status"], stored["failure_reason"], stored["retry_count"]) == (
        Status.FAILED,
        "permanent",
        0,
    )


@respx.mock
@pytest.mark.parametrize("status", [Status.SENT, Status.FAILED, Status.CANCELLED])
def test_a_finished_message_is_left_alone(sender, breaker, settings, status):
    route = respx.post(f"{URL}/send-email")
    outcome = go(ada(status=status), sender, breaker, settings)
    assert outcome.action is Action.DONE and route.call_count == 0


@respx.mock
def test_a_superseded_job_is_a_no_op(sender, breaker, settings):
    route = respx.post(f"{URL}/send-email")
    message_id = ada(token=uuid.uuid4())
    outcome = go(message_id, sender, breaker, settings, token=uuid.uuid4())
    assert (outcome.action, outcome.reason) == (Action.DONE, "superseded job")
    assert route.call_count == 0 and row(message_id)["status"] == Status.QUEUED


@respx.mock
def test_a_job_for_a_future_instant_is_deferred_to_that_instant_never_sent_early(
    sender, breaker, settings
):
    route = respx.post(f"{URL}/send-email")
    message_id = ada(scheduled=NOW + timedelta(seconds=42))
    outcome = go(message_id, sender, breaker, settings)
    assert (outcome.action, outcome.delay_s) == (Action.DEFER, 42.0)
    assert route.call_count == 0 and row(message_id)["status"] == Status.QUEUED


@respx.mock
def test_a_message_held_by_another_worker_is_deferred_until_its_lease_ends(
    sender, breaker, settings
):
    route = respx.post(f"{URL}/send-email")
    message_id = ada()
    with transaction() as session:
        session.execute(
            text("UPDATE messages SET status='SENDING', lease_expires_at=:t WHERE id=:id"),
            {"t": NOW + timedelta(seconds=20), "id": message_id},
        )
    outcome = go(message_id, sender, breaker, settings)
    assert outcome.action is Action.DEFER and outcome.delay_s == 21
    assert route.call_count == 0


@respx.mock
def test_a_message_whose_worker_died_is_taken_over_after_the_lease(sender, breaker, settings):
    respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(200))
    message_id = ada()
    with transaction() as session:
        session.execute(
            text("UPDATE messages SET status='SENDING', lease_expires_at=:t WHERE id=:id"),
            {"t": NOW - timedelta(seconds=1), "id": message_id},
        )
    assert go(message_id, sender, breaker, settings).reason == "sent"


@respx.mock
def test_a_message_past_catch_up_hours_expires_without_a_call(sender, breaker, settings):
    route = respx.post(f"{URL}/send-email")
    message_id = ada(scheduled=NOW - timedelta(hours=48, seconds=1))
    outcome = go(message_id, sender, breaker, settings)
    assert outcome.action is Action.DEAD_LETTER and route.call_count == 0
    assert (row(message_id)["status"], row(message_id)["failure_reason"]) == (
        Status.FAILED,
        "expired",
    )


@respx.mock
def test_a_late_message_within_catch_up_hours_is_still_sent(sender, breaker, settings):
    respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(200))
    message_id = ada(scheduled=NOW - timedelta(hours=47))
    assert go(message_id, sender, breaker, settings).reason == "sent"


@respx.mock
def test_a_deleted_users_message_is_cancelled_not_sent(sender, breaker, settings):
    route = respx.post(f"{URL}/send-email")
    message_id = ada(deleted=True)
    assert go(message_id, sender, breaker, settings).action is Action.DONE
    assert route.call_count == 0 and row(message_id)["status"] == Status.CANCELLED


@pytest.mark.parametrize("bad", ["not-a-uuid", "", "1; DROP TABLE messages"])
def test_a_malformed_message_id_is_dead_lettered(sender, breaker, settings, bad):
    outcome = deliver(bad, None, sender=sender, breaker=breaker, settings=settings, now=NOW)
    assert outcome.action is Action.DEAD_LETTER


def test_an_unknown_message_id_is_dead_lettered(sender, breaker, settings):
    outcome = go(uuid.uuid4(), sender, breaker, settings)
    assert (outcome.action, outcome.reason) == (Action.DEAD_LETTER, "unknown message id")


@respx.mock
def test_an_open_breaker_defers_the_send_without_spending_a_retry(sender, settings):
    route = respx.post(f"{URL}/send-email")
    breaker = Breaker(settings)
    open_breaker(until=NOW + timedelta(seconds=10))
    message_id = ada(retry_count=1)
    outcome = go(message_id, sender, breaker, settings)
    assert outcome.action is Action.DEFER and outcome.delay_s >= 10
    stored = row(message_id)
    assert (stored["status"], stored["retry_count"], stored["deferrals"], stored["attempts"]) == (
        Status.QUEUED,
        1,
        1,
        0,
    )
    assert route.call_count == 0


@respx.mock
def test_a_superseded_job_meeting_an_open_breaker_ends_and_leaves_the_row_alone(sender, settings):
    """The row was re-published (fresh token) while this older job was out: during an outage
    it ends instead of deferring the row and circulating beside the current job."""
    route = respx.post(f"{URL}/send-email")
    breaker = Breaker(settings)
    open_breaker(until=NOW + timedelta(seconds=10))
    message_id = ada(token=uuid.uuid4())
    outcome = go(message_id, sender, breaker, settings, token=uuid.uuid4())
    assert (outcome.action, outcome.reason) == (Action.DONE, "superseded job")
    assert (row(message_id)["deferrals"], row(message_id)["next_attempt_at"]) == (0, None)
    current = go(message_id, sender, breaker, settings, token=row(message_id)["dispatch_token"])
    assert current.action is Action.DEFER and row(message_id)["deferrals"] == 1
    assert route.call_count == 0


@respx.mock
def test_a_failed_probe_defers_the_message_without_spending_a_retry(sender, settings):
    respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(503))
    breaker = Breaker(load_settings(EMAIL_SERVICE_URL=URL, BREAKER_IDLE=30, BREAKER_COOLDOWN=5))
    message_id = ada()
    outcome = go(message_id, sender, breaker, settings)  # cold breaker: this send is the probe
    assert outcome.action is Action.DEFER and outcome.delay_s >= 1
    stored = row(message_id)
    assert (stored["status"], stored["retry_count"], stored["deferrals"]) == (Status.QUEUED, 0, 1)


def test_a_delivery_recorded_late_is_written_sent_even_if_recovery_requeued_it():
    from bday.delivery.outcomes import record_delivered

    message_id = ada(status=Status.QUEUED)
    record_delivered(
        {
            "id": str(message_id),
            "at": NOW.isoformat(),
            "status": 200,
            "response": "ok",
            "via": "queue",
        }
    )
    stored = row(message_id)
    assert (stored["status"], stored["sent_at"], stored["provider_status"]) == (
        Status.SENT,
        NOW,
        200,
    )


# --- batches: deliver_many ---------------------------------------------------------------------


def emails(count: int, scheduled: datetime = DUE) -> list[uuid.UUID]:
    return [ada(email=f"ada.{n}@example.com", scheduled=scheduled) for n in range(count)]


def go_many(jobs, sender, breaker, settings, pacer=None, now=NOW):
    return deliver_many(
        [SendJob(str(m), None) if not isinstance(m, SendJob) else m for m in jobs],
        sender=sender,
        breaker=breaker,
        settings=settings,
        now=now,
        pacer=pacer,
    )


@respx.mock
def test_a_batch_is_claimed_in_one_statement_sent_and_recorded_in_one_statement(
    sender, breaker, settings, monkeypatch
):
    route = respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(200, text="ok"))
    calls = {"claim_many": [], "record_sent": []}
    for name in calls:
        real = getattr(messages, name)
        monkeypatch.setattr(
            messages,
            name,
            lambda rows, *a, _real=real, _name=name, **k: (
                calls[_name].append(len(rows)) or _real(rows, *a, **k)
            ),
        )
    due = emails(5)
    sent_already = ada(status=Status.SENT, email="done@example.com")
    jobs = [*due, "not-a-uuid", uuid.uuid4(), due[0], sent_already]
    outcomes = go_many(jobs, sender, breaker, settings)
    assert [o.reason for o in outcomes] == [
        *["sent"] * 5,
        "malformed job: message id is not a UUID",
        "unknown message id",
        "already SENT",  # the row's second job goes after the first: it finds the row sent
        "already SENT",
    ]
    assert [o.action for o in outcomes[5:7]] == [Action.DEAD_LETTER] * 2
    assert calls["claim_many"] == [7, 1]  # one statement for the batch, one for the repeat
    # One SENT statement per group of answers that arrive together (one by one here: this
    # sender sends in turn; a SendPool's concurrent answers come back in groups).
    assert sum(calls["record_sent"]) == 5
    assert sorted(c.request.headers["Idempotency-Key"] for c in route.calls) == sorted(
        str(m) for m in due
    )
    assert {row(m)["status"] for m in due} == {Status.SENT}
    assert {row(m)["provider_response"] for m in due} == {"ok"}


@pytest.mark.parametrize("current_first", [False, True])
@respx.mock
def test_a_rows_old_and_current_job_in_one_batch_send_it_once(
    sender, breaker, settings, current_first
):
    """A row re-published (fresh token) while its older job was on its way back: both jobs
    can arrive in one batch, in either order. The current one sends it; the old one is a
    no-op. (The first-seen job used to speak for both: old first, the greeting was lost.)"""
    route = respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(200, text="ok"))
    old, current = uuid.uuid4(), uuid.uuid4()
    message = ada(token=current)
    jobs = [SendJob(str(message), str(old)), SendJob(str(message), str(current))]
    if current_first:
        jobs.reverse()
    reasons = [o.reason for o in go_many(jobs, sender, breaker, settings)]
    expected = ["superseded job", "sent"]
    assert reasons == (["sent", "already SENT"] if current_first else expected)
    assert route.call_count == 1
    assert row(message)["status"] == Status.SENT


@respx.mock
def test_a_batch_whose_sent_cannot_be_recorded_comes_back_only_to_record_it(
    sender, breaker, settings, monkeypatch
):
    from bday.delivery.outcomes import record_delivered

    route = respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(200, text="ok"))

    def database_gone(*_, **__):
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    due = emails(3)
    monkeypatch.setattr(messages, "record_sent", database_gone)
    outcomes = go_many(due, sender, breaker, settings)
    assert {o.action for o in outcomes} == {Action.RECORD}
    assert {row(m)["status"] for m in due} == {Status.SENDING}
    monkeypatch.undo()
    for outcome in outcomes:
        assert outcome.delivered is not None
        record_delivered(outcome.delivered)
    assert {row(m)["status"] for m in due} == {Status.SENT}
    assert route.call_count == 3  # each greeting sent once, recorded later


@respx.mock
def test_a_database_error_before_the_sends_sends_nothing_and_spends_nothing(
    sender, breaker, settings, monkeypatch
):
    route = respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(200))

    def database_gone(*_, **__):
        raise psycopg.OperationalError("connection refused")

    due = emails(2)
    monkeypatch.setattr(messages, "claim_many", database_gone)
    outcomes = go_many(due, sender, breaker, settings)
    assert [o.action for o in outcomes] == [Action.DB_AWAY] * 2
    assert "OperationalError" in outcomes[0].reason
    assert route.call_count == 0
    assert {(row(m)["status"], row(m)["retry_count"]) for m in due} == {(Status.QUEUED, 0)}


@respx.mock
def test_while_the_breaker_probes_the_batchs_first_send_goes_alone_then_the_rest(sender, settings):
    route = respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(200))
    cold = Breaker(load_settings(EMAIL_SERVICE_URL=URL, BREAKER_IDLE=30, BREAKER_COOLDOWN=5))
    due = emails(3)
    outcomes = go_many(due, sender, cold, settings)
    assert [o.reason for o in outcomes] == ["sent"] * 3
    probe = route.calls[0].request.headers["Idempotency-Key"]
    assert probe == str(due[0]) and route.call_count == 3  # the probe first, alone
    assert cold.snapshot(fresh=True).state == "closed"


@respx.mock
def test_when_the_batchs_probe_fails_the_rest_of_the_batch_waits_without_a_call(sender, settings):
    route = respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(503))
    cold = Breaker(
        load_settings(
            EMAIL_SERVICE_URL=URL, BREAKER_IDLE=30, BREAKER_COOLDOWN=5, BREAKER_FAILURES=1
        )
    )
    # Real time: the breaker writes its opening at the clock's now, not the caller's.
    now = datetime.now(UTC)
    due = emails(3, scheduled=now - timedelta(seconds=5))
    outcomes = go_many(due, sender, cold, settings, now=now)
    assert route.call_count == 1  # only the probe reached the service
    assert [o.action for o in outcomes] == [Action.DEFER] * 3
    assert all(o.delay_s >= 1 for o in outcomes)
    assert {(row(m)["retry_count"], row(m)["deferrals"]) for m in due} == {(0, 1)}


@respx.mock
def test_a_paced_batch_takes_its_turns_one_by_one(sender, breaker, settings):
    route = respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(200))
    paced = Pacer(load_settings(EMAIL_SERVICE_RATE_LIMIT=0.5, EMAIL_SERVICE_BURST=1))
    due = emails(3)
    outcomes = go_many(due, sender, breaker, settings, pacer=paced)
    assert route.call_count == 1 and outcomes[0].reason == "sent"
    waits = sorted(o.delay_s for o in outcomes[1:])
    assert [o.reason for o in outcomes[1:]] == ["paced"] * 2
    assert waits == pytest.approx([2.0, 4.0], abs=0.05)  # the rate's spacing, not all at once


@respx.mock
def test_a_turn_less_than_a_second_away_is_waited_for_in_place_then_sent(sender, breaker, settings):
    route = respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(200))
    paced = Pacer(load_settings(EMAIL_SERVICE_RATE_LIMIT=4, EMAIL_SERVICE_BURST=1))
    due = emails(2)
    started = time.monotonic()
    outcomes = go_many(due, sender, breaker, settings, pacer=paced)
    assert [o.reason for o in outcomes] == ["sent", "sent"] and route.call_count == 2
    assert time.monotonic() - started >= 0.2  # the second waited for its slot (0.25 s)
    assert row(due[1])["deferrals"] == 1 and row(due[1])["retry_count"] == 0


@respx.mock
def test_a_single_delivery_raises_the_databases_own_error_when_it_is_away(
    sender, breaker, settings, monkeypatch
):
    def database_gone(*_, **__):
        raise psycopg.OperationalError("connection refused")

    message_id = ada()
    monkeypatch.setattr(messages, "claim_many", database_gone)
    with pytest.raises(psycopg.OperationalError, match="connection refused"):
        go(message_id, sender, breaker, settings)


@respx.mock
def test_each_outcome_is_told_once_as_soon_as_it_is_known_not_at_the_end_of_the_batch(
    sender, breaker, settings
):
    told: list[tuple[int, str]] = []
    told_before_each_call: list[list[int]] = []

    def answer(request):
        told_before_each_call.append([index for index, _ in told])
        return httpx.Response(200)

    respx.post(f"{URL}/send-email").mock(side_effect=answer)
    due = emails(3)
    outcomes = deliver_many(
        [SendJob("not-a-uuid"), *(SendJob(str(m)) for m in due)],
        sender=sender,
        breaker=breaker,
        settings=settings,
        now=NOW,
        notify=lambda index, outcome: told.append((index, outcome.reason)),
    )
    assert sorted(told) == [(0, "malformed job: message id is not a UUID")] + [
        (n, "sent") for n in (1, 2, 3)
    ]
    assert [o.reason for o in outcomes] == [reason for _, reason in sorted(told)]
    # This sender sends in turn: each greeting was told (so its message settled) before the
    # next one's request went out.
    assert told_before_each_call == [[0], [0, 1], [0, 1, 2]]


def test_an_open_breaker_denies_a_whole_batch_from_one_read_without_taking_a_probe(settings):
    breaker = Breaker(settings)
    open_breaker(until=NOW + timedelta(seconds=10))
    permits = breaker.permits(NOW, 32)
    assert len(permits) == 32 and not any(p.allowed for p in permits)
    assert all(p.retry_in_s >= 10 for p in permits)
    assert len({p.retry_in_s for p in permits}) > 1  # scattered, not all back at once
    with engine().connect() as connection:
        probe = connection.execute(text("SELECT probe_token FROM circuit_breakers")).scalar()
    assert probe is None


@respx.mock
def test_a_database_away_while_checking_the_send_rate_comes_back_later_not_dead_lettered(
    sender, breaker, settings, monkeypatch
):
    route = respx.post(f"{URL}/send-email").mock(return_value=httpx.Response(200))
    paced = Pacer(load_settings(EMAIL_SERVICE_RATE_LIMIT=10))

    def database_gone(*_, **__):
        raise psycopg.OperationalError("the database system is shutting down")

    monkeypatch.setattr(paced, "snapshot", database_gone)
    outcomes = go_many(emails(2), sender, breaker, settings, pacer=paced)
    assert [o.action for o in outcomes] == [Action.DB_AWAY] * 2
    assert route.call_count == 0


def test_recording_a_delivery_while_the_database_is_still_away_says_so_and_writes_nothing(
    monkeypatch,
):
    from bday.delivery.outcomes import record_delivered

    message_id = ada(status=Status.SENDING)

    def database_gone(*_, **__):
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(messages, "record_outcome", database_gone)
    delivered = {"id": str(message_id), "at": NOW.isoformat(), "status": 200}
    outcome = record_delivered({**delivered, "response": "ok", "via": "queue"})
    assert outcome.action is Action.DB_AWAY and "OperationalError" in outcome.reason
    assert row(message_id)["status"] == Status.SENDING
