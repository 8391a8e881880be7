"""Summary tables that survive a log file: a rich table where it fits, plain markdown elsewhere.

rich shrinks a table that is wider than the console by wrapping and then cutting cells, so an
80-column terminal, a pipe or a CI log (where rich assumes 80 columns) showed ``ma…`` for a
header and ``0.…`` for a number. :func:`print_table` prints the rich table only to a terminal
wide enough for every cell at its natural width, and otherwise the same cells as a markdown
table whose lines are never wrapped or cut.
"""

from __future__ import annotations

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

_ALIGN = {"right": "---:", "center": ":---:"}
_UNBOUNDED = 1_000_000


def _plain(console: Console, cell: object) -> str:
    # As rich would show it (markup applied), on one line.
    text = console.render_str(cell) if isinstance(cell, str) else cell
    return " ".join(getattr(text, "plain", str(text)).split())


def table_markdown(table: Table, console: Console | None = None) -> str:
    """The cells of a rich table as a GitHub markdown table, title on the line before.

    Args:
        table: A table of plain or markup strings.
        console: The console whose markup rules read the cells (default: a plain one).

    Returns:
        Markdown text ending with a newline; ``|`` in a cell is escaped.
    """
    console = console or Console()
    columns = table.columns
    cells = [[_plain(console, c) for c in col.cells] for col in columns]
    lines = [[_plain(console, col.header) for col in columns], [_ALIGN.get(col.justify, "---") for col in columns]]
    lines += [[cells[j][i] for j in range(len(columns))] for i in range(table.row_count)]
    title = f"{_plain(console, table.title)}\n\n" if table.title else ""
    return title + "".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |\n" for line in lines)


def fits(table: Table, console: Console) -> bool:
    """True when ``console`` is a terminal wide enough for the table with no cell wrapped."""
    natural = Measurement.get(console, console.options.update(width=_UNBOUNDED), table).maximum
    return console.is_terminal and natural <= console.width


def print_table(table: Table, console: Console) -> None:
    """Print a summary table: rich where it fits (:func:`fits`), else as markdown, never cut.

    Args:
        table: The table.
        console: Where to print it.
    """
    if fits(table, console):
        console.print(table)
    else:
        console.print(table_markdown(table, console), markup=False, highlight=False, emoji=False, soft_wrap=True)
