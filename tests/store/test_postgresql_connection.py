"""The PostgreSQL backend's connection: SQLite's SQL as PostgreSQL reads it, and its settings."""

from __future__ import annotations

from pathlib import Path

from ispd.store import open_store
from ispd.store.config import StoreConfig
from tests.store.conftest import query


async def test_a_busy_timeout_below_a_millisecond_still_bounds_the_wait(postgres_url: str, tmp_path: Path) -> None:
    """lock_timeout is whole milliseconds, and 0 is no limit at all: a writer would wait for
    another's turn forever where the operator asked for the shortest wait."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db", backend="postgresql", url=postgres_url,
                                         busy_timeout_seconds=0.0004))
    try:
        assert await query(store, "SHOW lock_timeout") == [("1ms",)]
    finally:
        await store.close()
