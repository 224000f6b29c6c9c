"""What giving up server-side prepared statements costs (the price of PgBouncer < 1.21 in
transaction mode): the hot path's claim and state statements, run directly against PostgreSQL
with and without prepares, and through a private PgBouncer without them.

    .venv/bin/python -m tests.harness.statement_cost [N]

Prints wall time per statement (round trip included) and the client's CPU per statement,
medians of three alternating rounds of N (default 3,000) each.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from bday.devtools import sandbox
from bday.store.messages import _CLAIM_MANY as _CLAIM
from bday.store.messages import _CURRENT_STATE as _STATE
from tests.harness import pgbouncer

SETUP = """
INSERT INTO users (id, first_name, last_name, email, birthday, timezone,
                   birthday_owed_from, anniversary_owed_from)
VALUES (%(user)s, 'Cost', 'Test', 'cost@example.com', '1990-01-01', 'UTC', now(), now());
INSERT INTO messages (id, user_id, message_type, status, occasion_date, scheduled_send_time,
                      idempotency_key)
VALUES (%(id)s, %(user)s, 'BIRTHDAY', 'SENT', current_date, now(), 'cost-key');
"""


def rounds(conninfo: str, prepare: bool, row_id: uuid.UUID, count: int) -> tuple[float, float]:
    """(wall us, client CPU us) per statement: claim (matches nothing: the row is SENT) + state."""
    now = datetime.now(UTC)
    claim = {
        "ids": [row_id],
        "tokens": [None],
        "now": now,
        "lease_until": now + timedelta(seconds=20),
    }
    threshold = 5 if prepare else None
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=threshold) as connection:
        for _ in range(50):  # warm up (and prepare)
            connection.execute(_CLAIM, claim, prepare=prepare or None)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            connection.execute(_CLAIM, claim, prepare=prepare or None).fetchone()
            connection.execute(_STATE, {"id": row_id}, prepare=prepare or None).fetchone()
        statements = 2 * count
        wall_us = (time.perf_counter() - wall) / statements * 1e6
        return wall_us, (time.process_time() - cpu) / statements * 1e6


def main(count: int = 3000) -> None:
    box = sandbox.Sandbox.create("bday_stmtcost")
    bouncer = pgbouncer.start(pool_size=2)
    try:
        direct = psycopg.conninfo.make_conninfo(box.database_url.replace("+psycopg", ""))
        pooled = bouncer.url(box.database_url).replace("+psycopg", "")
        row_id, user_id = uuid.uuid4(), uuid.uuid4()
        with psycopg.connect(direct, autocommit=True) as connection:
            for statement in SETUP.strip().split(";\n"):
                connection.execute(statement, {"id": row_id, "user": user_id})
        modes = {
            "PostgreSQL, prepared": (direct, True),
            "PostgreSQL, not prepared": (direct, False),
            "PgBouncer (transaction), not prepared": (pooled, False),
        }
        results = {name: [] for name in modes}
        for _ in range(3):
            for name, (conninfo, prepare) in modes.items():
                results[name].append(rounds(conninfo, prepare, row_id, count))
        for name, samples in results.items():
            wall = statistics.median(s[0] for s in samples)
            cpu = statistics.median(s[1] for s in samples)
            print(f"{name:<40} {wall:7.1f} us/statement wall  {cpu:6.1f} us client CPU")
    finally:
        bouncer.stop()
        box.destroy()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)
