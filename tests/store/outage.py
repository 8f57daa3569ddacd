"""A store whose writes fail as when its database server is down, for the tests of what the
services and the store say and do during and after such an outage."""

from __future__ import annotations

import sqlite3
from typing import Any

from ispd.store import Store


class WritesDown:
    """Every write transaction of ``store`` fails to begin ("disk I/O error", as a server gone
    away) until ``up()``; reads go on."""

    def __init__(self, store: Store) -> None:
        self.down = True
        connector = store._writer.connector  # type: ignore[attr-defined]
        begin_write = connector.begin_write

        def failing_begin(conn: Any) -> None:
            if self.down:
                raise sqlite3.OperationalError("disk I/O error")
            begin_write(conn)

        connector.begin_write = failing_begin

    def up(self) -> None:
        self.down = False
