"""Durable store writes per second, with and without group commit.

Each write is one subscriber row plus its audit entry, committed and fsynced before the caller
is told (the same promise a DHCP ACK or an Accounting-Response will rest on). "one by one" awaits
each write before the next, so every write pays its own fsync; "concurrent N" keeps N writes in
flight, as N clients of a service would, and group commit lets them share fsyncs.

``--postgresql`` runs the same on the PostgreSQL backend too, against a private PostgreSQL
cluster (the tests' lab cluster, but with fsync on, under --dir) on its unix socket.

    .venv/bin/python bench/store_writes.py [--writes 5000] [--dir /var/tmp] [--postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ispd.logs import LogConfig, configure_logging
from ispd.store import StoreConfig, StoreMetrics, open_store

IN_FLIGHT = (1, 16, 256)


async def run(config: StoreConfig, writes: int, in_flight: int) -> tuple[float, float]:
    metrics = StoreMetrics()
    store = await open_store(config, metrics)
    try:
        counter = iter(range(writes))

        async def client() -> None:
            for i in counter:
                await store.add_subscriber(f"user-{i}", actor="bench")

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
    finally:
        await store.close()
    commits = sum(metrics.commit_batch_size.counts)
    return writes / elapsed, writes / commits


def table(name: str, config_for: Callable[[int], StoreConfig], writes: int) -> None:
    print(f"{name}\n{'clients in flight':>18}  {'durable writes/s':>16}  {'writes per commit':>17}")
    baseline = None
    for in_flight in IN_FLIGHT:
        count = min(writes, 1000) if in_flight == 1 else writes
        rate, per_commit = asyncio.run(run(config_for(in_flight), count, in_flight))
        baseline = baseline or rate
        print(f"{in_flight:>18}  {rate:>16,.0f}  {per_commit:>17.1f}   ({rate / baseline:.1f}x one by one)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=5000)
    parser.add_argument("--dir", type=Path, default=None, help="where the store files go (a real disk)")
    parser.add_argument("--postgresql", action="store_true", help="also on a private PostgreSQL cluster")
    args = parser.parse_args()
    configure_logging(LogConfig(level="warning"))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        table("sqlite", lambda in_flight: StoreConfig(path=Path(tmp) / f"bench-{in_flight}.db"), args.writes)
        if args.postgresql:
            from tests.lab.postgresql import PostgresCluster

            Path(tmp).chmod(0o755)  # the cluster runs as the postgres user when we are root
            with PostgresCluster(durable=True, parent=Path(tmp)) as cluster:
                print(f"(PostgreSQL {cluster.bindir.parent.name}, fsync on, under {tmp})")
                table("postgresql", lambda _: StoreConfig(path=Path(tmp) / "pg.db", backend="postgresql",
                                                          url=cluster.create_database()), args.writes)


if __name__ == "__main__":
    main()
