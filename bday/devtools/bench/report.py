"""The bench's rows (a figure, its value, its baseline, a note) and the table they print as."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    name: str
    value: str
    baseline: str = ""
    note: str = ""


def table(rows: list[Row]) -> str:
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("name", "value", "baseline")]
    lines = [f"{'figure':<{widths[0]}}  {'value':>{widths[1]}}  {'vs baseline':<{widths[2]}}  note"]
    for r in rows:
        lines.append(
            f"{r.name:<{widths[0]}}  {r.value:>{widths[1]}}  {r.baseline:<{widths[2]}}  {r.note}"
        )
    return "\n".join(lines)


def pct(values: list[float], percentile: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(percentile / 100 * (len(values) - 1)))]


def fmt(values: list[float]) -> str:
    """The runs of one figure, rounded, for a row's note."""
    return ", ".join(f"{v:.0f}" for v in values)
