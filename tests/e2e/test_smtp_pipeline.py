"""The pipeline through SMTP: a real `celery -A bday worker` sends greetings through a real SMTP
server (aiosmtpd in this process), in the words of TEMPLATES_DIR and each user's language."""

from __future__ import annotations

import time

import pytest

from bday.devtools import factories
from bday.devtools.fake_smtp import FakeSmtp, _free_port
from bday.ops.status import read_database
from bday.scheduling import jobs
from bday.store.db import transaction
from tests.harness.queues import queue_counts, statuses
from tests.harness.rows import add_due_messages, next_instant, rows
from tests.harness.stack import wait_until

pytestmark = pytest.mark.e2e

TEMPLATES = {
    "birthday.subject.txt": "Happy birthday, $first_name!",
    "birthday.body.txt": "Dear $full_name,\nhappy ${age}th birthday!",
    "birthday.body.html": "<p>Dear <b>$full_name</b></p>",
    "anniversary.subject.txt": "Happy anniversary",
    "anniversary.body.txt": "$years years, $first_name!",
    "de/birthday.subject.txt": "Alles Gute, $first_name!",
    "de/birthday.body.txt": "Liebe(r) $full_name,\nalles Gute zum ${age}. Geburtstag!",
}


@pytest.fixture
def smtp():
    with FakeSmtp() as server:
        yield server


def _templates(directory):
    for name, text in TEMPLATES.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text + "\n", encoding="utf-8")
    return directory


def _due(at, people) -> dict[str, str]:
    """(first name, email, locale) people with one greeting each at `at`: email -> message id."""
    users, messages = [], []
    for first, email, locale in people:
        user = factories.user_row(first, "Muster", email=email, locale=locale)
        user["birthday"] = at.date().replace(year=1990)
        users.append(user)
        messages.append(factories.message_row(user["id"], at))
    with transaction() as session:
        factories.insert(session, users, messages)
    return {u["email"]: str(m["id"]) for u, m in zip(users, messages, strict=True)}


def test_a_worker_sends_through_smtp_in_each_users_language(stack, smtp, tmp_path):
    smtp.refuse["gone@example.com"] = "550 5.1.1 <gone@example.com>: no such user"
    at = next_instant(2)
    ids = _due(
        at,
        [
            ("Ada", "ada@example.com", None),
            ("Jörg", "joerg@example.at", "de-AT"),
            ("Gone", "gone@example.com", None),
            *((f"P{n}", f"p{n}@example.com", None) for n in range(5)),
        ],
    )
    env = {
        "EMAIL_SERVICE_URL": smtp.url,
        "EMAIL_FROM": "Greetings <hello@greetings.example>",
        "TEMPLATES_DIR": str(_templates(tmp_path / "templates")),
    }
    stack.start_worker(extra_env=env)
    jobs.enqueue_job()
    wait_until(lambda: statuses()["SENT"] == 7 and statuses()["FAILED"] == 1, 40, "all settled")
    wait_until(lambda: queue_counts()["dlq"] == 1, 10, "the refused greeting in the DLQ")
    by_to = {r.recipients[0]: r.message for r in smtp.wait_for(7)}
    assert len(smtp.received) == 7 and "gone@example.com" not in by_to
    joerg = by_to["joerg@example.at"]
    assert joerg["Subject"] == "Alles Gute, Jörg!"
    assert joerg["To"].addresses[0].display_name == "Jörg Muster"
    assert joerg.get_body(("plain",)).get_content() == (
        f"Liebe(r) Jörg Muster,\nalles Gute zum {at.year - 1990}. Geburtstag!\n"
    )
    assert joerg.get_body(("html",)) is None  # the German variant has no HTML part
    ada = by_to["ada@example.com"]
    assert ada.get_body(("html",)).get_content() == "<p>Dear <b>Ada Muster</b></p>\n"
    assert ada["Message-ID"] == f"<{ids['ada@example.com']}@greetings.example>"
    stored = {str(row.id): row for row in rows()}
    assert stored[ids["joerg@example.at"]].subject == "Alles Gute, Jörg!"
    assert stored[ids["joerg@example.at"]].body == joerg.get_body(("plain",)).get_content()[:-1]
    # With an HTML alternative too, the row keeps the subject and the text part that were sent.
    assert ada.get_content_type() == "multipart/alternative"
    assert stored[ids["ada@example.com"]].subject == ada["Subject"] == "Happy birthday, Ada!"
    assert stored[ids["ada@example.com"]].body == ada.get_body(("plain",)).get_content()[:-1]
    gone = stored[ids["gone@example.com"]]
    assert (gone.status, gone.failure_reason, gone.provider_status) == ("FAILED", "permanent", 550)
    assert smtp.sessions <= 8  # sessions are kept per sending thread, not opened per greeting


def test_a_worker_with_a_bad_template_refuses_to_start_with_one_line(stack, tmp_path):
    directory = _templates(tmp_path / "templates")
    (directory / "birthday.body.txt").write_text("Dear $fullname", encoding="utf-8")
    process = stack.start_worker(extra_env={"TEMPLATES_DIR": str(directory)}, wait=False)
    deadline = time.monotonic() + 30
    while process.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.popen.returncode == 2
    assert process.output().strip() == (
        f"bday: invalid setting TEMPLATES_DIR='{directory}': {directory}/birthday.body.txt: "
        "unknown placeholder $fullname (a birthday knows $first_name, $last_name, $full_name, $age)"
    )


def test_a_mail_server_down_then_back_costs_probes_and_loses_nothing(stack):
    port = _free_port("127.0.0.1")
    server = FakeSmtp(port=port)  # not listening yet: the server is down
    ids = add_due_messages(12, next_instant(2))
    env = {
        "EMAIL_SERVICE_URL": f"smtp://127.0.0.1:{port}?starttls=off",
        "EMAIL_FROM": "hello@greetings.example",
        "BREAKER_COOLDOWN": "1",
        "BREAKER_COOLDOWN_MAX": "2",
    }
    stack.start_worker(extra_env=env)
    jobs.enqueue_job()
    wait_until(lambda: read_database().breaker_state == "open", 30, "the breaker open")
    time.sleep(3)  # a few probes meet the closed port
    assert statuses()["SENT"] == 0 and statuses()["FAILED"] == 0
    with server:
        wait_until(lambda: statuses()["SENT"] == 12, 60, "all sent once the server is back")
        received = server.wait_for(12)
    assert statuses()["FAILED"] == 0 and len(received) == 12
    sent_ids = sorted(r.message["Message-ID"] for r in received)
    assert sent_ids == sorted(f"<{message_id}@greetings.example>" for message_id in ids)
