"""`bday health` with an SMTP provider: its email-service check opens a session and asks NOOP."""

from __future__ import annotations

import pytest

from bday.devtools.fake_smtp import FakeSmtp
from bday.ops import health

pytestmark = pytest.mark.usefixtures("database")


def test_the_email_service_check_asks_the_smtp_server_noop(settings_env):
    with FakeSmtp() as server:
        settings_env.setenv("EMAIL_SERVICE_URL", server.url)
        settings_env.setenv("EMAIL_FROM", "hello@greetings.example")
        check = health.check_email_service()
        assert check.ok and not check.degraded
        assert (
            check.detail == f"breaker closed; SMTP 127.0.0.1:{server.port} answers NOOP with 250 OK"
        )
    check = health.check_email_service()
    assert not check.ok
    assert check.line().startswith(
        f"FAIL email-service: SMTP 127.0.0.1:{server.port}: connection error"
    )
