"""Settings: contract defaults, and one clear line naming the variable for every bad value."""

from __future__ import annotations

from datetime import time

import pytest

from bday.config import SettingsError, load_settings


def test_defaults_are_the_contract_defaults(monkeypatch):
    for name in ("RABBITMQ_URL", "DATABASE_URL", "EMAIL_SERVICE_URL", "SEND_TIME"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.rabbitmq_url == "amqp://guest:guest@localhost:5672//"
    assert settings.database_url == "postgresql+psycopg://postgres@localhost:5432/bday"
    assert settings.email_service_url == "https://email-service.digitalenvision.com.au"
    assert settings.email_service_timeout_ms == 10_000
    assert settings.send_time == time(9, 0)
    assert settings.feb29_policy == "feb28"
    assert settings.catch_up_hours == 48
    assert (settings.queue_concurrency, settings.queue_max_retries) == (5, 5)
    assert (settings.queue_retry_delay_ms, settings.queue_retry_backoff) == (2000, "exponential")
    assert settings.cron_minute_schedule == "* * * * *"
    assert settings.cron_plan_schedule == "0 * * * *"
    assert settings.cron_recovery_schedule == "*/5 * * * *"


def test_values_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SEND_TIME", "07:30")
    monkeypatch.setenv("FEB29_POLICY", "mar1")
    monkeypatch.setenv("QUEUE_MAX_RETRIES", "9")
    settings = load_settings()
    assert (settings.send_time, settings.feb29_policy, settings.queue_max_retries) == (
        time(7, 30),
        "mar1",
        9,
    )


def test_a_dotenv_file_is_honoured(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEND_TIME", raising=False)
    (tmp_path / ".env").write_text("SEND_TIME=06:15\n")
    assert load_settings().send_time == time(6, 15)


BAD = [
    ("SEND_TIME", "25:00", "HH:MM"),
    ("SEND_TIME", "9am", "HH:MM"),
    ("SEND_TIME", "09:60", "HH:MM"),
    ("QUEUE_MAX_RETRIES", "abc", "integer"),
    ("QUEUE_MAX_RETRIES", "-1", "greater than or equal to 0"),
    ("QUEUE_CONCURRENCY", "0", "greater than or equal to 1"),
    ("QUEUE_RETRY_DELAY", "2s", "integer"),
    ("QUEUE_RETRY_BACKOFF", "linear", "exponential"),
    ("FEB29_POLICY", "feb30", "feb28"),
    ("CATCH_UP_HOURS", "0", "greater than 0"),
    ("EMAIL_SERVICE_TIMEOUT", "-5", "greater than 0"),
    ("EMAIL_SERVICE_URL", "not a url", "http/https/smtp/smtps URL"),
    ("EMAIL_SERVICE_URL", "ftp://example.com", "http/https/smtp/smtps URL"),
    ("RABBITMQ_URL", "localhost:5672", "amqp"),
    ("RABBITMQ_URL", "amqp://guest@host:notaport//", "not a URL"),
    ("RABBITMQ_URL", "amqp://guest@n1:5672//;n2:5672", "amqp"),  # each node of a failover list
    ("DATABASE_POOLER", "pgbouncer", "'none' or 'transaction'"),
    ("DATABASE_URL", "mysql://root@localhost/bday", "postgresql"),
    ("CRON_MINUTE_SCHEDULE", "* * *", "five-field"),
    ("CRON_PLAN_SCHEDULE", "61 * * * *", "cron"),
    ("CRON_TIMEZONE", "Mars/Olympus", "unknown IANA time zone"),
    ("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1/db?foo=bar", 'parameter: "foo"'),
    ("BREAKER_COOLDOWN", "inf", "finite"),
    ("BREAKER_COOLDOWN", "nan", "finite"),
    ("BREAKER_COOLDOWN", "1e300", "less than or equal to 86400"),
    ("BREAKER_COOLDOWN_MAX", "-inf", "finite"),
    ("BREAKER_WINDOW", "86401", "less than or equal to 86400"),
    ("BREAKER_IDLE", "Infinity", "finite"),
    ("BREAKER_PROBE_WAIT", "NaN", "finite"),
    ("RECOVERY_GRACE_SECONDS", "99999999999999999999", "less than or equal to 86400"),
    ("QUEUE_RETRY_MAX_DELAY", "99999999999999999999", "less than or equal to"),
    ("QUEUE_DELIVERY_LIMIT", "99999999999", "less than or equal to 1000"),
    ("BREAKER_FAILURES", "99999999999", "less than or equal to 10000"),
]


@pytest.mark.parametrize(("name", "value", "hint"), BAD)
def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch, name, value, hint):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"invalid setting {name}=")
    assert hint in message


def test_a_retry_cap_below_the_first_delay_is_refused_naming_both(monkeypatch):
    monkeypatch.setenv("QUEUE_RETRY_DELAY", "5000")
    monkeypatch.setenv("QUEUE_RETRY_MAX_DELAY", "1000")
    with pytest.raises(SettingsError, match=r"QUEUE_RETRY_MAX_DELAY .* QUEUE_RETRY_DELAY"):
        load_settings()


def test_a_dotenv_that_is_not_utf8_is_one_line_naming_the_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_bytes(b"SEND_TIME=09:00\n\xff\xfe\n")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == (
        "cannot read .env: not valid UTF-8 (byte 0xff at offset 16); save it as UTF-8"
    )


def test_a_refused_url_never_echoes_its_password(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://bday:CHANGE-ME@db:5432/bday?foo=bar")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "CHANGE-ME" not in str(caught.value) and "bday:***@db" in str(caught.value)


def test_a_failover_list_of_cluster_nodes_is_a_valid_rabbitmq_url(monkeypatch):
    urls = "amqp://USER:PASSWORD@rabbit1:5672/v;amqp://USER:PASSWORD@rabbit2:5672/v;amqp://USER:PASSWORD@rabbit3:5672/v"
    monkeypatch.setenv("RABBITMQ_URL", urls)
    monkeypatch.setenv("DATABASE_POOLER", "transaction")
    settings = load_settings()
    assert settings.rabbitmq_url == urls and settings.database_pooler == "transaction"


def _templates(directory, **overrides):
    files = {
        "birthday.subject.txt": "Happy birthday, $first_name",
        "birthday.body.txt": "Dear $full_name",
        "anniversary.subject.txt": "$years years",
        "anniversary.body.txt": "Thanks, $first_name",
        **overrides,
    }
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def test_templates_dir_is_read_and_checked_with_the_settings(monkeypatch, tmp_path):
    from bday.core.occasions import Kind

    monkeypatch.setenv("TEMPLATES_DIR", str(_templates(tmp_path, **{"de/.x.swp": "junk"})))
    assert load_settings().catalogue.pick(Kind.BIRTHDAY, "de").text == "Dear $full_name"
    monkeypatch.setenv("TEMPLATES_DIR", "")
    assert load_settings().templates_dir is None


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"birthday.body.txt": "Dear $nmae"}, "birthday.body.txt: unknown placeholder $nmae"),
        ({"de/birthday.body.txt": "Hallo"}, "de/birthday.subject.txt: missing"),
        ({"birthday.body.txt": b"\xff"}, "birthday.body.txt: not valid UTF-8"),
    ],
)
def test_a_bad_template_stops_start_up_with_one_line_naming_the_file(
    monkeypatch, tmp_path, files, problem
):
    directory = _templates(tmp_path, **{k: v for k, v in files.items() if isinstance(v, str)})
    for name, raw in files.items():
        if isinstance(raw, bytes):
            (directory / name).write_bytes(raw)
    monkeypatch.setenv("TEMPLATES_DIR", str(directory))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith(f"invalid setting TEMPLATES_DIR='{directory}': ")
    assert f"{directory}/{problem}" in str(caught.value) and "\n" not in str(caught.value)


def test_a_templates_dir_that_is_not_a_directory_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("TEMPLATES_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(SettingsError, match="nowhere: not a directory"):
        load_settings()
