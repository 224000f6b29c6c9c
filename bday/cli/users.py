"""`bday users ...`: add, update, delete and list users from the shell."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bday.cli.options import LIMIT
from bday.users import api as users_api


def _user_options(required: bool):
    """The field options shared by `add` (all required but anniversary) and `update`."""

    def decorate(command):
        options = [
            click.option("--first-name", required=required, help="Given name (1-100 characters)."),
            click.option("--last-name", required=required, help="Family name (1-100 characters)."),
            click.option("--email", required=required, help="Email address (unique among users)."),
            click.option("--birthday", required=required, help="YYYY-MM-DD, not in the future."),
            click.option("--timezone", required=required, help="IANA zone, e.g. Asia/Tokyo."),
            click.option("--anniversary", help="Work anniversary, YYYY-MM-DD ('' to remove)."),
            click.option(
                "--opt-out",
                help="No greetings of these types: all, birthday, anniversary (none: all on).",
            ),
            click.option(
                "--locale",
                help="Language of the greetings, BCP 47 (de, de-AT; '' for the default).",
            ),
        ]
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@click.group()
def users() -> None:
    """Add, change, delete and list users."""


@users.command("add")
@_user_options(required=True)
def add(**fields) -> None:
    """Add a user; prints the new user's id."""
    click.echo(users_api.create_user(**fields))


@users.command("update")
@click.argument("user")
@_user_options(required=False)
def update(user: str, **fields) -> None:
    """Change the given fields of user USER (an id or the email of a live user)."""
    changes = {name: value for name, value in fields.items() if value is not None}
    if not changes:
        raise click.UsageError("nothing to change: give at least one field option")
    user_id = users_api.find_user(user).id
    users_api.update_user(user_id, **changes)
    click.echo(f"updated {user_id}")


@users.command("delete")
@click.argument("user")
def delete(user: str) -> None:
    """Delete user USER (an id or the email of a live user) and cancel their unsent
    greetings."""
    user_id = users_api.find_user(user).id
    users_api.delete_user(user_id)
    click.echo(f"deleted {user_id}")


@users.command("erase")
@click.argument("user")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
def erase(user: str, yes: bool) -> None:
    """Forget user USER (an id or email): name and email removed from every table, unsent
    greetings cancelled, anonymous counts kept. Cannot be undone."""
    from bday.cli.errors import Failure

    found = users_api.find_user(user, include_deleted=True)
    if not yes:
        if not sys.stdin.isatty():
            raise Failure("erase cannot be undone: confirm on a terminal, or pass --yes")
        click.confirm(f"Erase user {found.id} for good?", abort=True, err=True)
    erasure = users_api.erase(found.id)
    click.echo(f"erased {erasure.user_id}")
    if erasure.others:  # the same address, but not the user named: say so, touch nothing
        click.echo(
            f"note: {len(erasure.others)} other user(s) hold this address; not erased: "
            + " ".join(map(str, erasure.others)),
            err=True,
        )


LIST_COLUMNS = ("id", "name", "email", "birthday", "anniversary", "timezone")


@users.command("list")
@click.option("--limit", type=LIMIT, default=None, help="At most this many.")
@click.option("--no-header", is_flag=True, help="Rows only (for scripts that count lines).")
def list_(limit: int | None, no_header: bool) -> None:
    """Live users, tab-separated under a header line: id, name, email, birthday, anniversary
    (`-` when none), timezone."""
    users_found = users_api.list_users(limit=limit)
    if not no_header:
        click.echo("\t".join(LIST_COLUMNS))
    for user in users_found:
        click.echo(
            "\t".join(
                [
                    str(user.id),
                    f"{user.first_name} {user.last_name}",
                    user.email,
                    user.birthday.isoformat(),
                    user.anniversary.isoformat() if user.anniversary else "-",
                    user.timezone,
                ]
            )
        )


@users.command("import")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--update", is_flag=True, help="Also update existing users (matched by email).")
@click.option("--sync", is_flag=True, help="--update, and delete live users absent from the file.")
@click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")
@click.option("--force", is_flag=True, help="--sync: delete even more than --max-delete.")
@click.option(
    "--max-delete",
    type=click.IntRange(0, 100),
    default=10,
    show_default=True,
    help="--sync: the most live users (percent) it deletes without --force.",
)
def import_(path: Path, update: bool, sync: bool, dry_run: bool, force: bool, max_delete: int):
    """Import users from a CSV file (header: first_name,last_name,email,birthday,timezone
    [,anniversary][,opt_out][,locale]), one user per line. Valid rows are kept; bad rows are listed
    with their line numbers (exit 1 if any); an unusable file is refused whole (exit 2).
    With --update or --sync, users are matched by email and the file is the source of truth."""
    from bday.cli.errors import Failure
    from bday.users import importer

    try:
        if update or sync or dry_run:
            _sync(
                path,
                sync=sync,
                update=update or sync,
                dry_run=dry_run,
                force=force,
                max_delete=max_delete,
            )
            return
        rows = importer.read_rows(path)
        importer.check_database()
        result = _import_with_progress(rows, importer.import_rows, path.name)
    except importer.ImportFileError as exc:
        raise Failure(str(exc)) from None
    click.echo(f"imported {result.imported} of {rows.count} row(s); {result.refused} refused")
    _list_refused(result)


def _sync(path: Path, *, sync: bool, update: bool, dry_run: bool, force: bool, max_delete: int):
    from bday.users import importer
    from bday.users import sync as syncing

    if not sync:
        rows = importer.read_rows(path)
        importer.check_database()
        absent = None
    else:  # two passes: the file's emails first, then its rows (a pipe's from a copy)
        first, again = importer.read_twice(path)
        importer.check_database()
        absent = syncing.find_absent(first, max_delete, force)
        if absent.refusals and not dry_run:
            _refuse(absent.refusals)
        rows = again()
    result = _import_with_progress(
        rows,
        lambda r, **kw: syncing.sync_rows(
            r, rows.header, absent=absent, update=update, dry_run=dry_run, **kw
        ),
        path.name,
    )
    if dry_run:
        for change in result.changes:
            click.echo(f"  {change}")
    click.echo(_summary(result, dry_run))
    _list_refused(result, exit_now=not (absent and absent.refusals))
    if absent and absent.refusals:  # the dry run of a run that would be refused: say each why
        _refuse(absent.refusals)


def _refuse(refusals: list[str]) -> None:
    """Every reason a --sync is refused, one line each on stderr; exit 2 (nothing written)."""
    from bday.cli.errors import Failure

    for refusal in refusals[:-1]:
        Failure(refusal).show()
    raise Failure(refusals[-1])


def _summary(result, dry_run: bool) -> str:
    refused = f"; {result.refused} refused" if result.refused else ""
    if not result.changed:
        return f"nothing changed: {result.unchanged} of {result.rows} row(s) already match{refused}"
    counts = (
        f"create {result.created}, update {result.updated}, delete {result.deleted}"
        if dry_run
        else f"created {result.created}, updated {result.updated}, deleted {result.deleted}"
    )
    head = "dry run, nothing written: would " if dry_run else ""
    return f"{head}{counts}, unchanged {result.unchanged} ({result.rows} row(s)){refused}"


def _list_refused(result, exit_now: bool = True) -> None:
    for line, problem in sorted(result.errors):
        click.echo(f"  line {line}: {problem}")
    if result.refused > len(result.errors):
        click.echo(f"  ... and {result.refused - len(result.errors)} more not listed")
    if result.refused and exit_now:
        sys.exit(1)


@users.command("export")
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True), default="-")
def export(path: str) -> None:
    """Write live users as CSV (the import's format, opt_out included) to PATH or stdout.
    PATH is replaced only once the new content is complete: a failed export leaves it as it
    was."""
    import csv

    from bday.cli.errors import Failure
    from bday.cli.files import output
    from bday.users import sync as syncing

    count = -1  # the header is no user
    try:
        with output(path) as handle:
            writer = csv.writer(handle, lineterminator="\n")
            for count, row in enumerate(syncing.export_rows()):  # noqa: B007 - the result
                writer.writerow(row)
    except syncing.ExportRefused as exc:
        raise Failure(str(exc)) from None
    if path != "-":
        click.echo(f"exported {count} user(s) to {path}", err=True)


def _import_with_progress(rows, import_rows, name: str):
    """A progress bar over the file's bytes (its row count is unknown until the end)."""
    if rows.size is None:  # a pipe or a device: no length to show progress against
        return import_rows(rows)
    with click.progressbar(length=rows.size, label=f"importing {name}", file=sys.stderr) as bar:
        return import_rows(rows, progress=lambda _: bar.update(rows.position - bar.pos))
