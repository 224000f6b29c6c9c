"""Issue 20, "an operator's slip loses nothing": each slip as the issue reproduced it.

Every test here failed on the code before its fix (98b71bb); each names the slip it covers.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bday.users import api as users
from bday.users import sync as syncing
from tests.harness.cli import bday

pytestmark = pytest.mark.usefixtures("database")

HEADER = ["first_name", "last_name", "email", "birthday", "timezone"]


def _write(path: Path, count: int, start: int = 0) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        for i in range(start, start + count):
            writer.writerow(["U", f"N{i}", f"u{i}@example.com", "1990-01-01", "UTC"])
    return path


# --- 5. --max-delete compares in integers ------------------------------------------------------


def test_max_delete_allows_exactly_its_percentage_and_refuses_one_more():
    for percent in range(100):
        syncing._check_share(percent, 100, 0, percent, force=False)  # exactly the share
        with pytest.raises(syncing.SyncRefused, match=f"more than {percent}%"):
            syncing._check_share(percent + 1, 100, 0, percent, force=False)


@pytest.mark.parametrize("percent", [29, 57])
def test_sync_deletes_exactly_max_delete_percent_of_100(tmp_path, monkeypatch, capsys, percent):
    bday(monkeypatch, capsys, "users", "import", str(_write(tmp_path / "all.csv", 100)))
    kept = _write(tmp_path / "kept.csv", 100 - percent)
    args = ["users", "import", str(kept), "--sync", "--max-delete", str(percent)]
    code, out, err = bday(monkeypatch, capsys, *args)
    assert code == 0 and "bday:" not in err, err
    kept_count = 100 - percent
    assert out == (
        f"created 0, updated 0, deleted {percent}, unchanged {kept_count} ({kept_count} row(s))\n"
    )
    assert users.count_users() == 100 - percent
