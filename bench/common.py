"""What every benchmark script shares: the machine line of its report, the kernel's UDP drop
counter, the check for the tools it needs, and exiting cleanly on a signal."""

from __future__ import annotations

import os
import shutil
import sys


class ServerFailed(RuntimeError):
    pass


def machine_summary() -> str:
    cores = os.cpu_count() or 1
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{cores} cores ({model}), {len(os.sched_getaffinity(0))} usable"


def udp_rcvbuf_errors_in(snmp: str) -> int:
    """UDP RcvbufErrors (datagrams the kernel dropped for a full socket buffer) from the text of
    /proc/net/snmp, which is per network namespace."""
    lines = [line.split() for line in snmp.splitlines() if line.startswith("Udp:")]
    if len(lines) < 2 or "RcvbufErrors" not in lines[0]:
        return 0
    return int(lines[1][lines[0].index("RcvbufErrors")])


def raise_exit(signum: int, frame: object) -> None:
    """A signal handler: SIGTERM/SIGHUP unwind like Ctrl-C, so cleanup code runs."""
    raise SystemExit(128 + signum)


def require(script: str, problems: list[str], tools: tuple[str, ...]) -> None:
    """Exit with one line naming everything missing (root, tools), or return."""
    problems = list(problems)
    if os.geteuid() != 0:
        problems.insert(0, "needs root")
    problems += [f"{tool} not found" for tool in tools if shutil.which(tool) is None]
    if problems:
        sys.exit(f"{script}: " + "; ".join(problems) + " — tools/setup --bench installs the tools")
