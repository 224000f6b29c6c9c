"""What the database says about the bench's messages: how many are settled, when they were
sent, how late. Each probe is one SQL query on a connection of its own."""

from __future__ import annotations

from typing import Any

from bday.devtools import sandbox
from bday.store.models import Status

# The figure's own messages (due now), not the old finished rows retention's figure loads.
RECENT = "scheduled_send_time > now() - interval '1 day'"
SENT_RECENTLY = f"SELECT count(*) FROM messages WHERE status = '{Status.SENT}' AND {RECENT}"
OLD_LEFT = "SELECT count(*) FROM messages WHERE idempotency_key LIKE 'old:%'"  # retention's


def scalar(sql: str) -> Any:
    """The one value `sql` selects."""
    from sqlalchemy import text

    from bday.store.db import engine

    with engine().connect() as connection:
        return connection.execute(text(sql)).scalar()


def wait_settled(count: int, timeout: float) -> None:
    """Until `count` messages are settled: SENT, or FAILED after exhausting their retries (with
    random failures that happens now and then; in production the recover job re-sends them)."""
    settled = (
        f"SELECT count(*) FROM messages WHERE status IN ('{Status.SENT}', '{Status.FAILED}') "
        f"AND {RECENT}"
    )
    sandbox.wait_for(
        lambda: scalar(settled) >= count, timeout, f"{count} messages settled", interval=0.2
    )


def sent_by_share(share: float) -> float:
    """Epoch seconds by which `share` of the sent messages had been sent (1.0: the last one)."""
    return float(
        scalar(
            f"SELECT extract(epoch FROM percentile_disc({float(share)}) WITHIN GROUP"
            f" (ORDER BY sent_at)) FROM messages WHERE status = '{Status.SENT}' AND {RECENT}"
        )
    )


def lateness_s() -> list[float]:
    from sqlalchemy import text

    from bday.store.db import engine

    with engine().connect() as connection:
        return [
            row[0]
            for row in connection.execute(
                text(
                    "SELECT extract(epoch FROM sent_at - scheduled_send_time)::float FROM messages"
                )
            )
        ]
