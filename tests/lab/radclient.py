"""FreeRADIUS's clients (radclient, radtest) run against ispd, and what they printed, read back.

radclient prints each reply as ``Received Access-Accept Id 9 from ...`` followed by one
``\tName = value`` line per attribute; ``Reply`` keeps the code and those lines.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest

_RECEIVED = re.compile(r"^Received (\S+) Id \d+ from")
_ATTRIBUTE = re.compile(r"^\t(\S+) = (.*)$")


@dataclass
class Reply:
    code: str | None  # Access-Accept, Access-Reject, Accounting-Response, ... or None: no reply
    attributes: dict[str, list[str]] = field(default_factory=dict)
    output: str = ""

    def first(self, name: str) -> str | None:
        values = self.attributes.get(name)
        return values[0] if values else None


def require_radclient() -> None:
    if shutil.which("radclient") is None or shutil.which("radtest") is None:
        pytest.skip("radclient/radtest not installed (tools/setup --test installs freeradius-utils)")


def parse(output: str) -> Reply:
    reply = Reply(None, output=output)
    receiving = False
    for line in output.splitlines():
        match = _RECEIVED.match(line)
        if match:
            reply.code, reply.attributes, receiving = match.group(1), {}, True
            continue
        if line.startswith("Sent "):
            receiving = False
            continue
        attribute = _ATTRIBUTE.match(line)
        if attribute and receiving:
            reply.attributes.setdefault(attribute.group(1), []).append(attribute.group(2).strip('"'))
    return reply


def radclient(server: str, command: str, secret: str, attributes: str, *, timeout: float = 1.0,
              retries: int = 1, netns: str | None = None) -> Reply:
    """Send one request (``attributes`` in radclient's ``Name = value, ...`` form), from inside
    ``netns`` if given."""
    inside = ["ip", "netns", "exec", netns] if netns else []
    result = subprocess.run([*inside, "radclient", "-x", "-t", str(timeout), "-r", str(retries), server, command,
                             secret],
                            input=attributes + "\n", capture_output=True, text=True, timeout=30)
    return parse(result.stdout + result.stderr)


def radtest(user: str, password: str, server: str, secret: str, method: str = "pap") -> Reply:
    result = subprocess.run(["radtest", "-t", method, user, password, server, "0", secret],
                            capture_output=True, text=True, timeout=30)
    return parse(result.stdout + result.stderr)
