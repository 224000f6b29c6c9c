"""`bday metrics`: business and queue state for Prometheus, read at scrape time.

The metric names and help texts are defined in `bday.telemetry.metrics` (STATE_METRICS) with
every other metric; this module only reads their values.
"""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily

from bday.ops import status
from bday.ops.forecast import read_forecast
from bday.telemetry.metrics import BREAKER_STATES, STATE_METRICS


class StateCollector:
    """Reads business state from PostgreSQL and queue state from RabbitMQ on every scrape."""

    def collect(self):
        families = {
            name: GaugeMetricFamily(name, doc, labels=labels)
            for name, doc, labels in _state_families()
        }
        errors = []
        try:
            snapshot = status.read_database()
            for state, count in snapshot.by_status.items():
                families["bday_messages"].add_metric([state], count)
            families["bday_oldest_overdue_seconds"].add_metric([], snapshot.oldest_overdue_s or 0)
            families["bday_message_partition_months"].add_metric([], snapshot.months_partitioned)
            families["bday_messages_default_partition_rows"].add_metric([], snapshot.default_rows)
            for job, at in snapshot.heartbeats.items():
                families["bday_heartbeat_timestamp_seconds"].add_metric([job], at.timestamp())
            families["bday_breaker_open_seconds"].add_metric([], snapshot.breaker_open_s)
            for state in BREAKER_STATES:
                families["bday_breaker_state"].add_metric(
                    [state], 1 if state == snapshot.breaker_state else 0
                )
        except Exception as exc:  # noqa: BLE001 - a scrape must answer even when a source is down
            errors.append(f"database: {exc}")
        try:  # apart: no forecast input may cost the scrape the other database series
            _forecast_metrics(families)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"forecast: {exc}")
        try:
            queues = status.read_broker()
            families["bday_queue_depth"].add_metric([], queues.queue_depth)
            families["bday_dlq_depth"].add_metric([], queues.dlq_depth)
            families["bday_queue_consumers"].add_metric([], queues.consumers)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"broker: {exc}")
        families["bday_exporter_errors"].add_metric([], len(errors))
        yield from families.values()


def _forecast_metrics(families: dict) -> None:
    ahead = read_forecast()
    families["bday_send_rate"].add_metric([], ahead.rate or 0)
    families["bday_forecast_peak_lateness_seconds"].add_metric([], ahead.worst_late_s)
    families["bday_lateness_budget_seconds"].add_metric([], ahead.budget_s)


def _state_families():
    labels = {
        "bday_messages": ["status"],
        "bday_heartbeat_timestamp_seconds": ["name"],
        "bday_breaker_state": ["state"],
    }
    for name, doc in STATE_METRICS.items():
        yield name, doc, labels.get(name, [])
