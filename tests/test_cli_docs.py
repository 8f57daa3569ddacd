"""The README's command table names every command `ispd --help` offers."""

from __future__ import annotations

import argparse
import inspect
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


def test_the_readme_names_every_command_that_needs_the_daemon() -> None:
    """The paragraph on the control socket is where a newcomer learns which commands fail with
    "cannot reach the ispd daemon" when none runs; it said "later the mail queue" and left out
    `ispd dns nta` while both already went through the socket."""
    text = README.read_text()
    paragraph = text[text.index("Most commands work on the store"):text.index("Reservation keys are stored")]
    named: set[str] = set()
    for span in re.findall(r"`(ispd [^`]+)`", paragraph):
        *parents, last = span.split()
        named.update(" ".join([*parents, word]) for word in last.split("|"))

    def leaves(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, argparse.ArgumentParser]]:
        chosen = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not chosen:
            return [(prefix, parser)]
        return [leaf for action in chosen for word, sub in action.choices.items()
                for leaf in leaves(sub, f"{prefix} {word}")]

    through_the_socket = [name for name, parser in leaves(build_parser(), "ispd")
                          if "handler" in parser._defaults  # (not `ispd run`, `ispd worker`)
                          and "daemon_request(" in inspect.getsource(parser._defaults["handler"])]
    assert "ispd mail queue flush" in through_the_socket
    assert [name for name in through_the_socket
            if name not in named and not any(name.startswith(n.removesuffix(" …")) for n in named if n.endswith("…"))] == []


def test_the_readme_finds_the_dev_daemons_pid_where_it_is() -> None:
    """The first steps said `kill -HUP <pid>` and nothing of where to find it: the daemon runs in
    another terminal (tools/dev-run execs it) and its log does not name its PID. Its store's lock
    file has it (ispd/daemonlock.py)."""
    from ispd.config import load_config

    root = README.parent
    store = load_config(root / "configs" / "dev.toml").store.path
    lock = store.with_name(store.name + ".lock").relative_to(root)
    assert f"kill -HUP $(cat {lock})" in README.read_text()


def test_the_readme_names_every_config_warning_check_config_prints() -> None:
    """The check-config row listed two kinds of warnings (the admin API's listener, certificates)
    while check-config and the daemon's log give a dozen more, each under its own event: an
    operator reading it, or grepping the log for one, did not know what to expect."""
    text = README.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `ispd check-config`"))
    source = Path(__file__).resolve().parent.parent / "ispd"
    events = {event for path in source.rglob("*.py")
              for event in re.findall(r'ConfigWarning\("([a-z0-9_.]+)"', path.read_text())}
    # the warnings of the files the sections name, which check-config reads as the services do
    events |= {"dns.forward_zone_shadowed", "dns.ddr.unverifiable", "tls.certificate.expiring"}
    assert len(events) > 10
    assert sorted(event for event in events if f"`{event}`" not in row) == []
