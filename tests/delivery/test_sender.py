"""The email-service client: one POST per send, every outcome classified in one place.

respx is the only mock point: it stands in for the email service at the HTTP level, so the
real httpx client, headers, JSON encoding and timeout handling all run.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from bday.delivery.provider import PermanentSendError, Receipt, TransientSendError
from bday.delivery.sender import EmailSender, classify, retry_after_seconds

BASE = "http://email.test"
URL = f"{BASE}/send-email"
GREETING = "Hey, Ada Lovelace it's your birthday"


@pytest.fixture
def sender():
    client = EmailSender(BASE, timeout_s=2.0)
    yield client
    client.close()


@pytest.fixture
def service():
    """The email service as respx sees it; any request to another URL fails the test."""
    with respx.mock(assert_all_called=False) as mock:
        yield mock


def send(sender: EmailSender, key: str = "msg-1") -> Receipt:
    return sender.send(email="ada@example.com", message=GREETING, idempotency_key=key)


def sample(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def errors_of(kind: str) -> float:
    return sample("bday_email_service_errors_total", {"kind": kind})


def calls_timed() -> float:
    return sample("bday_email_service_latency_seconds_count")


# --- success and the request we make -------------------------------------------------------------


def test_a_200_returns_a_receipt_with_the_status_and_body(sender, service):
    service.post(URL).respond(200, text='{"status":"sent"}')
    receipt = send(sender)
    assert isinstance(receipt, Receipt)
    assert receipt.status == 200
    assert receipt.body == '{"status":"sent"}'
    assert receipt.elapsed_s >= 0


def test_the_request_is_a_post_to_send_email_with_json_and_the_idempotency_key(sender, service):
    route = service.post(URL).respond(200)
    sender.send(email="ada@example.com", message=GREETING, idempotency_key="3f6c-key")
    request = route.calls.last.request
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.headers["Idempotency-Key"] == "3f6c-key"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"email": "ada@example.com", "message": GREETING}


def test_a_trailing_slash_on_the_base_url_does_not_double_the_slash(service):
    route = service.post(URL).respond(200)
    client = EmailSender(BASE + "/", timeout_s=2.0)
    try:
        send(client)
    finally:
        client.close()
    assert route.call_count == 1


def test_a_long_response_body_is_kept_only_in_part(sender, service):
    service.post(URL).respond(200, text="x" * 10_000)
    assert len(send(sender).body) == 500


# --- classification -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_is_transient_and_carries_the_status(sender, service, status):
    service.post(URL).respond(status, text="upstream trouble")
    with pytest.raises(TransientSendError) as caught:
        send(sender)
    assert caught.value.status == status
    assert str(status) in str(caught.value)


def test_a_429_is_transient_and_carries_retry_after_in_seconds(sender, service):
    service.post(URL).respond(429, headers={"Retry-After": "7"})
    with pytest.raises(TransientSendError) as caught:
        send(sender)
    assert caught.value.status == 429
    assert caught.value.retry_after_s == 7.0


def test_a_429_with_an_http_date_retry_after_carries_the_seconds_until_then(sender, service):
    later = datetime.now(UTC) + timedelta(seconds=30)
    service.post(URL).respond(429, headers={"Retry-After": format_datetime(later, usegmt=True)})
    with pytest.raises(TransientSendError) as caught:
        send(sender)
    # The HTTP date has whole seconds, so up to one second is lost to truncation.
    assert 28 <= caught.value.retry_after_s <= 30


def test_a_429_without_retry_after_is_transient_with_no_hint(sender, service):
    service.post(URL).respond(429)
    with pytest.raises(TransientSendError) as caught:
        send(sender)
    assert caught.value.retry_after_s is None


def test_a_503_carries_retry_after_too(sender, service):
    service.post(URL).respond(503, headers={"Retry-After": "120"})
    with pytest.raises(TransientSendError) as caught:
        send(sender)
    assert caught.value.retry_after_s == 120.0


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
def test_a_4xx_other_than_429_is_permanent_and_carries_the_status(sender, service, status):
    service.post(URL).respond(status, text="no such mailbox")
    with pytest.raises(PermanentSendError) as caught:
        send(sender)
    assert caught.value.status == status
    assert "no such mailbox" in str(caught.value)


@pytest.mark.parametrize("status", [301, 302, 307])
def test_an_unexpected_redirect_is_permanent_and_not_followed(sender, service, status):
    route = service.post(URL).respond(status, headers={"Location": f"{BASE}/elsewhere"})
    elsewhere = service.post(f"{BASE}/elsewhere").respond(200)
    with pytest.raises(PermanentSendError) as caught:
        send(sender)
    assert caught.value.status == status
    assert route.call_count == 1 and elsewhere.call_count == 0


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.WriteTimeout, httpx.PoolTimeout]
)
def test_a_timeout_is_transient(sender, service, error):
    service.post(URL).mock(side_effect=error("took too long"))
    with pytest.raises(TransientSendError) as caught:
        send(sender)
    assert caught.value.status is None
    assert "timeout" in str(caught.value)


@pytest.mark.parametrize("error", [httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError])
def test_a_connection_error_is_transient(sender, service, error):
    service.post(URL).mock(side_effect=error("connection refused"))
    with pytest.raises(TransientSendError) as caught:
        send(sender)
    assert caught.value.status is None
    assert "connection error" in str(caught.value)


@given(st.integers(min_value=100, max_value=599))
def test_every_status_maps_to_exactly_the_contracted_outcome(status):
    response = httpx.Response(status, text="answer")
    if 200 <= status < 300:
        assert classify(response).status == status
    elif status == 429 or status >= 500:
        with pytest.raises(TransientSendError):
            classify(response)
    else:
        with pytest.raises(PermanentSendError):
            classify(response)


# --- one layer of retry ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 429])
def test_the_client_never_retries_by_itself_on_a_transient_status(sender, service, status):
    route = service.post(URL).respond(status)
    with pytest.raises(TransientSendError):
        send(sender)
    assert route.call_count == 1


def test_the_client_never_retries_by_itself_on_a_connection_error(sender, service):
    route = service.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TransientSendError):
        send(sender)
    assert route.call_count == 1


# --- Retry-After parsing ------------------------------------------------------------------------


NOW = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "garbage",
    [None, "", "   ", "soon", "-5", "1.5", "7s", "Tomorrow 9am", "Wed, 99 Foo 2026 25:61:00 GMT"],
)
def test_retry_after_that_is_absent_or_garbage_is_none(garbage):
    assert retry_after_seconds(garbage, now=NOW) is None


@given(st.integers(min_value=0, max_value=10**9))
def test_retry_after_delta_seconds_are_taken_as_they_are(seconds):
    assert retry_after_seconds(str(seconds), now=NOW) == seconds
    assert retry_after_seconds(f" {seconds} ", now=NOW) == seconds


@given(st.integers(min_value=0, max_value=10**7))
def test_retry_after_as_an_http_date_is_the_seconds_until_that_date(seconds):
    header = format_datetime(NOW + timedelta(seconds=seconds), usegmt=True)
    assert retry_after_seconds(header, now=NOW) == seconds


@pytest.mark.parametrize("ago", [timedelta(seconds=1), timedelta(hours=1), timedelta(days=400)])
def test_retry_after_as_a_date_in_the_past_is_zero(ago):
    assert retry_after_seconds(format_datetime(NOW - ago, usegmt=True), now=NOW) == 0


# --- metrics --------------------------------------------------------------------------------------


def test_a_successful_send_is_timed_and_not_counted_as_an_error(sender, service):
    service.post(URL).respond(200)
    kinds = ("5xx", "4xx", "429", "timeout", "connection", "3xx")
    before = calls_timed(), {kind: errors_of(kind) for kind in kinds}
    send(sender)
    assert calls_timed() == before[0] + 1
    assert {kind: errors_of(kind) for kind in kinds} == before[1]


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ({"return_value": httpx.Response(503)}, "5xx"),
        ({"return_value": httpx.Response(500)}, "5xx"),
        ({"return_value": httpx.Response(429)}, "429"),
        ({"return_value": httpx.Response(404)}, "4xx"),
        ({"return_value": httpx.Response(302)}, "3xx"),
        ({"side_effect": httpx.ReadTimeout("slow")}, "timeout"),
        ({"side_effect": httpx.ConnectError("refused")}, "connection"),
    ],
)
def test_a_failed_send_is_timed_and_counted_under_its_error_kind(sender, service, answer, kind):
    service.post(URL).mock(**answer)
    timed, counted = calls_timed(), errors_of(kind)
    with pytest.raises((TransientSendError, PermanentSendError)):
        send(sender)
    assert calls_timed() == timed + 1
    assert errors_of(kind) == counted + 1


def test_a_send_pool_yields_answers_as_they_arrive_grouping_those_that_land_together(
    monkeypatch,
):
    from bday.delivery import sender as module

    delays = {"a": 0.0, "b": 0.0, "c": 0.0, "slow": 0.6}
    # A window wide enough that a busy machine's thread wake-ups still land inside it (at 2 ms a
    # loaded CI split the three quick answers in two groups).
    monkeypatch.setattr(module, "GATHER_S", 0.1)
    monkeypatch.setattr(
        module,
        "_send_here",
        lambda email: time.sleep(delays[email.email]) or Receipt(200, email.email, 0.0),
    )
    pool = module.SendPool(4)
    try:
        emails = [module.Email(name, "hi", name) for name in ("slow", "a", "b", "c")]
        started = time.monotonic()
        groups = []
        for group in pool.send_many(emails):
            groups.append(([position for position, _ in group], time.monotonic() - started))
    finally:
        pool.close()
    positions = [p for group, _ in groups for p in group]
    assert sorted(positions) == [0, 1, 2, 3]  # every answer once
    fast, at = groups[0]
    assert sorted(fast) == [1, 2, 3] and at < 0.5  # the quick ones together, not after "slow"
    assert groups[-1][0] == [0]
