"""deliver() through the SMTP provider and a real SMTP server: the same outcomes, rows and
breaker/pacer effects as over HTTP (a 550 is FAILED and dead-lettered, a throttling answer
defers without spending a retry and lowers the shared rate, a drop is a retry)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import time_machine

from bday.config import load_settings
from bday.delivery.attempt import SendJob, deliver, deliver_many
from bday.delivery.breaker import Breaker
from bday.delivery.outcomes import Action
from bday.delivery.pacing import Pacer
from bday.delivery.smtp import SmtpSender, SmtpTarget
from bday.devtools.fake_smtp import DROP_AFTER_ACCEPT, FakeSmtp
from bday.store.models import Status
from tests.delivery.test_attempt import NOW, ada, row

pytestmark = pytest.mark.usefixtures("database")


@pytest.fixture
def server():
    with FakeSmtp() as fake:
        yield fake


@pytest.fixture
def settings(server):
    return load_settings(
        EMAIL_SERVICE_URL=server.url,
        EMAIL_FROM="Greetings <hello@greetings.example>",
        QUEUE_MAX_RETRIES=2,
        BREAKER_IDLE=0,
    )


@pytest.fixture
def sender(settings):
    client = SmtpSender(SmtpTarget.from_settings(settings))
    yield client
    client.close()


def go(message_id, sender, settings, **kwargs):
    return deliver(
        str(message_id),
        None,
        sender=sender,
        breaker=Breaker(settings),
        settings=settings,
        now=NOW,
        **kwargs,
    )


def test_a_batch_sends_each_greeting_and_a_550_fails_only_its_own(server, sender, settings):
    server.refuse["gone@example.com"] = "550 5.1.1 <gone@example.com>: Recipient address rejected"
    ids = [ada(email="ada@example.com"), ada(email="gone@example.com"), ada(email="cy@example.com")]
    outcomes = deliver_many(
        [SendJob(str(i)) for i in ids],
        sender=sender,
        breaker=Breaker(settings),
        settings=settings,
        now=NOW,
    )
    assert [o.action for o in outcomes] == [Action.DONE, Action.DEAD_LETTER, Action.DONE]
    failed = row(ids[1])
    assert (failed["status"], failed["failure_reason"], failed["provider_status"]) == (
        Status.FAILED,
        "permanent",
        550,
    )
    assert "Recipient address rejected" in failed["last_error"]
    sent = row(ids[0])
    assert (sent["status"], sent["provider_status"]) == (Status.SENT, 250)
    assert sent["body"] == "Hey, Ada Lovelace it's your birthday"
    assert sent["subject"] == "Happy birthday, Ada!"
    received = server.wait_for(2)
    assert [r.recipients for r in received] == [("ada@example.com",), ("cy@example.com",)]
    assert received[0].message["Subject"] == sent["subject"]
    assert received[0].message["Message-ID"] == f"<{ids[0]}@greetings.example>"
    assert server.sessions == 1


# The throttle's new slot is taken at the wall clock's now, the batch's at NOW: the two must
# agree (frozen: the slot and the in-place wait measured on one clock), or after 2027-03-05
# the slot lay weeks ahead of NOW (the date sweep found it).
@time_machine.travel(NOW, tick=False)
def test_a_throttling_answer_defers_without_a_retry_and_lowers_the_shared_rate(
    server, sender, settings
):
    server.script("454 Throttling failure: Maximum sending rate exceeded.")
    paced = Pacer(load_settings(EMAIL_SERVICE_RATE_LIMIT=10, EMAIL_SERVICE_BURST=1))
    message_id = ada()
    outcome = go(message_id, sender, settings, pacer=paced)
    # its new slot is under a second away: it waited for it in place and went again
    assert outcome.action is Action.DONE and len(server.wait_for(1)) == 1
    assert paced.rate(datetime.now(UTC)) == pytest.approx(7)  # 10 x 0.7, for every worker
    stored = row(message_id)
    assert (stored["retry_count"], stored["deferrals"], stored["status"]) == (0, 1, Status.SENT)
    assert Breaker(settings).snapshot(fresh=True).state == "closed"


def test_a_drop_after_data_is_a_retry_and_the_second_send_has_the_same_message_id(
    server, sender, settings
):
    server.script(DROP_AFTER_ACCEPT)
    message_id = ada()
    outcome = go(message_id, sender, settings)
    assert outcome.action is Action.RETRY and row(message_id)["retry_count"] == 1
    later = NOW.replace(minute=5)
    assert (
        deliver(
            str(message_id),
            None,
            sender=sender,
            breaker=Breaker(settings),
            settings=settings,
            now=later,
        ).action
        is Action.DONE
    )
    ids = [r.message["Message-ID"] for r in server.wait_for(2)]
    assert ids == [f"<{message_id}@greetings.example>"] * 2
    assert row(message_id)["status"] == Status.SENT


def test_a_server_that_is_down_opens_the_breaker(sender, server):
    settings = load_settings(
        EMAIL_SERVICE_URL=server.url,
        EMAIL_FROM="hello@greetings.example",
        BREAKER_FAILURES=1,
        BREAKER_IDLE=0,
    )
    server.stop()
    message_id = ada()
    outcome = go(message_id, sender, settings)
    assert outcome.action is Action.RETRY
    assert "connection error" in row(message_id)["last_error"]
    snapshot = Breaker(settings).snapshot(fresh=True)
    assert snapshot.state == "open" and "connection error" in snapshot.last_error
