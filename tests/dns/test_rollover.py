"""RFC 5011 tracking over the store (``AnchorTracker``): keys and signatures made by BIND's tools,
the state in a real SQLite store, a wall clock in days."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import dns.name
import dns.rdatatype
import dns.zone
import pytest

from ispd.dns import dnssec
from ispd.dns.autotrust import ADD_HOLD_DOWN
from ispd.dns.resolver import Resolution
from ispd.dns.rollover import AnchorTracker
from ispd.dns.wire import RR, RRType, name_from_text
from ispd.store import Store, StoreConfig, open_store
from tests.lab.dnssec import Signing, ZoneKeys, make_key, sign_zone

ORIGIN = "example.test."
ZONE = "$TTL 3600\n@ IN SOA ns hostmaster 1 3600 900 604800 300\n@ IN NS ns\nns IN A 198.18.0.53\n"
DAY = 86400.0
NOW = time.time()
# Signatures valid from a day ago to 100 days on: the whole walk below, hold-down included.
SIGNING = Signing("ECDSAP256SHA256", validity=(time.strftime("%Y%m%d%H%M%S", time.gmtime(NOW - DAY)),
                                               time.strftime("%Y%m%d%H%M%S", time.gmtime(NOW + 100 * DAY))))


def dnskey_answer(workdir: Path, keyfiles: tuple[Path, ...]) -> Resolution:
    """The zone's DNSKEY set and its signatures (by every key given, all KSKs), as the resolver
    hands them to the tracker."""
    signed = sign_zone(ORIGIN, ZONE, SIGNING, workdir, ZoneKeys(keyfiles, ""))
    zone = dns.zone.from_text(signed.text, origin=ORIGIN, relativize=False)
    answer = []
    for name, rdataset in zone.iterate_rdatasets():
        for rdata in rdataset:
            if rdata.rdtype == dns.rdatatype.DNSKEY:
                answer.append(RR(name.to_wire().lower(), RRType.DNSKEY, 1, rdataset.ttl,
                                 rdata.to_digestable(dns.name.root)))
            elif rdata.rdtype == dns.rdatatype.RRSIG and rdata.type_covered == dns.rdatatype.DNSKEY:
                answer.append(RR(name.to_wire().lower(), RRType.RRSIG, 1, rdataset.ttl,
                                 rdata.to_wire(origin=dns.name.root)))
    return Resolution(0, answer)


def key_tag_of(keyfile: Path) -> int:
    return int(keyfile.stem.rsplit("+", 1)[1])  # Kexample.test.+013+12345


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    yield opened
    await opened.close()


async def test_a_tracker_carries_on_from_what_another_process_learnt(store: Store, tmp_path: Path) -> None:
    """Two DNS processes track the same anchor. The second's first refresh comes a day after the
    first learnt of a new key: it must keep that key's hold-down (counted from the first
    sighting), not bootstrap from the configured anchor and write the key out of the store."""
    old, new = (make_key(tmp_path / "keys", ORIGIN, SIGNING, ksk=True, ttl=3600) for _ in range(2))
    published = [dnskey_answer(tmp_path / "one", (old,))]
    anchor_key = next(k for k in dnssec.parse_dnskeys([rr.rdata for rr in published[0].answer
                                                       if rr.rtype == RRType.DNSKEY]) if k.key_tag == key_tag_of(old))
    anchor = dnssec.TrustAnchor(name_from_text(ORIGIN), keys=(anchor_key,))
    clock = [NOW]

    async def fetch(zone: bytes, rtype: int) -> Resolution:
        return published[0]

    applied: dict[str, list[set[int]]] = {"first": [], "second": []}

    def tracker(name: str) -> AnchorTracker:
        return AnchorTracker(anchor, store, fetch, lambda a: applied[name].append({k.key_tag for k in a.keys}),
                             wall_clock=lambda: clock[0])

    first, second = tracker("first"), tracker("second")
    await first.load()
    await second.load()  # both start on an empty store
    await first.refresh()  # bootstraps from the configured anchor
    published[0] = dnskey_answer(tmp_path / "two", (old, new))  # the zone adds a KSK
    clock[0] = NOW + 1 * DAY
    await first.refresh()

    async def stored() -> dict[int, tuple[str, float]]:
        rows = await store.trust_anchor_keys(ORIGIN)
        return {dnssec.key_tag(row.key): (row.state, row.hold_down_until) for row in rows}

    learnt = {key_tag_of(old): ("valid", 0.0), key_tag_of(new): ("addpend", NOW + 1 * DAY + ADD_HOLD_DOWN)}
    assert await stored() == learnt
    clock[0] = NOW + 2 * DAY
    await second.refresh()  # its first
    assert await stored() == learnt
    assert applied["second"] == [{key_tag_of(old)}]

    clock[0] = NOW + 1 * DAY + ADD_HOLD_DOWN + 1  # the hold-down has passed: whichever looks first trusts it
    await second.refresh()
    assert (await stored())[key_tag_of(new)][0] == "valid"
    assert applied["second"][-1] == {key_tag_of(old), key_tag_of(new)}
    clock[0] += 3600
    await first.refresh()
    assert applied["first"][-1] == {key_tag_of(old), key_tag_of(new)}
    assert {k.key_tag for k in first.current().keys} == {k.key_tag for k in second.current().keys}


def test_dns_anchors_refuses_a_zone_with_no_anchor_and_a_malformed_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """From a bug hunt: `ispd dns anchors --zone example.com` (no anchor there: only the root has
    one) said "no keys tracked for example.com. (the daemon tracks them once it has refreshed the
    anchor)", exit 0, and `--zone a..b` the same: waiting for a refresh that never comes."""
    from ispd.cli import main

    config = tmp_path / "ispd.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "ispd.db"}"\n[dns]\nenabled = true\n')
    assert main(["-c", str(config), "dns", "anchors", "--zone", "Example.COM"]) == 1
    assert capsys.readouterr().err.endswith("ispd: example.com. has no trust anchor (anchored: .)\n")
    with pytest.raises(SystemExit) as usage:
        main(["-c", str(config), "dns", "anchors", "--zone", "a..b"])
    assert usage.value.code == 2 and "'a..b' is not a domain name: empty label" in capsys.readouterr().err
    assert main(["-c", str(config), "dns", "anchors", "--zone", "."]) == 0  # the anchored root: not yet refreshed
    assert capsys.readouterr().out == "no keys tracked for . (the daemon tracks them once it has refreshed the anchor)\n"
