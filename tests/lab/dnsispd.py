"""ispd's DNS resolver as a real process over the lab's DNS hierarchy, for integration tests.

The hierarchy is the session's one: the ``dns_hierarchy`` fixture of tests/conftest.py, shared
by tests/dns and tests/integration (``lab_hierarchy(request)`` gives the same, for module
fixtures written before it).

``DNSIspd`` is an ``IspdProcess`` whose config enables ``[dns]`` on a free port of 127.0.0.1,
with the hierarchy's root hints and trust anchor (its root is signed), loopback allowed and IPv6
off (the lab is IPv4); ``dig()``,
``metric()`` and ``assert_healthy()`` are what the tests ask of it. ``dig_in_netns`` runs dig
inside a network namespace and gives the same ``DigResult`` as ``tests.lab.dnshier.dig``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any, Self

import pytest

from tests.lab.dnshier import DIG, DigResult, DNSHierarchy, Record, dig, free_port
from tests.lab.process import IspdProcess, base_config


def lab_hierarchy(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory | None = None) -> DNSHierarchy:
    """The session's hierarchy, the ``dns_hierarchy`` fixture of tests/conftest.py. Tests and
    fixtures should simply take ``dns_hierarchy`` as an argument; this stays for those that
    called it from a module fixture of that name (which then gets the session's one)."""
    hierarchy: DNSHierarchy = request.getfixturevalue("dns_hierarchy")
    return hierarchy


def dns_section(hierarchy: DNSHierarchy | None, port: int, **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "enabled": True,
        "listen": [f"127.0.0.1:{port}"],
        "allow": ["127.0.0.0/8"],
        "resolver": {"do_ipv6": False, "do_not_query_localhost": False},  # the lab is on loopback
    }
    if hierarchy is not None:
        section["root_hints"] = str(hierarchy.root_hints_path)
        section["dnssec"] = {"trust_anchor_file": str(hierarchy.trust_anchor_path)}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(section.get(key), dict):
            section[key] = {**section[key], **value}
        else:
            section[key] = value
    return section


class DNSIspd(IspdProcess):
    """ispd with ``[dns]`` on 127.0.0.1:``port`` (a free one unless given)."""

    def __init__(self, workdir: Path, hierarchy: DNSHierarchy, *, port: int | None = None,
                 **dns: Any) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port("127.0.0.1")
        self.hierarchy = hierarchy
        super().__init__(workdir, base_config(workdir, dns=dns_section(hierarchy, self.port, **dns)))

    def __enter__(self) -> Self:
        return self

    def dig(self, qname: str, qtype: str = "A", *options: str, timeout: float = 5.0) -> DigResult:
        return dig("127.0.0.1", qname, qtype, *options, port=self.port, timeout=timeout)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metric_value(name, labels)
        return 0.0 if value is None else value

    def assert_healthy(self) -> None:
        """Still running, and nothing in its log says it stumbled."""
        assert self.proc is not None and self.proc.poll() is None, f"ispd exited:\n{self.log_tail()}"
        text = self.log_text()
        assert "Traceback" not in text, self.log_tail(80)
        assert not self.log_events("dns.resolve.failed"), self.log_tail(80)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# --- dig inside a network namespace ----------------------------------------------------------

_STATUS = re.compile(r"status: ([A-Z]+)")
_FLAGS = re.compile(r";; flags: ([a-z ]*);")
_SECTION = re.compile(r";; (ANSWER|AUTHORITY|ADDITIONAL) SECTION:")


def parse_dig(text: str) -> DigResult:
    """dig's output (as ``tests.lab.dnshier.dig`` runs it) as a ``DigResult``."""
    sections: dict[str, list[Record]] = {"ANSWER": [], "AUTHORITY": [], "ADDITIONAL": []}
    current: list[Record] | None = None
    for line in text.splitlines():
        heading = _SECTION.match(line)
        if heading:
            current = sections[heading.group(1)]
            continue
        if not line.strip():
            current = None
            continue
        if line.startswith(";") or current is None:
            continue
        parts = line.split(None, 4)
        if len(parts) == 5 and parts[2] == "IN":
            current.append(Record(parts[0].lower(), int(parts[1]), parts[3], parts[4]))
    status = _STATUS.search(text)
    flags = _FLAGS.search(text)
    return DigResult(status.group(1) if status else "TIMEOUT",
                     frozenset(flags.group(1).split()) if flags else frozenset(),
                     tuple(sections["ANSWER"]), tuple(sections["AUTHORITY"]), tuple(sections["ADDITIONAL"]), text)


def dig_in_netns(ns: str, server: str, qname: str, qtype: str = "A", *options: str, port: int = 53,
                 timeout: float = 2.0) -> DigResult:
    command = ["ip", "netns", "exec", ns, DIG, f"@{server}", "-p", str(port), qname, qtype,
               f"+time={max(1, round(timeout))}", "+tries=1", "+nocmd", "+nostats", "+noquestion", *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 10, check=False)
    parsed = parse_dig(result.stdout)
    return DigResult(parsed.status, parsed.flags, parsed.answer, parsed.authority, parsed.additional,
                     result.stdout + result.stderr)


def rdatas(result: DigResult, rtype: str = "A") -> set[str]:
    return {r.rdata for r in result.answer if r.type == rtype}
