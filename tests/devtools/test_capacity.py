"""The capacity model (`bday bench --model`) and its check at size (`--plan-users`)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bday.devtools import capacity
from tests.harness.cli import bday


def test_the_busiest_instant_is_the_most_populous_offset_on_the_busiest_day():
    offset, share = capacity.peak_offset_share()
    result = capacity.model(100_000_000)
    assert offset == "+08:00" and 0.15 < share < 0.25
    assert result.per_day == pytest.approx(100e6 * (4 / 3) / 365.25)
    assert result.peak == pytest.approx(result.per_day * 1.25 * share)
    # 60 s for the peak at the measured per-process rates
    assert result.processes == -(-result.peak // (60 * capacity.WORKER_RATE_0MS))
    assert result.processes_150ms >= result.processes


def test_at_100_million_users_the_recommended_deployment_keeps_every_limit_under_80_percent():
    result = capacity.model(100_000_000)
    assert result.workers >= result.processes_150ms
    assert max(result.loads.values()) <= capacity.HEADROOM
    # one process fewer would put a limit over the headroom: the recommendation is the fewest
    fewer = capacity.limits(result.users, result.peak, result.workers - 1)
    assert max(fewer.values()) > capacity.HEADROOM
    assert result.enqueue_fanned_s < result.enqueue_s and result.plan_fanned_s < result.plan_s


def test_at_a_billion_users_the_one_send_queue_is_named_as_the_limit_workers_cannot_lift():
    result = capacity.model(1_000_000_000)
    assert result.first_limit.startswith("RabbitMQ (one send queue)")
    assert result.loads["RabbitMQ (one send queue)"] > 1
    # the enqueue's publishers, added up to MAX_WORKERS, fall short too: the model says so
    assert result.workers == capacity.MAX_WORKERS
    assert capacity.overloaded(result) == ["enqueue", "RabbitMQ"]
    assert "no deployment of this shape is enough: enqueue, RabbitMQ" in capacity.report(
        [1_000_000_000]
    )


def test_the_countdowns_get_the_rabbitmq_cores_that_keep_them_under_the_headroom():
    result = capacity.model(100_000_000)
    busy = result.peak * capacity.RABBITMQ_DELAYED_CPU_MS / 1000 / capacity.ENQUEUE_WINDOW_S
    assert busy / result.rabbitmq_cores <= capacity.HEADROOM < busy / (result.rabbitmq_cores - 1)
    assert capacity.model(1_000_000).rabbitmq_cores == 1


def test_fanned_out_work_scales_from_the_speed_up_measured_at_two_processes():
    assert capacity.speedup(1, 1.37) == 1
    assert capacity.speedup(2, 1.37) == pytest.approx(1.37)
    assert capacity.speedup(5, 1.87) == pytest.approx(1 + 4 * 0.87)


def test_a_provider_limit_bounds_processes_and_sets_the_lateness():
    limited = capacity.model(100_000_000, provider_limit=100)
    assert limited.limited_processes == 1
    assert limited.limited_lateness_s == pytest.approx(limited.peak / 100)


def test_bench_model_prints_one_column_per_size(monkeypatch, capsys):
    code, out, _ = bday(monkeypatch, capsys, "bench", "--model")
    assert code == 0
    header = out.splitlines()[0].split()
    assert header[-3:] == ["1M", "10M", "100M"]
    assert "PostgreSQL connections: direct / PgBouncer" in out and "saturat" not in header


@pytest.mark.parametrize("value", ["0", "ten", "1e3x", "5x", "nan"])
def test_bench_model_refuses_a_bad_size_in_one_line(monkeypatch, capsys, value):
    code, out, err = bday(monkeypatch, capsys, "bench", "--model", value)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--model" in err


def test_planning_run_plans_and_measures_bytes_in_a_sandbox_and_restores_the_environment(
    database_url, monkeypatch
):
    before = dict(capacity.os.environ)
    # A fixed instant: the rows 3,000 seeded users owe depend on the dates in the window, and the
    # bytes per row of a few dozen rows are mostly empty index pages (17 rows on 2026-12-04 made
    # 6,264 bytes each, 31 rows on this date 3,435).
    run = capacity.planning_run(3000, now=datetime(2026, 6, 15, 12, tzinfo=UTC))
    assert run.users == 3000 and run.planned > 0
    assert 100 < run.bytes_per_user < 5000 and 100 < run.bytes_per_message < 5000
    assert {k: capacity.os.environ.get(k) for k in ("DATABASE_URL", "RABBITMQ_URL")} == {
        k: before.get(k) for k in ("DATABASE_URL", "RABBITMQ_URL")
    }
    assert "rows in" in capacity.planning_report(run)
