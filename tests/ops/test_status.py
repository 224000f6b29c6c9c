"""`bday status` says when a part it reports could not be read: it still prints the rest, ends
with one line on stderr naming what is missing, and exits 1 (a service is down), as `health`."""

from __future__ import annotations

import json
import re
import socket

import pytest

from bday.config import get_settings
from tests.harness.cli import bday
from tests.harness.queues import declare_topology

INCOMPLETE_BROKER = "bday: status incomplete: could not read RabbitMQ\n"
QUEUE_LINE = re.compile(r"queue:     \d+ ready, \d+ consumer\(s\); DLQ \d+")
INCOMPLETE_DATABASE = "bday: status incomplete: could not read PostgreSQL\n"


def point(settings_env, name: str, url: str) -> None:
    settings_env.setenv(name, url)
    get_settings.cache_clear()  # a fixture may have read the settings already


def closed_port() -> int:
    """A port that was free a moment ago: nobody listens there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def declared_queues(settings_env) -> None:
    declare_topology()


@pytest.mark.usefixtures("database")
def test_status_exits_1_when_rabbitmq_does_not_answer_and_still_shows_the_database(
    monkeypatch, capsys, settings_env
):
    point(settings_env, "RABBITMQ_URL", f"amqp://guest:guest@127.0.0.1:{closed_port()}//")
    code, out, err = bday(monkeypatch, capsys, "status")
    assert (code, err) == (1, INCOMPLETE_BROKER)
    assert out.startswith("messages:  none\n") and "\nbroker:    unreachable (" in out
    assert "\nbreaker:   closed\n" in out and "\npacing:    " in out
    code, out, err = bday(monkeypatch, capsys, "status", "--json")
    report = json.loads(out)
    assert (code, err) == (1, INCOMPLETE_BROKER)
    assert set(report["unreadable"]) == {"broker"} and report["messages"] == {}


@pytest.mark.broker
@pytest.mark.usefixtures("declared_queues")
def test_status_exits_1_when_postgresql_does_not_answer_and_still_shows_the_broker(
    monkeypatch, capsys, settings_env
):
    point(
        settings_env, "DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/x"
    )
    code, out, err = bday(monkeypatch, capsys, "status")
    assert (code, err) == (1, INCOMPLETE_DATABASE)
    assert out.splitlines()[0].startswith(
        "database:  unreachable (cannot connect to PostgreSQL at DATABASE_URL: "
    )
    assert len(out.splitlines()) == 2 and QUEUE_LINE.fullmatch(out.splitlines()[1])
    code, out, _ = bday(monkeypatch, capsys, "status", "--json")
    report = json.loads(out)
    assert code == 1 and set(report["unreadable"]) == {"database"}
    assert report["broker"]["queue_depth"] >= 0 and report["pacing"] is None


def test_status_names_both_parts_when_neither_answers(monkeypatch, capsys, settings_env):
    point(settings_env, "RABBITMQ_URL", f"amqp://guest:guest@127.0.0.1:{closed_port()}//")
    point(
        settings_env, "DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/x"
    )
    code, out, err = bday(monkeypatch, capsys, "status")
    assert (code, err) == (1, "bday: status incomplete: could not read PostgreSQL and RabbitMQ\n")
    assert [line.split("(")[0] for line in out.splitlines()] == [
        "database:  unreachable ",
        "broker:    unreachable ",
    ]


@pytest.mark.broker
@pytest.mark.usefixtures("database", "declared_queues")
def test_status_exits_0_when_every_part_was_read(monkeypatch, capsys):
    code, out, err = bday(monkeypatch, capsys, "status")
    assert (code, err) == (0, "")
    assert any(QUEUE_LINE.fullmatch(line) for line in out.splitlines())
    code, out, _ = bday(monkeypatch, capsys, "status", "--json")
    assert code == 0 and json.loads(out)["unreadable"] == {}
