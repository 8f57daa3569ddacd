"""Fixtures for the DNS tests: the lab hierarchy (real NSD servers from the root down, on
127.53.0.0/16 port 53, or the base in $ISPD_TEST_DNS_BASE) and Unbound iterating over it as the
reference resolver."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.dnshier import DEFAULT_BASE, DNSHierarchy, Unbound


def _skip_without_lab() -> None:
    if os.geteuid() != 0:
        pytest.skip("the DNS hierarchy binds port 53 on 127.53.x.y: needs root")
    missing = [tool for tool in ("nsd", "dig") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (tools/setup --tests installs them)")


@pytest.fixture(scope="session")
def dns_hierarchy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DNSHierarchy]:
    """The hierarchy, started once per test session. Tests that take a server down do it with
    ``dns_hierarchy.outage(address)``, which brings it back however the test ends."""
    _skip_without_lab()
    # ISPD_TEST_DNS_BASE="127.56": another base, so two test runs at once do not collide on port 53
    base = os.environ.get("ISPD_TEST_DNS_BASE", DEFAULT_BASE)
    with DNSHierarchy(base, workdir=tmp_path_factory.mktemp("dnshier")) as hierarchy:
        yield hierarchy


@pytest.fixture(scope="module")
def unbound(dns_hierarchy: DNSHierarchy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unbound]:
    """Unbound resolving from the lab's root hints, on 127.0.0.1 and a free port; one per module."""
    if shutil.which("unbound") is None:
        pytest.skip("unbound not installed (tools/setup --bench installs it)")
    with Unbound(dns_hierarchy.root_hints_path, Path(tmp_path_factory.mktemp("unbound"))) as server:
        yield server
