"""`bday fake-email-service` and `bday fake-smtp-service`: local stand-ins for the email
service (HTTP) and a mail server (SMTP)."""

from __future__ import annotations

import click


@click.command("fake-email-service")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; loopback unless you mean to expose it.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8025, show_default=True)
@click.option(
    "--failure-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of requests answered 500.",
)
@click.option(
    "--timeout-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of requests held past any client timeout.",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Delay before every answer.",
)
@click.option("--down", is_flag=True, help="Answer 503 to everything (until POST /control).")
@click.option(
    "--rate-limit",
    type=click.FloatRange(0, 1_000_000),
    default=0.0,
    show_default=True,
    help="Accept at most this many requests per whole second; answer 429 above (0: no limit).",
)
@click.option(
    "--no-retry-after",
    is_flag=True,
    help="Send 429s without a Retry-After header (a provider that does not say how long).",
)
@click.option(
    "--quiet",
    is_flag=True,
    help="No line per request (bench and demo: the log costs two thirds of its throughput).",
)
def fake_email_service(
    host, port, failure_rate, timeout_rate, latency_ms, down, rate_limit, no_retry_after, quiet
) -> None:
    """Serve POST /send-email like the real service and record every request.

    Logs one line per request (outcome, Idempotency-Key, the address masked).
    GET /requests lists them, GET /stats counts them, POST /control changes behaviour live
    (JSON such as {"down": false, "failure_rate": 0.1}), POST /reset forgets them.
    """
    from bday.cli.errors import Failure

    try:
        from bday.devtools import fake_email
    except ImportError as exc:  # aiohttp comes with the fake, demo and dev extras
        raise Failure(f"fake-email-service needs {exc.name}: pip install 'bday[fake]'") from None

    fake_email.run(
        host,
        port,
        quiet=quiet,
        failure_rate=failure_rate,
        timeout_rate=timeout_rate,
        latency_ms=latency_ms,
        down=down,
        rate_limit=rate_limit,
        retry_after=not no_retry_after,
    )


@click.command("fake-smtp-service")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; loopback unless you mean to expose it.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=2525, show_default=True)
@click.option(
    "--refuse",
    multiple=True,
    metavar="ADDRESS",
    help="Answer RCPT for this address with 550 (a mailbox that does not exist); repeatable.",
)
@click.option(
    "--failure-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of messages answered 451 at random (retried).",
)
@click.option("--latency-ms", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option(
    "--record",
    type=click.Path(dir_okay=False),
    help="Append each message's {at, key, outcome} to this file as a JSON line.",
)
@click.option("--quiet", is_flag=True, help="Print no line per message (bench).")
def fake_smtp_service(host, port, refuse, failure_rate, latency_ms, record, quiet) -> None:
    """Serve SMTP (no TLS, no AUTH) and print one line per message received: point
    EMAIL_SERVICE_URL=smtp://127.0.0.1:2525?starttls=off at it. Needs the fake extra
    (aiosmtpd)."""
    from bday.cli.errors import Failure
    from bday.devtools import fake_smtp

    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        raise Failure("fake-smtp-service needs aiosmtpd: pip install 'bday[fake]'") from None
    refused = {address.lower(): "550 5.1.1 no such mailbox" for address in refuse}
    fake_smtp.run(
        host,
        port,
        refused,
        failure_rate=failure_rate,
        latency_ms=latency_ms,
        record=record,
        quiet=quiet,
    )


@click.command("demo")
@click.option(
    "--failure-rate",
    type=click.FloatRange(0, 0.9),
    default=0.2,
    show_default=True,
    help="Share of email-service calls that fail at random (and are retried).",
)
@click.option("--latency-ms", type=click.FloatRange(0), default=60, show_default=True)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(30),
    default=300,
    show_default=True,
    help="Give up after this many seconds.",
)
@click.option("--keep", is_flag=True, help="Keep the sandbox database and vhost afterwards.")
@click.option(
    "--smtp",
    is_flag=True,
    help="Send through SMTP (`bday fake-smtp-service`) instead of the HTTP email service.",
)
def demo(failure_rate, latency_ms, timeout_s, keep, smtp) -> None:
    """Watch greetings being delivered live, in a sandbox database and vhost of its own."""
    import sys

    from bday.devtools import demo as demo_module

    sys.exit(demo_module.run(failure_rate, latency_ms, timeout_s, keep, smtp=smtp))
