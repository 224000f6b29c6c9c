"""Greeting templates: the built-in texts, the fallback chain, and templates checked at load."""

from __future__ import annotations

import string
from datetime import date

import pytest

from bday.core.locales import canonical_locale, fallbacks
from bday.core.occasions import TEXTS, Kind, message_text
from bday.core.templates import (
    BUILT_IN,
    Template,
    TemplateError,
    parse_catalogue,
    placeholder_values,
    render,
)

BODIES = {
    "birthday.subject.txt": "Happy birthday, $first_name\n",
    "birthday.body.txt": "Dear $full_name, $age today!\n",
    "anniversary.subject.txt": "$years years",
    "anniversary.body.txt": "Thanks, $first_name, for $years years.",
}


def words(catalogue, kind, locale, first="Ada", last="Lovelace"):
    values = placeholder_values(kind, first, last, date(2026, 12, 4), date(1990, 12, 4))
    return render(catalogue.pick(kind, locale), values)


@pytest.mark.parametrize("kind", list(Kind))
def test_the_built_in_bodies_are_todays_texts_exactly(kind):
    assert TEXTS[kind].count("{") == 2  # the old texts only know the two names
    rendered = words(BUILT_IN, kind, None, "Zoë", "O'Brien $x")
    assert rendered.text == message_text(kind, "Zoë", "O'Brien $x")
    assert rendered.html is None and "Zoë" in rendered.subject


def test_placeholders_are_filled_and_age_and_years_count_from_the_original_year():
    catalogue = parse_catalogue(BODIES, "/t")
    assert words(catalogue, Kind.BIRTHDAY, None).text == "Dear Ada Lovelace, 36 today!"
    assert words(catalogue, Kind.BIRTHDAY, None).subject == "Happy birthday, Ada"
    assert words(catalogue, Kind.ANNIVERSARY, "fr").text == "Thanks, Ada, for 36 years."


def test_a_language_falls_back_from_region_to_language_to_default():
    files = {
        **BODIES,
        "de/birthday.subject.txt": "Alles Gute, $first_name",
        "de/birthday.body.txt": "Hallo $first_name",
        "de-at/birthday.subject.txt": "Servus, $first_name",
        "de-AT/birthday.body.txt": "Servus $first_name",
        "de-AT/birthday.body.html": "<p>Servus <b>$first_name</b></p>",
    }
    catalogue = parse_catalogue(files, "/t")
    assert words(catalogue, Kind.BIRTHDAY, "de-AT").text == "Servus Ada"
    assert words(catalogue, Kind.BIRTHDAY, "de-CH").text == "Hallo Ada"
    assert words(catalogue, Kind.BIRTHDAY, "de-CH").html is None  # never borrowed
    assert words(catalogue, Kind.BIRTHDAY, "en-GB").text == "Dear Ada Lovelace, 36 today!"
    assert words(catalogue, Kind.ANNIVERSARY, "de-AT").text == "Thanks, Ada, for 36 years."
    hostile = words(catalogue, Kind.BIRTHDAY, "de-AT", first="<script>&")
    assert hostile.html == "<p>Servus <b>&lt;script&gt;&amp;</b></p>"
    assert hostile.text == "Servus <script>&"


@pytest.mark.parametrize(
    "source",
    [
        "Hey, $first_name $last_name it's your birthday",
        "$$5 for ${first_name}x, $$$first_name$$",
        "$first_name",
        "no placeholder",
        "",
        "$age",  # not among the values: KeyError
        "a $ alone",  # not a placeholder: ValueError
        "${first_name",
    ],
)
def test_rendering_says_what_string_templates_substitute_says(source):
    values = {"first_name": "Ada", "last_name": "$last_name"}

    def outcome(fill):
        try:
            return fill()
        except (KeyError, ValueError) as exc:
            return type(exc)

    expected = outcome(lambda: string.Template(source).substitute(values))
    for _ in range(2):  # the second render uses the split kept for the source
        rendered = outcome(lambda: render(Template(source, source), values))
        if isinstance(expected, type):
            assert rendered is expected
        else:
            assert (rendered.subject, rendered.text) == (expected, expected)


def test_a_value_is_never_read_as_a_template_or_an_attribute():
    catalogue = parse_catalogue({**BODIES, "birthday.body.txt": "$first_name $$5"}, "/t")
    shown = words(catalogue, Kind.BIRTHDAY, None, first="${last_name}.__class__")
    assert shown.text == "${last_name}.__class__ $5"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"birthday.body.txt": "Hi $firstname"},
            "/t/birthday.body.txt: unknown placeholder $firstname",
        ),
        ({"anniversary.body.txt": "$age"}, "/t/anniversary.body.txt: unknown placeholder $age"),
        ({"birthday.body.txt": "costs 5$"}, "/t/birthday.body.txt: does not render"),
        ({"birthday.body.txt": "${first_name"}, "/t/birthday.body.txt: does not render"),
        ({"birthday.body.txt": "${first_name.__class__}"}, "/t/birthday.body.txt: does not render"),
        ({"birthday.subject.txt": "a\nb"}, "/t/birthday.subject.txt: a subject must be one line"),
        ({"birthdy.body.txt": "x"}, "/t/birthdy.body.txt: not a template file"),
        ({"birthday.subject.html": "x"}, "/t/birthday.subject.html: not a template file"),
        ({"de/x/birthday.body.txt": "x"}, "/t/de/x/birthday.body.txt: not a template file"),
        ({"deutsch!/birthday.body.txt": "x"}, "/t/deutsch!: 'deutsch!' is not a language tag"),
        ({"de/birthday.body.txt": "x"}, "/t/de/birthday.subject.txt: missing"),
    ],
)
def test_a_bad_template_is_one_line_naming_the_file(change, expected):
    with pytest.raises(TemplateError) as caught:
        parse_catalogue({**BODIES, **change}, "/t")
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)


def test_a_directory_without_a_default_is_refused():
    files = {name: text for name, text in BODIES.items() if name != "anniversary.body.txt"}
    with pytest.raises(TemplateError, match=r"^/t/anniversary.body.txt: missing"):
        parse_catalogue(files, "/t")


@pytest.mark.parametrize(
    ("tag", "canonical"),
    [("de", "de"), ("DE_at", "de-AT"), ("zh-hant-tw", "zh-Hant-TW"), ("es-419", "es-419")],
)
def test_language_tags_are_put_in_canonical_case(tag, canonical):
    assert canonical_locale(tag) == canonical


@pytest.mark.parametrize(
    "tag", ["", "d", "deutsch", "de-", "de-AT-", "de--AT", "x-private", "de AT", "dé"]
)
def test_a_malformed_language_tag_is_refused(tag):
    with pytest.raises(ValueError, match="is not a language tag"):
        canonical_locale(tag)


def test_fallbacks_go_from_the_most_specific_tag_to_the_language():
    assert fallbacks("zh-Hant-TW") == ["zh-Hant-TW", "zh-Hant", "zh"]
    assert fallbacks(None) == [] and fallbacks("bad tag") == []
