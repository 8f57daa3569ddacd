"""A fake network of authoritative servers for the resolver's tests, and a fake clock.

``FakeNet`` is an ``Upstream``: ``exchange(address, query, ...)`` decodes the query, answers it
the way an authoritative server would from the zones configured at that address (the most
specific zone it has for the name → ``Zone.lookup``; REFUSED when it serves none — a lame
server; referrals with AA off and in-zone glue in the additional section), and encodes the reply
honouring the query's EDNS buffer size (TC with empty sections when larger; no limit over TCP).
The question is echoed exactly as it was sent, so 0x20 works as with a real server.

Per address, a ``Behaviour`` makes a server misbehave: time out, be unreachable, always set TC
over UDP, answer FORMERR to queries with EDNS, or hand its normal reply to a handler that may
rewrite it (forgeries, broken servers) or return raw bytes. Every query is logged (``SentQuery``)
so tests can assert what was sent, to whom, how (TCP, EDNS, 0x20) and how many.

``FakeClock`` moves only when told; ``FakeNet`` advances it by a server's latency and by the
wait of a query that times out, as the real network would.

``standard_net()`` builds the small hierarchy the resolver suite uses (see ``STANDARD`` below).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ispd.dns.resolver import ResolverSettings, UpstreamError
from ispd.dns.wire import (
    FLAG_AA,
    FLAG_QR,
    FLAG_RD,
    FLAG_TC,
    RR,
    Message,
    RCode,
    RRType,
    decode_message,
    encode_message,
    is_subdomain,
    name_from_text,
    name_to_text,
    opt_record,
    rdata_name,
)
from ispd.dns.zone import Zone, load_zone_text

N = name_from_text


class FakeClock:
    """A monotonic clock that moves only when the test (or the fake network) says."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(slots=True)
class Reply:
    """A reply before encoding, for handlers to rewrite."""

    rcode: int
    authoritative: bool
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    extra_flags: int = 0


# (the query as decoded, the normal reply) -> a reply to send, raw bytes to send, or None: time out
Handler = Callable[[Message, Reply], "Reply | bytes | None"]


@dataclass(slots=True)
class Behaviour:
    timeout: bool = False
    unreachable: bool = False
    always_tc: bool = False  # every UDP reply truncated (TC, empty sections)
    formerr_edns: bool = False  # FORMERR to any query carrying an OPT
    latency: float = 0.0  # seconds the fake clock advances per exchange
    handler: Handler | None = None


@dataclass(frozen=True, slots=True)
class SentQuery:
    address: str
    name: bytes  # as sent (0x20 case kept)
    qtype: int
    tcp: bool
    edns: bool
    exact_case: bool
    rd: bool

    @property
    def text(self) -> str:
        return name_to_text(self.name.lower())

    def __str__(self) -> str:
        try:
            type_name = RRType(self.qtype).name
        except ValueError:
            type_name = str(self.qtype)
        return f"{self.address} {name_to_text(self.name)} {type_name}{' tcp' if self.tcp else ''}"


class FakeNet:
    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock
        self.servers: dict[str, list[Zone]] = {}
        self.behaviour: dict[str, Behaviour] = {}
        self.log: list[SentQuery] = []

    # --- building ---

    def serve(self, address: str, *zones: Zone) -> None:
        """Make ``address`` a server of ``zones`` (none: a server that refuses everything)."""
        self.servers.setdefault(address, []).extend(zones)

    def misbehave(self, address: str, **kwargs: object) -> Behaviour:
        behaviour = self.behaviour.setdefault(address, Behaviour())
        for key, value in kwargs.items():
            if not hasattr(behaviour, key):
                raise AttributeError(key)
            setattr(behaviour, key, value)
        return behaviour

    def zone(self, origin: str) -> Zone:
        """The zone object with ``origin`` (the first found), to change its data in a test."""
        wanted = N(origin)
        for zones in self.servers.values():
            for zone in zones:
                if zone.origin == wanted:
                    return zone
        raise KeyError(origin)

    # --- what tests look at ---

    def clear_log(self) -> None:
        self.log.clear()

    def sent(self) -> list[tuple[str, str, str]]:
        """(address, name, type) of every query, in order; names lowercased presentation form."""
        out = []
        for query in self.log:
            try:
                type_name = RRType(query.qtype).name
            except ValueError:
                type_name = str(query.qtype)
            out.append((query.address, query.text, type_name))
        return out

    def names_sent(self) -> list[tuple[str, str]]:
        return [(name, qtype) for _, name, qtype in self.sent()]

    def to(self, address: str) -> list[SentQuery]:
        return [q for q in self.log if q.address == address]

    # --- the Upstream protocol ---

    async def exchange(self, address: str, query: bytes, *, tcp: bool, wait: float, exact_case: bool,
                       zone: bytes = b"") -> bytes:
        message = decode_message(query)  # the resolver must only ever send what decodes
        assert message.question is not None, "a query without a question"
        self.log.append(SentQuery(address, message.question.name, message.question.qtype, tcp,
                                  message.edns is not None, exact_case, bool(message.flags & FLAG_RD)))
        behaviour = self.behaviour.get(address, Behaviour())
        if self.clock is not None and behaviour.latency:
            self.clock.advance(behaviour.latency)
        if behaviour.unreachable:
            raise UpstreamError("unreachable", f"{address}: port unreachable")
        if behaviour.timeout or (address not in self.servers and behaviour.handler is None):
            if self.clock is not None:
                self.clock.advance(wait)
            raise UpstreamError("timeout", f"{address}: no reply in {wait:.2f} s")
        if behaviour.formerr_edns and message.edns is not None:
            return self.encode(message, Reply(RCode.FORMERR, False), tcp=tcp)
        reply: Reply | bytes | None = self.authoritative(address, message)
        if behaviour.handler is not None:
            assert isinstance(reply, Reply)
            reply = behaviour.handler(message, reply)
        if reply is None:
            if self.clock is not None:
                self.clock.advance(wait)
            raise UpstreamError("timeout", f"{address}: no reply in {wait:.2f} s")
        if isinstance(reply, bytes):
            return reply
        if behaviour.always_tc and not tcp:
            reply = Reply(reply.rcode, reply.authoritative, extra_flags=FLAG_TC)
        return self.encode(message, reply, tcp=tcp)

    # --- an authoritative server ---

    def authoritative(self, address: str, message: Message) -> Reply:
        assert message.question is not None
        qname = message.question.key_name
        zones = [z for z in self.servers.get(address, []) if is_subdomain(qname, z.origin)]
        if not zones:
            return Reply(RCode.REFUSED, False)
        zone = max(zones, key=lambda z: len(z.origin))
        found = zone.lookup(qname, message.question.qtype)
        additional = list(found.additional)
        # Additional-section processing for NS answers (as NSD and BIND do; priming needs it):
        # the addresses of the servers named, where this zone has them.
        for rr in found.answer:
            if rr.rtype == RRType.NS:
                target = rdata_name(rr.rdata)
                for rtype in (RRType.A, RRType.AAAA):
                    additional.extend(zone.get_rrset(target, rtype))
        return Reply(found.rcode, found.authoritative, list(found.answer), list(found.authority), additional)

    @staticmethod
    def encode(message: Message, reply: Reply, *, tcp: bool) -> bytes:
        flags = FLAG_QR | (message.flags & FLAG_RD) | (FLAG_AA if reply.authoritative else 0)
        flags |= reply.extra_flags | (reply.rcode & 0xF)
        if tcp:
            size = 65535
        elif message.edns is not None:
            size = max(512, message.edns.udp_size)
        else:
            size = 512
        opt = opt_record(1232) if message.edns is not None and reply.rcode != RCode.FORMERR else None
        return encode_message(message.id, flags, message.question, reply.answer, reply.authority,
                              reply.additional, opt=opt, max_size=size).data


# --- the standard hierarchy ------------------------------------------------------------------

ROOT_A, ROOT_B = "10.0.0.1", "10.0.0.2"
TEST_1, TEST_2 = "10.1.0.1", "10.1.0.2"
EXAMPLE_TEST_1, EXAMPLE_TEST_2 = "10.2.0.1", "10.2.0.2"
EXAMPLE_TLD = "10.3.0.1"
OTHER = "10.4.0.1"
OOB = "10.4.0.2"
LAME_1, LAME_2 = "10.5.0.1", "10.5.0.2"
DEAD_1, DEAD_2 = "10.6.0.1", "10.6.0.2"
ALLDEAD_1, ALLDEAD_2 = "10.7.0.1", "10.7.0.2"

HINTS = [(N("a.root-servers.net."), [ROOT_A]), (N("b.root-servers.net."), [ROOT_B])]

ROOT_ZONE = f"""
$TTL 86400
.                    SOA a.root-servers.net. nstld.root-servers.net. 1 1800 900 604800 86400
.                    NS  a.root-servers.net.
.                    NS  b.root-servers.net.
a.root-servers.net.  A   {ROOT_A}
b.root-servers.net.  A   {ROOT_B}
test.                172800 NS ns1.nic.test.
test.                172800 NS ns2.nic.test.
ns1.nic.test.        172800 A  {TEST_1}
ns2.nic.test.        172800 A  {TEST_2}
example.             172800 NS ns1.nic.example.
ns1.nic.example.     172800 A  {EXAMPLE_TLD}
"""

TEST_ZONE = f"""
$ORIGIN test.
$TTL 3600
@            SOA ns1.nic.test. hostmaster.nic.test. 1 7200 900 1209600 900
@            NS  ns1.nic.test.
@            NS  ns2.nic.test.
ns1.nic      A   {TEST_1}
ns2.nic      A   {TEST_2}
example      NS  ns1.example.test.
example      NS  ns2.example.test.
ns1.example  A   {EXAMPLE_TEST_1}
ns2.example  A   {EXAMPLE_TEST_2}
oob          NS  ns-oob.other.example.
lame         NS  ns1.lame.test.
lame         NS  ns2.lame.test.
ns1.lame     A   {LAME_1}
ns2.lame     A   {LAME_2}
dead         NS  ns1.dead.test.
dead         NS  ns2.dead.test.
ns1.dead     A   {DEAD_1}
ns2.dead     A   {DEAD_2}
alldead      NS  ns1.alldead.test.
alldead      NS  ns2.alldead.test.
ns1.alldead  A   {ALLDEAD_1}
ns2.alldead  A   {ALLDEAD_2}
"""

BIG_TXT = "\n".join(f'big  TXT "{chr(97 + i) * 200}" "{chr(97 + i) * 200}"' for i in range(4))

# SOA TTL 3600, MINIMUM 300: negative answers live 300 s.
EXAMPLE_TEST_ZONE = f"""
$ORIGIN example.test.
$TTL 3600
@        SOA ns1 hostmaster 1 7200 900 1209600 300
@        NS  ns1
@        NS  ns2
ns1      A   {EXAMPLE_TEST_1}
ns2      A   {EXAMPLE_TEST_2}
www      A   192.0.2.80
www      AAAA 2001:db8::80
alias    CNAME www
chain    CNAME chain2
chain2   CNAME alias
cross    CNAME www.other.example.
dname    DNAME other.example.
*.wild   A   192.0.2.99
a.b.ent  A   192.0.2.7
loop1    CNAME loop2
loop2    CNAME loop1
gone     CNAME nothere
{BIG_TXT}
"""

EXAMPLE_TLD_ZONE = f"""
$ORIGIN example.
$TTL 3600
@              SOA ns1.nic hostmaster.nic 1 7200 900 1209600 3600
@              NS  ns1.nic
ns1.nic        A   {EXAMPLE_TLD}
other          NS  ns1.other
ns1.other      A   {OTHER}
"""

# SOA TTL 120, MINIMUM 600: negative answers live 120 s.
OTHER_ZONE = f"""
$ORIGIN other.example.
$TTL 3600
@        120 SOA ns1 hostmaster 1 7200 900 1209600 600
@        NS  ns1
ns1      A   {OTHER}
ns-oob   A   {OOB}
www      A   192.0.2.10
a        A   192.0.2.11
"""

OOB_ZONE = """
$ORIGIN oob.test.
$TTL 3600
@        SOA ns-oob.other.example. hostmaster 1 7200 900 1209600 300
@        NS  ns-oob.other.example.
www      A   192.0.2.20
"""


def _small_zone(origin: str, *servers: str, www: str) -> str:
    ns = "\n".join(f"@ NS ns{i}" for i in range(1, len(servers) + 1))
    addresses = "\n".join(f"ns{i} A {a}" for i, a in enumerate(servers, 1))
    return f"""
$ORIGIN {origin}
$TTL 3600
@  SOA ns1 hostmaster 1 7200 900 1209600 300
{ns}
{addresses}
www A {www}
"""


LAME_ZONE = _small_zone("lame.test.", LAME_1, LAME_2, www="192.0.2.30")
DEAD_ZONE = _small_zone("dead.test.", DEAD_1, DEAD_2, www="192.0.2.40")
ALLDEAD_ZONE = _small_zone("alldead.test.", ALLDEAD_1, ALLDEAD_2, www="192.0.2.50")


def standard_net(clock: FakeClock | None = None) -> FakeNet:
    """The hierarchy of the resolver suite:

    .               a/b.root-servers.net  ROOT_A, ROOT_B
    test.           ns1/ns2.nic.test      TEST_1, TEST_2 (glue in the root)
      example.test  ns1/ns2.example.test  (glue): www A/AAAA, alias → www, chain → chain2 → alias,
                    cross → www.other.example, dname DNAME other.example, *.wild, ENTs ent and
                    b.ent above a.b.ent, loop1 ↔ loop2, gone → nothere (NXDOMAIN), big TXT (TCP)
      oob.test      ns-oob.other.example (no glue: out of bailiwick)
      lame.test     ns1 (REFUSED: serves nothing), ns2
      dead.test     ns1 (times out), ns2
      alldead.test  ns1 and ns2 time out
    example.        ns1.nic.example
      other.example ns1.other.example: www, a, ns-oob
    """
    net = FakeNet(clock)
    root = load_zone_text(ROOT_ZONE, ".")
    net.serve(ROOT_A, root)
    net.serve(ROOT_B, root)
    test = load_zone_text(TEST_ZONE, "test.")
    net.serve(TEST_1, test)
    net.serve(TEST_2, test)
    example_test = load_zone_text(EXAMPLE_TEST_ZONE, "example.test.")
    net.serve(EXAMPLE_TEST_1, example_test)
    net.serve(EXAMPLE_TEST_2, example_test)
    net.serve(EXAMPLE_TLD, load_zone_text(EXAMPLE_TLD_ZONE, "example."))
    net.serve(OTHER, load_zone_text(OTHER_ZONE, "other.example."))
    net.serve(OOB, load_zone_text(OOB_ZONE, "oob.test."))
    net.serve(LAME_1)  # serves nothing: REFUSED
    lame = load_zone_text(LAME_ZONE, "lame.test.")
    net.serve(LAME_2, lame)
    dead = load_zone_text(DEAD_ZONE, "dead.test.")
    net.serve(DEAD_1, dead)
    net.misbehave(DEAD_1, timeout=True)
    net.serve(DEAD_2, dead)
    alldead = load_zone_text(ALLDEAD_ZONE, "alldead.test.")
    for address in (ALLDEAD_1, ALLDEAD_2):
        net.serve(address, alldead)
        net.misbehave(address, timeout=True)
    return net


def settings(**kwargs: object) -> ResolverSettings:
    """Resolver settings for tests: IPv4 only (the fake net has no IPv6 servers), and whatever
    the test asks for."""
    values: dict[str, object] = {"do_ipv6": False}
    values.update(kwargs)
    return ResolverSettings(**values)  # type: ignore[arg-type]
