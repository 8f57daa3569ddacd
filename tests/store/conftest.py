"""A store with a clock the test moves by hand: each test runs on both backends, a temporary
SQLite file and a fresh database of the lab's throwaway PostgreSQL (``tests/lab/postgresql.py``).
A test of SQLite alone asks for ``sqlite_store``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ispd.store import Store, StoreConfig, StoreMetrics, open_store


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    """A new store's configuration: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "postgresql":
        return StoreConfig(path=tmp_path / "ispd.db", backend="postgresql", url=request.getfixturevalue("postgres_url"))
    return StoreConfig(path=tmp_path / "ispd.db")


@pytest.fixture
async def store(store_config: StoreConfig, clock: FakeClock) -> AsyncIterator[Store]:
    opened = await open_store(store_config, StoreMetrics(), clock)
    yield opened
    await opened.close()


async def query(store: Store, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows read straight from the store's tables, with SQL as the store writes it: either backend."""
    reader: Any = store
    rows: list[tuple[Any, ...]] = await reader._read("test", lambda conn: [tuple(r) for r in conn.execute(sql, params)])
    return rows


async def execute(store: Store, sql: str, params: tuple[Any, ...] = ()) -> None:
    """A write straight to the store's tables, as the store's own (errors translated as its own)."""
    writer: Any = store
    await writer._write("test", lambda conn: conn.execute(sql, params))


@pytest.fixture
async def sqlite_store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    opened = await open_store(StoreConfig(path=tmp_path / "ispd.db"), StoreMetrics(), clock)
    yield opened
    await opened.close()
