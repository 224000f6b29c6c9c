"""Bad input through every door (Python API, CLI, CSV import, settings), poison on the queue,
and the security rules: each refusal is one clear line, nothing is written, neighbours live."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bday.config import SettingsError, load_settings
from bday.devtools import sandbox
from bday.scheduling import jobs
from bday.users import api as users
from bday.users.api import UserInputError
from tests.harness.queues import queue_counts, statuses
from tests.harness.rows import add_due_messages
from tests.harness.stack import wait_until

ROOT = Path(__file__).resolve().parents[2]
GOOD = dict(
    first_name="Ada",
    last_name="Lovelace",
    email="ada@example.com",
    birthday="1990-03-05",
    timezone="Asia/Tokyo",
)

API_BAD = [
    ("timezone", "Mars/Olympus"),
    ("timezone", ""),
    ("timezone", " "),
    ("timezone", "EST+5"),
    ("timezone", "Europe/Londn"),
    ("timezone", "../../etc/passwd"),
    ("timezone", "UTC\x00"),
    ("birthday", "1990-02-30"),
    ("birthday", "1990-02-29"),
    ("birthday", "2023-13-01"),
    ("birthday", "2999-01-01"),
    ("birthday", "1990/03/05"),
    ("birthday", "05-03-1990"),
    ("birthday", "1899-12-31"),
    ("birthday", ""),
    ("birthday", "1990-03-05T09:00:00"),
    ("birthday", "'); DROP TABLE users;--"),
    ("anniversary", "2021-02-30"),
    ("anniversary", "soon"),
    ("first_name", ""),
    ("first_name", "   "),
    ("first_name", "x" * 10_000),
    ("first_name", "x" * 101),
    ("first_name", "Ada\x1b[31m"),
    ("first_name", "Ada\r\nBcc: x@y.z"),
    ("last_name", "\x00"),
    ("last_name", ""),
    ("email", "plainaddress"),
    ("email", "@no-local.com"),
    ("email", "no-at.com"),
    ("email", "two@@at.com"),
    ("email", "spaces in@x.com"),
    ("email", "a@b"),
    ("email", "a@-b.com"),
    ("email", "x" * 400 + "@example.com"),
    ("email", "robert'); DROP TABLE users;--@x.com"),
    ("email", ""),
]
CLI_BAD = [
    ("--timezone", "Mars/Olympus"),
    ("--birthday", "1990-02-30"),
    ("--birthday", "tomorrow"),
    ("--first-name", ""),
    ("--email", "nobody"),
    ("--last-name", "x" * 10_000),
]
IMPORT_BAD_ROWS = [
    "Bad,Zone,z1@example.com,1990-01-01,Mars/Olympus",
    "Bad,Date,z2@example.com,1990-02-30,UTC",
    "Future,Date,z3@example.com,2999-01-01,UTC",
    ",Empty,z4@example.com,1990-01-01,UTC",
    "Bad,Email,not-an-email,1990-01-01,UTC",
    "Short,Row,z6@example.com",
]
SETTINGS_BAD = [
    {"SEND_TIME": "25:00"},
    {"QUEUE_MAX_RETRIES": "abc"},
    {"FEB29_POLICY": "feb30"},
    {"RABBITMQ_URL": "rabbit://x"},
    {"CRON_MINUTE_SCHEDULE": "every minute"},
]


def test_more_than_fifty_bad_inputs_each_get_one_line_and_write_nothing(
    database, monkeypatch, capsys, tmp_path
):
    refused = 0
    for field, value in API_BAD:
        with pytest.raises(UserInputError) as caught:
            users.create_user(**{**GOOD, field: value})
        assert caught.value.field == field and "\n" not in str(caught.value)
        refused += 1
    from tests.harness.cli import ADD, bday
    from tests.harness.cli import replace_option as _replace

    for option, value in CLI_BAD:
        code, out, err = bday(monkeypatch, capsys, *_replace(ADD, option, value))
        assert code == 2 and err.count("\n") == 1 and out == ""
        refused += 1
    csv = tmp_path / "users.csv"
    csv.write_text(
        "first_name,last_name,email,birthday,timezone\n"
        + "\n".join(IMPORT_BAD_ROWS)
        + "\n"
        + "Good,Neighbour,good@example.com,1990-01-01,UTC\n"
    )
    code, out, _ = bday(monkeypatch, capsys, "users", "import", str(csv))
    assert code == 1 and out.count("  line ") == len(IMPORT_BAD_ROWS)
    refused += len(IMPORT_BAD_ROWS)
    for values in SETTINGS_BAD:
        with pytest.raises(SettingsError) as caught:
            load_settings(**values)
        assert "\n" not in str(caught.value) and next(iter(values)) in str(caught.value)
        refused += 1
    assert refused >= 50
    assert [u.email for u in users.list_users()] == ["good@example.com"]  # only the valid neighbour


def _publish_raw(body: bytes, headers: dict) -> None:
    from kombu import Connection, Exchange, Producer

    from bday.broker.topology import SEND_ROUTING_KEY, topology
    from bday.config import get_settings

    with Connection(get_settings().rabbitmq_url) as connection:
        Producer(connection.channel()).publish(
            body,
            exchange=Exchange(topology().exchange.name, type="topic"),
            routing_key=SEND_ROUTING_KEY,
            headers=headers,
            content_type="application/json",
            content_encoding="utf-8",
        )


@pytest.mark.e2e
def test_poison_interleaved_with_good_jobs_ends_in_the_dlq_and_never_blocks(stack, report):
    from bday.worker.tasks import send_message

    add_due_messages(300, datetime.now(UTC))
    stack.start_worker(concurrency=16)
    jobs.enqueue_job()
    poison = 0
    for _ in range(5):
        _publish_raw(
            b"\x00\xffnot json", {"task": "bday.tasks.send_message", "id": str(uuid.uuid4())}
        )
        _publish_raw(
            json.dumps([[], {}, {}]).encode(),
            {"task": "bday.tasks.unknown", "id": str(uuid.uuid4())},
        )
        _publish_raw(
            json.dumps([["y" * 2_000_000], {}, {}]).encode(),
            {"task": "bday.tasks.send_message", "id": str(uuid.uuid4())},
        )
        send_message.apply_async(args=[str(uuid.uuid4())])
        poison += 4
    wait_until(lambda: statuses()["SENT"] == 300, 60, "good jobs sent around the poison")
    wait_until(lambda: queue_counts()["dlq"] == poison, 30, "every poison job in the DLQ")
    report.update(good=300, poison=poison, dlq=queue_counts()["dlq"], queue=queue_counts()["queue"])
    assert queue_counts()["queue"] == 0


def test_the_repository_holds_no_secrets():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    patterns = [
        re.compile(p)
        for p in (
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
            r"AKIA[0-9A-Z]{16}",
            r"xox[bap]-[0-9A-Za-z-]{10,}",
            r"(?i)(password|secret|token)\s*[:=]\s*['\"][^'\"$<{]{8,}['\"]",
            r"amqps?://(?!guest:guest@|USER:PASSWORD@|[^:/\s]+:CHANGE-ME@)[^:/\s]+:[^@\s$]+@",
            r"postgres(?:ql)?(?:\+psycopg)?://(?!postgres@|USER:PASSWORD@|postgres:\$\{|[^:/\s]+:CHANGE-ME@)[^:/\s]+:[^@\s$]+@",
        )
    ]
    findings = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".png", ".ico"} or not path.is_file() or name.startswith("tests/chaos/"):
            continue
        text = path.read_text(errors="ignore")
        findings += [f"{name}: {p.pattern}" for p in patterns if p.search(text)]
    assert findings == []


def test_the_fake_email_service_listens_on_loopback_only_by_default(tmp_path):
    port = sandbox.free_port()
    process = sandbox.spawn(
        "fake", sandbox.bday_command("fake-email-service", "--port", str(port)), {}, tmp_path
    )
    try:
        sandbox.wait_ready(process, "fake email service on")
        listening = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True
        ).stdout
        local_addresses = [line.split()[3] for line in listening.splitlines()]
        assert local_addresses == [f"127.0.0.1:{port}"]
        outside = _first_non_loopback_address()
        if outside:
            with pytest.raises(OSError):
                socket.create_connection((outside, port), timeout=1)
    finally:
        process.stop()


def _first_non_loopback_address() -> str | None:
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return next((a for a in out if not a.startswith("127.") and ":" not in a), None)


@pytest.mark.e2e
def test_worker_logs_at_info_carry_message_ids_never_email_addresses(stack):
    [message_id] = add_due_messages(1, datetime.now(UTC))
    worker = stack.start_worker(extra_env={"LOG_CELERY_TASKS": "true"})
    jobs.enqueue_job()
    wait_until(lambda: statuses()["SENT"] == 1, 20, "sent")
    time.sleep(0.5)
    log = worker.output()
    assert str(message_id) in log
    assert "@example.com" not in log


def test_flower_refuses_to_listen_beyond_localhost_without_auth(tmp_path):
    env = {"FLOWER_BASIC_AUTH": ""}
    process = sandbox.spawn(
        "flower", sandbox.celery_command("flower", f"--port={sandbox.free_port()}"), env, tmp_path
    )
    assert process.popen.wait(60) == 2
    assert "FLOWER_BASIC_AUTH" in process.output()
    assert sys.executable  # the same interpreter that runs the suite
