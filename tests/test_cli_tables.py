"""The CLI's tables line up in a terminal, whatever the names hold."""

from __future__ import annotations

from ispd.cli import display_width, table_lines


def test_columns_line_up_with_wide_and_combining_characters() -> None:
    lines = table_lines(["ID", "NAME", "PLAN"], [[1, "Zoë 🎉 山田", "home"], [2, "bob", None], [3, "e\u0301e", "x"]])
    assert lines == ["ID  NAME         PLAN",
                     "1   Zoë 🎉 山田  home",
                     "2   bob          -",
                     "3   e\u0301e           x"]
    assert display_width("Zoë 🎉 山田") == 11 and display_width("e\u0301e") == 2
