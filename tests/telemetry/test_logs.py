"""Logging: addresses masked in every line at INFO and above; JSON lines on request."""

from __future__ import annotations

import io
import json
import logging
import string
from datetime import datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bday.telemetry import logs
from bday.telemetry.logs import JsonFormatter, MaskEmails, mask_emails

# Text around an address that cannot join it: no address characters, no '@'.
SURROUNDING = st.text(
    alphabet=st.characters(
        blacklist_characters=string.ascii_letters + string.digits + "._%+-@",
        blacklist_categories=("Cs",),
    ),
    max_size=30,
)
COMMON_LOCAL = st.text(
    alphabet=string.ascii_letters + string.digits + "_%+-", min_size=1, max_size=64
)


def masked_form(address: str) -> str:
    local, domain = address.rsplit("@", 1)
    return f"{local[0]}***@{domain}"


@given(
    local=COMMON_LOCAL,
    domain=st.emails().map(lambda a: a.rsplit("@", 1)[1]),
    before=SURROUNDING,
    after=SURROUNDING,
)
def test_an_ordinary_address_in_any_text_keeps_only_its_first_letter_and_domain(
    local, domain, before, after
):
    address = f"{local}@{domain}"
    masked = mask_emails(f"{before} {address} {after}")
    assert masked == f"{before} {masked_form(address)} {after}"
    assert address not in masked


@given(address=st.emails(), before=SURROUNDING, after=SURROUNDING)
@example(address="o'brien@example.com", before="sent to", after="")
@example(address="0!@a.com", before="", after="")
def test_any_valid_address_keeps_only_its_first_character_and_domain(address, before, after):
    masked = mask_emails(f"{before} {address} {after}")
    assert masked == f"{before} {masked_form(address)} {after}"


def test_every_address_in_a_line_is_masked():
    line = "copy ada.lovelace@example.com and Grace.Hopper@Navy.MIL, not @handles or a@b"
    assert mask_emails(line) == "copy a***@example.com and G***@Navy.MIL, not @handles or a@b"


def record(level: int, msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord("bday.test", level, __file__, 1, msg, args, None)


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL])
def test_the_filter_masks_addresses_at_info_and_above_including_in_arguments(level):
    entry = record(level, "greeting for %s failed: %s", "ada.lovelace@example.com", "HTTP 500")
    assert MaskEmails().filter(entry) is True
    assert entry.getMessage() == "greeting for a***@example.com failed: HTTP 500"


def test_the_filter_leaves_debug_records_alone():
    entry = record(logging.DEBUG, "payload for %s", "ada.lovelace@example.com")
    assert MaskEmails().filter(entry) is True
    assert entry.getMessage() == "payload for ada.lovelace@example.com"


def test_the_filter_keeps_a_record_without_an_address_as_it_was():
    entry = record(logging.INFO, "sent %d of %d", 3, 4)
    MaskEmails().filter(entry)
    assert (entry.msg, entry.args) == ("sent %d of %d", (3, 4))


def test_the_json_formatter_writes_one_object_per_line_with_time_level_logger_message():
    entry = record(logging.WARNING, "first line\nsecond line for %s", "user 42")
    line = JsonFormatter().format(entry)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "WARNING"
    assert parsed["logger"] == "bday.test"
    assert parsed["message"] == "first line\nsecond line for user 42"
    moment = datetime.fromisoformat(parsed["time"])
    assert moment.utcoffset() is not None
    assert abs(moment.timestamp() - entry.created) < 0.001


def test_the_json_formatter_keeps_a_traceback_inside_the_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        entry = logging.LogRecord(
            "bday.test", logging.ERROR, __file__, 1, "failed", (), exc_info=True
        )
        import sys

        entry.exc_info = sys.exc_info()
    line = JsonFormatter().format(entry)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


@pytest.fixture
def capture(monkeypatch):
    """A logger of its own writing to a string, and the httpx level restored afterwards."""
    httpx_level = logging.getLogger("httpx").level
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("bday.test.capture")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, handler, stream
    logger.removeHandler(handler)
    logging.getLogger("httpx").setLevel(httpx_level)


def test_log_format_json_makes_configure_install_the_json_formatter(capture, monkeypatch):
    logger, handler, stream = capture
    monkeypatch.setenv("LOG_FORMAT", "json")
    logs.configure([handler])
    assert isinstance(handler.formatter, JsonFormatter)
    logger.info("sent to %s", "ada.lovelace@example.com")
    logger.warning("second")
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["sent to a***@example.com", "second"]


def test_without_log_format_configure_keeps_the_text_format_and_still_masks(capture, monkeypatch):
    logger, handler, stream = capture
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    logs.configure([handler])
    logs.configure([handler])
    assert not isinstance(handler.formatter, JsonFormatter)
    assert sum(isinstance(f, MaskEmails) for f in handler.filters) == 1
    logger.info("sent to %s", "ada.lovelace@example.com")
    assert stream.getvalue() == "INFO sent to a***@example.com\n"


def test_configure_quietens_httpx_request_lines(capture):
    logs.configure([capture[1]])
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_an_address_in_a_logged_exception_is_masked_too(capture, monkeypatch, log_format):
    logger, handler, stream = capture
    monkeypatch.setenv("LOG_FORMAT", log_format)
    logs.configure([handler])
    try:
        raise ValueError("mailbox ada.lovelace@example.com refused")
    except ValueError:
        logger.exception("send failed")
    assert "ada.lovelace@example.com" not in stream.getvalue()
    assert "a***@example.com" in stream.getvalue()
