"""A worker process's health poll: its store has a writer of its own."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from ispd.service import Health
from ispd.store import StoreConfig, StoreUnavailable, open_store
from ispd.workers import _WorkerHost


async def test_a_workers_health_poll_sees_its_stores_writes_work_again_without_a_clients_write(
        tmp_path: Path) -> None:
    """RADIUS in a process of its own (radius.own_process): after an outage of the store, its
    health said "accounting writes to the store are failing" until an Accounting-Request was
    written, /healthz's write (check_writes) being made on the main process's store only. A
    quiet worker (the night, a standby just taken over) stayed failing, and so did /healthz."""
    store = await open_store(StoreConfig(path=tmp_path / "w.db"))
    connector = store._writer.connector
    begin_write = connector.begin_write
    down = True

    def failing_begin(conn: sqlite3.Connection) -> None:
        if down:
            raise sqlite3.OperationalError("unable to open database file")
        begin_write(conn)

    connector.begin_write = failing_begin  # type: ignore[method-assign]

    class Service:  # as RadiusService.health: failing while the store's commits are
        def health(self) -> Health:
            failing = store.commits_failing()
            return Health(failing is None, failing or "")

        def describe(self) -> str:
            return "radius"

    host = _WorkerHost(SimpleNamespace(name="radius"), tmp_path / "ispd.toml", None,  # type: ignore[arg-type]
                       tmp_path / "w.sock", -1, 1, None)
    host.service = Service()  # type: ignore[assignment]
    host.store = store
    try:
        with pytest.raises(StoreUnavailable):
            await store.add_subscriber("alice", actor="t")
        assert (await host._command_health({}))["ok"] is False
        down = False  # the server is back; no client writes
        assert (await host._command_health({}))["ok"] is True
    finally:
        await store.close()
