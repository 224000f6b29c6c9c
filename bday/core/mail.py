"""Mail settings' values, checked without I/O: EMAIL_FROM's address and the SMTP URL's
options (read by `bday.config` at start, used by `bday.delivery.smtp`)."""

from __future__ import annotations

import unicodedata
from email import policy
from email.headerregistry import Address, Group
from urllib.parse import parse_qs


def starttls_wanted(query: str) -> bool:
    """`?starttls=off` turns STARTTLS off; no other query is understood (ValueError)."""
    options = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - {"starttls"})
    if unknown:
        raise ValueError(f"unknown SMTP URL option {unknown[0]!r} (only ?starttls=off)")
    values = options.get("starttls", ["on"])
    if len(values) != 1 or values[0] not in ("on", "off"):
        raise ValueError("?starttls= takes on or off")
    return values[0] == "on"


def sender_address(value: str) -> Address:
    """EMAIL_FROM (`Greetings <hello@example.com>` or `hello@example.com`) as an Address;
    ValueError for anything else (two addresses, a group, a malformed one)."""
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError("must be one line without control characters")
    header = policy.default.header_factory("From", value)
    addresses: tuple[Address, ...] = getattr(header, "addresses", ())
    groups: tuple[Group, ...] = getattr(header, "groups", ())
    if header.defects or len(addresses) != 1 or groups[0].display_name is not None:
        raise ValueError("expected one address such as 'Greetings <hello@example.com>'")
    address = addresses[0]
    if not address.username or "." not in address.domain:
        raise ValueError(f"{address.addr_spec!r} is not a full address (user@domain.tld)")
    return Address(display_name=address.display_name, addr_spec=address.addr_spec)
