"""What the worker does at start, apart from the queue: its metrics port (the next free one when
another worker process on the host holds it) and bday's log format on Celery's loggers. The
start-up plan and its one `plan:` line are tests/e2e/test_startup.py (real worker and beat)."""

from __future__ import annotations

import contextlib
import io
import logging
import socket

import httpx

from bday.telemetry import metrics
from bday.telemetry.logs import MaskEmails
from bday.worker import signals


def _listening(port: int) -> socket.socket:
    held = socket.socket()
    held.bind(("127.0.0.1", port))
    held.listen()
    return held


def _free_run(length: int) -> int:
    """A port that is free with the `length - 1` ports after it (best effort, as any test)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + length < 65535 and all(_free(base + k) for k in range(length)):
            return base
    raise RuntimeError("no run of free ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_second_worker_on_the_host_serves_its_metrics_on_the_next_free_port():
    base = _free_run(3)
    with contextlib.closing(_listening(base)):  # the first worker process holds the base port
        port = signals.serve_metrics(base, "127.0.0.1")
    assert port == base + 1
    assert metrics.messages_sent._name in httpx.get(f"http://127.0.0.1:{port}/metrics").text


def test_no_metrics_port_when_every_port_of_the_span_is_taken(monkeypatch):
    monkeypatch.setattr(signals, "METRICS_PORT_SPAN", 2)
    base = _free_run(2)
    with contextlib.closing(_listening(base)), contextlib.closing(_listening(base + 1)):
        assert signals.serve_metrics(base, "127.0.0.1") is None


def test_celerys_loggers_get_bdays_mask_once_and_its_json_format_when_asked(monkeypatch):
    monkeypatch.setenv("LOG_FORMAT", "json")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("test.signals.celery")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        signals._bday_log_format(logger=logger)
        signals._bday_log_format(logger=logger)  # Celery sends both logger signals
        logger.warning("sending to ada.lovelace@example.com")
    finally:
        logger.removeHandler(handler)
    assert sum(isinstance(f, MaskEmails) for f in handler.filters) == 1
    line = stream.getvalue().strip()
    assert line.startswith("{") and "a***@example.com" in line and "lovelace" not in line
