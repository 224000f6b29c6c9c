"""A user's language: a BCP 47 tag (`de`, `de-AT`, `zh-Hant-TW`), checked and put in canonical
case, and the chain of ever less specific tags a greeting's template is looked up by.

A strict subset of BCP 47 (RFC 5646), parsed without a locale database: a language of 2-3
letters, an optional script of 4 letters, an optional region of 2 letters or 3 digits and
up to two variants. Extensions, private use and grandfathered tags are refused: no template
directory would be named by one, so accepting them would only hide a typo.
"""

from __future__ import annotations

import re

LOCALE_MAX = 35

_TAG = re.compile(
    r"""^(?P<language>[a-z]{2,3})
        (?:-(?P<script>[a-z]{4}))?
        (?:-(?P<region>[a-z]{2}|[0-9]{3}))?
        (?P<variants>(?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3})){0,2})$""",
    re.VERBOSE | re.IGNORECASE | re.ASCII,
)


def canonical_locale(tag: str) -> str:
    """`tag` in canonical case (`de-AT`, `zh-Hant-TW`); ValueError naming what is wrong.

    `_` is accepted for `-` (`de_AT`, the POSIX spelling people paste)."""
    text = tag.strip().replace("_", "-")
    match = _TAG.match(text) if len(text) <= LOCALE_MAX else None
    if match is None:
        raise ValueError(
            f"{tag[:40]!r} is not a language tag such as 'de', 'de-AT' or 'zh-Hant-TW' (BCP 47)"
        )
    parts = [match["language"].lower()]
    if match["script"]:
        parts.append(match["script"].title())
    if match["region"]:
        parts.append(match["region"].upper())
    parts.extend(v.lower() for v in match["variants"].split("-") if v)
    return "-".join(parts)


def fallbacks(locale: str | None) -> list[str]:
    """The tags to look a template up by, most specific first: `de-Latn-AT` -> `de-Latn-AT`,
    `de-Latn`, `de` (the default follows them). An unreadable tag gives none."""
    if not locale:
        return []
    try:
        parts = canonical_locale(locale).split("-")
    except ValueError:
        return []
    return ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]
