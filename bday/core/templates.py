"""The words of a greeting: a subject and a body (plain text, optionally HTML) per occasion
type and language, with placeholders filled from the user.

Pure: reading TEMPLATES_DIR is `bday.delivery.wording`'s job; this module parses the files'
texts (`parse_catalogue`), checks them and renders them.

Rendering is `string.Template` substitution: `$first_name` or `${first_name}` is replaced by
a value, `$$` is a dollar sign, and nothing else happens (no attribute access, no calls, no
loops), so a template can neither run code nor read anything but the values given. Every
placeholder is checked against the occasion's list when the templates are loaded, and each
template is rendered once with sample values then, so one that cannot render never reaches a
send.
"""

from __future__ import annotations

import functools
import html
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from bday.core.locales import canonical_locale, fallbacks
from bday.core.occasions import Kind

COMMON_PLACEHOLDERS = ("first_name", "last_name", "full_name")
# What each occasion may say beyond the names: the age a birthday marks, the years an
# anniversary marks.
PLACEHOLDERS = {
    Kind.BIRTHDAY: (*COMMON_PLACEHOLDERS, "age"),
    Kind.ANNIVERSARY: (*COMMON_PLACEHOLDERS, "years"),
}
_SAMPLE = {"first_name": "Ada", "last_name": "Lovelace", "full_name": "Ada Lovelace"}
_SAMPLE_NUMBERS = {"age": "36", "years": "10"}


class TemplateError(ValueError):
    """A template that cannot be used. `str()` is one line naming the file."""


@dataclass(frozen=True, slots=True)
class Template:
    """One occasion's words in one language (string.Template sources)."""

    subject: str
    text: str
    html: str | None = None


@dataclass(frozen=True, slots=True)
class Rendered:
    """The words one person receives."""

    subject: str
    text: str
    html: str | None = None


# Today's texts, exactly (docs/contract.md, "The email service"): the body is what the HTTP
# service receives as `message`; the subject only exists for mail.
DEFAULTS = {
    Kind.BIRTHDAY: Template(
        subject="Happy birthday, $first_name!",
        text="Hey, $first_name $last_name it's your birthday",
    ),
    Kind.ANNIVERSARY: Template(
        subject="Happy work anniversary, $first_name!",
        text="Hey, $first_name $last_name it's your work anniversary",
    ),
}


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Every template: the default per occasion type and the variants per language tag."""

    defaults: Mapping[Kind, Template]
    variants: Mapping[tuple[Kind, str], Template]
    source: str = "built-in"

    def pick(self, kind: Kind | str, locale: str | None) -> Template:
        """The template for `locale`, falling back `de-AT` -> `de` -> the default."""
        kind = Kind(kind)
        for tag in fallbacks(locale):
            found = self.variants.get((kind, tag))
            if found is not None:
                return found
        return self.defaults[kind]


BUILT_IN = Catalogue(DEFAULTS, {})


def placeholder_values(
    kind: Kind | str,
    first_name: str,
    last_name: str,
    occasion_date: date | None = None,
    original: date | None = None,
) -> dict[str, str]:
    """The values a greeting's placeholders take (the age or years from the occasion's year)."""
    values = {
        "first_name": first_name,
        "last_name": last_name,
        "full_name": f"{first_name} {last_name}",
    }
    count = (
        str(occasion_date.year - original.year) if occasion_date and original is not None else ""
    )
    values["age" if Kind(kind) is Kind.BIRTHDAY else "years"] = count
    return values


def render(template: Template, values: Mapping[str, str]) -> Rendered:
    """Fill `template`; in the HTML part every value is HTML-escaped."""
    html_part = None
    if template.html:
        escaped = {name: html.escape(value) for name, value in values.items()}
        html_part = _fill(template.html, escaped)
    return Rendered(_fill(template.subject, values), _fill(template.text, values), html_part)


def _fill(source: str, values: Mapping[str, str]) -> str:
    """`string.Template(source).substitute(values)`, from the source split once per process: a
    worker renders every greeting from a handful of templates, and the regex scan of each
    substitution was most of a render's cost. Raises the KeyError or ValueError the
    template's own substitution raises."""
    parts = _parts(source)
    if parts is None:
        return string.Template(source).substitute(values)
    return "".join([values[text] if named else text for named, text in parts])


@functools.lru_cache(maxsize=256)
def _parts(source: str) -> tuple[tuple[bool, str], ...] | None:
    """`source` as (is a placeholder, literal text or placeholder name) pieces, `$$` already a
    literal `$`; None if it holds a `$` that is not a placeholder (string.Template refuses it)."""
    parts: list[tuple[bool, str]] = []
    at = 0
    for match in string.Template.pattern.finditer(source):
        if match["invalid"] is not None:
            return None
        parts.append((False, source[at : match.start()]))
        name = match["named"] or match["braced"]
        parts.append((False, "$") if name is None else (True, name))
        at = match.end()
    parts.append((False, source[at:]))
    return tuple(part for part in parts if part[0] or part[1])


# --- parsing a directory's files ---------------------------------------------------------------

# `birthday.subject.txt`, `anniversary.body.html`, optionally under a language tag directory.
_FILE = re.compile(r"^(?P<kind>[a-z]+)\.(?P<part>subject\.txt|body\.txt|body\.html)$")
_PARTS = {"subject.txt": "subject", "body.txt": "text", "body.html": "html"}


def parse_catalogue(files: Mapping[str, str], source: str) -> Catalogue:
    """A catalogue from a directory's files: relative path (`birthday.body.txt`,
    `de/birthday.body.txt`) -> text. Raises `TemplateError` naming the first bad file.

    The top level must hold a subject and a body for every occasion type (the default a
    user without a matching language gets); a language directory holds whole variants
    (subject and body; the HTML part is optional and never borrowed from elsewhere)."""
    parts: dict[tuple[Kind, str | None], dict[str, tuple[str, str]]] = {}
    for path in sorted(files):
        kind, tag, part = _place(path, source)
        parts.setdefault((kind, tag), {})[part] = (path, _trimmed(files[path]))
    defaults = {}
    for kind in Kind:
        found = parts.get((kind, None), {})
        defaults[kind] = _template(kind, found, source, None)
    variants = {
        (kind, tag): _template(kind, found, source, tag)
        for (kind, tag), found in parts.items()
        if tag is not None
    }
    return Catalogue(defaults, variants, source)


def _place(path: str, source: str) -> tuple[Kind, str | None, str]:
    """(occasion, language tag or None, part) of one file's relative path."""
    *dirs, name = path.split("/")
    match = _FILE.match(name)
    kinds = {kind.value.lower(): kind for kind in Kind}
    if len(dirs) > 1 or match is None or match["kind"] not in kinds:
        raise TemplateError(
            f"{source}/{path}: not a template file (expected e.g. birthday.subject.txt, "
            f"anniversary.body.txt, birthday.body.html, or de/birthday.body.txt)"
        )
    tag = None
    if dirs:
        try:
            tag = canonical_locale(dirs[0])
        except ValueError as exc:
            raise TemplateError(f"{source}/{dirs[0]}: {exc}") from None
    return kinds[match["kind"]], tag, _PARTS[match["part"]]


def _trimmed(text: str) -> str:
    """Editors end files with a line break; the greeting does not."""
    return text.rstrip("\r\n")


def _template(
    kind: Kind, found: dict[str, tuple[str, str]], source: str, tag: str | None
) -> Template:
    for part, file_part in (("subject", "subject.txt"), ("text", "body.txt")):
        if part not in found:
            where = f"{tag}/" if tag else ""
            what = "its language variant" if tag else "every occasion type's default"
            raise TemplateError(
                f"{source}/{where}{kind.value.lower()}.{file_part}: missing "
                f"({what} needs a subject and a body)"
            )
    for path, text in found.values():
        check(kind, text, f"{source}/{path}")
    subject_path, subject = found["subject"]
    if "\n" in subject or "\r" in subject:
        raise TemplateError(f"{source}/{subject_path}: a subject must be one line")
    html_part = found.get("html")
    return Template(subject, found["text"][1], html_part[1] if html_part else None)


def check(kind: Kind, text: str, name: str) -> None:
    """Raise `TemplateError` naming `name` if `text` uses a placeholder `kind` has not or
    does not render."""
    template = string.Template(text)
    if not template.is_valid():
        raise TemplateError(f"{name}: does not render ({_invalid(text)})")
    allowed = PLACEHOLDERS[kind]
    for placeholder in template.get_identifiers():
        if placeholder not in allowed:
            raise TemplateError(
                f"{name}: unknown placeholder ${placeholder} "
                f"(a {kind.value.lower()} knows ${', $'.join(allowed)})"
            )
    try:
        template.substitute({**_SAMPLE, **_SAMPLE_NUMBERS})
    except (KeyError, ValueError) as exc:
        raise TemplateError(f"{name}: does not render ({exc})") from None


def _invalid(text: str) -> str:
    """Where a template's `$` is neither a placeholder nor `$$`."""
    try:
        string.Template(text).substitute({**_SAMPLE, **_SAMPLE_NUMBERS})
    except ValueError as exc:
        return f"{exc}; write $$ for a dollar sign"
    except KeyError:
        pass
    return "a $ that is not a placeholder; write $$ for a dollar sign"
