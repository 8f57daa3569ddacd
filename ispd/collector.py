"""Python's cycle collector, set for a daemon that holds millions of long-lived objects.

Each collection of an older generation walks every container object that survived into it, so
its cost grows with what the daemon holds (the caches, lease tables, policy zones), and it runs
on whichever thread allocated last, the event loop's included. Two remedies: collect rarely
(``collect_rarely``), and hold collection off while a large structure is built beside the one in
use (``collection_paused``). Large read-only structures are best kept out of the collector's sight
altogether, as bytes and atomic values it does not track (``ispd.dns.policy`` does so).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _Pauses:
    lock = threading.Lock()
    count = 0  # blocks under way
    enabled_before = True  # whether collection was on when the first began


def collect_rarely() -> None:
    """For the daemon and its workers, at their start."""
    # The caches and lease tables hold millions of long-lived objects; with CPython's default
    # thresholds (700, 10, 10) the collector ran so often that it cost a quarter of a DNS cache
    # miss (dnsperf on the lab hierarchy: 4 200 → 5 400 misses/s). But each young collection
    # walks every object made since the last that is still alive - under a load of misses, the
    # new cache entries: at 100 000 a collection held the event loop up to 56 ms every few
    # seconds; at 25 000 up to 9 ms, for as many misses a second (bench/dns.py, 30 s runs). The
    # oldest generation is looked at as rarely as before (50 x 400 young collections: each full
    # collection walks the whole cache). Cycles are still collected, but late: a connection or
    # a request must not end in one, or what it holds (buffers, TLS state) stays with it - 20-40
    # kB per connection, measured - until a full collection. Hence
    # listeners.forget_connection_error and SMTPSession._session_over; tests check with the
    # `without_cycle_collection` fixture.
    gc.set_threshold(25_000, 50, 400)


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cycle collection, in any thread, while the block runs: for building a large structure
    (an executor's job) beside the one it replaces. Both are alive meanwhile, with the parser's
    temporaries, and the collections the build's allocations set off walked them all on the
    event loop's time: compiling a policy zone of a million triggers held the loop 0.7 s at a
    time. Blocks may overlap (several threads); collection comes back when the last one ends,
    as it was before the first (a test may have turned it off)."""
    with _Pauses.lock:
        if _Pauses.count == 0:
            _Pauses.enabled_before = gc.isenabled()
            gc.disable()
        _Pauses.count += 1
    try:
        yield
    finally:
        with _Pauses.lock:
            _Pauses.count -= 1
            if _Pauses.count == 0 and _Pauses.enabled_before:
                gc.enable()
