"""Operator commands against a real stack: replay, dlq, status, health, metrics, fallback."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from bday.broker.app import app
from bday.devtools import sandbox
from bday.devtools.factories import born_on
from bday.scheduling import jobs
from bday.store import db
from bday.users import hooks
from tests.harness.cli import bday
from tests.harness.queues import queue_counts, statuses
from tests.harness.rows import add_due_messages, add_user, rows
from tests.harness.stack import wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_replay_since_24h_requeues_failed_messages_that_then_get_sent(stack, monkeypatch, capsys):
    stack.fake.set(fixed_status=422)
    add_due_messages(3, datetime.now(UTC))
    stack.start_worker()
    jobs.enqueue_job()
    wait_until(lambda: statuses()["FAILED"] == 3, 20, "three permanent failures")
    code, out, _ = bday(monkeypatch, capsys, "replay", "--since", "24h", "--dry-run")
    assert code == 0 and out.startswith("would re-queue 3 message(s)")
    assert statuses()["FAILED"] == 3  # a dry run changes nothing
    stack.fake.set(fixed_status=0)
    code, out, _ = bday(monkeypatch, capsys, "replay", "--since", "24h", "--type", "birthday")
    assert code == 0 and out.startswith("re-queued 3 message(s)")
    wait_until(lambda: statuses()["SENT"] == 3, 20, "replayed messages sent")
    assert all(row.retry_count == 0 for row in rows())


def test_replay_refuses_messages_older_than_catch_up_unless_forced(stack, monkeypatch, capsys):
    [old] = add_due_messages(1, datetime.now(UTC) - timedelta(hours=60))
    with db.engine().begin() as connection:
        connection.execute(
            text("UPDATE messages SET status='FAILED', failure_reason='expired', failed_at=now()")
        )
    code, out, _ = bday(monkeypatch, capsys, "replay")
    assert "refused 1 older than CATCH_UP_HOURS" in out and statuses()["FAILED"] == 1
    stack.start_worker()
    _code, out, _ = bday(monkeypatch, capsys, "replay", "--force")
    assert out.startswith("re-queued 1 message(s)")
    wait_until(lambda: statuses()["SENT"] == 1, 20, "forced replay sent")
    assert stack.fake.sent_per_key() == {str(old): 1}


def test_dlq_list_shows_the_death_reason_and_the_row_and_purge_drops_settled_ones(
    stack, monkeypatch, capsys
):
    stack.fake.set(fixed_status=400)
    [message_id] = add_due_messages(1, datetime.now(UTC))
    stack.start_worker()
    jobs.enqueue_job()
    wait_until(lambda: queue_counts()["dlq"] == 1, 20, "one dead job")
    code, out, _ = bday(monkeypatch, capsys, "dlq", "list", "--json")
    [job] = json.loads(out)
    assert (job["message_id"], job["death"], job["status"], job["reason"]) == (
        str(message_id),
        "rejected",
        "FAILED",
        "permanent",
    )
    assert "400" in job["error"]
    assert queue_counts()["dlq"] == 1  # listing keeps the job
    stack.fake.set(fixed_status=0)
    _code, out, _ = bday(monkeypatch, capsys, "dlq", "replay")
    assert out.startswith("replayed 1;")
    wait_until(lambda: statuses()["SENT"] == 1, 20, "dead job replayed and sent")
    assert queue_counts()["dlq"] == 0


def test_dlq_purge_keeps_owed_and_malformed_jobs_unless_all(stack, monkeypatch, capsys):
    from bday.worker.tasks import send_message

    stack.start_worker()
    send_message.apply_async(args=["not-a-uuid"])
    wait_until(lambda: queue_counts()["dlq"] == 1, 20, "malformed job dead-lettered")
    code, out, _ = bday(monkeypatch, capsys, "dlq", "purge")
    assert out.startswith("purged 0; 1 left")
    _code, out, _ = bday(monkeypatch, capsys, "dlq", "purge", "--all")
    assert out.startswith("purged 1; 0 left") and queue_counts()["dlq"] == 0


def test_health_passes_with_a_running_stack_and_names_what_is_missing(stack, monkeypatch, capsys):
    code, out, _ = bday(monkeypatch, capsys, "health")
    assert code == 1
    assert "FAIL workers: no worker answered" in out and "FAIL beat: beat has never run" in out
    worker = stack.start_worker()
    stack.start_beat()
    wait_until(lambda: _heartbeat("beat"), 90, "beat's first tick")
    code, out, _ = bday(monkeypatch, capsys, "health")
    assert code == 0, out
    assert all(line.startswith("ok") for line in out.splitlines())
    worker.stop()
    code, out, _ = bday(monkeypatch, capsys, "health", "--check", "workers")
    assert code == 1 and out.startswith("FAIL workers")


def _heartbeat(name: str):
    with db.engine().connect() as connection:
        return connection.execute(
            text("SELECT beat_at FROM heartbeats WHERE name = :n"), {"n": name}
        ).scalar()


def test_health_reports_an_open_breaker_as_degraded_not_dead(database, monkeypatch, capsys):
    with db.engine().begin() as connection:
        connection.execute(
            text(
                "INSERT INTO circuit_breakers (name, state, opened_at, open_until) "
                "VALUES ('email-service', 'open', now() - interval '5 minutes', now() + interval '10 seconds')"
            )
        )
    code, out, _ = bday(monkeypatch, capsys, "health", "--check", "email-service")
    assert code == 0 and out.startswith("WARN email-service: breaker open for 3")


def test_status_json_counts_rows_queues_and_overdue(stack, monkeypatch, capsys):
    add_due_messages(4, datetime.now(UTC) - timedelta(minutes=10))
    code, out, _ = bday(monkeypatch, capsys, "status", "--json")
    report = json.loads(out)
    assert report["messages"] == {"PENDING": 4}
    assert report["oldest_overdue"]["seconds"] >= 600
    assert report["broker"]["queue_depth"] == 0 and report["broker"]["consumers"] == 0
    _code, out, _ = bday(monkeypatch, capsys, "status")
    assert "messages:  PENDING 4" in out and "overdue:   oldest" in out


def test_every_metric_in_the_alerts_and_dashboard_is_scraped_from_running_exporters(
    stack, tmp_path
):
    port, worker_port = sandbox.free_port(), sandbox.free_port()
    exporter = sandbox.spawn(
        "metrics",
        sandbox.bday_command("metrics", "--address", "127.0.0.1", "--port", str(port)),
        stack.env,
        tmp_path,
    )
    stack.processes.append(exporter)
    stack.start_worker(extra_env={"WORKER_METRICS_PORT": str(worker_port)})
    stack.fake.set(fail_first=1)  # one retry, one error, one latency sample, one sent
    add_due_messages(1, datetime.now(UTC))
    jobs.enqueue_job()
    wait_until(lambda: statuses()["SENT"] == 1, 20, "sent")
    sandbox.wait_ready(exporter, "bday metrics on")
    scraped = _scrape(port) + _scrape(worker_port)
    exported = set(re.findall(r"^([a-z_]+)(?:\{|\s)", scraped, re.M))
    wanted = _metric_names_in_monitoring()
    missing = {
        name
        for name in wanted
        if not name.startswith(("celery_", "rabbitmq_")) and name not in exported
    }
    assert missing == set()


def _scrape(port: int) -> str:
    for _ in range(50):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return response.read().decode()
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing serves metrics on {port}")


def _metric_names_in_monitoring() -> set[str]:
    expressions = [
        rule["expr"]
        for group in yaml.safe_load((ROOT / "monitoring/alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    ]
    dashboard = json.loads((ROOT / "monitoring/grafana/dashboards/bday.json").read_text())
    expressions += [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    return {
        name
        for expr in expressions
        for name in re.findall(r"\b(bday_[a-z_]+|celery_[a-z_]+)\b", expr)
    }


def test_with_the_fallback_on_a_hook_sends_directly_when_rabbitmq_is_unreachable(
    stack, monkeypatch, settings_env
):
    send_time = (datetime.now(UTC) - timedelta(hours=1)).strftime("%H:%M")
    settings_env.setenv("SEND_TIME", send_time)
    settings_env.setenv("DIRECT_SEND_FALLBACK", "true")
    user_id = add_user(
        "Fallback",
        zone="UTC",
        birthday=born_on((datetime.now(UTC) - timedelta(hours=1)).date()),
    )
    with monkeypatch.context() as broken:
        broken.setattr(app.conf, "broker_url", "amqp://guest:guest@127.0.0.1:1//")
        message_id = hooks.on_birthday_hook(user_id)
    [row] = rows()
    assert (row.id, row.status, row.sent_via) == (message_id, "SENT", "direct")
    assert stack.fake.sent_per_key() == {str(message_id): 1}
