"""The one store every service shares; ``open_store`` picks the backend named in ``[store]``."""

from __future__ import annotations

import time

from ispd.store.base import Store, SubscriberRef
from ispd.store.config import StoreConfig
from ispd.store.errors import Conflict, InvalidValue, NotFound, SchemaTooNew, StoreError, StoreUnavailable
from ispd.store.metrics import StoreMetrics
from ispd.store.sqlite import Clock, MigrationStarting

__all__ = [
    "Conflict", "InvalidValue", "NotFound", "SchemaTooNew", "Store", "StoreConfig", "StoreError", "StoreMetrics",
    "StoreUnavailable", "SubscriberRef", "open_store",
]


async def open_store(config: StoreConfig, metrics: StoreMetrics | None = None, clock: Clock = time.time,
                     migration_starting: MigrationStarting | None = None) -> Store:
    """``migration_starting(step, target)`` is called from the store's thread before each schema
    migration it applies (a long one is worth telling systemd about)."""
    if config.backend == "postgresql":
        from ispd.store.postgresql import PostgreSQLStore

        return await PostgreSQLStore.open(config, metrics, clock, migration_starting)
    from ispd.store.sqlite import SQLiteStore

    return await SQLiteStore.open(config, metrics, clock, migration_starting)
