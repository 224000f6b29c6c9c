"""Option types shared by commands: numbers are range-checked when parsed, so a value
PostgreSQL or Python cannot hold is a usage error naming the option, never an overflow."""

from __future__ import annotations

import click

# A billion rows is more than any listing needs, and far inside PostgreSQL's bigint LIMIT.
LIMIT = click.IntRange(1, 1_000_000_000)
