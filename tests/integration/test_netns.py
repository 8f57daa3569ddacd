"""The lab's network namespaces: ispd serving on one test host, reached from another."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.lab.netns import Lab
from tests.lab.process import IspdProcess, base_config


def test_ispd_in_a_namespace_answers_a_client_in_another(netlab: Lab, tmp_path: Path) -> None:
    server, client = netlab.namespace("srv"), netlab.namespace("cli")
    netlab.link(server, "198.18.0.1/24", client, "198.18.0.2/24")
    config = base_config(tmp_path, metrics={"listen": "198.18.0.1:9520"})
    with IspdProcess(tmp_path, config, netns=server) as ispd:
        ispd.start()
        result = netlab.run(client, "curl", "-sS", "--max-time", "5", "http://198.18.0.1:9520/healthz")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["status"] == "ok"
        assert ispd.terminate() == 0


def test_ipv6_link(netlab: Lab) -> None:
    a, b = netlab.namespace("a6"), netlab.namespace("b6")
    netlab.link(a, "2001:db8::1/64", b, "2001:db8::2/64")
    result = netlab.run(a, "ping", "-6", "-c", "1", "-w", "5", "2001:db8::2")
    assert result.returncode == 0, result.stdout + result.stderr


def test_namespaces_are_removed_even_when_the_test_fails() -> None:
    from tests.lab.netns import lab

    names: list[str] = []
    with pytest.raises(RuntimeError), lab() as built:
        names.append(built.namespace("gone"))
        raise RuntimeError("test failure")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert names[0] not in listed


def test_addresses_outside_the_test_ranges_are_refused(netlab: Lab) -> None:
    a, b = netlab.namespace("x"), netlab.namespace("y")
    with pytest.raises(ValueError, match=r"198\.18\.0\.0/15"):
        netlab.link(a, "10.0.0.1/24", b, "10.0.0.2/24")
