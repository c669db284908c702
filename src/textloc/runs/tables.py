"""Markdown tables: the one place that turns result rows into the ``results.md`` tables of every command.

Why: bench edit, bench safety, finetune, localize and the embedded model's evaluation each wrote their own
``"| a | b |"`` loops, with their own rules for a missing value. Here: the first column is left-aligned (it
names the row), the others right-aligned (numbers); a missing value (``None`` or NaN) prints ``missing``;
a float is formatted with its column's format (default ``{:.3f}``), anything else with ``str``; ``|`` inside
a cell is escaped so it cannot split the row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["format_cell", "markdown_table"]


def format_cell(value: Any, fmt: str | None = None, missing: str = "—") -> str:
    """One cell: ``missing`` for None/NaN, ``fmt.format(value)`` for numbers when given, ``{:.3f}`` for floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if fmt is not None and isinstance(value, int | float) and not isinstance(value, bool):
        text = fmt.format(value)
    elif isinstance(value, float):
        text = f"{value:.3f}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
                   formats: Sequence[str | None] | None = None, align: str | None = None,
                   missing: str = "—") -> str:
    r"""A GitHub-flavoured markdown table, ending in a newline.

    Args:
        headers: column titles.
        rows: one sequence of cells per row, as long as ``headers``.
        formats: per column, a ``str.format`` pattern for numbers (``"{:.2f}"``, ``"{:,}"``) or ``None``.
        align: per column ``"l"``, ``"r"`` or ``"c"`` (e.g. ``"lrr"``); default: first left, the rest right.
        missing: what a ``None``/NaN cell shows.
    """
    width = len(headers)
    if width == 0:
        raise ValueError("Expected at least one column, but got no headers")
    if formats is not None and len(formats) != width:
        raise ValueError(f"Expected {width} formats (one per column), but got {len(formats)}")
    align = align or "l" + "r" * (width - 1)
    if len(align) != width or set(align) - set("lrc"):
        raise ValueError(f"Expected align as {width} letters of l/r/c, but got {align!r}")
    rule = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(format_cell(h) for h in headers) + " |",
             "|" + "|".join(rule[a] for a in align) + "|"]
    for number, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"Expected {width} cells in row {number}, but got {len(row)}")
        cells = [format_cell(v, formats[i] if formats else None, missing) for i, v in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
