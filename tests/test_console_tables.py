"""Summary tables never cut a number: rich only where it fits, markdown in pipes and narrow terminals."""

import io
import re

from rich.console import Console
from rich.table import Table

from dynamicrag.console_tables import fits, print_table, table_markdown

HEADERS = ["run", "group", "n", "failed", "match", "em", "f1", "mean k", "None %", "malformed %",
           "selection F1", "recall@5", "NDCG@10"]
ROW = ["nq/dynamic-top40", "all", "200", "3", "0.455", "0.105", "0.312", "2.35", "12.5", "3.0", "0.412", "0.533", "0.611"]


def evaluation_table():
    table = Table(title="evaluation")
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if i < 2 else "right")
    table.add_row(*ROW)
    return table


def printed(console_kwargs):
    out = io.StringIO()
    console = Console(file=out, **console_kwargs)
    print_table(evaluation_table(), console)
    return out.getvalue()


def assert_whole(text):
    assert "…" not in text
    for cell in HEADERS + ROW:
        assert re.search(rf"\|\s{re.escape(cell)}\s\|", text), cell  # a whole cell of the markdown


def test_a_pipe_gets_markdown_with_every_header_and_number_whole():
    text = printed({"width": 80})  # a StringIO is no terminal: as in a pipe or a CI log
    assert text.startswith("evaluation\n\n| run | group |")
    assert "| --- | --- | ---: |" in text
    assert max(len(line) for line in text.splitlines()) > 80  # lines are not wrapped at the width
    assert_whole(text)


def test_a_narrow_terminal_gets_markdown_and_a_wide_one_the_rich_table():
    narrow = printed({"width": 80, "force_terminal": True, "color_system": None})
    assert_whole(narrow)
    wide = printed({"width": 200, "force_terminal": True, "color_system": None})
    assert "┃" in wide and "| run |" not in wide
    assert all(cell in wide for cell in HEADERS + ROW) and "…" not in wide


def test_fits_needs_a_terminal_as_wide_as_the_table():
    table = evaluation_table()
    assert fits(table, Console(file=io.StringIO(), width=200, force_terminal=True))
    assert not fits(table, Console(file=io.StringIO(), width=100, force_terminal=True))
    assert not fits(table, Console(file=io.StringIO(), width=200))  # not a terminal


def test_markdown_keeps_cells_as_rich_shows_them():
    table = Table("name", "value", title="t [bold]x[/bold]")
    table.add_row("a|b", "[bold]1.0[/bold]")
    assert table_markdown(table) == "t x\n\n| name | value |\n| --- | --- |\n| a\\|b | 1.0 |\n"
