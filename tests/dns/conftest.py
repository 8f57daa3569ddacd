"""Fixtures for the DNS tests: Unbound iterating over the lab hierarchy as the reference
resolver. The hierarchy itself (``dns_hierarchy``: real NSD servers from the root down, on
127.53.0.0/16 port 53, or the base in $ISPD_TEST_DNS_BASE) is the session's one, from
tests/conftest.py, shared with the integration tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.dnshier import DNSHierarchy, Unbound


@pytest.fixture(scope="module")
def unbound(dns_hierarchy: DNSHierarchy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unbound]:
    """Unbound resolving from the lab's root hints, on 127.0.0.1 and a free port; one per module."""
    if shutil.which("unbound") is None:
        pytest.skip("unbound not installed (tools/setup --test installs it)")
    with Unbound(dns_hierarchy.root_hints_path, Path(tmp_path_factory.mktemp("unbound"))) as server:
        yield server
