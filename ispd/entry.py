"""The ``ispd`` command's entry point, kept free of heavy imports.

``ispd run`` (and a worker it starts, ``ispd worker``) holds back SIGTERM, SIGINT and SIGHUP
from its first instant: loading the daemon's modules takes the better part of a second, and a
signal in that window would take its default
action (a HUP from ``systemctl reload`` right after ``start`` would kill the daemon, a TERM
would end it without a clean stop). Blocked signals stay pending; the supervisor unblocks them
once its own handlers are installed, and they are handled then.
"""

from __future__ import annotations

import signal
import sys

HELD_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def command_of(argv: list[str]) -> str | None:
    """The command ``ispd`` was given: its first argument, or the one after a ``-c FILE`` before it."""
    if argv[:1] in (["-c"], ["--config"]):
        argv = argv[2:]
    elif argv[:1] and argv[0].startswith(("--config=", "-c")) and argv[0] != "-c":
        argv = argv[1:]
    return argv[0] if argv else None


def main() -> int:
    if command_of(sys.argv[1:]) in ("run", "worker"):
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        from ispd.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        # Ctrl-C while the modules load or the command line and config are read (the better part
        # of a second, before the command's own handling): the exit status the command gives it
        # later, not a traceback.
        return 130
