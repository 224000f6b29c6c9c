"""The SMTP provider against a real SMTP server in this process (aiosmtpd): the messages it
builds, every kind of reply, a session kept across greetings and rebuilt when it drops."""

from __future__ import annotations

import socket
import time
from email.headerregistry import Address

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bday.config import SettingsError, load_settings
from bday.delivery.provider import Email, PermanentSendError, TransientSendError
from bday.delivery.smtp import (
    SmtpPool,
    SmtpSender,
    SmtpTarget,
    _wire,
    build_message,
    classify_reply,
)
from bday.devtools.fake_smtp import DROP, DROP_AFTER_ACCEPT, FakeSmtp, Received
from tests.users.test_bad_input_properties import hostile_text

FROM = "Greetings Team <hello@greetings.example>"


@pytest.fixture
def server():
    with FakeSmtp() as fake:
        yield fake


def target(url: str, **settings) -> SmtpTarget:
    return SmtpTarget.from_settings(
        load_settings(
            EMAIL_SERVICE_URL=url, EMAIL_FROM=FROM, EMAIL_SERVICE_TIMEOUT=3000, **settings
        )
    )


@pytest.fixture
def sender(server):
    client = SmtpSender(target(server.url))
    yield client
    client.close()


def greeting(to="ada@example.com", key="6f1c2c9e-0000-4000-8000-000000000001", **extra) -> Email:
    values = {
        "email": to,
        "message": "Hey, Ada Lovelace it's your birthday",
        "idempotency_key": key,
        "subject": "Happy birthday, Ada!",
        "name": "Ada Lovelace",
        **extra,
    }
    return Email(**values)


def test_a_greeting_arrives_as_one_parseable_message_with_every_header(server, sender):
    email = greeting(
        name='Zoë 山田 "Z" O\'Brien',
        subject="Alles Gute, Zoë! 🎂",
        message="Liebe Zoë,\nalles Gute!",
        html="<p>Liebe <b>Zoë</b></p>",
    )
    receipt = sender.send_email(email)
    assert receipt.status == 250 and receipt.body.startswith("250 2.0.0 queued")
    [received] = server.wait_for(1)
    assert received.mail_from == "hello@greetings.example"
    assert received.recipients == ("ada@example.com",)
    assert received.data.isascii()  # names and body encoded: any server takes it
    message = received.message
    assert message["From"].addresses[0] == Address("Greetings Team", "hello", "greetings.example")
    assert message["To"].addresses[0].display_name == 'Zoë 山田 "Z" O\'Brien'
    assert message["To"].addresses[0].addr_spec == "ada@example.com"
    assert message["Subject"] == "Alles Gute, Zoë! 🎂"
    assert message["Message-ID"] == f"<{email.idempotency_key}@greetings.example>"
    assert abs(message["Date"].datetime.timestamp() - time.time()) < 60
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_body(("plain",)).get_content() == "Liebe Zoë,\nalles Gute!\n"
    assert message.get_body(("html",)).get_content() == "<p>Liebe <b>Zoë</b></p>\n"


def test_plain_text_only_when_the_template_has_no_html(server, sender):
    sender.send_email(greeting())
    message = server.wait_for(1)[0].message
    assert message.get_content_type() == "text/plain"
    assert message.get_content() == "Hey, Ada Lovelace it's your birthday\n"


def test_one_session_carries_many_greetings(server, sender):
    for n in range(5):
        sender.send_email(greeting(to=f"p{n}@example.com", key=f"key-{n}"))
    assert len(server.wait_for(5)) == 5 and server.sessions == 1


@pytest.mark.parametrize(
    "hostile",
    [
        "Ada\r\nBcc: victim@example.com",
        "Ada\nSubject: spam",
        "Ada\rX-Evil: 1",
        "Ada\u2028Bcc: victim@example.com",
        "Ada\x00\x1b[31m",
    ],
)
def test_a_hostile_name_or_subject_cannot_add_a_header(server, sender, hostile):
    sender.send_email(greeting(name=hostile, subject=f"Happy birthday, {hostile}"))
    received = server.wait_for(1)[0]
    message = received.message
    assert received.recipients == ("ada@example.com",)
    assert message["Bcc"] is None and message["X-Evil"] is None
    assert message.get_all("Subject") == [message["Subject"]]
    assert message["Subject"].startswith("Happy birthday, Ada")
    assert message["To"].addresses[0].addr_spec == "ada@example.com"
    header_block = received.data.split(b"\r\n\r\n", 1)[0]
    assert all(line[:1] in b" \t" or b":" in line for line in header_block.split(b"\r\n"))


@settings(max_examples=300, deadline=None)
@given(name=hostile_text, subject=hostile_text, body=st.text(max_size=200))
@example(name="a" * 65 + "@example.com", subject="", body="")  # lost its quotes when folded
@example(name="Bob <evil@example.com>, eve@example.com", subject="x" * 300, body="")
def test_no_name_subject_or_body_from_the_bad_input_suite_can_add_or_break_a_header(
    name, subject, body
):
    sender = Address("G", "hello", "greetings.example")
    wire = _wire(build_message(greeting(name=name, subject=subject, message=body), sender), False)
    message = Received("hello@greetings.example", ("ada@example.com",), wire, 1).message
    names = [key.lower() for key in message]  # the header names
    assert sorted(names) == sorted(
        [
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "content-type",
            "content-transfer-encoding",
            "mime-version",
        ]
    )
    assert message["To"].addresses[0].addr_spec == "ada@example.com"
    assert message["Message-ID"] == "<6f1c2c9e-0000-4000-8000-000000000001@greetings.example>"


@settings(max_examples=300, deadline=None)
@given(name=st.text(st.sampled_from('aZë山 @<>",.;:\\()[]x'), min_size=1, max_size=100))
def test_a_name_of_specials_in_any_script_and_length_stays_a_display_name(name):
    sender = Address("G", "hello", "greetings.example")
    wire = _wire(build_message(greeting(name=name), sender), False)
    [to] = (
        Received("hello@greetings.example", ("ada@example.com",), wire, 1).message["To"].addresses
    )
    assert to.addr_spec == "ada@example.com"
    assert all(len(line) <= 998 for line in wire.split(b"\r\n"))


def test_the_message_id_is_the_same_on_every_attempt_of_one_greeting():
    sender = Address("G", "hello", "greetings.example")
    first = build_message(greeting(key="abc-1"), sender)
    again = build_message(greeting(key="abc-1"), sender)
    other = build_message(greeting(key="abc-2"), sender)
    assert first["Message-ID"] == again["Message-ID"] == "<abc-1@greetings.example>"
    assert other["Message-ID"] != first["Message-ID"]


def test_a_550_for_one_address_fails_that_greeting_only(server, sender):
    server.refuse["gone@example.com"] = "550 5.1.1 <gone@example.com>: user unknown"
    with pytest.raises(PermanentSendError) as caught:
        sender.send_email(greeting(to="gone@example.com"))
    assert caught.value.status == 550 and "5.1.1" in str(caught.value)
    assert "user unknown" in str(caught.value)
    sender.send_email(greeting(to="bob@example.com"))
    assert [r.recipients for r in server.wait_for(1)] == [("bob@example.com",)]
    assert server.sessions == 1  # RSET kept the session


@pytest.mark.parametrize(
    "reply",
    [
        "451 4.7.0 Rate limited, slow down",
        "454 Throttling failure: Maximum sending rate exceeded.",
        "421 4.7.0 Try again later, closing connection.",
        "452 4.4.5 Insufficient system storage",
    ],
)
def test_a_throttling_answer_is_pacing_not_a_failure(server, sender, reply):
    server.script(reply)
    with pytest.raises(TransientSendError) as caught:
        sender.send_email(greeting())
    assert caught.value.throttled and caught.value.status == int(reply[:3])
    sender.send_email(greeting())  # the next greeting goes (reconnecting after a 421)
    assert len(server.wait_for(1)) == 1


def test_421_mid_session_is_transient_and_the_next_greeting_reconnects(server, sender):
    sender.send_email(greeting(key="k1"))
    server.script("421 4.3.2 Service shutting down")
    with pytest.raises(TransientSendError) as caught:
        sender.send_email(greeting(key="k2"))
    assert caught.value.status == 421 and not caught.value.throttled
    time.sleep(0.1)
    sender.send_email(greeting(key="k3"))
    assert [r.session for r in server.wait_for(2)] == [1, 2]


def test_a_drop_after_data_was_accepted_is_transient_and_the_retry_has_the_same_message_id(
    server, sender
):
    server.script(DROP_AFTER_ACCEPT)
    with pytest.raises(TransientSendError, match="connection error"):
        sender.send_email(greeting(key="same-key"))
    sender.send_email(greeting(key="same-key"))  # the retry
    ids = [r.message["Message-ID"] for r in server.wait_for(2)]
    assert ids == ["<same-key@greetings.example>"] * 2  # receivers de-duplicate on it


def test_a_connection_dropped_before_the_answer_is_transient(server, sender):
    server.script(DROP)
    with pytest.raises(TransientSendError, match="connection error"):
        sender.send_email(greeting())
    assert server.received == []
    sender.send_email(greeting())
    assert len(server.wait_for(1)) == 1


def test_a_session_the_server_closed_while_idle_is_reopened_without_a_retry_spent(server, sender):
    sender.send_email(greeting(key="k1"))
    sender._session.sock.shutdown(socket.SHUT_RDWR)  # as a server's idle timeout leaves it
    sender.send_email(greeting(key="k2"))
    assert len(server.wait_for(2)) == 2 and server.sessions == 2


def test_a_421_for_a_session_that_sat_idle_opens_a_new_one_without_a_retry_spent(server, sender):
    sender.send_email(greeting(key="k1"))
    server.close_idle_sessions()
    sender.send_email(greeting(key="k2"))
    assert [r.session for r in server.wait_for(2)] == [1, 2]


def test_a_fresh_session_that_fails_too_is_a_transient_error(server, sender):
    sender.send_email(greeting(key="k1"))
    server.close_idle_sessions()
    server.stop()  # the kept session is gone and no new one can be had
    with pytest.raises(TransientSendError, match="connection error"):
        sender.send_email(greeting(key="k2"))


def test_a_server_that_is_down_is_a_transient_connection_error():
    sender = SmtpSender(target("smtp://127.0.0.1:9?starttls=off"))
    with pytest.raises(TransientSendError, match="connection error") as caught:
        sender.send_email(greeting())
    assert caught.value.status is None and not caught.value.throttled


def test_starttls_is_required_unless_turned_off(server):
    url = server.url.removesuffix("?starttls=off")
    sender = SmtpSender(target(url))
    with pytest.raises(TransientSendError, match="offers no STARTTLS"):
        sender.send_email(greeting())
    assert server.received == []


def test_a_shared_pool_never_holds_more_sessions_than_its_size(server):
    from concurrent.futures import ThreadPoolExecutor

    pool = SmtpPool(target(server.url), size=3)
    with ThreadPoolExecutor(12) as callers:
        list(callers.map(lambda n: pool.send_email(greeting(key=f"k{n}")), range(30)))
    pool.close()
    assert len(server.wait_for(30)) == 30 and server.sessions <= 3


def test_the_probe_says_noop(server, sender):
    assert sender.probe().startswith("250")


@pytest.mark.parametrize(
    ("code", "text", "outcome"),
    [
        (250, "2.0.0 Ok: queued", None),
        (251, "User not local; will forward", None),
        (550, "5.1.1 unknown mailbox", "permanent"),
        (554, "Message rejected: Email address is not verified", "permanent"),
        (552, "5.3.4 Message size exceeds fixed limit", "permanent"),
        (450, "4.2.1 mailbox busy", "transient"),
        (451, "4.3.0 local error in processing", "transient"),
        (421, "4.3.2 Service not available", "transient"),
        (454, "Throttling failure: Maximum sending rate exceeded.", "throttled"),
        (454, "Throttling failure: Daily message quota exceeded.", "throttled"),
        (451, "4.7.0 Temporary server error. Please try again later", "throttled"),
        (421, "4.7.28 Our system has detected an unusual rate of unsolicited mail", "throttled"),
        (452, "4.4.5 Insufficient system storage", "throttled"),
        (450, "4.7.1 Too many messages, slow down", "throttled"),
        (550, "5.7.1 rate limit exceeded for the day", "permanent"),
        (530, "5.7.0 Must issue a STARTTLS command first", "transient"),
        (530, "5.7.0 Authentication required", "transient"),
        (535, "5.7.8 Authentication credentials invalid", "transient"),
        (538, "5.7.11 Encryption required for requested authentication mechanism", "transient"),
        (354, "odd", "transient"),
    ],
)
def test_every_reply_maps_to_the_contracted_outcome(code, text, outcome):
    error = classify_reply(code, text)
    if outcome is None:
        assert error is None
        return
    kind = (
        "throttled"
        if getattr(error, "throttled", False)
        else "permanent"
        if isinstance(error, PermanentSendError)
        else "transient"
    )
    assert kind == outcome and error.status == code


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"EMAIL_SERVICE_URL": "smtp://mail.example.com"}, "EMAIL_FROM is required"),
        (
            {"EMAIL_SERVICE_URL": "smtp://mail.example.com?tls=no", "EMAIL_FROM": FROM},
            "unknown SMTP URL option 'tls'",
        ),
        (
            {"EMAIL_SERVICE_URL": "smtp://mail.example.com?starttls=maybe", "EMAIL_FROM": FROM},
            "?starttls= takes on or off",
        ),
        (
            {"EMAIL_SERVICE_URL": "smtps://u:s3cret@mail.example.com/x", "EMAIL_FROM": FROM},
            "an SMTP URL has no path",
        ),
        (
            {"EMAIL_SERVICE_URL": "smtp://mail.example.com", "EMAIL_FROM": "a@b.com, c@d.com"},
            "invalid setting EMAIL_FROM='a@b.com, c@d.com': expected one address",
        ),
        (
            {"EMAIL_SERVICE_URL": "smtp://mail.example.com", "EMAIL_FROM": "hello@localhost"},
            "is not a full address",
        ),
    ],
)
def test_bad_mail_settings_are_one_line_that_never_shows_a_password(settings, expected):
    with pytest.raises(SettingsError) as caught:
        load_settings(**settings)
    assert expected in str(caught.value) and "s3cret" not in str(caught.value)


def test_the_url_forms_and_the_password_setting():
    plain = target("smtp://relay.internal?starttls=off")
    assert (plain.port, plain.starttls, plain.implicit_tls, plain.username) == (
        25,
        False,
        False,
        None,
    )
    submission = target("smtp://user%40corp:p%40ss@smtp.example.com")
    assert (submission.port, submission.starttls, submission.username) == (587, True, "user@corp")
    assert submission.password == "p@ss"
    implicit = target("smtps://user@smtp.example.com", EMAIL_SERVICE_PASSWORD="pw-set")
    assert (implicit.port, implicit.implicit_tls, implicit.password) == (465, True, "pw-set")
    settings = load_settings(
        EMAIL_SERVICE_URL="smtps://u@h.example.com",
        EMAIL_FROM=FROM,
        EMAIL_SERVICE_PASSWORD="hidden",
    )
    assert "hidden" not in repr(settings) and "hidden" not in str(settings.model_dump())
