"""The README's command table names every command `ispd --help` offers."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

from ispd import __version__
from ispd.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"


def commands(parser: argparse.ArgumentParser, prefix: str) -> list[str]:
    chosen = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not chosen:
        return [prefix]
    return [name for action in chosen for word, sub in action.choices.items()
            for name in commands(sub, f"{prefix} {word}")]


def test_the_readme_command_table_has_every_command() -> None:
    """A newcomer reads the table under "The admin CLI" as the list of commands; `ispd mailbox`,
    `ispd mail queue`, `ispd dns anchors` and `ispd dns nta` were only in other sections."""
    text = README.read_text()
    table = text[text.index("## The admin CLI"):text.index("## How passwords are stored")]
    cells = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| `ispd")]
    missing = []
    for command in commands(build_parser(), "ispd"):
        parent, word = command.rsplit(" ", 1)
        # in its own words (`ispd session list`), or listed after its parent's (`…suspend`, `close`)
        if not any(command in cell or (f"`{parent} " in cell and re.search(rf"`{re.escape(word)}\b", cell))
                   for cell in cells):
            missing.append(command)
    assert missing == []


def test_the_version_is_the_packages() -> None:
    """The version is written twice (pyproject.toml, ispd/__init__.py): `ispd --version` must not
    say another than the package a bump in one alone would install."""
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == __version__


def test_the_readme_runs_dhclient_with_its_own_files_and_in_the_background() -> None:
    """"Trying it" offered `dhclient -d -1 wan0` in the namespace: -d keeps it in the foreground
    once bound (the next command, `ispd lease list`, never came), and without -pf and -lf it
    wrote this machine's /run/dhclient.pid and /var/lib/dhcp/dhclient.leases."""
    runs = [line for line in README.read_text().splitlines() if re.search(r"\bdhclient( -\w+)* -1\b", line)]
    assert runs
    for line in runs:
        assert " -pf " in line and " -lf " in line and not re.search(r" -d\b", line), line
