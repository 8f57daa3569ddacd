"""DHCPv6 bindings with the admin CLI: listed after the DHCP leases, shown with their history, and
named by ``who`` for an address inside a delegated prefix."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from ispd.config import load_config
from ispd.store import open_store
from ispd.store.models import Lease, Lease6, Lease6Kind, LeaseState
from tests.lab import toml
from tests.lab.process import ISPD, base_config

DUID = "00:01:00:01:2c:1f:aa:bb:02:00:00:00:00:0a"
PD = "2001:db8:100:ff00::/56"


def run(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ISPD, *args, "-c", str(config_path)], capture_output=True, text=True, timeout=60)


def ok(config_path: Path, *args: str) -> str:
    result = run(config_path, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def test_bindings_are_listed_shown_and_attributed(tmp_path: Path) -> None:
    config_path = toml.write(tmp_path / "ispd.toml", base_config(tmp_path))
    now = float(int(time.time()))
    pd = Lease6(PD, Lease6Kind.PREFIX, LeaseState.BOUND, DUID, 1, now - 600, now + 1800, now + 3600,
                subscriber_id=1, hostname="cpe-alice", link="olt1", pool="pd-home", interface_id="olt1/1/1")
    na = Lease6("2001:db8:1::10/128", Lease6Kind.ADDRESS, LeaseState.BOUND, DUID, 7, now - 600, now + 1800,
                now + 3600, subscriber_id=1, link="olt1")
    ended = Lease6("2001:db8:1::11/128", Lease6Kind.ADDRESS, LeaseState.EXPIRED, "00:03:00:01:02:00:00:00:00:0b",
                   2, now - 9000, now - 8000, now - 7200, subscriber_id=2)

    async def write() -> None:
        store = await open_store(load_config(config_path).store)
        try:
            for name in ("alice", "bob"):
                await store.add_subscriber(name, actor="t")
            await store.record_lease(Lease("198.18.0.20", LeaseState.BOUND, now, now + 600, subscriber_id=1),
                                     event="granted")
            await store.record_leases6([(replace(pd, expires_at=now), "granted"), (na, "granted"),
                                        (ended, "expired")])
            await store.record_leases6([(pd, "renewed")])
        finally:
            await store.close()

    asyncio.run(write())

    table = ok(config_path, "lease", "list").splitlines()
    assert table[1].split()[0] == "198.18.0.20"
    v6 = table[table.index("") + 1:]
    assert v6[0].split() == ["DHCPV6", "PREFIX", "STATE", "EXPIRES", "DUID", "IAID", "HOSTNAME", "SUBSCRIBER",
                             "LINK", "INTERFACE_ID", "REMOTE_ID"]
    assert [row.split()[:3] + row.split()[4:6] + row.split()[7:8] for row in v6[1:]] == [
        ["na", "2001:db8:1::10/128", "bound", DUID, "7", "alice"],
        ["pd", PD, "bound", DUID, "1", "alice"]]
    every = json.loads(ok(config_path, "lease", "list", "--all", "--json"))
    assert [(e["service"], e.get("address") or e["prefix"]) for e in every] == [
        ("dhcp", "198.18.0.20"), ("dhcp6", "2001:db8:1::10/128"), ("dhcp6", "2001:db8:1::11/128"), ("dhcp6", PD)]

    text = ok(config_path, "lease", "show", "2001:DB8:100:FF00::/56").splitlines()
    assert text[:4] == [f"prefix        {PD}", "kind          pd (a delegated prefix, IA_PD)", "state         bound",
                        f"starts        {iso(now - 600)}"]
    assert f"duid          {DUID}" in text and "subscriber    alice (#1)" in text
    assert "interface id  olt1/1/1" in text
    assert [line.split()[1] for line in text[text.index("history (newest first)") + 2:]] == ["renewed", "granted"]
    data = json.loads(ok(config_path, "lease", "show", "2001:db8:1::10", "--json"))
    assert (data["prefix"], data["lease"]["kind"], data["lease"]["username"]) == ("2001:db8:1::10/128", "na", "alice")
    missing = run(config_path, "lease", "show", "2001:db8:100:ff12::5")
    assert missing.returncode == 1 and "no DHCPv6 binding for 2001:db8:100:ff12::5/128" in missing.stderr
    assert "ispd who 2001:db8:100:ff12::5" in missing.stderr

    held = ok(config_path, "who", "2001:db8:100:ff12::5").splitlines()
    assert held[:2] == ["2001:db8:100:ff12::5 at " + held[0].split(" at ")[1],
                        f"  alice (#1): DHCPv6 binding, delegated prefix {PD} from {iso(now - 600)} "
                        f"until {iso(now + 3600)}"]
    assert held[2] == f"    DUID {DUID}, hostname cpe-alice, interface-id olt1/1/1, pool pd-home"
    assert "dhcp6_lease_history #" in held[3] and "granted" in held[3] and "renewed" in held[4]
    wide = json.loads(ok(config_path, "who", "2001:db8::/32", "--json"))
    assert {(h["source"], h["prefix"], h["prefix_kind"]) for h in wide["holdings"]} == {
        ("dhcp6", "2001:db8:1::10", "address"), ("dhcp6", PD, "delegated")}
