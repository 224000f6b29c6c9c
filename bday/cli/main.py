"""The `bday` command line. Every failure a user can cause is one line on stderr and exit 2."""

from __future__ import annotations

import sys

import click

from bday.cli.errors import EXIT_USAGE, Failure, explain


@click.group()
@click.version_option(package_name="bday")
def main() -> None:
    """bday: birthday and work-anniversary greetings at 09:00 local time, exactly once."""


# --- db ----------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Migrate the database at DATABASE_URL to REVISION (default: the newest)."""
    from bday.ops import migrate

    migrate.upgrade(revision)
    click.echo(f"database at revision {migrate.current_revision()}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Migrate down to REVISION (`base` removes every bday table)."""
    from bday.ops import migrate

    migrate.downgrade(revision)
    click.echo(f"database at revision {migrate.current_revision() or 'base'}")


@db.command("current")
def db_current() -> None:
    """Print the database's revision and the newest one this code knows."""
    from bday.ops import migrate

    click.echo(f"current {migrate.current_revision() or 'base'} head {migrate.head_revision()}")


def _register_subcommands() -> None:
    from bday.cli import ops as cli_ops
    from bday.cli.dev import demo, fake_email_service, fake_smtp_service
    from bday.cli.messages import messages, preview
    from bday.cli.users import users

    for command in (
        users,
        fake_email_service,
        fake_smtp_service,
        cli_ops.status,
        cli_ops.health,
        cli_ops.replay,
        cli_ops.dlq,
        cli_ops.metrics,
        cli_ops.bench,
        messages,
        preview,
        demo,
    ):
        main.add_command(command)


_register_subcommands()


def run() -> None:
    """Console-script entry: like click's standalone mode, but every error is one line."""
    import logging

    from bday.telemetry import logs

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logs.configure()
    try:
        main.main(standalone_mode=False)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "bday"
        click.echo(f"{command}: {exc.format_message()} (see --help)", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        answer = explain(exc)
        if answer is None:
            raise  # not the operator's mistake: a bug, whose traceback is the report
        Failure(answer[0]).show()
        sys.exit(answer[1])


if __name__ == "__main__":  # pragma: no cover
    run()
