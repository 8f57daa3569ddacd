from __future__ import annotations

import gc
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.dnshier import DEFAULT_BASE, DNSHierarchy
from tests.lab.netns import Lab, lab
from tests.lab.postgresql import DEFAULT_PORT, PostgresCluster
from tests.lab.process import IspdProcess, base_config


@pytest.fixture
def ispd(tmp_path: Path) -> Iterator[IspdProcess]:
    """A running ispd with its own store and metrics port; killed at the end if still up."""
    with IspdProcess(tmp_path, base_config(tmp_path)) as process:
        process.start()
        yield process


@pytest.fixture
def without_cycle_collection() -> Iterator[None]:
    """The garbage collector off, as good as the daemon's rare runs of it: an object a test
    expects gone with its connection is gone only if no reference cycle holds it."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
def netlab() -> Iterator[Lab]:
    with lab() as built:
        yield built


def dns_base() -> str:
    """The first two octets of this test process's DNS hierarchy: $ISPD_TEST_DNS_BASE (e.g.
    "127.56", so that two test runs at once do not collide on port 53) or 127.53, moved up by
    one for each pytest-xdist worker after the first (gw1: 127.54), each with its own."""
    first, second = os.environ.get("ISPD_TEST_DNS_BASE", DEFAULT_BASE).split(".")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    offset = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    return f"{first}.{int(second) + offset}"


@pytest.fixture(scope="session")
def dns_hierarchy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DNSHierarchy]:
    """The lab's DNS hierarchy (tests/lab/dnshier.py: NSD servers from the root down, on port 53
    of 127.53.x.y, or of the base in $ISPD_TEST_DNS_BASE), one for the whole test session: the
    first test that asks starts it (a few seconds), the end of the session stops it, also when
    tests failed or the run was interrupted (and its NSDs die with the test process anyway).

    Tests share it, so they leave it as they found it: a server taken down comes back
    (``dns_hierarchy.outage(address)`` sees to that however the test ends), a ``RogueServer``
    or ``RecordingRelay`` on one of its spare addresses is stopped by the test that started it.
    """
    if os.geteuid() != 0:
        pytest.skip("the DNS hierarchy binds port 53 on 127.x.y.z: needs root")
    missing = [tool for tool in ("nsd", "dig") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (tools/setup --test installs them)")
    with DNSHierarchy(dns_base(), workdir=tmp_path_factory.mktemp("dnshier")) as hierarchy:
        yield hierarchy


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster (tests/lab/postgresql.py: Debian's server on a data
    directory of its own, unix socket only, durability off), one for the whole test session of
    this process: the first test that asks starts it (about a second), the end of the session
    stops it and removes its directory, also when tests failed or the run was interrupted (and it
    dies with the test process anyway). Each pytest-xdist worker has its own, in its own
    directory; its socket is named by port 55432 plus the worker's number. Fails, not skips, where
    PostgreSQL is not installed: tools/setup --test installs it.

    Tests share it: each takes a database of its own (``postgres_url``) rather than changing
    the cluster."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    offset = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    with PostgresCluster(port=DEFAULT_PORT + offset) as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """The libpq URL of a fresh empty database (as the superuser ``postgres``, e.g.
    ``postgresql://postgres@/test_812_3?host=/tmp/ispd-pg-x/socket&port=55432``), dropped after
    the test together with any connection still open to it."""
    url = postgres_cluster.create_database()
    yield url
    postgres_cluster.drop_database(url)
