"""`bday fake-smtp-service --record FILE` writes one JSON line per message it is given (what the
demo's table reads), with its random 451s; `--quiet` prints no line per message (the bench)."""

from __future__ import annotations

import json
import smtplib
from email.message import EmailMessage

import pytest

from bday.devtools import sandbox


def _message(key: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"] = "demo@example.com", "ada@example.com"
    message["Subject"], message["Message-ID"] = "Happy birthday, Ada!", f"<{key}@example.com>"
    message.set_content("Hey, Ada Lovelace it's your birthday")
    return message


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("failure_rate", "outcome", "code"), [(0, "sent", 250), (1, "failed", 451)]
)
def test_each_message_is_recorded_as_one_json_line(tmp_path, failure_rate, outcome, code):
    port, record = sandbox.free_port(), tmp_path / "calls.jsonl"
    args = ["--port", str(port), "--record", str(record), "--quiet"]
    args += ["--failure-rate", str(failure_rate)]
    process = sandbox.spawn("fake", sandbox.bday_command("fake-smtp-service", *args), {}, tmp_path)
    try:
        sandbox.wait_ready(process, "fake SMTP service on")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            try:
                client.send_message(_message("key-1"))
                answered = 250
            except smtplib.SMTPDataError as exc:
                answered = exc.smtp_code
        assert answered == code
        sandbox.wait_for(record.exists, 10, "the record")
    finally:
        process.stop()
    [line] = record.read_text().splitlines()
    assert {k: v for k, v in json.loads(line).items() if k != "at"} == {
        "key": "key-1",
        "outcome": outcome,
    }
    assert "Happy birthday" not in process.output()  # --quiet


def test_a_message_is_printed_in_one_line_with_its_words_and_the_addresses_masked():
    from bday.devtools.fake_smtp import Received, describe

    data = bytes(_message("key-2"))
    line = describe(Received("hello@example.com", ("ada.lovelace@example.com",), data, 1))
    assert "a***@example.com" in line and "h***@example.com" in line
    assert "ada.lovelace@" not in line and "hello@" not in line
    assert len(line.splitlines()) == 1 and "Happy birthday, Ada!" in line
