from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ispd.credentials import derive_credentials
from ispd.store import Conflict, InvalidValue, NotFound, Store, StoreConfig, StoreMetrics, StoreUnavailable, open_store
from ispd.store.models import CredentialPolicy, Lease, LeaseState, SubscriberStatus
from ispd.store.sqlite import _HISTORY, Connector
from tests.store.conftest import FakeClock
from tests.store.outage import WritesDown


async def test_plans_and_subscribers_round_trip(store: Store, clock: FakeClock) -> None:
    plan = await store.add_plan("home-100", actor="t", download_kbps=100_000, upload_kbps=20_000, max_sessions=1,
                                credential_policy=CredentialPolicy.NT_HASH)
    assert (await store.get_plan("home-100")) == plan
    assert (await store.get_plan(plan.id)) == plan
    alice = await store.add_subscriber("alice", actor="t", plan="home-100", full_name="Alice", account_ref="A-1")
    assert alice.status is SubscriberStatus.ACTIVE and alice.plan_id == plan.id and alice.created_at == clock.now
    assert await store.get_subscriber("alice") == alice
    assert await store.get_subscriber(alice.id) == alice
    assert await store.get_subscriber(str(alice.id)) == alice
    await store.add_subscriber("bob", actor="t")
    assert [s.username for s in await store.list_subscribers()] == ["alice", "bob"]

    clock.now += 60
    suspended = await store.set_subscriber_status("alice", SubscriberStatus.SUSPENDED, actor="t", reason="unpaid")
    assert suspended.status is SubscriberStatus.SUSPENDED and suspended.status_reason == "unpaid"
    assert suspended.updated_at == clock.now
    assert [s.username for s in await store.list_subscribers(SubscriberStatus.SUSPENDED)] == ["alice"]
    assert [s.username for s in await store.list_subscribers(limit=1)] == ["alice"]
    assert [s.username for s in await store.list_subscribers(after="alice", limit=1)] == ["bob"]
    assert await store.list_subscribers(SubscriberStatus.SUSPENDED, after="alice") == []
    with pytest.raises(Conflict, match="already suspended"):
        await store.set_subscriber_status("alice", SubscriberStatus.SUSPENDED, actor="t")

    deleted = await store.delete_subscriber("bob", actor="t")
    assert deleted.username == "bob"
    with pytest.raises(NotFound):
        await store.get_subscriber("bob")


async def test_a_username_of_digits_that_is_also_an_id_must_be_told_apart(store: Store) -> None:
    first = await store.add_subscriber("first", actor="t")
    numeric = await store.add_subscriber(str(first.id), actor="t")
    # "1" is the username of #2 and the id of "first": which one a delete meant is not guessed.
    with pytest.raises(Conflict, match=rf"names two subscribers, the username of #{numeric.id} and the id of 'first'"):
        await store.get_subscriber(str(first.id))
    assert (await store.get_subscriber(f"#{first.id}")).username == "first"  # "#ID": the id, always
    assert (await store.get_subscriber(f"#{numeric.id}")).id == numeric.id
    assert (await store.get_subscriber(first.id)).username == "first"
    assert (await store.get_subscriber(str(numeric.id))).id == numeric.id  # "2": only an id
    with pytest.raises(NotFound):
        await store.get_subscriber("#99")
    with pytest.raises(InvalidValue, match="reads as a subscriber's id"):
        await store.add_subscriber("#5", actor="t")


async def test_names_are_what_a_screen_and_a_log_line_show_as_they_are(store: Store) -> None:
    for bad in ("eve\nINJECT", " alice", "bob\u0000x", "a\u202etxt", "x" * 254, ""):
        with pytest.raises(InvalidValue, match="is not usable here"):
            await store.add_subscriber(bad, actor="t")
    # Joiners belong in Persian and Indic names and in emoji; an empty optional field is none.
    added = await store.add_subscriber("mehr", actor="t", full_name="\u0645\u06cc\u200c\u062e\u0648\u0627\u0647",
                                       account_ref="")
    assert added.full_name == "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647" and added.account_ref is None
    suspended = await store.set_subscriber_status("mehr", SubscriberStatus.SUSPENDED, actor="t", reason="")
    assert suspended.status_reason is None


async def test_a_login_that_shows_as_another_is_refused(sqlite_store: Store) -> None:
    """"jos\u00e9" and "jose\u0301" (the accent as a combining mark: NFD) show the same on every
    screen but were two subscribers, each with its own password and answered by RADIUS and mail
    only under its own spelling, which the helpdesk typing the name could not choose between."""
    store = sqlite_store
    composed = await store.add_subscriber("jos\u00e9", actor="t")
    for decomposed in ("jose\u0301", "Zo\u0308e"):
        with pytest.raises(InvalidValue, match="written decomposed"):
            await store.add_subscriber(decomposed, actor="t")
    with pytest.raises(InvalidValue, match="written decomposed"):  # a reservation's login as well
        await store.add_reservation(composed.id, "username", "jose\u0301@pppoe", actor="t")
    await store.add_reservation(composed.id, "username", "jos\u00e9@pppoe", actor="t")
    assert [s.username for s in await store.list_subscribers()] == ["jos\u00e9"]


async def test_a_subscriber_stored_decomposed_before_the_rule_keeps_its_login_for_a_reservation(
        sqlite_store: Store, tmp_path: Path) -> None:
    """Names stored before the NFC rule stay as they are, and so does the login their NAS sends
    (the CPE holds the decomposed spelling): a username reservation of that very login, the
    only one RADIUS will ever match for it, was refused as "written decomposed", for a login
    that is no second spelling of anyone's but the subscriber's own."""
    store = sqlite_store
    subscriber = await store.add_subscriber("jose", actor="t")
    conn = sqlite3.connect(tmp_path / "ispd.db")  # as a store written before the rule has it
    with conn:
        conn.execute("UPDATE subscribers SET username = ? WHERE id = ?", ("jose\u0301", subscriber.id))
    conn.close()
    reservation = await store.add_reservation(subscriber.id, "username", "jose\u0301", actor="t")
    assert reservation.key == "jose\u0301"
    with pytest.raises(InvalidValue, match="written decomposed"):  # another's login: as before
        other = await store.add_subscriber("zoe", actor="t")
        await store.add_reservation(other.id, "username", "Zo\u0308e", actor="t")


async def test_the_overview_says_since_when_the_status_holds(store: Store, clock: FakeClock) -> None:
    await store.add_plan("p", actor="t")
    added_at = clock.now
    await store.add_subscriber("alice", actor="t")
    clock.now += 60
    await store.set_subscriber_plan("alice", "p", actor="t")  # not a change of status
    assert (await store.subscriber_overview("alice")).status_since == added_at
    clock.now += 60
    await store.set_subscriber_status("alice", SubscriberStatus.SUSPENDED, actor="t")
    assert (await store.subscriber_overview("alice")).status_since == clock.now
    await store.set_subscriber_status("alice", SubscriberStatus.CLOSED, actor="t")
    with pytest.raises(Conflict, match="subscriber 'alice' is closed: resume it first"):
        await store.set_subscriber_status("alice", SubscriberStatus.SUSPENDED, actor="t")


async def test_a_plan_id_is_never_read_as_another_plans_name(store: Store) -> None:
    """A plan named by digits ("2", say a price) and another whose id is 2: get_plan(2), as RADIUS,
    mail and `ispd subscriber show` call it with a subscriber's plan_id, gave the plan named "2",
    and its rates, session limits and mail quota went to every subscriber of the other plan."""
    named_2 = await store.add_plan("2", actor="t", download_kbps=1_000, upload_kbps=1_000)
    gold = await store.add_plan("gold", actor="t", download_kbps=900_000, upload_kbps=900_000)
    assert gold.id == 2
    alice = await store.add_subscriber("alice", actor="t", plan="gold")
    assert alice.plan_id == gold.id
    assert await store.get_plan(alice.plan_id) == gold
    assert await store.get_plan("2") == named_2  # what an operator types: the name first
    assert await store.get_plan(named_2.id) == named_2
    await store.set_subscriber_plan("alice", None, actor="t")
    moved = await store.set_subscriber_plan("alice", gold.id, actor="t")
    assert moved.plan_id == gold.id


async def test_conflicts_and_missing_references(store: Store) -> None:
    await store.add_plan("p", actor="t")
    with pytest.raises(Conflict, match="plan 'p' already exists"):
        await store.add_plan("p", actor="t")
    await store.add_subscriber("alice", actor="t")
    with pytest.raises(Conflict, match="subscriber 'alice' already exists"):
        await store.add_subscriber("alice", actor="t")
    with pytest.raises(NotFound, match="no plan 'nope'"):
        await store.add_subscriber("carol", actor="t", plan="nope")
    with pytest.raises(NotFound, match="no subscriber 'zed'"):
        await store.set_subscriber_status("zed", SubscriberStatus.SUSPENDED, actor="t")
    with pytest.raises(InvalidValue, match="download_kbps must be between 1 and 4294967295, not -5"):
        await store.add_plan("bad", actor="t", download_kbps=-5)
    # Nothing of the failed writes was kept.
    assert [s.username for s in await store.list_subscribers()] == ["alice"]
    assert [p.name for p in await store.list_plans()] == ["p"]


async def test_group_commit_batches_concurrent_writes_and_isolates_failures(tmp_path: Path) -> None:
    metrics = StoreMetrics()
    store = await open_store(StoreConfig(path=tmp_path / "g.db"), metrics)
    try:
        names = [f"user{i}" for i in range(600)] + ["user7"]  # the last one is a duplicate
        results = await asyncio.gather(*(store.add_subscriber(n, actor="t") for n in names), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert len(failures) == 1 and isinstance(failures[0], Conflict)
        assert len(await store.list_subscribers()) == 600
        commits = sum(metrics.commit_batch_size.counts)
        assert commits < 100, f"600 concurrent writes took {commits} commits: group commit is not grouping"
    finally:
        await store.close()


async def test_commits_failing_alike_are_one_line_in_the_log_and_their_end_another(tmp_path: Path) -> None:
    """From a bug hunt (PostgreSQL stopped for 30 s under a RADIUS load): each failed batch wrote
    store.commit.failed, 1,563 lines in 30 s. Now one when commits start failing (and when the
    error changes), and store.commit.restored when one succeeds again."""
    store = await open_store(StoreConfig(path=tmp_path / "f.db"))
    writes = WritesDown(store)
    try:
        with capture_logs() as logs:
            for i in range(30):
                with pytest.raises(StoreUnavailable):
                    await store.add_subscriber(f"user{i}", actor="t")
            assert store.commits_failing() == "disk I/O error"
            writes.up()
            await store.add_subscriber("kept", actor="t")
        assert store.commits_failing() is None
        assert [(e["event"], e.get("failed_batches")) for e in logs if e["event"].startswith("store.commit")] == [
            ("store.commit.failed", None), ("store.commit.restored", 30)]
    finally:
        await store.close()


class _FullDisk:
    """SQLite's full disk: a commit that writes pages fails; an empty one (no page to write to
    the WAL) succeeds, as it does on a real full disk."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.full, self._before = conn, True, 0

    def execute(self, sql: str, *args: object) -> object:
        if sql == "BEGIN IMMEDIATE":
            self._before = self.conn.total_changes
        elif sql == "COMMIT" and self.full and self.conn.total_changes != self._before:
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


async def test_the_health_checks_write_on_a_full_disk_does_not_say_writes_work(tmp_path: Path) -> None:
    """/healthz, while commits fail, commits a write itself (check_writes) to see whether they
    work again: an empty transaction commits on a full disk, and /healthz said ok while every
    lease and Accounting-Request failed to be written."""
    store = await open_store(StoreConfig(path=tmp_path / "full.db"))
    disk = _FullDisk(store._writer.conn)
    store._writer.conn = disk
    try:
        with pytest.raises(StoreUnavailable):
            await store.add_subscriber("alice", actor="t")
        assert store.commits_failing() == "database or disk is full"
        with pytest.raises(StoreUnavailable):
            await store.check_writes()
        assert store.commits_failing() == "database or disk is full"
        disk.full = False  # room made
        await store.check_writes()
        assert store.commits_failing() is None
    finally:
        store._writer.conn = disk.conn
        await store.close()


async def test_a_statement_that_fills_the_disk_fails_its_batch_saying_so(tmp_path: Path) -> None:
    """A statement that finds the disk full mid-transaction (SQLITE_FULL) makes SQLite roll the
    whole transaction back itself: the writer's ROLLBACK then failed, and the caller, the log and
    /healthz (commits_failing) said "cannot rollback - no transaction is active", or, in a batch,
    "no such savepoint: job", instead of the full disk. Every job of the batch fails, the one
    done before it too (rolled back with it), and writes work again once there is room."""
    store = await open_store(StoreConfig(path=tmp_path / "full.db"))
    conn = store._writer.conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # no page more: SQLITE_FULL on the first one

    def big(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO audit_log (at, actor, action, subject_kind, details) VALUES (0, 't', 'a', 'k', ?)",
                  ("x" * 200_000,))

    try:
        with pytest.raises(StoreUnavailable, match="database or disk is full"):
            await store._write("big", big)
        assert store.commits_failing() == "database or disk is full"
        small = store._write("small", lambda c: c.execute(
            "UPDATE subscriber_ids SET highest = highest + 1"))
        results = await asyncio.gather(small, store._write("big", big),
                                       return_exceptions=True)
        assert [str(r) for r in results] == ["store error: database or disk is full"] * 2
        assert store.commits_failing() == "database or disk is full"
        conn.execute(f"PRAGMA max_page_count = {pages * 1000}")  # room made
        await store.add_subscriber("alice", actor="t")
        assert store.commits_failing() is None
        assert (await store.get_subscriber("alice")).id == 1  # (the small job's increment was rolled back)
    finally:
        await store.close()


async def test_failed_batches_are_counted_as_failures_not_commits_under_the_stores_backend(tmp_path: Path) -> None:
    """From a bug hunt (ispd on PostgreSQL, its server down for a minute under a RADIUS load):
    /metrics showed ispd_store_commit_batch_size{backend="sqlite"} with 4,825 "committed
    transactions", 4,099 of them batches that had failed; nothing counted the failures."""
    metrics = StoreMetrics("postgresql")
    store = await open_store(StoreConfig(path=tmp_path / "m.db"), metrics)
    writes = WritesDown(store)
    try:
        for i in range(3):
            with pytest.raises(StoreUnavailable):
                await store.add_subscriber(f"user{i}", actor="t")
        writes.up()
        await store.add_subscriber("kept", actor="t")
    finally:
        await store.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in metrics.collector().collect() for s in family.samples}
    assert samples[("ispd_store_commit_batch_size_count", (("backend", "postgresql"),))] == 1
    assert samples[("ispd_store_commit_failures_total", (("backend", "postgresql"),))] == 3
    assert not any(labels == (("backend", "sqlite"),) for _, labels in samples)


async def test_a_store_file_deleted_or_replaced_under_the_daemon_is_no_longer_written(tmp_path: Path) -> None:
    """The store file deleted (or another put in its place) while the daemon runs: SQLite went on
    writing to the file it had open, each write said durable and lost once the daemon stopped,
    /healthz said ok, and a reader thread that connected late made an empty store at the path
    (world-readable) and answered "no such table" from it. Now writes fail saying why, as a
    failing commit does (/healthz 503), and no reader makes a file."""
    path = tmp_path / "gone.db"
    for replace in (False, True):
        store = await open_store(StoreConfig(path=path))
        try:
            await store.add_subscriber("before", actor="t")
            for suffix in ("", "-wal", "-shm"):
                os.unlink(f"{path}{suffix}")
            if replace:  # another store put in its place
                other = await open_store(StoreConfig(path=path))
                await other.close()
            for _ in range(2):
                with pytest.raises(StoreUnavailable, match="was deleted or replaced since ispd opened it"):
                    await store.add_subscriber("after", actor="t")
                with pytest.raises(StoreUnavailable, match="was deleted or replaced"):
                    await store.check_writes()
                with contextlib.suppress(StoreUnavailable):
                    await store.ping()
            assert "deleted or replaced" in (store.commits_failing() or "")
            assert path.exists() is replace  # (no empty store made by a reader)
        finally:
            await store.close()
        if replace:
            check = await open_store(StoreConfig(path=path))
            assert await check.list_subscribers() == []
            await check.close()


async def test_writes_are_durable_across_reopen(tmp_path: Path) -> None:
    config = StoreConfig(path=tmp_path / "d.db")
    store = await open_store(config)
    await store.add_subscriber("kept", actor="t")
    await store.close()
    reopened = await open_store(config)
    try:
        assert (await reopened.get_subscriber("kept")).username == "kept"
    finally:
        await reopened.close()


async def test_credentials_are_kept_apart_and_overview_never_carries_them(store: Store, clock: FakeClock) -> None:
    await store.add_subscriber("alice", actor="t")
    assert (await store.get_credentials("alice")).forms == []
    credentials = derive_credentials("s3cret", CredentialPolicy.CLEARTEXT, clock.now)
    await store.set_credentials("alice", credentials, actor="t")
    stored = await store.get_credentials("alice")
    assert stored.cleartext == "s3cret" and stored.nt_hash == credentials.nt_hash
    overview = await store.subscriber_overview("alice")
    assert overview.credentials.forms == ["verifier", "nt-hash", "cleartext"]
    assert "s3cret" not in repr(overview) and credentials.nt_hash is not None
    assert credentials.nt_hash.hex() not in repr(overview) and str(credentials.verifier) not in repr(overview)
    assert overview.audit[0].action == "subscriber.password_set"
    assert overview.audit[0].details == {"forms": ["verifier", "nt-hash", "cleartext"]}


async def test_leases_current_and_history(store: Store, clock: FakeClock) -> None:
    alice = await store.add_subscriber("alice", actor="t")
    now = clock.now
    lease = Lease("198.18.0.10", LeaseState.BOUND, now, now + 3600, hw_address="02:00:00:00:00:01",
                  subscriber_id=alice.id, circuit_id="eth0/1", hostname="router")
    await store.record_lease(lease, event="granted")
    await store.record_lease(Lease("198.18.0.11", LeaseState.BOUND, now - 7200, now - 3600), event="granted")
    assert [le.address for le in await store.list_leases()] == ["198.18.0.10"]
    assert [le.address for le in await store.list_leases(include_ended=True)] == ["198.18.0.10", "198.18.0.11"]
    assert await store.list_leases(subscriber="alice") == [lease]
    # A page: the first `limit` after a cursor, in the same order.
    assert [le.address for le in await store.list_leases(include_ended=True, limit=1)] == ["198.18.0.10"]
    assert [le.address for le in await store.list_leases(include_ended=True, after="198.18.0.10")] == ["198.18.0.11"]
    assert await store.list_leases(include_ended=True, after="198.18.0.11", limit=5) == []
    released = Lease("198.18.0.10", LeaseState.RELEASED, now, now + 60, hw_address="02:00:00:00:00:01",
                     subscriber_id=alice.id)
    await store.record_lease(released, event="released")
    assert await store.list_leases() == []
    overview = await store.subscriber_overview("alice")
    assert overview.leases == [released]
    # Deleting the subscriber keeps the address's history (attribution must outlive accounts).
    await store.delete_subscriber("alice", actor="t")
    assert (await store.list_leases(include_ended=True))[0].subscriber_id is None


async def test_audit_log_lists_every_change_in_order(store: Store) -> None:
    start = await store.last_audit_id()
    await store.add_plan("p", actor="cli:root")
    await store.add_subscriber("alice", actor="cli:root", plan="p")
    await store.set_subscriber_status("alice", SubscriberStatus.SUSPENDED, actor="cli:root", reason="unpaid")
    entries = await store.audit_since(start)
    assert [(e.action, e.subject_name) for e in entries] == [
        ("plan.added", "p"), ("subscriber.added", "alice"), ("subscriber.suspended", "alice"),
    ]
    assert entries[2].details == {"from": "active", "to": "suspended", "reason": "unpaid"}
    assert await store.audit_since(entries[-1].id) == []


async def test_a_store_directory_made_for_it_is_its_owners_and_groups_only(tmp_path: Path) -> None:
    # As the README says (and systemd's StateDirectoryMode gives): an admin command run before the
    # daemon made it 0755, and anyone could list it, its backups and -wal files.
    store = await open_store(StoreConfig(path=tmp_path / "lib" / "ispd" / "ispd.db"))
    await store.close()
    assert stat.S_IMODE((tmp_path / "lib" / "ispd").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "lib" / "ispd" / "ispd.db").stat().st_mode) == 0o640


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = await open_store(StoreConfig(path=tmp_path / "c.db"))
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.add_subscriber("x", actor="t")
    with pytest.raises(StoreUnavailable):
        await store.list_subscribers()


async def test_unusable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreUnavailable, match="cannot open the store at"):
        await open_store(StoreConfig(path=blocker / "sub" / "x.db"))


WRITER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from ispd.store import StoreConfig, open_store

    async def main(path, prefix, count):
        store = await open_store(StoreConfig(path=Path(path), busy_timeout_seconds=30))
        try:
            # Half in bursts (group commit), half one at a time (many short transactions).
            await asyncio.gather(*(store.add_subscriber(f"{prefix}-{i}", actor="t") for i in range(count // 2)))
            for i in range(count // 2, count):
                await store.add_subscriber(f"{prefix}-{i}", actor="t")
        finally:
            await store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
""")


async def test_several_processes_write_at_once_without_lock_errors(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    store = await open_store(StoreConfig(path=path))  # migrated; kept open like a daemon would
    try:
        procs = [
            await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, str(path), f"p{n}", "300",
                                                 stderr=subprocess.PIPE)
            for n in range(4)
        ]
        # Meanwhile this process writes too.
        for i in range(100):
            await store.add_subscriber(f"here-{i}", actor="t")
        for proc in procs:
            _, err = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode == 0, err.decode()
            assert b"locked" not in err
        assert len(await store.list_subscribers()) == 4 * 300 + 100
    finally:
        await store.close()


async def test_purge_removes_only_history_older_than_the_cutoff(tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    store = await open_store(StoreConfig(path=tmp_path / "p.db"), clock=clock)
    try:
        # 11,000 history rows (more than one purge batch) over 250 addresses, all long ended.
        await asyncio.gather(*(
            store.record_lease(Lease(f"198.18.1.{i % 250}", LeaseState.EXPIRED, 0, 10), event="expired")
            for i in range(11_000)
        ))
        await store.add_subscriber("old-change", actor="t")
        clock.now = now = 2_000_000.0
        await store.record_lease(Lease("198.18.2.1", LeaseState.BOUND, now, now + 3600), event="granted")
        await store.add_subscriber("new-change", actor="t")

        deleted = await store.purge_history(1_500_000.0)
        assert deleted == {"lease_history": 11_000, "accounting_records": 0, "radius_sessions": 0, "leases": 250,
                           "dhcp6_lease_history": 0, "dhcp6_leases": 0, "audit_log": 1, "coa_requests": 0,
                           "usage_daily": 0, "quota_crossings": 0}
        assert [le.address for le in await store.list_leases(include_ended=True)] == ["198.18.2.1"]
        assert [e.subject_name for e in await store.audit_since(0)] == ["new-change"]
        assert await store.purge_history(1_500_000.0) == dict.fromkeys(deleted, 0)
        assert len(await store.list_subscribers()) == 2  # subscribers are not history
    finally:
        await store.close()


async def test_purge_finds_old_usage_days_without_scanning_every_subscriber(tmp_path: Path) -> None:
    # usage_daily has a row per subscriber and day (millions after a year at an ISP) and retention
    # deletes its old days in batches: each batch must find them by day, not scan the table from
    # its first subscriber again (seconds per batch, holding the store's writer).
    store = await open_store(StoreConfig(path=tmp_path / "u.db"))
    await store.close()
    table, key, condition = next((t, k, c) for _, t, k, c in _HISTORY if t == "usage_daily")
    with sqlite3.connect(tmp_path / "u.db") as conn:
        plan = conn.execute(f"EXPLAIN QUERY PLAN DELETE FROM {table} WHERE ({key}) IN"
                            f" (SELECT {key} FROM {table} WHERE {condition} LIMIT 5000)", (20_000,)).fetchall()
    details = [row[-1] for row in plan]
    assert not any(d.startswith("SCAN usage_daily") for d in details), details


async def test_purge_finds_old_sessions_audit_and_coa_rows_without_scanning_them(tmp_path: Path) -> None:
    # Closed RADIUS sessions (millions after a year), the audit log and CoA outcomes grow with
    # time as the lease and accounting histories do: the hourly purge must find their old rows
    # by time, not read each table to its end with nothing to delete (0.7 s of the writer for a
    # million sessions out of the page cache, every hour).
    store = await open_store(StoreConfig(path=tmp_path / "h.db"))
    await store.close()
    with sqlite3.connect(tmp_path / "h.db") as conn:
        for _, table, key, condition in _HISTORY:
            if table in ("leases", "dhcp6_leases", "quota_crossings"):  # per address, prefix, subscriber-month
                continue
            plan = conn.execute(f"EXPLAIN QUERY PLAN DELETE FROM {table} WHERE ({key}) IN"
                                f" (SELECT {key} FROM {table} WHERE {condition} LIMIT 5000)",
                                (20_000,) * condition.count("?")).fetchall()
            details = [row[-1] for row in plan]
            assert not any(d.startswith(f"SCAN {table}") for d in details), (table, details)


async def test_reading_needs_no_write_lock(tmp_path: Path) -> None:
    """A read-only admin command works while another process holds the write lock."""
    import sqlite3

    config = StoreConfig(path=tmp_path / "l.db", busy_timeout_seconds=1)
    first = await open_store(config)
    await first.add_subscriber("alice", actor="t")
    await first.close()
    writer = sqlite3.connect(config.path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        reader = await open_store(config)
        try:
            assert [s.username for s in await reader.list_subscribers()] == ["alice"]
            with pytest.raises(StoreUnavailable, match="locked by another process for more than 1 s"):
                await reader.add_subscriber("bob", actor="t")
        finally:
            await reader.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


async def test_values_the_store_cannot_hold_are_clear_errors(store: Store) -> None:
    with pytest.raises(InvalidValue, match="download_kbps must be between 1 and 4294967295, not 1180591620717411303424"):
        await store.add_plan("huge", actor="t", download_kbps=2**70)
    # What goes out in a 32-bit RADIUS integer fits one.
    with pytest.raises(InvalidValue, match="session_timeout_seconds must be between 1 and 4294967295"):
        await store.add_plan("long", actor="t", session_timeout_seconds=2**32)
    with pytest.raises(InvalidValue, match="over-quota settings take effect past a monthly quota"):
        await store.add_plan("half", actor="t", over_quota_download_kbps=100)
    with pytest.raises(InvalidValue, match="must be between 1 and"):
        await store.add_plan("none", actor="t", monthly_quota_bytes=0, over_quota_download_kbps=1,
                             over_quota_upload_kbps=1)
    await store.add_subscriber("alice", actor="t")
    with pytest.raises(InvalidValue, match="a quota of 0 bytes takes no mail"):
        await store.add_mailbox("alice", "alice@isp.example", actor="t", quota_bytes=0)
    assert await store.list_plans() == [] and await store.list_mailboxes() == []
    with pytest.raises(NotFound):
        await store.get_subscriber("99999999999999999999")
    with pytest.raises(InvalidValue, match="not valid Unicode"):
        await store.get_subscriber("a\udcff")


async def test_a_dead_writer_answers_every_waiter(tmp_path: Path) -> None:
    store = await open_store(StoreConfig(path=tmp_path / "w.db"))
    try:
        def explode(conn: object) -> None:
            raise SystemExit("simulated writer failure")  # not an Exception: escapes the job's savepoint

        from ispd.store.sqlite import SQLiteStore

        assert isinstance(store, SQLiteStore)
        results = await asyncio.wait_for(asyncio.gather(
            store._write("explode", explode), *(store.add_subscriber(f"u{i}", actor="t") for i in range(20)),
            return_exceptions=True), 10)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert not store.writer_alive()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.add_subscriber("late", actor="t"), 5)
    finally:
        await store.close()


async def test_a_new_store_file_is_not_world_readable(tmp_path: Path) -> None:
    store = await open_store(StoreConfig(path=tmp_path / "perm" / "p.db"))
    await store.add_subscriber("a", actor="t")
    try:
        for name in ("p.db", "p.db-wal", "p.db-shm"):
            assert (tmp_path / "perm" / name).stat().st_mode & 0o007 == 0, name
    finally:
        await store.close()


async def test_a_deleted_subscribers_id_is_never_given_again(store: Store) -> None:
    """Its sessions, usage and history stay under its id: a newcomer with that id would inherit
    them (billed for its usage, refused by Simultaneous-Use for its open sessions)."""
    await store.add_subscriber("alice", actor="t")
    carol = await store.add_subscriber("carol", actor="t")
    await store.delete_subscriber("carol", actor="t")
    newguy = await store.add_subscriber("newguy", actor="t")
    assert newguy.id == carol.id + 1
    await store.delete_subscriber("newguy", actor="t")
    assert (await store.add_subscriber("later", actor="t")).id == carol.id + 2


def test_a_new_connection_whose_begin_failed_is_closed_whatever_the_failure(tmp_path: Path) -> None:
    """The caller keeps the connection it passed (closed): a new one that could not begin (a
    server restart, then the write lock's wait timed out) must not be left open to the GC."""
    class Conn:
        def __init__(self, usable: bool) -> None:
            self.alive, self.closed = usable, False

        def close(self) -> None:
            self.closed = True

    opened: list[Conn] = []

    class Fake(Connector):
        def connect(self) -> Conn:
            opened.append(Conn(usable=True))
            return opened[-1]

        def usable(self, conn: Conn) -> bool:
            return conn.alive and not conn.closed

    def locked(conn: Conn) -> None:
        raise sqlite3.OperationalError("the write lock's wait timed out")

    with pytest.raises(sqlite3.OperationalError):
        Fake(StoreConfig(path=tmp_path / "x.db")).begun(Conn(usable=False), locked)
    assert [conn.closed for conn in opened] == [True]


async def test_a_commit_that_never_returns_is_a_failing_write_for_health(
        store_config: StoreConfig, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch stuck in its commit (PostgreSQL waiting for a synchronous replica that is gone:
    wait_event SyncRep, for ever) failed nothing: commits_failing() said None, /healthz 200,
    while every write queued behind it. Past the write lock's longest wait and a margin, it says
    so; once the commit returns, it no longer does."""
    import threading

    import ispd.store.sqlite

    monkeypatch.setattr(ispd.store.sqlite, "STALLED_COMMIT_SECONDS", 0.3, raising=False)
    config = store_config.model_copy(update={"busy_timeout_seconds": 0.2})
    store = await open_store(config, StoreMetrics(), clock)
    release = threading.Event()
    try:
        stuck = asyncio.ensure_future(store._write("stuck", lambda conn: release.wait(10)))  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)
        assert store.commits_failing() is None  # within the lock's wait: nothing to say yet
        await asyncio.sleep(0.5)
        failing = store.commits_failing()
        assert failing is not None and re.fullmatch(r"a write has waited \d+ s for the .* to commit it", failing)
        release.set()
        await stuck
        assert store.commits_failing() is None
    finally:
        release.set()
        await store.close()
