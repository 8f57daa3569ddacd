from __future__ import annotations

from ipaddress import ip_network

import pytest

from ispd.dns.localdata import LocalData, reverse_zones
from ispd.dns.wire import RCode, RRType, name_from_text, name_to_text, soa_minimum
from ispd.dns.zone import AnswerKind, ZoneAnswer, ZoneError, load_zone_text

N = name_from_text


def make(**kwargs: object) -> LocalData:
    settings: dict[str, object] = {
        "lease_domain": "dyn.isp.example.",
        "reverse_networks": ["198.18.0.0/15", "2001:db8:1::/64"],
        "static_records": ["portal.isp.example. 300 A 198.18.0.10", "printer.dyn.isp.example. 600 A 198.18.1.1"],
    }
    settings.update(kwargs)
    return LocalData(**settings)  # type: ignore[arg-type]


def ask(local: LocalData, name: str, qtype: int = RRType.A) -> ZoneAnswer | None:
    return local.answer(N(name), qtype)


def answered(local: LocalData, name: str, qtype: int) -> list[bytes]:
    result = ask(local, name, qtype)
    assert result is not None
    return [rr.rdata for rr in result.answer]


@pytest.mark.parametrize(
    ("network", "zones"),
    [
        ("198.18.0.0/15", ["18.198.in-addr.arpa.", "19.198.in-addr.arpa."]),
        ("198.18.0.0/16", ["18.198.in-addr.arpa."]),
        ("192.0.2.0/24", ["2.0.192.in-addr.arpa."]),
        ("10.0.0.0/8", ["10.in-addr.arpa."]),
        ("192.0.2.0/30", [f"{i}.2.0.192.in-addr.arpa." for i in range(4)]),
        ("10.16.0.0/20", [f"{i}.16.10.in-addr.arpa." for i in range(16)]),
        ("2001:db8::/32", ["8.b.d.0.1.0.0.2.ip6.arpa."]),
        ("2001:db8:1::/62", [f"{i}.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa." for i in range(4)]),
    ],
)
def test_reverse_zones_cover_the_network_exactly(network: str, zones: list[str]) -> None:
    assert [name_to_text(z) for z in reverse_zones(ip_network(network))] == zones


def test_lease_name_and_ptr_appear_live() -> None:
    local = make()
    generation = local.generation
    assert ask(local, "laptop.dyn.isp.example.") is not None  # local even before the lease:
    assert ask(local, "laptop.dyn.isp.example.").rcode == RCode.NXDOMAIN  # type: ignore[union-attr]
    assert local.add_lease_name("Laptop", "198.18.5.6", 300)
    assert local.generation == generation + 1
    assert answered(local, "laptop.dyn.isp.example.", RRType.A) == [bytes([198, 18, 5, 6])]
    assert answered(local, "6.5.18.198.in-addr.arpa.", RRType.PTR) == [N("laptop.dyn.isp.example.")]
    result = ask(local, "laptop.dyn.isp.example.", RRType.AAAA)
    assert result is not None and result.kind == AnswerKind.NODATA
    assert local.add_lease_name("laptop", "2001:db8:1::6", 300)  # AAAA beside the A
    assert answered(local, "laptop.dyn.isp.example.", RRType.AAAA) == [bytes.fromhex("20010db8000100000000000000000006")]
    assert answered(local, "laptop.dyn.isp.example.", RRType.A) == [bytes([198, 18, 5, 6])]
    ptr = "6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
    assert answered(local, ptr, RRType.PTR) == [N("laptop.dyn.isp.example.")]


def test_renewal_changes_nothing() -> None:
    local = make()
    local.add_lease_name("pc", "198.18.5.6", 300)
    generation = local.generation
    assert local.add_lease_name("pc", "198.18.5.6", 300)
    assert local.generation == generation


def test_moved_hostname_replaces_record_and_ptr() -> None:
    local = make()
    local.add_lease_name("pc", "198.18.5.6", 300)
    generation = local.generation
    local.add_lease_name("pc", "198.18.9.9", 300)
    assert answered(local, "pc.dyn.isp.example.", RRType.A) == [bytes([198, 18, 9, 9])]
    assert ask(local, "6.5.18.198.in-addr.arpa.", RRType.PTR).rcode == RCode.NXDOMAIN  # type: ignore[union-attr]
    assert answered(local, "9.9.18.198.in-addr.arpa.", RRType.PTR) == [N("pc.dyn.isp.example.")]
    changed = local.changed_since(generation)
    assert changed is not None
    assert {N("pc.dyn.isp.example."), N("6.5.18.198.in-addr.arpa."), N("9.9.18.198.in-addr.arpa.")} <= changed


def test_second_lease_takes_the_hostname_over() -> None:
    local = make()
    local.add_lease_name("pc", "198.18.5.6", 300)
    local.add_lease_name("pc", "198.18.7.7", 300)  # another client, same name: the newest wins
    assert answered(local, "pc.dyn.isp.example.", RRType.A) == [bytes([198, 18, 7, 7])]
    assert ask(local, "6.5.18.198.in-addr.arpa.", RRType.PTR).rcode == RCode.NXDOMAIN  # type: ignore[union-attr]
    # The first client's release must not remove the name the second one holds now.
    assert not local.remove_lease_name("198.18.5.6", "pc")
    assert answered(local, "pc.dyn.isp.example.", RRType.A) == [bytes([198, 18, 7, 7])]


def test_address_that_changes_hostname_drops_the_old_name() -> None:
    local = make()
    local.add_lease_name("old", "198.18.5.6", 300)
    local.add_lease_name("new", "198.18.5.6", 300)
    assert ask(local, "old.dyn.isp.example.").rcode == RCode.NXDOMAIN  # type: ignore[union-attr]
    assert answered(local, "6.5.18.198.in-addr.arpa.", RRType.PTR) == [N("new.dyn.isp.example.")]


def test_remove_lease_name() -> None:
    local = make()
    local.add_lease_name("pc", "198.18.5.6", 300)
    assert not local.remove_lease_name("198.18.5.6", "other")  # not the name it holds
    assert not local.remove_lease_name("198.18.99.99")  # nothing published
    generation = local.generation
    assert local.remove_lease_name("198.18.5.6", "PC")
    assert local.generation == generation + 1
    assert ask(local, "pc.dyn.isp.example.").rcode == RCode.NXDOMAIN  # type: ignore[union-attr]
    assert ask(local, "6.5.18.198.in-addr.arpa.", RRType.PTR).rcode == RCode.NXDOMAIN  # type: ignore[union-attr]
    assert local.lease_names() == {}


def test_a_fully_qualified_hostname_is_published_by_its_first_label() -> None:
    """Option 81 often carries the name with a domain: the lease domain is ours (dnsmasq)."""
    local = make()
    assert local.add_lease_name("Laptop.dyn.isp.example.", "198.18.5.6", 300)
    assert answered(local, "laptop.dyn.isp.example.", RRType.A) == [bytes([198, 18, 5, 6])]
    assert local.remove_lease_name("198.18.5.6", "laptop.elsewhere.example")


@pytest.mark.parametrize("hostname", ["", "-pc", "pc-", "my pc", ".b", "x" * 64, "*", "_srv", "bücher", "pc;rm"])
def test_bad_hostnames_are_refused(hostname: str) -> None:
    local = make()
    assert not local.add_lease_name(hostname, "198.18.5.6", 300)
    assert local.generation == 0


@pytest.mark.parametrize("hostname", ["wpad", "WPAD", "wpad.home.example", "isatap"])
def test_names_other_subscribers_hosts_ask_for_their_proxy_are_never_published(hostname: str) -> None:
    """WPAD name collision: every Windows host searching the lease domain would take "wpad"'s
    proxy settings (and "isatap"'s tunnel) from whichever subscriber named a device so."""
    local = make()
    assert not local.add_lease_name(hostname, "198.18.5.6", 300)
    assert local.generation == 0 and local.lease_names() == {}


def test_configured_names_cannot_be_taken_by_a_lease() -> None:
    local = make()
    assert not local.add_lease_name("printer", "198.18.5.6", 300)
    assert answered(local, "printer.dyn.isp.example.", RRType.A) == [bytes([198, 18, 1, 1])]


def test_address_outside_reverse_networks_gets_no_ptr() -> None:
    local = make()
    assert local.add_lease_name("pc", "203.0.113.5", 300)
    assert answered(local, "pc.dyn.isp.example.", RRType.A) == [bytes([203, 0, 113, 5])]
    assert ask(local, "5.113.0.203.in-addr.arpa.", RRType.PTR) is None  # not ours: recursed


def test_lease_names_off_without_domain() -> None:
    local = LocalData(reverse_networks=["198.18.0.0/15"])
    assert not local.add_lease_name("pc", "198.18.5.6", 300)


def test_unknown_local_names_get_a_synthesised_soa() -> None:
    local = make(negative_ttl=30)
    for name in ("nothing.dyn.isp.example.", "1.2.18.198.in-addr.arpa.", "2.19.198.in-addr.arpa."):
        result = ask(local, name, RRType.PTR)
        assert result is not None
        assert (result.rcode, result.authoritative) == (RCode.NXDOMAIN, True)
        soa = result.authority[0]
        assert (soa.rtype, soa.ttl, soa_minimum(soa.rdata)) == (RRType.SOA, 30, 30)
    apex = ask(local, "dyn.isp.example.", RRType.SOA)
    assert apex is not None and [rr.rtype for rr in apex.answer] == [RRType.SOA]


@pytest.mark.parametrize(
    "name",
    ["www.example.com.", "isp.example.", "x.portal.isp.example.", "17.198.in-addr.arpa.", "198.in-addr.arpa.", "."],
)
def test_names_that_are_not_local(name: str) -> None:
    assert ask(make(), name) is None


def test_static_records_are_transparent_names() -> None:
    local = make(static_records=["portal.isp.example. 300 A 198.18.0.10", "portal.isp.example. 300 A 198.18.0.11",
                                 "www.isp.example. CNAME portal.isp.example."])
    assert answered(local, "portal.isp.example.", RRType.A) == [bytes([198, 18, 0, 10]), bytes([198, 18, 0, 11])]
    nodata = ask(local, "portal.isp.example.", RRType.AAAA)
    assert nodata is not None and (nodata.rcode, nodata.kind, nodata.authority) == (0, AnswerKind.NODATA, [])
    cname = ask(local, "www.isp.example.", RRType.A)
    assert cname is not None and (cname.kind, cname.next_name) == (AnswerKind.CNAME, N("portal.isp.example."))
    assert ask(local, "sub.portal.isp.example.") is None


def test_static_soa_replaces_the_synthesised_one() -> None:
    local = make(static_records=["dyn.isp.example. 3600 SOA ns.isp.example. noc.isp.example. 7 1 1 1 120"])
    result = ask(local, "nothing.dyn.isp.example.")
    assert result is not None and result.authority[0].ttl == 120


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (["portal.isp.example. A 300.0.0.1"], r"local_records\[0\]:1: bad IPv4 address"),
        (["ok.isp.example. A 192.0.2.1", "a. A 192.0.2.1\nb. A 192.0.2.2"], r"local_records\[1\]: .* should be one record"),
        (["x.dyn.isp.example. CNAME y.", "x.dyn.isp.example. A 192.0.2.1"], r"local_records\[1\]: A at x.dyn.isp.example., which has a CNAME"),
    ],
)
def test_bad_static_records(records: list[str], message: str) -> None:
    with pytest.raises(ZoneError, match=message):
        make(static_records=records)


def test_most_specific_local_zone_wins() -> None:
    outer = load_zone_text("@ SOA ns h 1 2 3 4 5\nwww A 192.0.2.1\n", "isp.example.")
    inner = load_zone_text("@ SOA ns h 1 2 3 4 5\nwww A 192.0.2.2\n", "corp.isp.example.")
    local = make(zones=[outer, inner], static_records=[])
    assert answered(local, "www.isp.example.", RRType.A) == [bytes([192, 0, 2, 1])]
    assert answered(local, "www.corp.isp.example.", RRType.A) == [bytes([192, 0, 2, 2])]
    assert ask(local, "x.corp.isp.example.").authority[0].name == N("corp.isp.example.")  # type: ignore[union-attr]
    assert ask(local, "other.isp.example.").rcode == RCode.NXDOMAIN  # type: ignore[union-attr]
    # The lease domain lies inside isp.example. but is its own, more specific zone.
    assert local.add_lease_name("pc", "198.18.5.6", 300)
    assert answered(local, "pc.dyn.isp.example.", RRType.A) == [bytes([198, 18, 5, 6])]


def test_zone_file_at_the_lease_domain_takes_the_lease_names() -> None:
    zone = load_zone_text("@ SOA ns h 1 2 3 4 60\nrouter A 198.18.0.1\n", "dyn.isp.example.")
    local = make(zones=[zone], static_records=[])
    assert local.add_lease_name("pc", "198.18.5.6", 300)
    assert not local.add_lease_name("router", "198.18.5.7", 300)  # a name from the file
    assert zone.get_rrset(N("pc.dyn.isp.example."), RRType.A)


def test_duplicate_zone_is_an_error() -> None:
    zone = load_zone_text("@ SOA ns h 1 2 3 4 5\n", "isp.example.")
    with pytest.raises(ValueError, match="configured twice"):
        LocalData(zones=[zone, zone])


def test_changed_since_history() -> None:
    local = make(history=2)
    start = local.generation
    local.add_lease_name("a", "198.18.0.1", 60)
    after_a = local.generation
    local.add_lease_name("b", "198.18.0.2", 60)
    local.add_lease_name("c", "198.18.0.3", 60)
    assert local.changed_since(local.generation) == frozenset()
    assert local.changed_since(start) is None  # further back than the history: drop everything
    changed = local.changed_since(after_a)
    assert changed is not None
    assert N("b.dyn.isp.example.") in changed and N("c.dyn.isp.example.") in changed
    assert N("a.dyn.isp.example.") not in changed


def test_empty_non_terminal_in_reverse_zone_is_reported() -> None:
    local = make()
    generation = local.generation
    local.add_lease_name("pc", "198.18.5.6", 300)
    changed = local.changed_since(generation)
    assert changed is not None and N("5.18.198.in-addr.arpa.") in changed  # NXDOMAIN -> NODATA there
    result = ask(local, "5.18.198.in-addr.arpa.", RRType.PTR)
    assert result is not None and result.kind == AnswerKind.NODATA


INFRA_REVERSE = """$TTL 300
@ SOA ns.isp.example. hostmaster.isp.example. 1 3600 600 86400 60
@ NS ns.isp.example.
1.0.0 PTR gw.isp.example.
1.0.1 PTR other.isp.example.
office NS ns.office.isp.example.
"""
ISP_ZONE = """$TTL 300
@ SOA ns.isp.example. hostmaster.isp.example. 1 3600 600 86400 60
@ NS ns.isp.example.
printer.customers A 198.18.0.5
"""


def test_a_zone_file_above_the_lease_domain_or_a_reverse_zone_keeps_its_records_there() -> None:
    """A zone of ours for the lease domain and each reverse zone of the lease networks was made
    even under a zone file holding them, and, more specific, hid the file's records below it: the
    router's PTR of 10.in-addr.arpa. under the lease network 10.0.0.0/16, a printer of
    isp.example. under customers.isp.example., NXDOMAIN. The file takes the lease names."""
    local = LocalData(lease_domain="customers.isp.example", reverse_networks=["10.0.0.0/16"],
                      zones=[load_zone_text(INFRA_REVERSE, "10.in-addr.arpa"), load_zone_text(ISP_ZONE, "isp.example")])
    assert answered(local, "1.0.0.10.in-addr.arpa", RRType.PTR) == [N("gw.isp.example")]
    assert answered(local, "printer.customers.isp.example", RRType.A) == [bytes([198, 18, 0, 5])]
    assert local.add_lease_name("laptop", "10.0.0.77", 300)
    assert answered(local, "laptop.customers.isp.example", RRType.A) == [bytes([10, 0, 0, 77])]
    assert answered(local, "77.0.0.10.in-addr.arpa", RRType.PTR) == [N("laptop.customers.isp.example")]
    assert not local.add_lease_name("printer", "10.0.0.78", 300)  # (the file's name)
    answer = ask(local, "2.0.0.10.in-addr.arpa", RRType.PTR)
    assert answer is not None and answer.rcode == RCode.NXDOMAIN
    assert [rr.name for rr in answer.authority] == [N("10.in-addr.arpa")]


def test_a_lease_domain_below_a_delegation_of_a_zone_file_is_still_a_zone_of_ours() -> None:
    """(Names below a cut are the delegated servers': the lease names are not put there.)"""
    local = LocalData(lease_domain="office.10.in-addr.arpa",
                      zones=[load_zone_text(INFRA_REVERSE, "10.in-addr.arpa")])
    assert local.add_lease_name("laptop", "198.18.0.7", 300)
    assert answered(local, "laptop.office.10.in-addr.arpa", RRType.A) == [bytes([198, 18, 0, 7])]


def test_a_forward_zone_inside_local_data_is_warned_of(tmp_path: object) -> None:
    """From a bug hunt: a [[dns.forward_zone]] at or below a [[dns.local_zone]] (or the lease
    domain) passed check-config and was never asked: local data answers first, and the local
    zone said NXDOMAIN for every name of the forward zone. Below a delegation in the local zone
    the forward zone is asked (it comes before the delegation), and nothing is said."""
    from pathlib import Path

    from ispd.dns.config import DNSConfig
    from ispd.dns.service import check_files

    assert isinstance(tmp_path, Path)
    zone = "$ORIGIN isp.example.\n@ 300 IN SOA ns hm 1 2 3 4 5\n@ 300 IN NS ns\nns 300 IN A 198.18.0.53\n"
    (tmp_path / "isp.zone").write_text(zone)
    (tmp_path / "cut.zone").write_text(zone + "corp 300 IN NS ns.corp\nns.corp 300 IN A 198.18.0.54\n")

    def warnings(file: str, forwarded: list[str]) -> list[str]:
        config = DNSConfig.model_validate({
            "enabled": True, "local_zone": [{"name": "isp.example", "file": str(tmp_path / file)}],
            "lease_names": {"domain": "dyn.example"},
            "forward_zone": [{"name": name, "servers": ["198.18.0.1"]} for name in forwarded]})
        problems, found = check_files(config)
        assert problems == []
        return [w for w in found if w.startswith("forward_zone")]

    shadowed = warnings("isp.zone", ["isp.example", "corp.isp.example", "dyn.example", "other.example"])
    assert len(shadowed) == 1
    assert shadowed[0].startswith("forward_zone isp.example., corp.isp.example., dyn.example.: inside local data")
    assert warnings("cut.zone", ["corp.isp.example", "x.corp.isp.example", "xisp.example"]) == []
