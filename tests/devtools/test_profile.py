"""The profile summary: inclusive shares per frame, line numbers folded, shared frames hidden."""

from __future__ import annotations

from bday.devtools.profile import summarise

RAW = "\n".join(
    [
        (
            "Thread.run (threading.py:1);send_message (bday/worker/tasks.py:40);"
            "deliver (bday/delivery/attempt.py:90);post (httpx/_client.py:10) 6"
        ),
        (
            "Thread.run (threading.py:1);send_message (bday/worker/tasks.py:41);"
            "deliver (bday/delivery/attempt.py:95) 2"
        ),
        "Thread.run (threading.py:1);asynloop (celery/worker/loops.py:7) 2",
    ]
)


def test_shares_are_inclusive_and_fold_line_numbers():
    shares = {frame: share for share, frame in summarise(RAW)}
    assert shares["send_message (bday/worker/tasks.py)"] == 80.0
    assert shares["deliver (bday/delivery/attempt.py)"] == 80.0
    assert shares["post (httpx/_client.py)"] == 60.0
    assert shares["asynloop (celery/worker/loops.py)"] == 20.0


def test_frames_every_sample_shares_are_left_out_and_rows_are_largest_first():
    rows = summarise(RAW)
    assert not any(frame.startswith("Thread.run") for _, frame in rows)
    assert [share for share, _ in rows] == sorted((share for share, _ in rows), reverse=True)
