"""send_message's job arguments: what a batch accepts, and what it dead-letters unread."""

from __future__ import annotations

import pytest

from bday.worker.batching import Received
from bday.worker.tasks import _fields

ID = "0b9d6f1e-5a0c-4d8e-9f0a-1c2b3d4e5f60"


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        ((ID,), {}, {"message_id": ID}),
        ((ID,), {"token": "t", "slot": None}, {"message_id": ID, "token": "t", "slot": None}),
        ((ID, "t"), {}, {"message_id": ID, "token": "t"}),
        ((ID,), {"delivered": {"id": ID}}, {"message_id": ID, "delivered": {"id": ID}}),
        (
            (ID,),
            {"token": "t", "occasion_date": "2027-03-05"},
            {"message_id": ID, "token": "t", "occasion_date": "2027-03-05"},
        ),
    ],
)
def test_a_job_shaped_like_send_message_is_read_by_name(args, kwargs, expected):
    assert _fields(Received("job", args, kwargs)) == expected


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {}),  # no message id
        ((), {"unexpected": 1}),
        ((ID,), {"unexpected": 1}),
        ((ID, "t"), {"token": "t"}),  # the token twice
        ((ID, None, None, None, None, "extra"), {}),
        ((42,), {}),  # an id that is not text
        (([ID],), {}),
    ],
)
def test_a_job_that_does_not_fit_send_message_is_refused(args, kwargs):
    assert _fields(Received("job", args, kwargs)) is None
