"""A user's language (BCP 47): API, CLI and import, one validation, stored in canonical case."""

from __future__ import annotations

import pytest

from bday.users import api as users
from bday.users.api import UserInputError
from tests.harness.cli import bday
from tests.users.test_api import ADA

pytestmark = pytest.mark.usefixtures("database")


def test_a_locale_is_stored_canonical_changed_and_cleared():
    user_id = users.create_user(**ADA, locale="de_at")
    assert users.get_user(user_id).locale == "de-AT"
    users.update_user(user_id, locale="pt-br")
    assert users.get_user(user_id).locale == "pt-BR"
    users.update_user(user_id, locale="")
    assert users.get_user(user_id).locale is None
    assert users.get_user(users.create_user(**{**ADA, "email": "b@example.com"})).locale is None


@pytest.mark.parametrize("value", ["german", "de-", "de AT", "x-klingon", 49, "de\nAT"])
def test_a_bad_locale_is_refused_by_name_and_nothing_is_written(value):
    with pytest.raises(UserInputError) as caught:
        users.create_user(**ADA, locale=value)
    assert caught.value.field == "locale" and "\n" not in str(caught.value)
    assert users.count_users() == 0


def test_the_cli_sets_a_locale_and_refuses_a_bad_one(monkeypatch, capsys):
    args = ["users", "add", *(f"--{k.replace('_', '-')}={v}" for k, v in ADA.items())]
    code, out, _ = bday(monkeypatch, capsys, *args, "--locale", "fr-CA")
    assert code == 0 and users.get_user(out.strip()).locale == "fr-CA"
    code, out, err = bday(monkeypatch, capsys, "users", "update", ADA["email"], "--locale", "fr_")
    assert (code, out) == (2, "")
    assert err.startswith("bday: locale: 'fr_' is not a language tag") and err.count("\n") == 1
    assert users.find_user(ADA["email"]).locale == "fr-CA"


def test_the_import_reads_a_locale_column_and_names_a_bad_one_by_line(
    tmp_path, monkeypatch, capsys
):
    path = tmp_path / "people.csv"
    path.write_text(
        "first_name,last_name,email,birthday,timezone,locale\n"
        "Ada,Lovelace,ada@example.com,1990-03-05,Asia/Tokyo,de-at\n"
        "Bob,Smith,bob@example.com,1990-03-05,Asia/Tokyo,\n"
        "Cy,Young,cy@example.com,1990-03-05,Asia/Tokyo,klingon!\n",
        encoding="utf-8",
    )
    code, out, _ = bday(monkeypatch, capsys, "users", "import", str(path))
    assert code == 1 and "line 4: locale: 'klingon!' is not a language tag" in out
    assert users.find_user("ada@example.com").locale == "de-AT"
    assert users.find_user("bob@example.com").locale is None
