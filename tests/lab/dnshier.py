"""A DNS hierarchy on loopback: real authoritative servers from the root down, for the resolver.

Every server of the hierarchy is its own NSD process (NSD serves each zone it has on each address
it listens on, so one process per address keeps the servers apart), run in the foreground (``-d``)
with a private config in a temporary directory, on port 53 of an address in ``<base>.0.0/16``
(base "127.53" by default; another base lets two hierarchies run at once). Delegations cannot name
ports, so port 53 it is, and the tests run as root. Answers hand out addresses from the ranges
reserved for tests only: 198.18.0.0/15 and 2001:db8::/32.

The tree (offsets from the base; "BH" is a ``Blackhole``, "--" an address where nothing listens;
[alg 13 NSEC] a zone signed with that DNSSEC algorithm and denial, every other zone is unsigned):

    .                     a.root-servers.test .0.1, b.root-servers.test .0.2 [alg 13 NSEC, KSK + ZSK]
    test.                 ns1.nic.test .1.1, ns2.nic.test .1.2 (glue in the root) [alg 8 NSEC]
      example-a.test      ns1/ns2.example-a.test .10.1/.10.2 (glue)
        sub.example-a.test  ns.sub.example-a.test .10.3 (glue in example-a.test)
      oob.test            ns-oob.example-b.example .12.1 (no glue: another TLD)
      lame.test           ns1.lame.test .13.1 (NSD without the zone: REFUSED), ns2.lame.test .13.2
      dead.test           ns1 .14.1 BH, ns2 .14.2 --, ns3 .14.3 live
      alldead.test        ns1 .15.1 BH, ns2 .15.2 --
      bench.test          ns1.bench.test .16.1 (wildcard + h0..h499, for bench/dns.py)
      sbench.test         ns1.sbench.test .16.2 [alg 13 NSEC] (bench.test's twin, signed: its
                          validated workloads)
      stale.test          ns1.stale.test .17.1 (short TTLs; stop it for serve-stale tests)
      rogue.test          ns1.rogue.test .20.1 (nothing, until a test starts a RogueServer there)
      secure.test         ns1.secure.test .18.1 [alg 13 NSEC] (signed wildcard, CNAMEs out to an
                          unsigned and a bogus zone)
        unsigned.secure.test  ns.unsigned.secure.test .18.2 (insecure delegation: NSEC, no DS)
        cohosted.secure.test  ns1.secure.test .18.1 (insecure delegation to the parent's own
                          server, which answers for it without a referral)
      nsec3.test          ns1.nsec3.test .18.3 [alg 15 NSEC3, salt, opt-out]
        optout.nsec3.test  ns.optout.nsec3.test .18.4 (insecure delegation, no NSEC3 of its own)
      expired.test        ns1.expired.test .18.5 [alg 13 NSEC, signatures of January 2020: bogus]
      badds.test          ns1.badds.test .18.6 [alg 13 NSEC, its DS in test. matches no DNSKEY: bogus]
      rsasha512.test      ns1.rsasha512.test .18.7 [alg 10 NSEC]
      p384.test           ns1.p384.test .18.8 [alg 14 NSEC3, no salt, no opt-out] (signed wildcard)
    example.              ns1.nic.example .2.1, ns2.nic.example .2.2 (glue in the root)
      example-b.example   ns1.example-b.example .11.1 (glue)
    arpa.                 ns.arpa-servers.test .3.1 (no glue: the name lives in test.)
      in-addr.arpa        ns.in-addr.arpa .3.2 (glue)
        18.198.in-addr.arpa  ns.18.198.in-addr.arpa .3.3 (glue; 198.in-addr.arpa is an empty
                             non-terminal of in-addr.arpa)
    (mail, in example-a.test) relay. (MX .40.1), twomx. (MX .40.2 where nothing listens, then .40.1),
                          nullmx. (null MX, RFC 7505), nomx. (no MX, an A record .40.1),
                          hostless. (MX to a host that does not exist): the SMTP servers of the
                          mail tests listen on port 25 of .40.x
    corp.internal.        ns1.corp.internal .21.1: a private zone no one delegates (internal. does
                          not exist at the root), reachable only as a configured stub zone
    (no zone)             .20.2 a spare for a RogueServer's forged sources; .30.1, .30.2 free for
                          a RecordingRelay in front of a forwarder or a stub zone's server

``expectations()`` (also ``DNSHierarchy.expectations`` and ``.expect(name, type)``) lists every
case a resolver must handle, with the answer a correct recursive resolver gives (checked against
Unbound by tests/dns/test_lab_hierarchy.py); ``Expectation.problems()`` checks a ``dig()`` result.

DNSSEC: ``start()`` makes new keys and signs the zones of ``SIGNED`` (tests/lab/dnssec.py, with
BIND's dnssec-keygen and dnssec-signzone; signatures valid from an hour ago for 30 days), children
first, each child's DS in its parent. The root's KSK is the trust anchor: its DS records in
``DNSHierarchy.trust_anchor_path`` (". 86400 IN DS <tag> 13 2 <hex>"; Unbound's
``trust-anchor-file:`` takes it) and its DNSKEY in ``.trust_anchor_dnskey_path``, the same texts
from ``.trust_anchor()`` and ``.trust_anchor_dnskey()``; new at every start. ``dnssec_expectations()``
(also ``DNSHierarchy.dnssec_expectations`` and ``.expect(name, type, validating=True)``) lists what
a validating resolver answers: secure (AD), insecure (no AD) or bogus (SERVFAIL, with the Extended
DNS Error that says why). ``corp.internal.`` is not delegated from the signed root, so a validating
resolver must treat that stub zone as insecure (Unbound: ``domain-insecure``) or it is bogus.

Also here: ``RogueServer`` (a scriptable UDP/TCP server for anti-spoofing tests),
``RecordingRelay`` (passes queries on to another server and notes what was asked, RD bit
included), ``Blackhole`` (binds :53 and never answers), ``Unbound`` (the reference resolver, for
tests and the benchmark; validating with ``trust_anchor=``) and ``dig()``. ``python -m
tests.lab.dnshier serve [--base 127.53] [--hints PATH] [--trust-anchor PATH]`` runs the hierarchy
until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import ipaddress
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import dnslib

from tests.lab import ports
from tests.lab.dnssec import SignedZone, Signing, sign_zones

DEFAULT_BASE = "127.53"
NSD = shutil.which("nsd") or "/usr/sbin/nsd"
UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
DIG = shutil.which("dig") or "/usr/bin/dig"

SERIAL = 2024010101
NEGATIVE_TTL = 300
BENCH_NAMES = 500  # h0.bench.test .. h499.bench.test (and sbench.test)
BIG_TXT_STRINGS = 10  # 10 strings of 200 characters: about 2.1 kB, more than an EDNS UDP answer's 1232
LONG_CHAIN = 14  # long1 -> long2 -> ... -> long14 -> www: 14 CNAMEs, more than a resolver's usual 12


# --- servers


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One address of the hierarchy. ``kind``: "nsd" (serves ``zones``; none: REFUSED to all),
    "blackhole" (binds UDP and TCP :53, never answers), "none" (nothing listens), "rogue"
    (nothing by default; the address a test gives its ``RogueServer``)."""

    key: str
    hosts: tuple[str, ...]  # the NS names that point at this address
    offset: str  # the last two octets; the address is f"{base}.{offset}"
    kind: str
    zones: tuple[str, ...] = ()


SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec("root-a", ("a.root-servers.test.",), "0.1", "nsd", (".",)),
    ServerSpec("root-b", ("b.root-servers.test.",), "0.2", "nsd", (".",)),
    ServerSpec("test-1", ("ns1.nic.test.",), "1.1", "nsd", ("test.",)),
    ServerSpec("test-2", ("ns2.nic.test.",), "1.2", "nsd", ("test.",)),
    ServerSpec("example-1", ("ns1.nic.example.",), "2.1", "nsd", ("example.",)),
    ServerSpec("example-2", ("ns2.nic.example.",), "2.2", "nsd", ("example.",)),
    ServerSpec("arpa", ("ns.arpa-servers.test.",), "3.1", "nsd", ("arpa.",)),
    ServerSpec("in-addr", ("ns.in-addr.arpa.",), "3.2", "nsd", ("in-addr.arpa.",)),
    ServerSpec("rev-198-18", ("ns.18.198.in-addr.arpa.",), "3.3", "nsd", ("18.198.in-addr.arpa.",)),
    ServerSpec("example-a-1", ("ns1.example-a.test.",), "10.1", "nsd", ("example-a.test.",)),
    ServerSpec("example-a-2", ("ns2.example-a.test.",), "10.2", "nsd", ("example-a.test.",)),
    ServerSpec("sub", ("ns.sub.example-a.test.",), "10.3", "nsd", ("sub.example-a.test.",)),
    ServerSpec("example-b", ("ns1.example-b.example.",), "11.1", "nsd", ("example-b.example.",)),
    ServerSpec("oob", ("ns-oob.example-b.example.",), "12.1", "nsd", ("oob.test.",)),
    ServerSpec("lame-1", ("ns1.lame.test.",), "13.1", "nsd", ()),
    ServerSpec("lame-2", ("ns2.lame.test.",), "13.2", "nsd", ("lame.test.",)),
    ServerSpec("dead-1", ("ns1.dead.test.",), "14.1", "blackhole"),
    ServerSpec("dead-2", ("ns2.dead.test.",), "14.2", "none"),
    ServerSpec("dead-3", ("ns3.dead.test.",), "14.3", "nsd", ("dead.test.",)),
    ServerSpec("alldead-1", ("ns1.alldead.test.",), "15.1", "blackhole"),
    ServerSpec("alldead-2", ("ns2.alldead.test.",), "15.2", "none"),
    ServerSpec("bench", ("ns1.bench.test.",), "16.1", "nsd", ("bench.test.",)),
    ServerSpec("sbench", ("ns1.sbench.test.",), "16.2", "nsd", ("sbench.test.",)),  # bench.test signed
    ServerSpec("stale", ("ns1.stale.test.",), "17.1", "nsd", ("stale.test.",)),
    # DNSSEC (see SIGNED): signed children of test., and unsigned zones delegated from signed ones
    # (also its unsigned child cohosted.secure.test, as hosting providers do: answered without a referral)
    ServerSpec("secure", ("ns1.secure.test.",), "18.1", "nsd", ("secure.test.", "cohosted.secure.test.")),
    ServerSpec("unsigned-secure", ("ns.unsigned.secure.test.",), "18.2", "nsd", ("unsigned.secure.test.",)),
    ServerSpec("nsec3", ("ns1.nsec3.test.",), "18.3", "nsd", ("nsec3.test.",)),
    ServerSpec("optout-nsec3", ("ns.optout.nsec3.test.",), "18.4", "nsd", ("optout.nsec3.test.",)),
    ServerSpec("expired", ("ns1.expired.test.",), "18.5", "nsd", ("expired.test.",)),
    ServerSpec("badds", ("ns1.badds.test.",), "18.6", "nsd", ("badds.test.",)),
    ServerSpec("rsasha512", ("ns1.rsasha512.test.",), "18.7", "nsd", ("rsasha512.test.",)),
    ServerSpec("p384", ("ns1.p384.test.",), "18.8", "nsd", ("p384.test.",)),
    ServerSpec("rogue", ("ns1.rogue.test.",), "20.1", "rogue"),
    # no NS points here: a second address for a RogueServer's forged sources
    ServerSpec("rogue-spare", (), "20.2", "rogue"),
    # a private zone: nothing delegates to it, a resolver reaches it only as a stub zone
    ServerSpec("corp", ("ns1.corp.internal.",), "21.1", "nsd", ("corp.internal.",)),
    # no NS points here either: where tests put a RecordingRelay (forward and stub zones)
    ServerSpec("relay-1", (), "30.1", "rogue"),
    ServerSpec("relay-2", (), "30.2", "rogue"),
)


# --- zones


def big_txt_strings() -> list[str]:
    """The strings of big.example-a.test TXT, one per record."""
    return [f"big-{i:02d}-" + "abcdefghij" * 19 + "abcd" for i in range(BIG_TXT_STRINGS)]


def bench_address(i: int) -> str:
    """The address of h<i>.bench.test (and of h<i>.sbench.test)."""
    return f"198.18.{128 + i // 256}.{i % 256}"


BENCH_WILDCARD_ADDRESS = "198.18.127.1"


def _soa(primary: str, origin: str) -> str:
    mbox = "hostmaster." + (origin if origin != "." else "nic.test.")
    return f"@ 3600 IN SOA {primary} {mbox} {SERIAL} 3600 900 604800 {NEGATIVE_TTL}"


def _long_chain(zone: str) -> list[str]:
    """long1..long14 alternate between example-a.test (odd) and example-b.example (even), so a
    resolver must ask again for each hop; the last points at www.example-a.test."""
    lines = []
    for i in range(1, LONG_CHAIN + 1):
        here = "example-a.test." if i % 2 else "example-b.example."
        if here != zone:
            continue
        target = (f"long{i + 1}." + ("example-b.example." if i % 2 else "example-a.test.")
                  if i < LONG_CHAIN else "www.example-a.test.")
        lines.append(f"long{i} CNAME {target}")
    return lines


DKIM_LAB_KEY = Path(__file__).with_name("data") / "dkim-lab.key"
DKIM_LAB_RECORD = (Path(__file__).with_name("data") / "dkim-lab.txt").read_text().strip()


def zone_texts(base: str = DEFAULT_BASE) -> dict[str, str]:
    """Zone origin -> zone file text, for the hierarchy at ``base``."""
    a = {host: f"{base}.{s.offset}" for s in SERVERS for host in s.hosts}
    zones: dict[str, str] = {}

    zones["."] = "\n".join([
        "$ORIGIN .", "$TTL 86400", _soa("a.root-servers.test.", "."),
        ". 518400 IN NS a.root-servers.test.", ". 518400 IN NS b.root-servers.test.",
        # glue for the root servers, under the delegation of test.
        f"a.root-servers.test. 518400 IN A {a['a.root-servers.test.']}",
        f"b.root-servers.test. 518400 IN A {a['b.root-servers.test.']}",
        "test. 172800 IN NS ns1.nic.test.", "test. 172800 IN NS ns2.nic.test.",
        f"ns1.nic.test. 172800 IN A {a['ns1.nic.test.']}", f"ns2.nic.test. 172800 IN A {a['ns2.nic.test.']}",
        "example. 172800 IN NS ns1.nic.example.", "example. 172800 IN NS ns2.nic.example.",
        f"ns1.nic.example. 172800 IN A {a['ns1.nic.example.']}",
        f"ns2.nic.example. 172800 IN A {a['ns2.nic.example.']}",
        # out of bailiwick and no glue: the resolver resolves ns.arpa-servers.test itself
        "arpa. 172800 IN NS ns.arpa-servers.test.",
    ])

    test_lines = ["$ORIGIN test.", "$TTL 3600", _soa("ns1.nic.test.", "test."),
                  "@ 172800 IN NS ns1.nic.test.", "@ 172800 IN NS ns2.nic.test."]
    for host in ("ns1.nic.test.", "ns2.nic.test.", "a.root-servers.test.", "b.root-servers.test.",
                 "ns.arpa-servers.test."):
        test_lines.append(f"{host} IN A {a[host]}")
    for child in ("example-a", "oob", "lame", "dead", "alldead", "bench", "sbench", "stale", "rogue",
                  "secure", "nsec3", "expired", "badds", "rsasha512", "p384"):
        zone = f"{child}.test."
        hosts = ["ns-oob.example-b.example."] if child == "oob" else sorted(
            h for s in SERVERS for h in s.hosts if h.endswith("." + zone) and h.count(".") == zone.count(".") + 1)
        for host in hosts:
            test_lines.append(f"{zone} IN NS {host}")
            if host.endswith("." + zone):
                test_lines.append(f"{host} IN A {a[host]}")
    zones["test."] = "\n".join(test_lines)

    zones["example."] = "\n".join([
        "$ORIGIN example.", "$TTL 3600", _soa("ns1.nic.example.", "example."),
        "@ 172800 IN NS ns1.nic.example.", "@ 172800 IN NS ns2.nic.example.",
        f"ns1.nic IN A {a['ns1.nic.example.']}", f"ns2.nic IN A {a['ns2.nic.example.']}",
        "example-b IN NS ns1.example-b.example.",
        f"ns1.example-b IN A {a['ns1.example-b.example.']}",
    ])

    zones["arpa."] = "\n".join([
        "$ORIGIN arpa.", "$TTL 3600", _soa("ns.arpa-servers.test.", "arpa."),
        "@ IN NS ns.arpa-servers.test.",
        "in-addr IN NS ns.in-addr.arpa.", f"ns.in-addr IN A {a['ns.in-addr.arpa.']}",
    ])
    zones["in-addr.arpa."] = "\n".join([
        "$ORIGIN in-addr.arpa.", "$TTL 3600", _soa("ns.in-addr.arpa.", "in-addr.arpa."),
        "@ IN NS ns.in-addr.arpa.", f"ns IN A {a['ns.in-addr.arpa.']}",
        "18.198 IN NS ns.18.198.in-addr.arpa.", f"ns.18.198 IN A {a['ns.18.198.in-addr.arpa.']}",
    ])
    zones["18.198.in-addr.arpa."] = "\n".join([
        "$ORIGIN 18.198.in-addr.arpa.", "$TTL 3600", _soa("ns.18.198.in-addr.arpa.", "18.198.in-addr.arpa."),
        "@ IN NS ns.18.198.in-addr.arpa.", f"ns IN A {a['ns.18.198.in-addr.arpa.']}",
        "1.1 IN PTR www.example-a.test.", "4.1 IN PTR v4only.example-a.test.",
        "25.1 IN PTR mail.example-a.test.", "1.3 IN PTR www.example-b.example.",
    ])

    zones["example-a.test."] = "\n".join([
        "$ORIGIN example-a.test.", "$TTL 3600", _soa("ns1.example-a.test.", "example-a.test."),
        "@ IN NS ns1.example-a.test.", "@ IN NS ns2.example-a.test.",
        f"ns1 IN A {a['ns1.example-a.test.']}", f"ns2 IN A {a['ns2.example-a.test.']}",
        "@ IN MX 10 mail.example-a.test.", '@ IN TXT "v=spf1 mx -all"',
        "mail IN A 198.18.1.25",
        "www IN A 198.18.1.1", "www IN AAAA 2001:db8:1::1",
        'txt IN TXT "hello from example-a"',
        "v4only IN A 198.18.1.4",
        "ttl2 2 IN A 198.18.1.2",
        "alias IN CNAME www",
        "chain1 IN CNAME chain2", "chain2 IN CNAME chain3", "chain3 IN CNAME www",
        "cross IN CNAME www.example-b.example.",
        "dname IN DNAME example-b.example.",
        "loop1 IN CNAME loop2", "loop2 IN CNAME loop1",
        *_long_chain("example-a.test."),
        "*.wild IN A 198.18.1.42", '*.wild IN TXT "wildcard"',
        "x.y IN A 198.18.1.50",  # y.example-a.test: an empty non-terminal
        *(f'big IN TXT "{s}"' for s in big_txt_strings()),
        "sub IN NS ns.sub.example-a.test.", f"ns.sub IN A {a['ns.sub.example-a.test.']}",
        # The mail tests' other domains: their SMTP servers listen on port 25 of .40.x.
        "relay IN MX 10 mx1.relay", f"mx1.relay IN A {base}.40.1",
        "twomx IN MX 10 mx-dead.twomx", "twomx IN MX 20 mx1.relay", f"mx-dead.twomx IN A {base}.40.2",
        "nullmx IN MX 0 .",
        "hostless IN MX 10 nohost.hostless",  # its one mail host does not exist
        f"nomx IN A {base}.40.1",  # no MX record: mail goes to the domain's own address
        # Mail authentication: example-a.test's SPF (above) allows only its MX, its DMARC policy
        # rejects (and covers its subdomains), twomx's quarantines; relay.example-a.test signs
        # with the lab's DKIM key (tests/lab/data/dkim-lab.key).
        '_dmarc IN TXT "v=DMARC1; p=reject"', '_dmarc.twomx IN TXT "v=DMARC1; p=quarantine"',
        f'lab._domainkey.relay IN TXT "{DKIM_LAB_RECORD}"',
    ])
    zones["sub.example-a.test."] = "\n".join([
        "$ORIGIN sub.example-a.test.", "$TTL 3600", _soa("ns.sub.example-a.test.", "sub.example-a.test."),
        "@ IN NS ns.sub.example-a.test.", f"ns IN A {a['ns.sub.example-a.test.']}",
        "www IN A 198.18.2.1",
    ])
    zones["example-b.example."] = "\n".join([
        "$ORIGIN example-b.example.", "$TTL 3600", _soa("ns1.example-b.example.", "example-b.example."),
        "@ IN NS ns1.example-b.example.", f"ns1 IN A {a['ns1.example-b.example.']}",
        f"ns-oob IN A {a['ns-oob.example-b.example.']}",
        "www IN A 198.18.3.1", "www IN AAAA 2001:db8:3::1",
        *_long_chain("example-b.example."),
    ])
    zones["oob.test."] = "\n".join([
        "$ORIGIN oob.test.", "$TTL 3600", _soa("ns-oob.example-b.example.", "oob.test."),
        "@ IN NS ns-oob.example-b.example.", "www IN A 198.18.4.1",
    ])
    zones["lame.test."] = "\n".join([
        "$ORIGIN lame.test.", "$TTL 3600", _soa("ns2.lame.test.", "lame.test."),
        "@ IN NS ns1.lame.test.", "@ IN NS ns2.lame.test.",
        f"ns1 IN A {a['ns1.lame.test.']}", f"ns2 IN A {a['ns2.lame.test.']}",
        "www IN A 198.18.5.1",
    ])
    zones["dead.test."] = "\n".join([
        "$ORIGIN dead.test.", "$TTL 3600", _soa("ns3.dead.test.", "dead.test."),
        *(f"@ IN NS ns{i}.dead.test." for i in (1, 2, 3)),
        *(f"ns{i} IN A {a[f'ns{i}.dead.test.']}" for i in (1, 2, 3)),
        "www IN A 198.18.6.1",
    ])
    for bench in ("bench.test.", "sbench.test."):  # the same names; sbench.test is signed (SIGNED)
        zones[bench] = "\n".join([
            f"$ORIGIN {bench}", "$TTL 3600", _soa(f"ns1.{bench}", bench),
            f"@ IN NS ns1.{bench}", f"ns1 IN A {a[f'ns1.{bench}']}",
            f"* IN A {BENCH_WILDCARD_ADDRESS}",
            *(f"h{i} IN A {bench_address(i)}" for i in range(BENCH_NAMES)),
        ])
    zones["stale.test."] = "\n".join([
        "$ORIGIN stale.test.", "$TTL 3600", _soa("ns1.stale.test.", "stale.test."),
        "@ IN NS ns1.stale.test.", f"ns1 IN A {a['ns1.stale.test.']}",
        "www 2 IN A 198.18.7.1", "ttl30 30 IN A 198.18.7.30", "long IN A 198.18.7.2",
    ])
    # DNSSEC: SIGNED says which zones start() signs, and how; their DS records go into test. then
    zones["secure.test."] = "\n".join([
        "$ORIGIN secure.test.", "$TTL 3600", _soa("ns1.secure.test.", "secure.test."),
        "@ IN NS ns1.secure.test.", f"ns1 IN A {a['ns1.secure.test.']}",
        "@ IN MX 10 mail.secure.test.", "mail IN A 198.18.5.25",
        "www IN A 198.18.5.1",
        "alias IN CNAME www",
        "*.wild IN A 198.18.5.2",  # wild.secure.test: an empty non-terminal
        'txt IN TXT "signed"',
        "to-unsigned IN CNAME www.example-a.test.",
        "to-bogus IN CNAME www.expired.test.",
        # a wildcard CNAME out of the zone: the expansion's NSEC proof comes with the CNAME alone
        "*.out IN CNAME www.p384.test.",
        "*.gone IN CNAME nothing.secure.test.",  # and one to a name that does not exist
        # an insecure delegation: the NSEC at unsigned.secure.test shows NS but no DS
        "unsigned IN NS ns.unsigned.secure.test.", f"ns.unsigned IN A {a['ns.unsigned.secure.test.']}",
        # another, on this zone's own server
        "cohosted IN NS ns1.secure.test.",
    ])
    zones["cohosted.secure.test."] = "\n".join([
        "$ORIGIN cohosted.secure.test.", "$TTL 3600", _soa("ns1.secure.test.", "cohosted.secure.test."),
        "@ IN NS ns1.secure.test.", "www IN A 198.18.5.13",
    ])
    zones["unsigned.secure.test."] = "\n".join([
        "$ORIGIN unsigned.secure.test.", "$TTL 3600", _soa("ns.unsigned.secure.test.", "unsigned.secure.test."),
        "@ IN NS ns.unsigned.secure.test.", f"ns IN A {a['ns.unsigned.secure.test.']}",
        "www IN A 198.18.5.3",
    ])
    zones["nsec3.test."] = "\n".join([
        "$ORIGIN nsec3.test.", "$TTL 3600", _soa("ns1.nsec3.test.", "nsec3.test."),
        "@ IN NS ns1.nsec3.test.", f"ns1 IN A {a['ns1.nsec3.test.']}",
        "www IN A 198.18.5.4",
        "*.wild IN A 198.18.5.5",
        # opt-out: no NSEC3 for this insecure delegation, only one covering its hash
        "optout IN NS ns.optout.nsec3.test.", f"ns.optout IN A {a['ns.optout.nsec3.test.']}",
    ])
    zones["optout.nsec3.test."] = "\n".join([
        "$ORIGIN optout.nsec3.test.", "$TTL 3600", _soa("ns.optout.nsec3.test.", "optout.nsec3.test."),
        "@ IN NS ns.optout.nsec3.test.", f"ns IN A {a['ns.optout.nsec3.test.']}",
        "www IN A 198.18.5.6",
    ])
    for child, records in (("expired", ["www IN A 198.18.5.7"]), ("badds", ["www IN A 198.18.5.8"]),
                           ("rsasha512", ["www IN A 198.18.5.10"]),
                           ("p384", ["www IN A 198.18.5.11", "*.wild IN A 198.18.5.12"])):
        zones[f"{child}.test."] = "\n".join([
            f"$ORIGIN {child}.test.", "$TTL 3600", _soa(f"ns1.{child}.test.", f"{child}.test."),
            f"@ IN NS ns1.{child}.test.", f"ns1 IN A {a[f'ns1.{child}.test.']}", *records,
        ])
    zones["corp.internal."] = "\n".join([
        "$ORIGIN corp.internal.", "$TTL 3600", _soa("ns1.corp.internal.", "corp.internal."),
        "@ IN NS ns1.corp.internal.", f"ns1 IN A {a['ns1.corp.internal.']}",
        "www IN A 198.18.21.1", "mail 300 IN A 198.18.21.25",
        "alias IN CNAME www.example-b.example.",  # out of the stub zone: iterated from the root
    ])
    return {origin: text + "\n" for origin, text in zones.items()}


# Which zones are signed, and how (tests/lab/dnssec.py does it at every start, with fresh keys).
# Every other zone is unsigned: under the root and test., an insecure delegation that the parent's
# NSEC proves (no DS); under nsec3.test, one that its opt-out NSEC3 covers.
SIGNED: dict[str, Signing] = {
    ".": Signing("ECDSAP256SHA256", split=True),  # a KSK (its DS: the trust anchor) and a ZSK
    "test.": Signing("RSASHA256", bits=2048),
    "secure.test.": Signing("ECDSAP256SHA256"),
    "nsec3.test.": Signing("ED25519", nsec3_salt="5EC7E57A", opt_out=True),
    "expired.test.": Signing("ECDSAP256SHA256", validity=("20200101000000", "20200201000000")),
    "badds.test.": Signing("ECDSAP256SHA256", wrong_ds=True),
    "rsasha512.test.": Signing("RSASHA512", bits=1024),
    "p384.test.": Signing("ECDSAP384SHA384", nsec3_salt=""),  # NSEC3 without opt-out or salt
    "sbench.test.": Signing("ECDSAP256SHA256"),  # bench/dns.py's validated workloads
}


# --- what a correct resolver answers


@dataclass(frozen=True, slots=True)
class Expectation:
    """A question and what a recursive resolver answers it with.

    ``chain``: the names the answer aliases through after the question's name (CNAME targets,
    or what a DNAME synthesises), in order; the final RRset's owner is ``chain[-1]`` (or the
    question's name). ``answer``: the final RRset's rdata in presentation form (empty: NODATA or
    an error). ``tcp``: the answer does not fit a 1232-byte UDP reply (TC set; TCP gives it all).
    ``max_ttl``: the final RRset's TTL as published (a cache only counts down from it).

    ``security`` (the DNSSEC cases, for a validating resolver; "" elsewhere: AD not checked):
    "secure" (AD set), "insecure" (AD clear), "bogus" (SERVFAIL; ``answer`` and ``chain`` then
    say what the zones publish, which ``unvalidated()`` expects). ``ede``: the Extended DNS Error
    (RFC 8914 info code) that comes with a bogus answer's SERVFAIL and says why."""

    case: str
    qname: str
    qtype: str
    rcode: str = "NOERROR"
    answer: frozenset[str] = frozenset()
    chain: tuple[str, ...] = ()
    tcp: bool = False
    max_ttl: int | None = None
    security: str = ""
    ede: int | None = None

    @property
    def final_name(self) -> str:
        return self.chain[-1] if self.chain else self.qname

    def unvalidated(self) -> Expectation:
        """This case as a resolver that does not validate answers it, or a validating one asked
        with CD set: the data as published (a bogus case's too), AD not checked."""
        return dataclasses.replace(self, rcode="NOERROR" if self.security == "bogus" else self.rcode, security="",
                                   ede=None)

    def problems(self, result: DigResult) -> list[str]:
        """What in ``result`` differs from this expectation (an empty list: all is well)."""
        found: list[str] = []
        if result.status != self.rcode:
            found.append(f"status {result.status}, expected {self.rcode}")
        if self.ede is not None and self.ede not in (codes := [int(c) for c in _EDE.findall(result.text)]):
            found.append(f"EDE {codes or 'none'}, expected {self.ede}")
        if self.rcode == "SERVFAIL":
            return found
        if self.security == "secure" and "ad" not in result.flags:
            found.append("AD clear, expected a secure answer (AD set)")
        if self.security == "insecure" and "ad" in result.flags:
            found.append("AD set, expected an insecure answer (AD clear)")
        aliases = {r.owner: r.rdata for r in result.answer if r.type == "CNAME"}
        name, path = self.qname, list[str]()
        while name in aliases and len(path) < 20:
            name = aliases[name]
            path.append(name)
        if tuple(path) != self.chain:
            found.append(f"alias chain {path}, expected {list(self.chain)}")
        final = {r.rdata for r in result.answer if r.owner == self.final_name and r.type == self.qtype}
        if final != set(self.answer):
            found.append(f"{self.final_name} {self.qtype} {sorted(final)}, expected {sorted(self.answer)}")
        if self.max_ttl is not None:
            ttls = [r.ttl for r in result.answer if r.owner == self.final_name and r.type == self.qtype]
            if any(t > self.max_ttl for t in ttls):
                found.append(f"TTL {max(ttls)} above the published {self.max_ttl}")
        return found


_EDE = re.compile(r"^; EDE: (\d+)", re.MULTILINE)  # dig's OPT pseudosection


def _e(case: str, qname: str, qtype: str, answer: Iterable[str] = (), *, rcode: str = "NOERROR",
       chain: Sequence[str] = (), tcp: bool = False, max_ttl: int | None = None, security: str = "",
       ede: int | None = None) -> Expectation:
    return Expectation(case, qname, qtype, rcode, frozenset(answer), tuple(chain), tcp, max_ttl, security, ede)


def expectations(base: str = DEFAULT_BASE) -> tuple[Expectation, ...]:
    """Every case, as a correct recursive resolver answers it (checked against Unbound by
    tests/dns/test_lab_hierarchy.py). Only ``ns1.nic.test`` depends on ``base``."""
    www_a = ["198.18.1.1"]
    long_chain = [f"long{i}." + ("example-a.test." if i % 2 else "example-b.example.")
                  for i in range(2, LONG_CHAIN + 1)] + ["www.example-a.test."]
    return (
        _e("answer A", "www.example-a.test.", "A", www_a, max_ttl=3600),
        _e("answer AAAA", "www.example-a.test.", "AAAA", ["2001:db8:1::1"]),
        _e("MX at the apex", "example-a.test.", "MX", ["10 mail.example-a.test."]),
        _e("TXT", "txt.example-a.test.", "TXT", ['"hello from example-a"']),
        _e("NODATA (A only)", "v4only.example-a.test.", "AAAA"),
        _e("NXDOMAIN", "nope.example-a.test.", "A", rcode="NXDOMAIN"),
        _e("NXDOMAIN in a TLD", "nope.test.", "A", rcode="NXDOMAIN"),
        _e("NXDOMAIN at the root", "www.no-such-tld.", "A", rcode="NXDOMAIN"),
        _e("short TTL", "ttl2.example-a.test.", "A", ["198.18.1.2"], max_ttl=2),
        _e("CNAME", "alias.example-a.test.", "A", www_a, chain=["www.example-a.test."]),
        _e("CNAME chain of 3", "chain1.example-a.test.", "A", www_a,
           chain=["chain2.example-a.test.", "chain3.example-a.test.", "www.example-a.test."]),
        _e("CNAME into another zone", "cross.example-a.test.", "A", ["198.18.3.1"],
           chain=["www.example-b.example."]),
        _e("DNAME", "www.dname.example-a.test.", "A", ["198.18.3.1"], chain=["www.example-b.example."]),
        _e("DNAME to NXDOMAIN", "nope.dname.example-a.test.", "A", rcode="NXDOMAIN",
           chain=["nope.example-b.example."]),
        _e("CNAME loop", "loop1.example-a.test.", "A", rcode="SERVFAIL"),
        _e(f"CNAME chain of {LONG_CHAIN} across zones", "long1.example-a.test.", "A", rcode="SERVFAIL",
           chain=long_chain),
        _e("wildcard", "foo.wild.example-a.test.", "A", ["198.18.1.42"]),
        _e("wildcard, two labels", "a.b.wild.example-a.test.", "TXT", ['"wildcard"']),
        _e("empty non-terminal: NODATA", "y.example-a.test.", "A"),
        _e("below the empty non-terminal", "x.y.example-a.test.", "A", ["198.18.1.50"]),
        _e("TXT too big for UDP", "big.example-a.test.", "TXT", [f'"{s}"' for s in big_txt_strings()], tcp=True),
        _e("in-zone delegation with glue", "www.sub.example-a.test.", "A", ["198.18.2.1"]),
        _e("another TLD", "www.example-b.example.", "A", ["198.18.3.1"]),
        _e("NS name out of bailiwick, no glue", "www.oob.test.", "A", ["198.18.4.1"]),
        _e("one NS REFUSED (lame)", "www.lame.test.", "A", ["198.18.5.1"]),
        _e("one NS silent, one unreachable, one live", "www.dead.test.", "A", ["198.18.6.1"]),
        _e("every NS silent or unreachable", "www.alldead.test.", "A", rcode="SERVFAIL"),
        _e("PTR", "1.1.18.198.in-addr.arpa.", "PTR", ["www.example-a.test."]),
        _e("PTR NXDOMAIN", "9.9.18.198.in-addr.arpa.", "PTR", rcode="NXDOMAIN"),
        _e("bench name", "h1.bench.test.", "A", [bench_address(1)]),
        _e("bench wildcard", "u1.bench.test.", "A", [BENCH_WILDCARD_ADDRESS]),
        _e("stale-test name", "www.stale.test.", "A", ["198.18.7.1"], max_ttl=2),
        _e("TLD server address", "ns1.nic.test.", "A", [f"{base}.1.1"]),
        _e("private zone, delegated by no one", "www.corp.internal.", "A", rcode="NXDOMAIN"),
    )


def dnssec_expectations(base: str = DEFAULT_BASE) -> tuple[Expectation, ...]:
    """The DNSSEC cases, as a validating resolver with the hierarchy's trust anchor answers them
    (``security`` set on each; checked against Unbound by tests/dns/test_lab_hierarchy.py).
    ``unvalidated()`` gives each as a resolver that does not validate answers it. The cases of
    ``expectations()`` come out the same from a validating resolver, AD clear except in test.
    and the root, which are signed. Only ``ns1.nic.test`` depends on ``base``."""
    secure, insecure, bogus = "secure", "insecure", "bogus"
    return (
        # the signed root (algorithm 13, NSEC) and test. (algorithm 8, NSEC)
        _e("signed TLD: A", "ns1.nic.test.", "A", [f"{base}.1.1"], security=secure),
        _e("signed TLD: NXDOMAIN (NSEC)", "nope.test.", "A", rcode="NXDOMAIN", security=secure),
        _e("signed root: NXDOMAIN (NSEC)", "www.no-such-tld.", "A", rcode="NXDOMAIN", security=secure),
        # unsigned zones under signed parents: the parent's NSEC shows no DS
        _e("unsigned child of test.: A", "www.example-a.test.", "A", ["198.18.1.1"], security=insecure),
        _e("unsigned child of test.: NXDOMAIN", "nope.example-a.test.", "A", rcode="NXDOMAIN", security=insecure),
        _e("unsigned grandchild of test.", "www.sub.example-a.test.", "A", ["198.18.2.1"], security=insecure),
        _e("unsigned TLD", "www.example-b.example.", "A", ["198.18.3.1"], security=insecure),
        _e("unsigned arpa.", "1.1.18.198.in-addr.arpa.", "PTR", ["www.example-a.test."], security=insecure),
        # secure.test: algorithm 13, NSEC
        _e("secure: A", "www.secure.test.", "A", ["198.18.5.1"], security=secure),
        _e("secure: CNAME", "alias.secure.test.", "A", ["198.18.5.1"], chain=["www.secure.test."], security=secure),
        _e("secure: MX", "secure.test.", "MX", ["10 mail.secure.test."], security=secure),
        _e("secure: TXT", "txt.secure.test.", "TXT", ['"signed"'], security=secure),
        _e("secure: wildcard", "x.wild.secure.test.", "A", ["198.18.5.2"], security=secure),
        _e("secure: wildcard NODATA", "x.wild.secure.test.", "AAAA", security=secure),
        _e("secure: NXDOMAIN (NSEC)", "nope.secure.test.", "A", rcode="NXDOMAIN", security=secure),
        _e("secure: NODATA (NSEC)", "www.secure.test.", "AAAA", security=secure),
        _e("secure: empty non-terminal NODATA", "wild.secure.test.", "A", security=secure),
        _e("secure: no DS at an insecure delegation", "unsigned.secure.test.", "DS", security=secure),
        _e("secure: insecure delegation", "www.unsigned.secure.test.", "A", ["198.18.5.3"], security=insecure),
        _e("secure: insecure delegation to its own server", "www.cohosted.secure.test.", "A", ["198.18.5.13"],
           security=insecure),
        _e("secure: CNAME into an unsigned zone", "to-unsigned.secure.test.", "A", ["198.18.1.1"],
           chain=["www.example-a.test."], security=insecure),
        _e("secure: CNAME into a bogus zone", "to-bogus.secure.test.", "A", ["198.18.5.7"], rcode="SERVFAIL",
           chain=["www.expired.test."], security=bogus, ede=7),
        _e("secure: wildcard CNAME out of the zone", "x.out.secure.test.", "A", ["198.18.5.11"],
           chain=["www.p384.test."], security=secure),
        _e("secure: wildcard CNAME to a name that does not exist", "x.gone.secure.test.", "A", rcode="NXDOMAIN",
           chain=["nothing.secure.test."], security=secure),
        # nsec3.test: algorithm 15, NSEC3 with opt-out (dnssec-signzone -A flags every NSEC3). Where
        # the proof rests on an opt-out NSEC3 covering the next closer name (an NXDOMAIN, a wildcard
        # expansion), an unsigned delegation could hide there: insecure (RFC 5155 §12.2; Unbound
        # agrees). A name that has an NSEC3 of its own is proved as usual.
        _e("nsec3: A", "www.nsec3.test.", "A", ["198.18.5.4"], security=secure),
        _e("nsec3: NODATA", "www.nsec3.test.", "AAAA", security=secure),
        _e("nsec3: NXDOMAIN under opt-out", "nope.nsec3.test.", "A", rcode="NXDOMAIN", security=insecure),
        _e("nsec3: wildcard under opt-out", "x.wild.nsec3.test.", "A", ["198.18.5.5"], security=insecure),
        _e("nsec3: opt-out delegation", "www.optout.nsec3.test.", "A", ["198.18.5.6"], security=insecure),
        # p384.test: algorithm 14, NSEC3 without opt-out or salt; rsasha512.test: algorithm 10, NSEC
        _e("p384: A", "www.p384.test.", "A", ["198.18.5.11"], security=secure),
        _e("p384: NXDOMAIN (NSEC3)", "nope.p384.test.", "A", rcode="NXDOMAIN", security=secure),
        _e("p384: NODATA (NSEC3)", "www.p384.test.", "AAAA", security=secure),
        _e("p384: wildcard (NSEC3)", "x.wild.p384.test.", "A", ["198.18.5.12"], security=secure),
        _e("rsasha512: A", "www.rsasha512.test.", "A", ["198.18.5.10"], security=secure),
        # sbench.test: bench.test signed (algorithm 13, NSEC), for bench/dns.py's validated workloads
        _e("sbench: A", "h7.sbench.test.", "A", [bench_address(7)], security=secure),
        _e("sbench: wildcard (NSEC)", "u1.sbench.test.", "A", [BENCH_WILDCARD_ADDRESS], security=secure),
        # bogus, and why (RFC 8914): 7 Signature Expired, 9 DNSKEY Missing (no DNSKEY matches the DS)
        _e("expired signatures", "www.expired.test.", "A", ["198.18.5.7"], rcode="SERVFAIL", security=bogus, ede=7),
        _e("DS matches no DNSKEY", "www.badds.test.", "A", ["198.18.5.8"], rcode="SERVFAIL", security=bogus, ede=9),
    )


# --- dig


@dataclass(frozen=True, slots=True)
class Record:
    owner: str
    ttl: int
    type: str
    rdata: str


@dataclass(frozen=True, slots=True)
class DigResult:
    status: str  # NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ... or "TIMEOUT"
    flags: frozenset[str]  # qr, aa, tc, rd, ra
    answer: tuple[Record, ...]
    authority: tuple[Record, ...]
    additional: tuple[Record, ...]
    text: str


_HEADER = re.compile(r"status: ([A-Z]+)")
_FLAGS = re.compile(r";; flags: ([a-z ]*);")


def _records(lines: list[str]) -> tuple[Record, ...]:
    records = []
    for line in lines:
        parts = line.split(None, 4)
        if len(parts) == 5 and parts[2] == "IN":
            records.append(Record(parts[0].lower(), int(parts[1]), parts[3], parts[4]))
    return tuple(records)


def dig(server: str, qname: str, qtype: str = "A", *options: str, port: int = 53, timeout: float = 5.0,
        tries: int = 1) -> DigResult:
    """One query with dig (``options`` such as "+norec", "+tcp", "+ignore"), parsed."""
    command = [DIG, f"@{server}", "-p", str(port), qname, qtype, f"+time={max(1, round(timeout))}",
               f"+tries={tries}", "+nocmd", "+nostats", "+noquestion", *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout * tries + 10, check=False)
    text = result.stdout
    status = _HEADER.search(text)
    flags = _FLAGS.search(text)
    sections: dict[str, list[str]] = {"ANSWER": [], "AUTHORITY": [], "ADDITIONAL": []}
    current: list[str] | None = None
    for line in text.splitlines():
        heading = re.match(r";; (ANSWER|AUTHORITY|ADDITIONAL) SECTION:", line)
        if heading:
            current = sections[heading.group(1)]
        elif not line.strip() or line.startswith(";"):
            current = None if not line.strip() else current
        elif current is not None:
            current.append(line)
    return DigResult(status.group(1) if status else "TIMEOUT",
                     frozenset(flags.group(1).split()) if flags else frozenset(),
                     _records(sections["ANSWER"]), _records(sections["AUTHORITY"]),
                     _records(sections["ADDITIONAL"]), text + result.stderr)


def query(server: str, qname: str, qtype: str = "A", *, port: int = 53, tcp: bool = False, rd: bool = False,
          timeout: float = 2.0) -> dnslib.DNSRecord:
    """One query with dnslib, without dig (raises on timeout: ``socket.timeout``)."""
    request = dnslib.DNSRecord.question(qname, qtype)
    request.header.rd = int(rd)
    return dnslib.DNSRecord.parse(request.send(server, port, tcp=tcp, timeout=timeout))


def _answers(server: str, qname: str, qtype: str, port: int = 53, timeout: float = 0.3) -> bool:
    with contextlib.suppress(OSError, dnslib.DNSError):
        query(server, qname, qtype, port=port, timeout=timeout)
        return True
    return False


# --- processes


_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
except (OSError, AttributeError):
    _prctl = None


def _death_signal() -> Callable[[], None] | None:
    """The death signal follows the thread that forks, not the process: only the main thread's
    children get one (a server started from a worker thread would die with that thread)."""
    return _die_with_parent if threading.current_thread() is threading.main_thread() else None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the process that started it dies, so a test
    run killed outright does not leave name servers behind. Only a call into libc happens
    between fork and exec (no import, no allocation by Python), which is safe with threads."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, their children, ...), alive right now."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with contextlib.suppress(OSError):
                    children = [int(c) for c in Path(f"/proc/{parent}/task/{task}/children").read_text().split()]
                    found.extend(children)
                    todo.extend(children)
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then wait for the process and for the children it forked (NSD's xfrd and server
    processes outlive their parent by a moment, still holding the port)."""
    if proc.poll() is None:
        children = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        deadline = time.monotonic() + timeout
        while children and time.monotonic() < deadline:
            children = [c for c in children if not _gone(c)]
            time.sleep(0.01)
        for child in children:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)


def _tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Blackhole:
    """Binds UDP and TCP port 53 on an address and never answers: datagrams pile up unread and
    TCP connections complete in the kernel's backlog but are never accepted."""

    def __init__(self, address: str, port: int = 53) -> None:
        self.address, self.port = address, port
        self._sockets: list[socket.socket] = []

    def start(self) -> Blackhole:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            udp.bind((self.address, self.port))
            tcp.bind((self.address, self.port))
            tcp.listen(64)
        except OSError:
            udp.close()
            tcp.close()
            raise
        self._sockets = [udp, tcp]
        return self

    def stop(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    def __enter__(self) -> Blackhole:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NsdServer:
    """One NSD process: one address, the zones of one server of the hierarchy."""

    def __init__(self, spec: ServerSpec, address: str, workdir: Path, zones: dict[str, str],
                 cpus: str | None = None) -> None:
        self.spec, self.address, self.workdir, self.cpus = spec, address, workdir, cpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "nsd.log"
        workdir.mkdir(parents=True, exist_ok=True)
        zone_config = []
        for origin in spec.zones:
            filename = ("root" if origin == "." else origin.rstrip(".")) + ".zone"
            (workdir / filename).write_text(zones[origin])
            zone_config.append(f"zone:\n  name: \"{origin}\"\n  zonefile: \"{workdir / filename}\"\n")
        self.config_path = workdir / "nsd.conf"
        self.config_path.write_text(
            "server:\n"
            f"  ip-address: {address}\n"
            "  port: 53\n"
            "  do-ip6: no\n"
            "  server-count: 1\n"
            '  username: ""\n'
            '  chroot: ""\n'
            f'  zonesdir: "{workdir}"\n'
            f'  zonelistfile: "{workdir}/zone.list"\n'
            '  database: ""\n'
            f'  xfrdfile: "{workdir}/xfrd.state"\n'
            f'  xfrdir: "{workdir}"\n'
            f'  pidfile: "{workdir}/nsd.pid"\n'
            f'  logfile: "{self.log_path}"\n'
            "  verbosity: 0\n"
            "  hide-version: yes\n"
            # response rate limiting would throttle a resolver hammering one wildcard (the benchmark)
            "  rrl-ratelimit: 0\n"
            "  rrl-whitelist-ratelimit: 0\n"
            "remote-control:\n"
            "  control-enable: no\n" + "".join(zone_config))

    def start(self) -> None:
        command = [NSD, "-d", "-c", str(self.config_path)]
        if self.cpus is not None:
            command = ["taskset", "-c", self.cpus, *command]
        with (self.workdir / "nsd.out").open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_death_signal())  # noqa: PLW1509

    def ready(self) -> bool:
        """Answers a query (SOA of its first zone; any reply when it serves none)."""
        if self.proc is None or self.proc.poll() is not None:
            origin = self.spec.zones[0] if self.spec.zones else "."
            log = _tail(self.log_path) + "\n" + _tail(self.workdir / "nsd.out")
            hint = ("\n(is another hierarchy running at this base? DNSHierarchy(base=...) takes another)"
                    if "already in use" in log else "")
            raise RuntimeError(f"nsd for {self.spec.key} ({self.address}, {origin}) exited:\n{log}{hint}")
        return _answers(self.address, self.spec.zones[0] if self.spec.zones else ".", "SOA")

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class DNSHierarchy:
    """The whole tree, started and stopped together. Use as a context manager, or start()/stop()."""

    def __init__(self, base: str = DEFAULT_BASE, workdir: Path | None = None, *, cpus: str | None = None,
                 hints_path: Path | None = None, trust_anchor_path: Path | None = None) -> None:
        octets = base.split(".")
        if len(octets) != 2 or not ipaddress.ip_address(base + ".0.0").is_loopback:
            raise ValueError(f"base must be two octets inside 127.0.0.0/8, like 127.53, not {base!r}")
        self.base = base
        self.cpus = cpus
        self._own_workdir = workdir is None
        self.workdir = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix=f"dnshier-{base}-"))
        self.root_hints_path = hints_path if hints_path is not None else self.workdir / "root.hints"
        # written by start(): the root KSK's DS records, and its DNSKEY, in zone-file form
        self.trust_anchor_path = (trust_anchor_path if trust_anchor_path is not None
                                  else self.workdir / "trust-anchor.ds")
        self.trust_anchor_dnskey_path = self.trust_anchor_path.with_suffix(".dnskey")
        self.zones = zone_texts(base)  # unsigned until start() signs the zones of SIGNED
        self.signed: dict[str, SignedZone] = {}
        self.expectations = expectations(base)
        self.dnssec_expectations = dnssec_expectations(base)
        self.servers: dict[str, ServerSpec] = {self._addr(s): s for s in SERVERS}
        self._nsd: dict[str, NsdServer] = {}
        self._blackholes: dict[str, Blackhole] = {}

    def _addr(self, spec: ServerSpec) -> str:
        return f"{self.base}.{spec.offset}"

    # --- looking things up

    def address(self, name: str) -> str:
        """The address of a server, by NS name ("ns1.example-a.test") or key ("example-a-1")."""
        wanted = name.lower().rstrip(".") + "."
        for spec in SERVERS:
            if name == spec.key or wanted in spec.hosts:
                return self._addr(spec)
        raise KeyError(f"no server {name!r} in the hierarchy")

    def addresses(self, zone: str) -> list[str]:
        """The addresses of the servers that serve ``zone``."""
        origin = zone.lower().rstrip(".") + "." if zone != "." else "."
        return [self._addr(s) for s in SERVERS if origin in s.zones]

    @property
    def rogue_address(self) -> str:
        """Where rogue.test is delegated (ns1.rogue.test): nothing answers until a test starts a
        ``RogueServer`` there."""
        return self.address("rogue")

    @property
    def rogue_spare_address(self) -> str:
        """An address no NS points to, for answers forged from an unexpected source."""
        return self.address("rogue-spare")

    def expect(self, qname: str, qtype: str = "A", *, validating: bool = False) -> Expectation:
        """The case for ``qname`` ``qtype``: from ``expectations`` or, with ``validating``, from
        ``dnssec_expectations``."""
        wanted = qname.lower().rstrip(".") + "."
        for e in self.dnssec_expectations if validating else self.expectations:
            if e.qname == wanted and e.qtype == qtype.upper():
                return e
        raise KeyError(f"no {'DNSSEC ' if validating else ''}expectation for {qname} {qtype}")

    def trust_anchor(self) -> str:
        """The root's DS records (". 86400 IN DS <tag> 13 2 <hex>"), one a line: what a validating
        resolver starts from. New keys at every start, so only a started hierarchy has them."""
        if "." not in self.signed:
            raise RuntimeError("no trust anchor yet: the keys are made by start()")
        return self.signed["."].ds

    def trust_anchor_dnskey(self) -> str:
        """The root's KSK as DNSKEY records (". 86400 IN DNSKEY 257 3 13 <base64>"), one a line."""
        if "." not in self.signed:
            raise RuntimeError("no trust anchor yet: the keys are made by start()")
        return self.signed["."].dnskey

    def root_hints(self) -> str:
        lines = [f"; root hints for the lab hierarchy at {self.base}.0.0/16 (named.root format)"]
        for spec in SERVERS[:2]:
            lines.append(f".                        3600000      NS    {spec.hosts[0].upper()}")
            lines.append(f"{spec.hosts[0].upper():<24} 3600000      A     {self._addr(spec)}")
        return "\n".join(lines) + "\n"

    def pids(self) -> list[int]:
        """The NSD main processes running now (each forks an xfrd and a server process)."""
        return [n.proc.pid for n in self._nsd.values() if n.proc is not None and n.proc.poll() is None]

    def pid(self, address: str) -> int:
        """The NSD main process serving ``address``."""
        server = self._nsd.get(address)
        if server is None or server.proc is None:
            raise KeyError(f"no NSD runs on {address}")
        return server.proc.pid

    # --- running

    def start(self, timeout: float = 20.0) -> DNSHierarchy:
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.root_hints_path.write_text(self.root_hints())
            # the zones are signed (in worker threads) while the servers of unsigned zones start up
            signed = {a for a, s in self.servers.items() if set(s.zones) & set(SIGNED)}
            with ThreadPoolExecutor(max_workers=1) as background:
                signing = background.submit(self.sign)
                for address, spec in self.servers.items():
                    if address not in signed:
                        self._start_server(address, spec)
                signing.result()
            for address in signed:
                self._start_server(address, self.servers[address])
            self._wait_ready(list(self._nsd.values()), timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_server(self, address: str, spec: ServerSpec) -> None:
        if spec.kind == "nsd":
            self._nsd[address] = NsdServer(spec, address, self.workdir / spec.key, self.zones, self.cpus)
            self._nsd[address].start()
        elif spec.kind == "blackhole":
            self._blackholes[address] = Blackhole(address).start()

    def sign(self) -> None:
        """New keys, the zones of SIGNED signed with them (into ``zones``), the trust anchor files.
        The unsigned zones' texts stay as they are (start() serves them meanwhile)."""
        self.signed = sign_zones(zone_texts(self.base), SIGNED, self.workdir / "dnssec")
        self.zones = self.zones | {origin: zone.text for origin, zone in self.signed.items()}
        self.trust_anchor_path.write_text(self.trust_anchor())
        self.trust_anchor_dnskey_path.write_text(self.trust_anchor_dnskey())

    def _wait_ready(self, servers: list[NsdServer], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(servers)
        while waiting:
            waiting = [s for s in waiting if not s.ready()]
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(f"{s.spec.key} ({s.address})" for s in waiting)
                raise RuntimeError(f"no answer within {timeout:.0f} s from {names}:\n{_tail(waiting[0].log_path)}")
            time.sleep(0.05)

    def stop(self) -> None:
        for server in self._nsd.values():
            server.stop()
        self._nsd.clear()
        for hole in self._blackholes.values():
            hole.stop()
        self._blackholes.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop_server(self, address: str) -> None:
        """Take one server down (an outage): its NSD stops (or its Blackhole closes); the address
        then answers ICMP port unreachable, as a host without the service does."""
        if address in self._nsd:
            self._nsd[address].stop()
        elif address in self._blackholes:
            self._blackholes[address].stop()
        else:
            raise KeyError(f"{address} is not an NSD or Blackhole server of this hierarchy")

    def start_server(self, address: str, timeout: float = 10.0) -> None:
        """Bring a server stopped by ``stop_server`` back, and wait until it answers."""
        if address in self._nsd:
            server = self._nsd[address]
            if not server.running:
                server.start()
                self._wait_ready([server], timeout)
        elif address in self._blackholes:
            if not self._blackholes[address]._sockets:
                self._blackholes[address].start()
        else:
            raise KeyError(f"{address} is not an NSD or Blackhole server of this hierarchy")

    @contextlib.contextmanager
    def outage(self, *addresses: str) -> Iterator[None]:
        """Servers down for the block, back up after it (also when the block fails)."""
        for address in addresses:
            self.stop_server(address)
        try:
            yield
        finally:
            for address in addresses:
                self.start_server(address)

    def __enter__(self) -> DNSHierarchy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> str:
        lines = [f"DNS hierarchy at {self.base}.0.0/16; root hints: {self.root_hints_path}",
                 f"  trust anchor: {self.trust_anchor_path} (DS), {self.trust_anchor_dnskey_path} (DNSKEY); "
                 f"signed: {', '.join(SIGNED)}"]
        for address, spec in self.servers.items():
            what = {"nsd": ", ".join(spec.zones) or "(no zones: REFUSED)", "blackhole": "Blackhole (never answers)",
                    "none": "nothing listens", "rogue": "free for a RogueServer"}[spec.kind]
            lines.append(f"  {address:<14} {' '.join(spec.hosts) or '-':<28} {what}")
        return "\n".join(lines)


# --- the rogue server


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``data`` to ``to`` (default: the querier), from ``source`` (an (address, port) to bind
    a socket to; default: the rogue server's own socket). Over TCP only ``data`` counts."""

    data: bytes
    source: tuple[str, int] | None = None
    to: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Delay:
    seconds: float


Action = Send | Delay
Handler = Callable[[bytes, tuple[str, int]], Sequence[Action]]


def silent(query: bytes, peer: tuple[str, int]) -> list[Action]:
    return []


def make_reply(query: bytes, *answers: str, authority: Sequence[str] = (), additional: Sequence[str] = (),
               rcode: int = 0, aa: bool = True, tc: bool = False, id: int | None = None,
               qname: str | None = None, qtype: str | None = None) -> bytes:
    """A reply to ``query`` built with dnslib. Records are zone-file lines with absolute names
    ("www.rogue.test. 300 IN A 198.18.66.1"). Forgeries: ``id`` (a wrong ID), ``qname``/``qtype``
    (a wrong question), out-of-bailiwick records in any section."""
    request = dnslib.DNSRecord.parse(query)
    reply = request.reply(aa=int(aa))
    reply.header.rcode = rcode
    reply.header.tc = int(tc)
    if id is not None:
        reply.header.id = id & 0xFFFF
    if qname is not None or qtype is not None:
        q = request.q
        reply.questions = [dnslib.DNSQuestion(qname or str(q.qname),
                                              getattr(dnslib.QTYPE, qtype) if qtype else q.qtype)]
    for text in answers:
        reply.add_answer(*dnslib.RR.fromZone(text))
    for text in authority:
        reply.add_auth(*dnslib.RR.fromZone(text))
    for text in additional:
        reply.add_ar(*dnslib.RR.fromZone(text))
    return bytes(reply.pack())


class RogueServer:
    """A scriptable name server on ``address``:``port`` (UDP, and TCP when ``tcp``). For every
    query, ``handler(query_bytes, (peer_ip, peer_port))`` returns the actions to take in order:
    ``Send`` (optionally from another source, to another destination), ``Delay``; an empty
    list is silence. Each query is handled in a thread of its own, so a Delay holds up only its
    own query. ``queries`` records every (bytes, peer, "udp"|"tcp") received; a handler that
    raises is recorded in ``errors`` and the query gets no answer."""

    def __init__(self, address: str, handler: Handler = silent, *, port: int = 53, tcp: bool = True) -> None:
        self.address, self.port, self.handler, self.with_tcp = address, port, handler, tcp
        self.queries: list[tuple[bytes, tuple[str, int], str]] = []
        self.errors: list[BaseException] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def start(self) -> RogueServer:
        self._stopping.clear()
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind((self.address, self.port))
        self._udp.settimeout(0.1)
        self._spawn(self._serve_udp)
        if self.with_tcp:
            self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._tcp.bind((self.address, self.port))
            self._tcp.listen(16)
            self._tcp.settimeout(0.1)
            self._spawn(self._serve_tcp)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(5)
        self._threads = []
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()
        self._udp = self._tcp = None

    def __enter__(self) -> RogueServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _serve_udp(self) -> None:
        assert self._udp is not None
        while not self._stopping.is_set():
            try:
                data, peer = self._udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries.append((data, peer, "udp"))
            self._spawn(self._answer_udp, data, peer)

    def _actions(self, data: bytes, peer: tuple[str, int], transport: str) -> Sequence[Action]:
        try:
            return self.handler(data, peer)
        except Exception as exc:  # a broken handler must not kill the server thread
            self.errors.append(exc)
            return []

    def _answer_udp(self, data: bytes, peer: tuple[str, int]) -> None:
        for action in self._actions(data, peer, "udp"):
            if self._stopping.is_set():
                return
            if isinstance(action, Delay):
                self._stopping.wait(action.seconds)
                continue
            to = action.to or peer
            if action.source is None:
                assert self._udp is not None
                with contextlib.suppress(OSError):
                    self._udp.sendto(action.data, to)
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    with contextlib.suppress(AttributeError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    sock.bind(action.source)
                    sock.sendto(action.data, to)

    def _serve_tcp(self) -> None:
        assert self._tcp is not None
        while not self._stopping.is_set():
            try:
                conn, peer = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._answer_tcp, conn, peer)

    def _answer_tcp(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        with conn:
            conn.settimeout(5)
            while not self._stopping.is_set():
                try:
                    head = _recv_exactly(conn, 2)
                    data = _recv_exactly(conn, struct.unpack("!H", head)[0])
                except (OSError, EOFError):
                    return
                self.queries.append((data, peer, "tcp"))
                for action in self._actions(data, peer, "tcp"):
                    if isinstance(action, Delay):
                        self._stopping.wait(action.seconds)
                    else:
                        with contextlib.suppress(OSError):
                            conn.sendall(struct.pack("!H", len(action.data)) + action.data)


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


# --- a relay that takes notes


@dataclass(frozen=True, slots=True)
class Relayed:
    """One query a ``RecordingRelay`` passed on."""

    qname: str  # lower case, absolute ("www.corp.internal.")
    qtype: str
    rd: bool  # the query's RD bit: set towards a forwarder, clear towards an authoritative server
    transport: str  # "udp" or "tcp"


def exchange(server: tuple[str, int], query: bytes, *, tcp: bool = False, timeout: float = 5.0) -> bytes:
    """Send ``query`` to ``server`` and return the reply's bytes as they came (no checks)."""
    if tcp:
        with socket.create_connection(server, timeout=timeout) as conn:
            conn.sendall(struct.pack("!H", len(query)) + query)
            return _recv_exactly(conn, struct.unpack("!H", _recv_exactly(conn, 2))[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect(server)
        sock.send(query)
        return sock.recv(65535)


class RecordingRelay(RogueServer):
    """A hop between a resolver and the server it is configured to ask (a forwarder, a stub
    zone's authoritative server): each query received on ``address``:``port`` goes on to
    ``upstream`` unchanged, over the transport it came by, and the reply comes back unchanged
    (TC included), so the resolver sees the upstream itself. ``seen`` notes every query (name,
    type, RD bit, transport); an upstream that does not answer leaves the query unanswered and
    the error in ``errors``."""

    def __init__(self, address: str, upstream: tuple[str, int], *, port: int = 53, timeout: float = 5.0) -> None:
        super().__init__(address, port=port)
        self.upstream, self.timeout = upstream, timeout
        self.seen: list[Relayed] = []

    def _actions(self, data: bytes, peer: tuple[str, int], transport: str) -> Sequence[Action]:
        try:
            request = dnslib.DNSRecord.parse(data)
            self.seen.append(Relayed(str(request.q.qname).lower(), dnslib.QTYPE.get(request.q.qtype),
                                     bool(request.header.rd), transport))
            return [Send(exchange(self.upstream, data, tcp=transport == "tcp", timeout=self.timeout))]
        except Exception as exc:  # a bad query or a silent upstream: no answer, and a note
            self.errors.append(exc)
            return []

    def asked(self, qname: str, qtype: str | None = None) -> list[Relayed]:
        """The queries for ``qname`` (any letter case, trailing dot or not), of ``qtype`` if given."""
        wanted = qname.lower().rstrip(".") + "."
        return [r for r in self.seen if r.qname == wanted and (qtype is None or r.qtype == qtype)]


# --- Unbound, the reference resolver


def free_port(address: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``address`` right now (a DNS server binds both)."""
    return ports.free_port(address)


@functools.cache
def _unbound_knows(option: str) -> bool:
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as config:
        config.write('server:\n  chroot: ""\n')
        config.flush()
        result = subprocess.run(["unbound-checkconf", "-o", option, config.name], capture_output=True, text=True,
                                check=False)
    return result.returncode == 0


@dataclass
class Unbound:
    """Unbound as an iterating resolver on ``address``:``port``, started with ``-d`` so the PID
    is its own; the config and logs live in ``workdir``. It validates only given a ``trust_anchor``
    (a file of DS or DNSKEY records, such as ``DNSHierarchy.trust_anchor_path``)."""

    root_hints: Path
    workdir: Path
    address: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    threads: int = 1
    msg_cache: str = "4m"
    rrset_cache: str = "8m"
    extra: str = ""  # more "server:" lines, indented by two spaces
    cpus: str | None = None
    verbosity: int = 0
    trust_anchor: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.port == 0:
            self.port = free_port(self.address)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "unbound.conf"
        self.log_path = self.workdir / "unbound.log"

    def config(self) -> str:
        return (
            "server:\n"
            f"  interface: {self.address}\n"
            f"  port: {self.port}\n"
            f"  num-threads: {self.threads}\n"
            f"  root-hints: \"{self.root_hints}\"\n"
            "  do-not-query-localhost: no\n"
            + "".join(f"  {line}\n" for line in self._modules())
            + "  do-ip6: no\n"
            '  chroot: ""\n'
            '  username: ""\n'
            f'  directory: "{self.workdir}"\n'
            f'  pidfile: "{self.workdir}/unbound.pid"\n'
            f'  logfile: "{self.log_path}"\n'
            "  use-syslog: no\n"
            f"  verbosity: {self.verbosity}\n"
            f"  msg-cache-size: {self.msg_cache}\n"
            f"  rrset-cache-size: {self.rrset_cache}\n"
            '  auto-trust-anchor-file: ""\n'
            "  access-control: 127.0.0.0/8 allow\n"
            # RFC 6761 lets a resolver answer test. itself, and Unbound does by default (NXDOMAIN)
            '  local-zone: "test." nodefault\n'
            # Let a server that timed out be retried within a second, not up to 2 minutes later:
            # with the default (120 s), "every NS dead" takes minutes to become SERVFAIL.
            "  infra-cache-max-rtt: 1000\n"
            + "".join(f"  {line}\n" for line in self._backported())
            + self.extra
            + "remote-control:\n  control-enable: no\n")

    def _modules(self) -> list[str]:
        """The iterator alone, or with a trust anchor the validator before it; then why an answer
        is bogus goes to the log (val-log-level) and into the reply, as an Extended DNS Error."""
        if self.trust_anchor is None:
            return ['module-config: "iterator"']
        return ['module-config: "validator iterator"', f'trust-anchor-file: "{self.trust_anchor}"',
                "val-log-level: 2", *(["ede: yes"] if _unbound_knows("ede") else [])]

    @staticmethod
    def _backported() -> list[str]:
        """Limits that recent Unbound (and Debian's security updates to older ones) enforce and
        that would distort the lab: ``discard-timeout`` drops the reply to a query that took
        longer than 1.9 s (dig, asking once, would see a timeout); ``wait-limit`` drops queries
        beyond 1000 waiting for recursion from one address (dnsperf is one address)."""
        return [line for line in ("discard-timeout: 0", "wait-limit: 0", "wait-limit-cookie: 0")
                if _unbound_knows(line.split(":")[0])]

    def start(self, timeout: float = 10.0) -> Unbound:
        self.config_path.write_text(self.config())
        check = subprocess.run(["unbound-checkconf", str(self.config_path)], capture_output=True, text=True,
                               check=False)
        if check.returncode != 0:
            raise RuntimeError(f"unbound config rejected: {check.stdout}{check.stderr}")
        command = [UNBOUND, "-d", "-c", str(self.config_path)]
        if self.cpus is not None:
            command = ["taskset", "-c", self.cpus, *command]
        with (self.workdir / "unbound.out").open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_death_signal())  # noqa: PLW1509
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"unbound exited ({self.proc.returncode}):\n{self.log_tail()}")
            # localhost is one of Unbound's built-in local zones: an answer without recursion
            if _answers(self.address, "localhost.", "A", self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"unbound did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)
            self.proc = None

    def __enter__(self) -> Unbound:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines) + "\n" + _tail(self.workdir / "unbound.out", lines)

    def dig(self, qname: str, qtype: str = "A", *options: str, timeout: float = 5.0) -> DigResult:
        return dig(self.address, qname, qtype, *options, port=self.port, timeout=timeout)


# --- running it by hand


def _serve(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    hints = Path(args.hints).resolve() if args.hints else None
    anchor = Path(args.trust_anchor).resolve() if args.trust_anchor else None
    with DNSHierarchy(args.base, hints_path=hints, trust_anchor_path=anchor) as hierarchy:
        print(hierarchy.describe(), flush=True)
        print(f"try: dig @{hierarchy.address('a.root-servers.test')} +norec www.example-a.test  "
              "(or a resolver with these root hints); Ctrl-C stops", flush=True)
        stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.dnshier", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the hierarchy until Ctrl-C or SIGTERM")
    serve.add_argument("--base", default=DEFAULT_BASE, help="first two octets of the addresses (default: %(default)s)")
    serve.add_argument("--hints", help="write the root hints here (default: in the temporary directory)")
    serve.add_argument("--trust-anchor", help="write the root's DS records here, its DNSKEY beside them with "
                       "the suffix .dnskey (default: in the temporary directory)")
    zones = commands.add_parser("zones", help="print the zone files (unsigned: the keys are made at start)")
    zones.add_argument("--base", default=DEFAULT_BASE)
    args = parser.parse_args(argv)
    if args.command == "zones":
        for origin, text in zone_texts(args.base).items():
            print(f"; ---- {origin}\n{text}")
        return 0
    if os.geteuid() != 0:
        print("note: binding port 53 needs root (or CAP_NET_BIND_SERVICE)", file=sys.stderr)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
