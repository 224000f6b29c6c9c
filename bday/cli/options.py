"""Option types shared by commands: numbers are range-checked when parsed, so a value
PostgreSQL or Python cannot hold is a usage error naming the option, never an overflow."""

from __future__ import annotations

import math

import click

# A billion rows is more than any listing needs, and far inside PostgreSQL's bigint LIMIT.
LIMIT = click.IntRange(1, 1_000_000_000)


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan (which passes every range check) and inf."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number
