"""CSV cells as `bday users export` writes them and `bday users import` reads them back.

Spreadsheet formulas: a cell beginning with `=`, `+`, `-` or `@` (or a tab or carriage return,
which some spreadsheets skip before one) is run as a formula when an HR person opens the file
(CSV injection; OWASP's advice is a leading apostrophe). Export writes such a cell with one
apostrophe before it, and import takes exactly one off a cell that has one or more before such
a character, so `export` then `import --sync` changes nothing: a name `=1+1` is written `'=1+1`,
a name `'=1+1` is written `''=1+1`, and both are read back as they were. A cell beginning with
an apostrophe followed by anything else (`'Neill`) is written and read as it is.
"""

from __future__ import annotations

FORMULA_START = frozenset("=+-@\t\r")


def _formula_after_quotes(cell: str) -> bool:
    rest = cell.lstrip("'")
    return rest[:1] in FORMULA_START and rest != ""


def neutralise(cell: str) -> str:
    """The cell as export writes it: a spreadsheet shows it as text, never runs it."""
    return "'" + cell if _formula_after_quotes(cell) else cell


def restore(cell: str) -> str:
    """The cell as import reads it: `neutralise` undone (exactly one apostrophe)."""
    return cell[1:] if cell.startswith("'") and _formula_after_quotes(cell) else cell


def breaks_line(cell: str) -> bool:
    """Whether the cell cannot be written on one line (the importer reads one user per line)."""
    return "\n" in cell or "\r" in cell
