"""Durable store writes per second, with and without group commit.

Each write is one subscriber row plus its audit entry, committed and fsynced before the caller
is told (the same promise a DHCP ACK or an Accounting-Response will rest on). "one by one" awaits
each write before the next, so every write pays its own fsync; "concurrent N" keeps N writes in
flight, as N clients of a service would, and group commit lets them share fsyncs.

    .venv/bin/python bench/store_writes.py [--writes 5000] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from ispd.logs import LogConfig, configure_logging
from ispd.store import StoreConfig, StoreMetrics, open_store


async def run(directory: Path, writes: int, in_flight: int) -> tuple[float, float]:
    metrics = StoreMetrics()
    store = await open_store(StoreConfig(path=directory / f"bench-{in_flight}.db"), metrics)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=5000)
    parser.add_argument("--dir", type=Path, default=None, help="where the store files go (a real disk)")
    args = parser.parse_args()
    configure_logging(LogConfig(level="warning"))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"{'clients in flight':>18}  {'durable writes/s':>16}  {'writes per commit':>17}")
        baseline = None
        for in_flight in (1, 16, 256):
            count = min(args.writes, 1000) if in_flight == 1 else args.writes
            rate, per_commit = asyncio.run(run(Path(tmp), count, in_flight))
            baseline = baseline or rate
            print(f"{in_flight:>18}  {rate:>16,.0f}  {per_commit:>17.1f}   ({rate / baseline:.1f}x one by one)")


if __name__ == "__main__":
    main()
