"""Every Prometheus metric bday exports, defined here and only here.

Labels stay low-cardinality: message type (2 values), failure reason (3), outcome (a handful),
breaker state (3). Counters and histograms are recorded by the worker that did the work;
gauges about business state (rows by status, oldest overdue, last beat) are read from the
database and gauges about the broker (depth, consumers) from RabbitMQ, by `bday metrics`.

Under Celery's prefork pool set PROMETHEUS_MULTIPROC_DIR so child processes' counters are
summed (prometheus_client multiprocess mode); the default threads pool needs nothing.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LATENESS_BUCKETS_S = (
    0.25,
    0.5,
    1,
    2,
    5,
    10,
    30,
    60,
    300,
    1800,
    3600,
    6 * 3600,
    24 * 3600,
    48 * 3600,
)
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5, 10)

messages_sent = Counter("bday_messages_sent_total", "Greetings delivered", ["type"])
messages_failed = Counter(
    "bday_messages_failed_total", "Greetings that ended FAILED", ["type", "reason"]
)
messages_retried = Counter(
    "bday_messages_retried_total", "Transient failures that were retried", ["type"]
)
messages_deferred = Counter(
    "bday_messages_deferred_total",
    "Sends put off without spending a retry, by cause: breaker (open, or a probe in flight), "
    "probe (a failed probe), pace (the shared send rate), throttled (the provider said too fast)",
    ["cause"],
)
DEFERRAL_CAUSES = ("breaker", "probe", "pace", "throttled")
delivery_lateness = Histogram(
    "bday_delivery_lateness_seconds",
    "Sent time minus scheduled send time",
    ["type"],
    buckets=LATENESS_BUCKETS_S,
)
email_latency = Histogram(
    "bday_email_service_latency_seconds",
    "Duration of calls to the email service",
    buckets=LATENCY_BUCKETS_S,
)
email_errors = Counter(
    "bday_email_service_errors_total", "Failed calls to the email service", ["kind"]
)
breaker_transitions = Counter("bday_breaker_transitions_total", "Breaker state changes", ["to"])
BREAKER_STATES = ("closed", "open", "half_open")


def _initialise_series() -> None:
    """Create every label combination at 0, so rate() and increase() see a series from the
    start (an alert on a series that does not exist yet never fires)."""
    for kind in ("BIRTHDAY", "ANNIVERSARY"):
        messages_sent.labels(kind)
        messages_retried.labels(kind)
        delivery_lateness.labels(kind)
        for reason in ("permanent", "retries_exhausted", "expired"):
            messages_failed.labels(kind, reason)
    for kind in ("timeout", "connection", "429", "4xx", "5xx", "3xx", "other"):
        email_errors.labels(kind)
    for cause in DEFERRAL_CAUSES:
        messages_deferred.labels(cause)
    for state in ("open", "closed"):
        breaker_transitions.labels(state)


_initialise_series()


def record_sent(message_type: str, lateness_s: float) -> None:
    messages_sent.labels(message_type).inc()
    delivery_lateness.labels(message_type).observe(max(0.0, lateness_s))


def record_failed(message_type: str, reason: str) -> None:
    messages_failed.labels(message_type, reason).inc()


def record_retried(message_type: str) -> None:
    messages_retried.labels(message_type).inc()


def record_deferred(cause: str) -> None:
    messages_deferred.labels(cause).inc()


def record_email_call(duration_s: float, error_kind: str | None) -> None:
    email_latency.observe(duration_s)
    if error_kind is not None:
        email_errors.labels(error_kind).inc()


def record_breaker_transition(to: str) -> None:
    breaker_transitions.labels(to).inc()


# --- state read at scrape time (`bday metrics`) ----------------------------------------------

STATE_METRICS = {
    "bday_queue_depth": "Jobs ready in the send queue",
    "bday_dlq_depth": "Jobs in the dead-letter queue",
    "bday_queue_consumers": "Consumers (worker channels) on the send queue",
    "bday_messages": "Message rows by status",
    "bday_oldest_overdue_seconds": "Age of the oldest unfinished message past its send instant",
    "bday_heartbeat_timestamp_seconds": "Last run of beat and of each periodic job (Unix time)",
    "bday_breaker_open_seconds": "How long the email-service breaker has been open (0 when closed)",
    "bday_breaker_state": "Email-service breaker state (1 for the current state)",
    "bday_exporter_errors": "Sources (database, broker) the last scrape could not read",
    "bday_send_rate": "Effective send rate of the whole cluster, messages/s (0: unlimited)",
    "bday_forecast_peak_lateness_seconds": (
        "Forecast lateness of the last greeting of the worst planned instant at the current rate"
    ),
    "bday_lateness_budget_seconds": "LATENESS_BUDGET: the forecast lateness the alert allows",
    "bday_message_partition_months": (
        "Consecutive months, the current one first, whose messages have their own partition"
    ),
    "bday_messages_default_partition_rows": (
        "Message rows in the DEFAULT partition (their month had no partition): 0 when healthy"
    ),
}
