"""The chaos suite through SMTP: real workers send through a real SMTP server (aiosmtpd, in this
process: bday/devtools/fake_smtp.py) that is broken on purpose. Each scenario counts what the
server kept by Message-ID (derived from the message's id, the same on every attempt), so
"every greeting exactly once" is read where a receiving system would de-duplicate.

The five of issue 22: the server down for minutes, a 421 in the middle of a session, 451
throttling, a 550 for some addresses, and the connection dropped after DATA was accepted.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from sqlalchemy import text

from bday.devtools.fake_smtp import ACCEPT, DROP_AFTER_ACCEPT, FakeSmtp
from bday.scheduling import jobs
from bday.store.db import engine
from tests.harness.chaos import (
    BREAKER,
    FAST,
    row_figures,
    sends_summary,
    throttle_summary,
)
from tests.harness.queues import queue_counts, statuses
from tests.harness.rows import add_due_messages, next_instant, rows
from tests.harness.stack import wait_until

pytestmark = pytest.mark.e2e

DOMAIN = "greetings.example"
THREADS = 16
# The short outage's breaker probes every 2-4 s (the full one's every 5-15 s, as test_outages').
QUICK_BREAKER = {**BREAKER, "BREAKER_COOLDOWN": "2", "BREAKER_COOLDOWN_MAX": "4"}


@pytest.fixture
def smtp():
    with FakeSmtp() as server:
        yield server


def _env(smtp: FakeSmtp, **extra: str) -> dict:
    return {"EMAIL_SERVICE_URL": smtp.url, "EMAIL_FROM": f"Greetings <hello@{DOMAIN}>", **extra}


def _deliver(stack, smtp, count: int, *, env=None, timeout_s: float = 120) -> list[str]:
    """`count` greetings due in a moment, one worker sending them through `smtp` until every
    row is SENT or FAILED: the rows' ids."""
    ids = [str(i) for i in add_due_messages(count, next_instant(2))]
    stack.start_worker(concurrency=THREADS, extra_env={**_env(smtp), **FAST, **(env or {})})
    jobs.enqueue_job()
    wait_until(lambda: _settled() == count, timeout_s, "every greeting SENT or FAILED")
    return ids


def _settled() -> int:
    state = statuses()
    return state["SENT"] + state["FAILED"]


def _per_key(smtp: FakeSmtp) -> Counter:
    """Messages the server kept, per message id (read from the Message-ID header)."""
    return Counter(r.message["Message-ID"][1:].split("@")[0] for r in smtp.received)


def _every_one_once(smtp: FakeSmtp, ids: list[str], report: dict) -> Counter:
    per_key = _per_key(smtp)
    report.update(sends_summary(per_key, len(ids)), sessions=smtp.sessions, **row_figures())
    assert set(per_key) == set(ids), "a greeting lost, or one the test did not add"
    return per_key


def _spaced(answer: str, times: int, count: int) -> list[str]:
    """`answer` `times` times among `count` DATAs, evenly spaced (after some accepted)."""
    gap = count // (times + 1)
    return ([ACCEPT] * gap + [answer]) * times


@pytest.mark.timeout(900)  # --long: a three-minute outage
def test_a_mail_server_down_for_minutes_costs_probes_and_loses_nothing(stack, smtp, scale, report):
    count, outage_s = scale.pick((200, 10), (2000, 180))
    breaker = scale.pick(QUICK_BREAKER, BREAKER)
    smtp.down = True
    ids = [str(i) for i in add_due_messages(count, next_instant(2))]
    env = {**_env(smtp), **FAST, **breaker, "CRON_RECOVERY_SCHEDULE": "* * * * *"}
    stack.start_worker(concurrency=THREADS, extra_env=env)
    # The breaker's close re-publishes one ENQUEUE_BATCH (1,000) of the deferred rows at once;
    # beat's recovery run re-publishes the rest (every 5 min by default, each minute here).
    stack.start_beat(extra_env=env)
    jobs.enqueue_job()
    time.sleep(outage_s)
    smtp.down = False
    back = time.time()
    wait_until(lambda: statuses()["SENT"] == count, 300, "every greeting sent once it is back")
    per_key = _every_one_once(smtp, ids, report)
    report.update(
        outage_s=outage_s,
        connections_during_outage=len(smtp.turned_away),
        drain_after_return_s=round(max(a.arrived for a in smtp.attempts) - back, 1),
    )
    assert set(per_key.values()) == {1}
    assert statuses()["FAILED"] == 0
    # The threads' first failures trip the breaker; then one probe per cooldown, not a flood.
    cooldown_s = float(breaker["BREAKER_COOLDOWN"])
    assert report["connections_during_outage"] <= THREADS + outage_s / cooldown_s
    assert report["retries_spent"] <= 10, "an open breaker defers greetings, spends no retry"


def test_a_421_in_the_middle_of_a_session_costs_that_greeting_one_retry(stack, smtp, scale, report):
    count, closings = scale.pick(200, 2000), 4  # fewer than the breaker's 5 failures in 30 s
    smtp.script(*_spaced("421 4.3.2 service shutting down", closings, count))
    ids = _deliver(stack, smtp, count)
    per_key = _every_one_once(smtp, ids, report)
    assert set(per_key.values()) == {1}
    assert statuses() == {"SENT": count}
    assert report["retries_spent"] == closings
    assert smtp.sessions >= closings + 1, "a closed session is followed by a new one"


def test_451_throttling_spends_no_retry_and_lowers_the_rate(stack, smtp, scale, report):
    count, limit, settling_s = scale.pick((400, 40, 4), (2000, 50, 15))
    smtp.rate_limit = limit
    ids = _deliver(stack, smtp, count, timeout_s=300)
    per_key = _every_one_once(smtp, ids, report)
    first = smtp.attempts[0].arrived
    report.update(throttle_summary(smtp.attempts, settled_from=first + settling_s))
    assert set(per_key.values()) == {1}
    assert statuses() == {"SENT": count}
    assert report["throttled"] > 0, "the server's limit was never met"
    assert report["retries_spent"] == 0 and report["deferrals"] > 0
    assert report["calls_settled"], "the peak should last past the rate's first seconds"
    assert report["throttled_settled"] < scale.pick(0.10, 0.05) * report["calls_settled"]


def test_a_550_for_some_addresses_fails_and_dead_letters_only_those(stack, smtp, scale, report):
    count, refused = scale.pick((200, 5), (2000, 20))
    ids = [str(i) for i in add_due_messages(count, next_instant(3))]
    gone = set(ids[:: count // refused][:refused])
    for address in _addresses(gone):
        smtp.refuse[address] = f"550 5.1.1 <{address}>: no such user"
    stack.start_worker(concurrency=THREADS, extra_env={**_env(smtp), **FAST})
    jobs.enqueue_job()
    wait_until(lambda: _settled() == count, 120, "every greeting SENT or FAILED")
    wait_until(lambda: queue_counts()["dlq"] == refused, 20, "the refused greetings in the DLQ")
    per_key = _per_key(smtp)
    report.update(sends_summary(per_key, count - refused), **row_figures())
    assert set(per_key) == set(ids) - gone and set(per_key.values()) == {1}
    failed = {str(r.id): r for r in rows() if r.status == "FAILED"}
    assert set(failed) == gone
    assert {(r.failure_reason, r.provider_status) for r in failed.values()} == {("permanent", 550)}
    assert all("no such user" in (r.last_error or "") for r in failed.values())
    assert report["retries_spent"] == 0, "a permanent refusal is not retried"


def test_a_connection_dropped_after_data_was_accepted_sends_at_most_twice_same_id(
    stack, smtp, scale, report
):
    count, drops = scale.pick(200, 2000), 4
    smtp.script(*_spaced(DROP_AFTER_ACCEPT, drops, count))
    ids = _deliver(stack, smtp, count)
    per_key = _every_one_once(smtp, ids, report)
    retried = {str(r.id) for r in rows() if r.retry_count}
    twice = {key for key, sent in per_key.items() if sent == 2}
    assert max(per_key.values()) <= 2, "more than one second send"
    assert twice == retried and len(twice) == drops
    assert statuses() == {"SENT": count}
    for copies in _copies(smtp, twice).values():
        first, second = (c.message for c in copies)
        assert first["Message-ID"] == second["Message-ID"]
        assert first.get_body(("plain",)).get_content() == second.get_body(("plain",)).get_content()


def _addresses(message_ids: set[str]) -> list[str]:
    with engine().connect() as connection:
        return list(
            connection.execute(
                text(
                    "SELECT u.email FROM messages m JOIN users u ON u.id = m.user_id"
                    " WHERE m.id = ANY(CAST(:ids AS uuid[]))"
                ),
                {"ids": sorted(message_ids)},
            ).scalars()
        )


def _copies(smtp: FakeSmtp, keys: set[str]) -> dict[str, list]:
    found: dict[str, list] = {key: [] for key in keys}
    for received in smtp.received:
        key = received.message["Message-ID"][1:].split("@")[0]
        if key in found:
            found[key].append(received)
    return found
