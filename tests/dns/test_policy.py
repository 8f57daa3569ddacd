from __future__ import annotations

import time
from pathlib import Path

import pytest

from ispd.dns.policy import CompiledPolicyZone, Policy, PolicyAction, PolicyHit, compile_policy_zone
from ispd.dns.wire import RRType, name_from_text, name_to_text
from ispd.dns.zone import ZoneError

N = name_from_text

HEAD = "$TTL 300\n@ SOA localhost. root.localhost. 1 3600 600 86400 60\n@ NS localhost.\n"

ZONE = HEAD + """
nx.example            CNAME .
nodata.example        CNAME *.
pass.example          CNAME rpz-passthru.
drop.example          CNAME rpz-drop.
tcp.example           CNAME rpz-tcp-only.
legacy.example        CNAME legacy.example.
redirect.example      A     192.0.2.1
redirect.example      AAAA  2001:db8::1
redirect.example      TXT   "blocked by your ISP"
alias.example         CNAME garden.isp.example.
*.sub.example         CNAME garden.isp.example.
*.garden.example      CNAME *.walled.isp.example.
*.ads.example         CNAME .
*.x.ads.example       CNAME *.
ok.ads.example        CNAME rpz-passthru.
"""


def hit(policy: Policy, name: str) -> PolicyHit | None:
    return policy.match(N(name))


@pytest.mark.parametrize(
    ("qname", "action", "trigger"),
    [
        ("nx.example.", PolicyAction.NXDOMAIN, "nx.example.rpz.local."),
        ("nodata.example.", PolicyAction.NODATA, "nodata.example.rpz.local."),
        ("pass.example.", PolicyAction.PASSTHRU, "pass.example.rpz.local."),
        ("drop.example.", PolicyAction.DROP, "drop.example.rpz.local."),
        ("tcp.example.", PolicyAction.TCP_ONLY, "tcp.example.rpz.local."),
        ("legacy.example.", PolicyAction.PASSTHRU, "legacy.example.rpz.local."),
        ("redirect.example.", PolicyAction.LOCAL_DATA, "redirect.example.rpz.local."),
        ("alias.example.", PolicyAction.LOCAL_DATA, "alias.example.rpz.local."),
        ("a.sub.example.", PolicyAction.LOCAL_DATA, "*.sub.example.rpz.local."),
        # Exact beats wildcard; a longer wildcard beats a shorter one.
        ("ok.ads.example.", PolicyAction.PASSTHRU, "ok.ads.example.rpz.local."),
        ("y.ok.ads.example.", PolicyAction.NXDOMAIN, "*.ads.example.rpz.local."),
        ("x.ads.example.", PolicyAction.NXDOMAIN, "*.ads.example.rpz.local."),
        ("deep.er.x.ads.example.", PolicyAction.NODATA, "*.x.ads.example.rpz.local."),
        ("tracker.ads.example.", PolicyAction.NXDOMAIN, "*.ads.example.rpz.local."),
    ],
)
def test_actions(qname: str, action: PolicyAction, trigger: str) -> None:
    policy = Policy([compile_policy_zone(ZONE, "rpz.local.")])
    result = hit(policy, qname)
    assert result is not None
    assert (result.action, name_to_text(result.trigger), result.zone) == (action, trigger, N("rpz.local."))


@pytest.mark.parametrize("qname", ["example.", "sub.example.", "ads.example.", "nx.example.org.", "x.nx.example.", "rpz.local."])
def test_no_match(qname: str) -> None:
    # A wildcard matches only below its base; an exact trigger only the name itself.
    assert hit(Policy([compile_policy_zone(ZONE, "rpz.local.")]), qname) is None


def test_local_data_is_owned_by_the_query_name() -> None:
    policy = Policy([compile_policy_zone(ZONE, "rpz.local.")])
    result = hit(policy, "redirect.example.")
    assert result is not None
    assert {(rr.name, rr.rtype, rr.ttl) for rr in result.records} == {
        (N("redirect.example."), RRType.A, 300), (N("redirect.example."), RRType.AAAA, 300),
        (N("redirect.example."), RRType.TXT, 300)}
    assert [rr.rdata for rr in result.answer_for(RRType.A)] == [bytes([192, 0, 2, 1])]
    assert result.answer_for(RRType.MX) == []  # NODATA
    assert len(result.answer_for(RRType.ANY)) == 3
    wild = hit(policy, "a.b.sub.example.")
    assert wild is not None
    assert [(rr.name, rr.rtype, rr.rdata) for rr in wild.answer_for(RRType.AAAA)] == [
        (N("a.b.sub.example."), RRType.CNAME, N("garden.isp.example."))]


def test_an_rrset_of_local_data_has_one_ttl_the_lowest() -> None:
    """RFC 2181 §5.2, as local zones do: from a review, the two A records went out with 300 and 60."""
    policy = Policy([compile_policy_zone(HEAD + "multi.example A 10.0.0.1\nmulti.example 60 A 10.0.0.2\n"
                                         "multi.example TXT blocked\n", "rpz.local.")])
    result = hit(policy, "multi.example.")
    assert result is not None
    assert sorted((rr.rtype, rr.ttl) for rr in result.records) == [(RRType.A, 60), (RRType.A, 60), (RRType.TXT, 300)]


def test_wildcard_cname_target_takes_the_query_name() -> None:
    policy = Policy([compile_policy_zone(ZONE, "rpz.local.")])
    result = hit(policy, "www.garden.example.")
    assert result is not None and result.action == PolicyAction.LOCAL_DATA
    assert result.records[0].rdata == N("www.garden.example.walled.isp.example.")
    long_name = ".".join(["x" * 60] * 3 + ["y" * 40]) + ".garden.example."  # 240 bytes; with the suffix, 260
    too_long = hit(policy, long_name)
    assert too_long is not None and too_long.action == PolicyAction.NXDOMAIN


def test_soa_comes_with_the_hit() -> None:
    result = hit(Policy([compile_policy_zone(ZONE, "rpz.local.")]), "nx.example.")
    assert result is not None and result.soa is not None
    assert (result.soa.name, result.soa.ttl) == (N("rpz.local."), 60)  # RFC 2308 §3: min(TTL, MINIMUM)


def test_first_zone_with_a_match_wins() -> None:
    first = compile_policy_zone(HEAD + "*.example.com CNAME .\nallow.example.net CNAME rpz-passthru.\n", "first.rpz.")
    second = compile_policy_zone(HEAD + "www.example.com A 192.0.2.1\nallow.example.net CNAME .\nother.example CNAME .\n",
                                 "second.rpz.")
    policy = Policy([first, second])
    www = hit(policy, "www.example.com.")  # a wildcard in the first zone beats an exact trigger in the second
    assert www is not None and (www.zone, www.action) == (N("first.rpz."), PolicyAction.NXDOMAIN)
    allowed = hit(policy, "allow.example.net.")  # PASSTHRU stops the search
    assert allowed is not None and allowed.action == PolicyAction.PASSTHRU
    other = hit(policy, "other.example.")
    assert other is not None and other.zone == N("second.rpz.")
    assert Policy([]).match(N("other.example.")) is None


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("given", PolicyAction.LOCAL_DATA),
        ("nxdomain", PolicyAction.NXDOMAIN),
        ("nodata", PolicyAction.NODATA),
        ("passthru", PolicyAction.PASSTHRU),
        ("drop", PolicyAction.DROP),
        ("tcp-only", PolicyAction.TCP_ONLY),
        ("cname", PolicyAction.LOCAL_DATA),
    ],
)
def test_override(action: str, expected: PolicyAction) -> None:
    zone = compile_policy_zone(ZONE, "rpz.local.", action=action, cname_target="walled.isp.example.")
    for name in ("redirect.example.", "alias.example.", "q.sub.example.") if action == "given" else (
            "redirect.example.", "nx.example.", "q.ads.example."):
        result = hit(Policy([zone]), name)
        assert result is not None and result.action == expected
        if action == "cname":
            assert [(rr.rtype, rr.rdata) for rr in result.records] == [(RRType.CNAME, N("walled.isp.example."))]
        elif action != "given":
            assert result.records == ()


@pytest.mark.parametrize(("action", "target"), [("block", None), ("cname", None)])
def test_bad_override(action: str, target: str | None) -> None:
    with pytest.raises(ValueError, match="action"):
        compile_policy_zone(ZONE, "rpz.local.", action=action, cname_target=target)


def test_bad_and_unsupported_records_are_counted() -> None:
    text = HEAD + """
good.example                 CNAME .
32.1.2.0.192.rpz-ip          CNAME .
ns1.evil.example.rpz-nsdname CNAME .
32.1.2.0.192.rpz-nsip        CNAME .
32.5.2.0.198.rpz-client-ip   CNAME rpz-drop.
broken.example               A 300.1.1.1
mixed.example                CNAME .
mixed.example                A 192.0.2.1
ns.example                   NS ns.other.
outside.example.net.         CNAME .
unknown.example              BOGUS 1
"""
    zone = compile_policy_zone(text, "rpz.local.", source_name="feed.rpz")
    assert (zone.records_loaded, zone.skipped_bad, zone.skipped_unsupported, zone.triggers) == (2, 5, 4, 2)
    joined = "\n".join(zone.problems)
    for expected in ("feed.rpz:10: bad IPv4 address '300.1.1.1'", "feed.rpz:12: mixed.example.rpz.local.: a CNAME and other data",
                     "feed.rpz:13: ns.example.rpz.local.: NS is not a policy action", "feed.rpz:14: outside.example.net. is outside",
                     "feed.rpz:15: unknown type 'BOGUS'"):
        assert expected in joined
    policy = Policy([zone])
    assert hit(policy, "good.example.") is not None
    mixed = hit(policy, "mixed.example.")  # the first record of the owner stands
    assert mixed is not None and mixed.action == PolicyAction.NXDOMAIN


@pytest.mark.parametrize(("text", "message"), [
    ("", "feed.rpz: no SOA record at rpz.local."),  # an empty (truncated) file
    ("garbage (((\n", "feed.rpz: no SOA record"),
    ("bad.example CNAME .\n", "feed.rpz: no SOA record"),
    ("@ SOA ns h 2024x 3600 600 86400 60\nbad.example CNAME .\n",  # a bad SOA: its line is named
     "no SOA record at rpz.local.: not a policy zone; the first problem: feed.rpz:1: "),
    # One typo swallowing every record after it: not one bad record to skip.
    (HEAD + "typo.example CNAME ( .\nbad.example CNAME .\nworse.example CNAME .\n",
     "feed.rpz:[0-9]+: parenthesis opened here is never closed"),
])
def test_a_file_that_lost_its_records_is_refused_not_an_empty_policy(text: str, message: str) -> None:
    """A reload keeps the policy it has when the new file is refused; an empty policy would
    silently lift every block."""
    with pytest.raises(ZoneError, match=message):
        compile_policy_zone(text, "rpz.local.", source_name="feed.rpz")


def test_compile_from_file(tmp_path: Path) -> None:
    path = tmp_path / "block.rpz"
    path.write_text(HEAD + "bad.example CNAME .\n")
    zone = compile_policy_zone(path, "rpz.local.")
    assert zone.source == str(path) and zone.triggers == 1
    with pytest.raises(ZoneError, match="cannot read"):
        compile_policy_zone(tmp_path / "missing.rpz", "rpz.local.")


def test_hundred_thousand_triggers_compile_in_seconds() -> None:
    lines = [HEAD]
    for i in range(100_000):
        if i % 3 == 0:
            lines.append(f"*.tracker{i}.example{i % 1000}.com CNAME .")
        elif i % 3 == 1:
            lines.append(f"ads{i}.example{i % 1000}.net CNAME *.")
        else:
            lines.append(f"redirect{i}.example A 192.0.2.{i % 256}")
    start = time.perf_counter()
    zone: CompiledPolicyZone = compile_policy_zone("\n".join(lines), "rpz.local.")
    elapsed = time.perf_counter() - start
    assert (zone.triggers, zone.records_loaded, zone.skipped_bad) == (100_000, 100_000, 0)
    assert elapsed < 10, f"100 000 triggers took {elapsed:.1f} s"  # about 1.5 s on a laptop
    policy = Policy([zone])
    found = hit(policy, "a.b.tracker999.example999.com.")
    assert found is not None and found.action == PolicyAction.NXDOMAIN


def test_check_config_counts_every_skipped_record_not_only_those_listed(tmp_path: Path) -> None:
    """From a bug hunt: a feed with 50 000 bad records listed 100 of them and said nothing of the
    rest, nor of its rpz-ip triggers, which are not applied."""
    from ispd.dns.config import DNSConfig
    from ispd.dns.service import check_files

    path = tmp_path / "feed.rpz"
    path.write_text(HEAD + "".join(f"bad{i}.example A 999.1.1.1\n" for i in range(150))
                    + "32.1.2.0.192.rpz-ip CNAME .\nok.example CNAME .\n")
    config = DNSConfig.model_validate({"enabled": True, "policy_zone": [{"name": "rpz.local", "file": str(path)}]})
    problems, warnings = check_files(config)
    assert problems == []
    assert sum("(the record is skipped)" in w for w in warnings) == 100
    assert f"{path}: 150 bad records skipped in all (only the first 100 are listed)" in warnings
    assert any(w.startswith(f"{path}: 1 records skipped: triggers other than QNAME") for w in warnings), warnings


def test_good_records_do_not_pay_for_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    """From a bug hunt: every record's owner was written out as text for a message that only a
    bad one needs, a fifth of the CPU a feed of a million triggers takes to compile."""
    import ispd.dns.policy

    calls: list[bytes] = []
    real = ispd.dns.policy.name_to_text
    monkeypatch.setattr(ispd.dns.policy, "name_to_text", lambda name: calls.append(name) or real(name))
    zone = compile_policy_zone(ZONE, "rpz.local.")
    assert zone.skipped_bad == 0 and calls == []
    bad = compile_policy_zone(HEAD + "mixed.example CNAME .\nmixed.example A 192.0.2.1\n", "rpz.local.",
                              source_name="feed.rpz")
    assert bad.problems == ("feed.rpz:5: mixed.example.rpz.local.: a CNAME and other data at one trigger "
                            "(RFC 1034 §3.6.2); the record on this line is skipped",)


def test_a_compiled_zone_gives_the_cycle_collector_nothing_to_walk() -> None:
    """Each full collection walked every trigger of a feed (0.3 s of the event loop for a
    million); kept as bytes, they are not tracked, and identical ones are one value."""
    import gc

    feed = HEAD + "".join(f"blocked{i}.example CNAME .\n*.ads{i}.example CNAME .\n" for i in range(1000))
    zone = compile_policy_zone(feed + "redirect.example A 192.0.2.1\n", "rpz.local.")
    triggers = [*zone.exact.values(), *zone.wildcard.values()]
    assert len(triggers) == 2001
    assert not any(gc.is_tracked(value) for value in (zone.exact, zone.wildcard, *triggers))
    assert len({id(trigger) for trigger in triggers}) == 2  # NXDOMAIN with TTL 300, and the redirect
    result = Policy([zone]).match(N("x.ads999.example."))
    assert result is not None and name_to_text(result.trigger) == "*.ads999.example.rpz.local."


def test_local_data_of_several_records_and_lengths_reads_back_whole() -> None:
    rdata = "x" * 255
    zone = compile_policy_zone(HEAD + f'big.example TXT "{rdata}" "y"\nbig.example A 192.0.2.7\n'
                               "big.example MX 10 mail.isp.example.\n", "rpz.local.")
    result = Policy([zone]).match(N("big.example."))
    assert result is not None
    assert [(rr.rtype, rr.ttl) for rr in result.records] == [(RRType.TXT, 300), (RRType.A, 300), (RRType.MX, 300)]
    assert result.answer_for(RRType.TXT)[0].rdata == bytes([255]) + rdata.encode() + b"\x01y"
    assert result.answer_for(RRType.MX)[0].rdata == b"\x00\x0a" + N("mail.isp.example.")
