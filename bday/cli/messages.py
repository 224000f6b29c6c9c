"""`bday messages list|show` (per-user history) and `bday preview` (who is owed on a date)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from bday.cli.options import LIMIT
from bday.store.models import Status


@click.group("messages")
def messages() -> None:
    """One user's greetings, or any greeting's full record."""


@messages.command("list")
@click.option("--user", "user", default=None, help="A user id or email (deleted users too).")
@click.option(
    "--status",
    type=click.Choice([s.value for s in Status], case_sensitive=False),
    default=None,
    help="Only rows in this status.",
)
@click.option("--since", default=None, help="Only rows due within, e.g. 7d, 24h, 90m.")
@click.option("--limit", type=LIMIT, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(user, status, since, limit, as_json) -> None:
    """Messages, newest instant first: id, user, type, status, instant, sent at, attempts."""
    from bday.ops import history
    from bday.ops.replay import parse_age

    try:
        age = None if since is None else parse_age(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    rows = history.list_messages(user=user, status=status, since=age, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{len(rows)} message(s)")
    for row in rows:
        click.echo(
            f"  {row['id']}  {row['message_type']:<11} {row['status']:<9} "
            f"due {row['scheduled_send_time']}  sent {row['sent_at'] or '-'}  "
            f"attempts {row['attempts']}  user {row['user_id']}"
        )


@messages.command("show")
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(message_id: str, as_json: bool) -> None:
    """Every field of one message: counters, timestamps, the service's answer, the path."""
    from bday.cli.errors import Failure
    from bday.ops import history

    try:
        row = history.show_message(message_id)
    except history.MessageNotFound as exc:
        raise Failure(str(exc)) from None
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    earlier = row.pop("earlier_failure")
    failed = row["status"] == Status.FAILED
    for name, value in row.items():
        if failed or name not in history.FAILURE_FIELDS:
            shown = "-" if value is None else str(value)
            click.echo(f"{name + ':':<21}{_indented(shown, 21)}")
    if not failed:  # the row's latest failure is history now: shown as such, last
        described = history.describe_earlier(earlier) if earlier else "none"
        click.echo(f"{'earlier failure:':<21}{described}")


def _indented(text: str, width: int) -> str:
    """A many-line value (a greeting's body) with its later lines under its first (blank
    lines stay blank)."""
    first, *rest = text.split("\n")
    return "\n".join([first, *(f"{' ' * width}{line}" if line else "" for line in rest)])


@click.command("preview")
@click.option(
    "--date",
    "day",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="The local date (YYYY-MM-DD); default today (UTC).",
)
@click.option("--zone", "zone_name", default=None, help="Only users in this IANA zone.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def preview(day, zone_name, as_json) -> None:
    """Who is owed a greeting on a date, at which instant (UTC and local), and the words it
    will carry; writes nothing."""
    from bday.ops.preview import preview as owed_on

    result = owed_on((day or datetime.now(UTC)).date(), zone_name)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
        return
    click.echo(f"{len(result.owed)} greeting(s) owed on {result.day.isoformat()}")
    for item in result.owed:
        click.echo(
            f"  {item.send_at_utc:%Y-%m-%d %H:%M}Z  {item.send_at_local:%H:%M %z} "
            f"{item.timezone:<24} {item.message_type:<11} {item.user_id}  {item.name}"
            f"  [{item.planned or 'not planned yet'}]"
        )
        click.echo(f"      subject: {item.subject}")
        click.echo(f"      body:    {_indented(item.text, 15)}")
    click.echo("by instant (UTC):")
    for at, count in result.by_instant():
        click.echo(f"  {at:%Y-%m-%d %H:%M}Z  {count}")
