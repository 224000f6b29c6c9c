"""Migrations on a real PostgreSQL: up to head, down to base, and the indexes doing their job."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta

import psycopg
import pytest
from psycopg import sql

from bday.devtools import factories, sandbox
from bday.ops import migrate
from bday.store.models import Status
from tests.conftest import ADMIN_URL, RUN_ID

pytestmark = pytest.mark.db  # every test here makes or migrates a database


@pytest.fixture
def scratch_database():
    name = f"bday_test_{RUN_ID}_migrations"
    url = sandbox.create_database(ADMIN_URL, name)
    yield url, name
    sandbox.drop_database(ADMIN_URL, name)


def _tables(name: str) -> set[str]:
    with psycopg.connect(ADMIN_URL.rsplit("/", 1)[0] + f"/{name}") as connection:
        rows = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        functions = connection.execute(
            "SELECT proname FROM pg_proc WHERE proname LIKE 'bday_%'"
        ).fetchall()
    return {row[0] for row in rows} | {row[0] for row in functions}


def test_upgrade_to_head_then_downgrade_to_base_leaves_nothing(scratch_database):
    url, name = scratch_database
    migrate.upgrade("head", url)
    assert migrate.current_revision(url) == migrate.head_revision()
    assert {"users", "messages", "alembic_version", "bday_month_day"} <= _tables(name)
    migrate.downgrade("base", url)
    assert _tables(name) == {"alembic_version"}
    assert migrate.current_revision(url) is None
    migrate.upgrade("head", url)  # and it comes back up cleanly
    assert migrate.current_revision(url) == migrate.head_revision()


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True)


def _user(connection, email="ada@example.com", deleted=None) -> uuid.UUID:
    row = factories.user_row(
        "Ada", "Lovelace", email=email, birthday=date(1990, 3, 5), deleted_at=deleted
    )
    connection.execute(factories.insert_sql("users", row), row)
    return row["id"]


def _message(connection, user_id, key, status=Status.PENDING):
    at = datetime.combine(date(2027, 3, 5), time(9), UTC)
    # the status is set over the built row: one test stores a status the schema must refuse
    row = {**factories.message_row(user_id, at, idempotency_key=key), "status": status}
    connection.execute(factories.insert_sql("messages", row), row)


def test_a_second_live_row_for_the_same_idempotency_key_is_refused(database_url):
    with _connect(database_url) as connection:
        user_id = _user(connection)
        try:
            _message(connection, user_id, "k1")
            with pytest.raises(psycopg.errors.UniqueViolation):
                _message(connection, user_id, "k1")
        finally:
            connection.execute("TRUNCATE users, messages CASCADE")


def test_a_cancelled_row_does_not_block_its_replacement(database_url):
    with _connect(database_url) as connection:
        user_id = _user(connection)
        try:
            _message(connection, user_id, "k1", status=Status.CANCELLED)
            _message(connection, user_id, "k1")  # no error
            count = connection.execute(
                "SELECT count(*) FROM messages WHERE idempotency_key='k1'"
            ).fetchone()
            assert count == (2,)
        finally:
            connection.execute("TRUNCATE users, messages CASCADE")


def test_email_is_unique_among_live_users_only_and_ignores_case(database_url):
    with _connect(database_url) as connection:
        try:
            _user(connection, "ada@example.com", deleted=datetime.now(UTC))
            _user(connection, "ada@example.com")  # the deleted one does not count
            with pytest.raises(psycopg.errors.UniqueViolation):
                _user(connection, "ADA@example.com")
        finally:
            connection.execute("TRUNCATE users, messages CASCADE")


def test_an_unknown_status_is_refused(database_url):
    with _connect(database_url) as connection:
        user_id = _user(connection)
        try:
            with pytest.raises(psycopg.errors.CheckViolation):
                _message(connection, user_id, "k2", status="LOST")
        finally:
            connection.execute("TRUNCATE users, messages CASCADE")


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (
            "SELECT id FROM users WHERE deleted_at IS NULL AND bday_month_day(birthday) = ANY('{305,306}')",
            "ix_users_birthday_month_day_id",
        ),
        (
            (
                "SELECT id FROM users WHERE deleted_at IS NULL AND anniversary IS NOT NULL"
                " AND bday_month_day(anniversary) = ANY('{305}')"
            ),
            "ix_users_anniversary_month_day_id",
        ),
        (  # a fanned-out plan's range: one index condition, not a bitmap of the id range
            (
                "SELECT id FROM users WHERE deleted_at IS NULL AND bday_month_day(birthday) = "
                "ANY('{305,306}') AND id >= '40000000-0000-0000-0000-000000000000' "
                "AND id < '50000000-0000-0000-0000-000000000000'"
            ),
            "ix_users_birthday_month_day_id",
        ),
        (
            "SELECT id FROM messages WHERE status = 'PENDING' AND scheduled_send_time < now()",
            "ix_messages_due",
        ),
    ],
)
def test_planner_and_enqueue_lookups_use_their_indexes(database_url, query, index):
    with _connect(database_url) as connection:
        try:
            _populate(connection, 20_000)
            plan = "\n".join(row[0] for row in connection.execute(sql.SQL("EXPLAIN " + query)))
            # On the partitioned `messages`, each partition scans its own copy of the index.
            copies = connection.execute(
                "SELECT relid::text FROM pg_partition_tree(%s)", (index,)
            ).fetchall()
        finally:
            connection.execute("TRUNCATE users, messages CASCADE")
    assert any(name in plan for name in {index, *(row[0] for row in copies)}), plan
    assert "users_pkey" not in plan, plan


def _populate(connection, count: int) -> None:
    """A realistic spread: every date of the year, a third with an anniversary, most sent."""
    connection.execute(
        "INSERT INTO users (id, first_name, last_name, email, birthday, anniversary, timezone,"
        " birthday_owed_from, anniversary_owed_from)"
        " SELECT gen_random_uuid(), 'F', 'L', 'u' || g || '@example.com',"
        " date '1960-01-01' + (g * 7919) %% 18000,"
        " CASE WHEN g %% 3 = 0 THEN date '2000-01-01' + (g * 104729) %% 8000 END,"
        " 'UTC', now(), now() FROM generate_series(1, %s) g",
        (count,),
    )
    connection.execute(
        "INSERT INTO messages (id, user_id, message_type, status, occasion_date,"
        " scheduled_send_time, idempotency_key)"
        " SELECT gen_random_uuid(), id, 'BIRTHDAY', CASE WHEN random() < 0.99 THEN 'SENT'"
        " ELSE 'PENDING' END, current_date, now(), id::text FROM users"
    )
    connection.execute("ANALYZE users")
    connection.execute("ANALYZE messages")


# --- 0009: messages partitioned by month, from a table that already holds rows -----------------

_ROWS_AS_TEXT = "SELECT m::text FROM (SELECT {columns} FROM messages ORDER BY id) m"


def _snapshot(connection) -> list[str]:
    """Every row of `messages`, every column, as text, in id order (columns in the old order)."""
    columns = [
        row[0]
        for row in connection.execute(
            "SELECT quote_ident(column_name) FROM information_schema.columns"
            " WHERE table_name = 'messages' ORDER BY column_name"
        )
    ]
    query = _ROWS_AS_TEXT.format(columns=", ".join(columns))
    return [row[0] for row in connection.execute(query)]


def _seed_before_partitioning(connection) -> None:
    """1,200 rows over three years back and a month ahead, every status; two users."""
    owner, other = _user(connection), _user(connection, "bob@example.com")
    connection.execute(
        "INSERT INTO messages (id, user_id, message_type, status, occasion_date,"
        " scheduled_send_time, idempotency_key, attempts, last_error, send_deadline,"
        " subject, body)"
        " SELECT gen_random_uuid(), CASE WHEN g %% 2 = 0 THEN %(a)s ELSE %(b)s END::uuid,"
        " 'BIRTHDAY', (ARRAY['PENDING','QUEUED','SENDING','SENT','FAILED','CANCELLED'])[1 + g %% 6],"
        " d, d + interval '9 hours',"
        " CASE WHEN g %% 2 = 0 THEN %(a)s ELSE %(b)s END || ':BIRTHDAY:' || d, g %% 4,"
        " 'error ' || g, CASE WHEN g %% 3 = 0 THEN d + interval '2 days' END,"
        " 'Happy birthday ' || g, CASE WHEN g %% 5 = 0 THEN 'Dear Ada, ' || g END"
        " FROM generate_series(1, 1200) g,"
        " LATERAL (SELECT (current_date + 30 - g)::date) s(d)",
        {"a": str(owner), "b": str(other)},
    )


def _partitions(connection) -> dict[str, str]:
    rows = connection.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'messages'::regclass"
    ).fetchall()
    return dict(rows)


def test_partitioning_an_existing_table_keeps_every_row_and_the_unique_key(scratch_database):
    url, _ = scratch_database
    migrate.upgrade("0008", url)
    with _connect(url) as connection:
        _seed_before_partitioning(connection)
        before = _snapshot(connection)
        months = connection.execute(
            "SELECT count(DISTINCT date_trunc('month', occasion_date)) FROM messages"
        ).fetchone()[0]
    migrate.upgrade("0009", url)
    with _connect(url) as connection:
        assert _snapshot(connection) == before  # every row, every column, unchanged
        partitions = _partitions(connection)
        assert partitions.pop("messages_default") == "DEFAULT"
        assert len(partitions) >= months  # a month of its own for every month holding rows
        in_default = connection.execute("SELECT count(*) FROM messages_default").fetchone()
        assert in_default == (0,)
        # Exactly once still holds: a second live row of a planned occasion is refused, in
        # whichever partition the occasion falls, and a CANCELLED one does not block.
        key, day, user_id = connection.execute(
            "SELECT idempotency_key, occasion_date, user_id FROM messages"
            " WHERE status = 'SENT' ORDER BY occasion_date LIMIT 1"
        ).fetchone()
        at = datetime.combine(day, time(9), UTC)
        row = factories.message_row(user_id, at, occasion_date=day, idempotency_key=key)
        with pytest.raises(psycopg.errors.UniqueViolation):
            connection.execute(factories.insert_sql("messages", row), row)
    migrate.downgrade("0008", url)
    with _connect(url) as connection:
        assert _snapshot(connection) == before  # and back, every row kept
        assert _partitions(connection) == {}
        with pytest.raises(psycopg.errors.UniqueViolation):
            connection.execute(factories.insert_sql("messages", row), row)


def test_rows_from_before_partitioning_are_sent_once_and_retired_after_it(
    scratch_database, settings_env
):
    """After 0009: a job published before the upgrade (no occasion date) still claims and
    records its row, a row planned before it is enqueued with its date and sent, its
    occasion is still planned once, and a finished month past retention goes whole."""
    from bday.config import get_settings
    from bday.scheduling import jobs
    from bday.store import messages
    from bday.store.db import transaction

    url, _ = scratch_database
    migrate.upgrade("0008", url)
    now = datetime.now(UTC).replace(microsecond=0)
    with _connect(url) as connection:
        user_id = _user(connection)
        waiting = factories.message_row(
            user_id, now, status=Status.QUEUED, dispatch_token=uuid.uuid4()
        )
        planned = factories.message_row(user_id, now, kind="ANNIVERSARY")
        old_day = now.date().replace(day=1) - timedelta(days=3 * 365)
        old = factories.message_row(
            user_id, datetime.combine(old_day, time(9), UTC), status=Status.SENT
        )
        for row in (waiting, planned, old):
            connection.execute(factories.insert_sql("messages", row), row)
    migrate.upgrade("0009", url)
    settings_env.setenv("DATABASE_URL", url)
    lease = now + timedelta(minutes=5)

    # The job in the broker since before the upgrade: id and token, no date.
    claimed = messages.claim_many([(waiting["id"], waiting["dispatch_token"])], now, lease)
    assert claimed[waiting["id"]].occasion_date == waiting["occasion_date"]
    assert messages.record_sent([(waiting["id"], 200, "{}", "Hi", "Hey")], now) == 1
    # The row planned before the upgrade: enqueued with its date, claimed with it.
    with transaction() as session:
        [job] = messages.claim_due(session, now, lead_s=60, catch_up_hours=36, limit=10)
    assert (job.message_id, job.occasion_date) == (planned["id"], planned["occasion_date"])
    days = {job.message_id: job.occasion_date}
    assert messages.claim_many([(job.message_id, job.token)], now, lease, days=days)
    assert messages.record_sent([(job.message_id, 200, "{}", "Hi", "Hey")], now, days=days) == 1
    # Exactly once: the occasion's live row still blocks a second plan of it.
    with transaction() as session:
        assert messages.insert_pending(session, [dict(waiting, id=uuid.uuid4())]) == 0
    # Retention drops the old month's partition whole, and keeps this month's rows.
    result = jobs.retention_job(now)
    assert f"messages_y{old_day:%Y}m{old_day:%m}" in result["dropped"]
    with _connect(url) as connection:
        left = connection.execute("SELECT id, status FROM messages ORDER BY id").fetchall()
    assert sorted(left) == sorted([(waiting["id"], "SENT"), (planned["id"], "SENT")])
    assert get_settings().database_url == url
