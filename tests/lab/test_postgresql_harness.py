"""A quick self-check of tests/lab/postgresql.py, the throwaway PostgreSQL the store's and the
integration tests run on: the ``postgres_cluster`` and ``postgres_url`` fixtures give a running
cluster reachable only on its unix socket and empty databases of their own that are dropped after
the test, and ``stop()`` leaves no process and no directory behind."""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path

import psycopg
import pytest

from tests.lab.dnshier import _gone, descendants
from tests.lab.postgresql import PostgresCluster

# The database test_a_database_used_and_left_open was given, and its connection left open,
# looked for by test_is_dropped_after_its_test.
GIVEN: list[tuple[str, psycopg.Connection[tuple[object, ...]]]] = []


def user_tables(url: str) -> int:
    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT count(*) FROM pg_tables"
                                 " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')").fetchone()
    assert row is not None
    return int(row[0])


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def test_the_cluster_runs_on_its_unix_socket_only(postgres_cluster: PostgresCluster) -> None:
    assert postgres_cluster.alive()
    with psycopg.connect(postgres_cluster.url()) as connection:
        settings = {name: connection.execute(f"SHOW {name}").fetchone()
                    for name in ("listen_addresses", "unix_socket_directories", "port", "fsync", "max_connections")}
    assert settings == {"listen_addresses": ("",), "unix_socket_directories": (str(postgres_cluster.socket_dir),),
                        "port": (str(postgres_cluster.port),), "fsync": ("off",), "max_connections": ("200",)}
    # PostgreSQL refuses root: as root the server runs as the postgres system user.
    expected_uid = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.getuid()
    assert uid_of(postgres_cluster.pid) == expected_uid


def test_each_database_is_fresh_and_empty(postgres_cluster: PostgresCluster, postgres_url: str) -> None:
    other = postgres_cluster.create_database()
    try:
        assert other != postgres_url
        for url in (postgres_url, other):
            assert user_tables(url) == 0
        with psycopg.connect(postgres_url) as connection:
            connection.execute("CREATE TABLE written (n integer)")
        assert (user_tables(postgres_url), user_tables(other)) == (1, 0)
    finally:
        postgres_cluster.drop_database(other)


def test_a_database_used_and_left_open(postgres_url: str) -> None:
    left_open = psycopg.connect(postgres_url)  # the fixture must cut it to drop the database
    GIVEN.append((postgres_url, left_open))
    left_open.execute("CREATE TABLE written (n integer)")
    left_open.commit()


def test_is_dropped_after_its_test(postgres_cluster: PostgresCluster) -> None:
    if not GIVEN:
        pytest.skip("looks for the database of test_a_database_used_and_left_open, which did not run before it")
    url, left_open = GIVEN[-1]
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(postgres_cluster.url()) as connection:
        assert connection.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name]).fetchone() == (0,)
    with pytest.raises(psycopg.OperationalError):  # cut by the drop, not left to wait for the test's end
        left_open.execute("SELECT 1")
    left_open.close()


def test_stop_leaves_no_process_and_no_directory(postgres_cluster: PostgresCluster) -> None:
    # A second cluster on the same port as this process's: the socket directories keep them apart.
    cluster = PostgresCluster(port=postgres_cluster.port).start()
    try:
        assert cluster.directory is not None and cluster.directory != postgres_cluster.directory
        directory, pid = cluster.directory, cluster.pid
        processes = [pid, *descendants(pid)]
        assert len(processes) > 1  # the postmaster and its checkpointer, writers, launchers
        open_connection = psycopg.connect(cluster.create_database())  # fast shutdown does not wait for it
        started = time.monotonic()
        cluster.stop()
        assert time.monotonic() - started < 5
    finally:
        cluster.stop()
    open_connection.close()
    assert all(_gone(process) for process in processes)
    assert not directory.exists()
    assert postgres_cluster.alive()
