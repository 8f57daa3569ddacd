"""A RADIUS load generator: PAP Access-Requests, Accounting Start/Stop pairs or Status-Server,
at saturation, at a fixed rate, or as one burst, with every reply verified.

Why not radclient: in parallel mode it used its whole core for about 2 200 requests/s over a
request file of 100 000 entries (-p 256 -f file), and 12 000/s at best (-p 32, -c 20 over 1 000
entries), while the FreeRADIUS behind it was mostly idle. This one answered 26 000 PAP requests/s
with 70 % of its core (about 27 µs of CPU per request, half of it the kernel's send and receive):
some 35 000/s before it becomes the limit, more for Status-Server.

How it works: several UDP sockets (distinct source ports) connected to the server, non-blocking,
with 4 MB buffers, under one epoll. Requests are matched to replies by (socket, Identifier); the
free (socket, Identifier) slots are reused in least-recently-used order across the sockets, so at
most 256 per socket are in flight. Each request is built the moment it is sent, since each has
something fresh or unique in it; what stays the same (each user's attributes, the MD5 and
HMAC-MD5 states after the secret) is precomputed:

- Access-Request (PAP): a random 16-byte Request Authenticator; User-Password hidden with it
  (RFC 2865 §5.2: padded with NULs to 16 bytes, each block XORed with MD5(secret + the previous
  block), the first "previous block" being the authenticator); a Message-Authenticator first
  among the attributes (RFC 3579 §3.2: HMAC-MD5 keyed with the secret over the packet with its
  value zeroed). Attributes as a PPPoE BNG sends them: User-Name, User-Password, NAS-IP-Address,
  NAS-Port-Type, NAS-Port, Service-Type, Framed-Protocol, Calling-Station-Id.
- Accounting-Request: a Start for a new Acct-Session-Id, and that session's Stop once its Start
  was answered (a due Stop goes before a new Start, so pairs complete); Request Authenticator =
  MD5(code + id + length + 16 zero bytes + attributes + secret) (RFC 2866 §3).
- Status-Server (RFC 5997 §3): a random authenticator and a Message-Authenticator only.

A reply is "answered" only when its Response Authenticator is MD5(code + id + length + request
authenticator + attributes + secret) (RFC 2865 §3, RFC 2866 §4) and, when it carries a
Message-Authenticator, that verifies too (over the reply with the request's authenticator; for an
Accounting-Response to an Accounting-Request, over a zeroed authenticator field, which is how
FreeRADIUS's own radclient computes and checks it); a reply that does not verify is "invalid"
and leaves its request outstanding. A request without a verified reply within --timeout is lost;
"stray" replies match nothing outstanding (late ones).
An Access-Reject counts as answered, and as a reject.

Modes: saturate (keep --window requests in flight for --duration seconds), pace (--rate requests
per second for --duration seconds, on a schedule, whatever the replies do; at most --window in
flight), burst (build --burst requests first, then send them all at once and wait). The report
is one JSON object on stdout: sent, answered, lost, invalid, stray, rejects, reply codes,
requests/s (answered / the time from the first send to the last reply), average, p50, p99 and
maximum latency, and this process's own CPU (user + system, a share of one core) during the run.

    .venv/bin/python bench/radload.py --server 127.0.0.1:1812 --secret S [--kind pap|acct|status]
        [--mode saturate|pace|burst] [--duration 10] [--window 256] [--rate 2000] [--burst 1000]
        [--users 1000] [--password PW] [--sockets 8] [--timeout 3]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import resource
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

try:  # CPython's own MD5 (HACL*): about half the cost per call of OpenSSL 3's behind hashlib
    from _md5 import md5 as _md5
except ImportError:  # pragma: no cover
    _md5 = hashlib.md5

ACCESS_REQUEST, ACCESS_ACCEPT, ACCESS_REJECT = 1, 2, 3
ACCOUNTING_REQUEST, ACCOUNTING_RESPONSE = 4, 5
ACCESS_CHALLENGE, STATUS_SERVER = 11, 12
CODE_NAMES = {ACCESS_ACCEPT: "Access-Accept", ACCESS_REJECT: "Access-Reject",
              ACCOUNTING_RESPONSE: "Accounting-Response", ACCESS_CHALLENGE: "Access-Challenge"}

USER_NAME, USER_PASSWORD, NAS_IP_ADDRESS, NAS_PORT, SERVICE_TYPE = 1, 2, 4, 5, 6
FRAMED_PROTOCOL, FRAMED_IP_ADDRESS, CALLING_STATION_ID = 7, 8, 31
ACCT_STATUS_TYPE, ACCT_DELAY_TIME, ACCT_INPUT_OCTETS, ACCT_OUTPUT_OCTETS = 40, 41, 42, 43
ACCT_SESSION_ID, ACCT_AUTHENTIC, ACCT_SESSION_TIME = 44, 45, 46
ACCT_INPUT_PACKETS, ACCT_OUTPUT_PACKETS, ACCT_TERMINATE_CAUSE = 47, 48, 49
EVENT_TIMESTAMP, NAS_PORT_TYPE, MESSAGE_AUTHENTICATOR = 55, 61, 80
START, STOP = 1, 2

KINDS = ("pap", "acct", "status")
MODES = ("saturate", "pace", "burst")
DEFAULT_PASSWORD = "bench-password"
BUFFER_BYTES = 4 << 20
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # Linux; the socket module names them from Python 3.12 on
_MA_HEAD = bytes([MESSAGE_AUTHENTICATOR, 18])
_MA_ZERO = _MA_HEAD + bytes(16)
_ZERO16 = bytes(16)
NO_TAG = -1  # see Packets


def bench_users(count: int, password: str = DEFAULT_PASSWORD) -> list[tuple[str, str]]:
    """The users every server of the benchmark knows: user0000, user0001, ... all with one password."""
    return [(f"user{i:04d}", password) for i in range(count)]


# --- encoding (RFC 2865 §5: type, length, value)


def attr(kind: int, value: bytes) -> bytes:
    if not 0 < len(value) <= 253:
        raise ValueError(f"attribute {kind}: {len(value)} bytes")
    return bytes([kind, 2 + len(value)]) + value


def attr_int(kind: int, value: int) -> bytes:
    return attr(kind, value.to_bytes(4, "big"))


def attr_ip(kind: int, address: str) -> bytes:
    return attr(kind, socket.inet_aton(address))


def pad16(password: bytes) -> bytes:
    """RFC 2865 §5.2: NULs up to a multiple of 16 bytes (16 for an empty password)."""
    return password + bytes(-len(password) % 16 if password else 16)


class Secret:
    """A shared secret, with the MD5 and HMAC-MD5 (RFC 2104) states after it computed once."""

    def __init__(self, secret: bytes) -> None:
        self.key = secret
        self._prefix = _md5(secret)
        block = (secret if len(secret) <= 64 else _md5(secret).digest()).ljust(64, b"\0")
        self._inner = _md5(bytes(b ^ 0x36 for b in block))
        self._outer = _md5(bytes(b ^ 0x5C for b in block))

    def md5_after(self, data: bytes) -> bytes:
        """MD5(secret + data)."""
        h = self._prefix.copy()
        h.update(data)
        return bytes(h.digest())

    def hmac_md5(self, data: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return bytes(outer.digest())


def hide_password(password: bytes, secret: Secret, authenticator: bytes) -> bytes:
    """RFC 2865 §5.2: c(1) = p(1) XOR MD5(S + RA), c(i) = p(i) XOR MD5(S + c(i-1))."""
    padded = pad16(password)
    out, previous = bytearray(), authenticator
    for i in range(0, len(padded), 16):
        mask = secret.md5_after(previous)
        previous = bytes(a ^ b for a, b in zip(padded[i:i + 16], mask, strict=True))
        out += previous
    return bytes(out)


def response_ok(reply: bytes, request_authenticator: bytes, secret: Secret, status: bool = False) -> bool:
    """The reply's Response Authenticator (RFC 2865 §3, RFC 2866 §4) and, when it has one, its
    Message-Authenticator (RFC 3579 §3.2) check out. The caller checked the length field."""
    if _md5(reply[:4] + request_authenticator + reply[20:] + secret.key).digest() != reply[4:20]:
        return False
    at, end = 20, len(reply)
    while at < end:
        if at + 2 > end or reply[at + 1] < 2 or at + reply[at + 1] > end:
            return False
        if reply[at] == MESSAGE_AUTHENTICATOR:
            if reply[at + 1] != 18:
                return False
            vector = _ZERO16 if reply[0] == ACCOUNTING_RESPONSE and not status else request_authenticator
            zeroed = reply[:4] + vector + reply[20:at + 2] + _ZERO16 + reply[at + 18:]
            return secret.hmac_md5(zeroed) == reply[at + 2:at + 18]
        at += reply[at + 1]
    return True


class Packets:
    """Builds each request the moment it is sent: ``build(identifier, sequence)`` gives the
    packet, its Request Authenticator and a tag (the session of an Accounting Start, -2 - the
    session of a Stop, NO_TAG for the rest). The sequence number picks the user, round robin."""

    def __init__(self, kind: str, secret: Secret, users: Sequence[tuple[str, str]], nas_ip: str = "127.0.0.1") -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        self.kind, self.secret = kind, secret
        self.stops_due: collections.deque[int] = collections.deque()  # sessions whose Start was answered
        self._sessions = iter(range(1 << 62))
        self._session_prefix = os.urandom(4).hex()  # Acct-Session-Ids unique across runs too
        self._random, self._random_at = b"", 0
        nas = attr_ip(NAS_IP_ADDRESS, nas_ip) + attr_int(NAS_PORT_TYPE, 15)  # Ethernet: PPPoE
        # per user: (User-Name, padded password, the same as an integer, the attributes after User-Password)
        self._pap: list[tuple[bytes, bytes, int, bytes]] = []
        self._acct: list[bytes] = []  # per user: the attributes of both Start and Stop
        for i, (name, password) in enumerate(users):
            mac = "-".join(f"{b:02X}" for b in (2, 0, *(i + 1).to_bytes(4)))
            station = attr(CALLING_STATION_ID, mac.encode())
            port = attr_int(NAS_PORT, i + 1)
            padded = pad16(password.encode())
            self._pap.append((attr(USER_NAME, name.encode()), padded, int.from_bytes(padded),
                              nas + port + attr_int(SERVICE_TYPE, 2) + attr_int(FRAMED_PROTOCOL, 1) + station))
            self._acct.append(attr(USER_NAME, name.encode()) + nas + port + station
                              + attr_ip(FRAMED_IP_ADDRESS, f"100.64.{(i >> 8) & 0xFF}.{i & 0xFF}")
                              + attr_int(ACCT_AUTHENTIC, 1) + attr_int(ACCT_DELAY_TIME, 0))
        self._stop_tail = b"".join((attr_int(ACCT_SESSION_TIME, 600), attr_int(ACCT_INPUT_OCTETS, 123_456_789),
                                    attr_int(ACCT_OUTPUT_OCTETS, 987_654_321), attr_int(ACCT_INPUT_PACKETS, 98_765),
                                    attr_int(ACCT_OUTPUT_PACKETS, 123_456), attr_int(ACCT_TERMINATE_CAUSE, 1)))
        self.build: Callable[[int, int], tuple[bytes, bytes, int]] = {
            "pap": self.pap, "acct": self.accounting, "status": self.status}[kind]

    def authenticator(self) -> bytes:
        """16 random bytes, from a pool refilled by one urandom call per 4 096 requests."""
        at = self._random_at
        if at + 16 > len(self._random):
            self._random, at = os.urandom(65536), 0
        self._random_at = at + 16
        return self._random[at:at + 16]

    def pap(self, ident: int, seq: int) -> tuple[bytes, bytes, int]:
        name, padded, as_int, rest = self._pap[seq % len(self._pap)]
        authenticator = self.authenticator()
        if len(padded) == 16:
            hidden = (as_int ^ int.from_bytes(self.secret.md5_after(authenticator))).to_bytes(16)
        else:
            hidden = hide_password(padded, self.secret, authenticator)
        attrs = name + bytes([USER_PASSWORD, 2 + len(hidden)]) + hidden + rest
        header = struct.pack("!BBH", ACCESS_REQUEST, ident, 38 + len(attrs))
        ma = self.secret.hmac_md5(header + authenticator + _MA_ZERO + attrs)
        return header + authenticator + _MA_HEAD + ma + attrs, authenticator, NO_TAG

    def status(self, ident: int, seq: int) -> tuple[bytes, bytes, int]:
        authenticator = self.authenticator()
        header = struct.pack("!BBH", STATUS_SERVER, ident, 38)
        ma = self.secret.hmac_md5(header + authenticator + _MA_ZERO)
        return header + authenticator + _MA_HEAD + ma, authenticator, NO_TAG

    def accounting(self, ident: int, seq: int) -> tuple[bytes, bytes, int]:
        if self.stops_due:
            session = self.stops_due.popleft()
            status, tag, tail = STOP, -2 - session, self._stop_tail
        else:
            session = next(self._sessions)
            status, tag, tail = START, session, b""
        attrs = (attr_int(ACCT_STATUS_TYPE, status)
                 + attr(ACCT_SESSION_ID, f"{self._session_prefix}-{session:09d}".encode())
                 + self._acct[session % len(self._acct)] + attr_int(EVENT_TIMESTAMP, int(time.time())) + tail)
        header = struct.pack("!BBH", ACCOUNTING_REQUEST, ident, 20 + len(attrs))
        authenticator = bytes(_md5(header + _ZERO16 + attrs + self.secret.key).digest())
        return header + authenticator + attrs, authenticator, tag

    def unsent(self, tag: int) -> None:
        """A request could not be sent: a Stop stays due (a Start just leaves a gap in the sessions)."""
        if tag <= -2:
            self.stops_due.appendleft(-2 - tag)

    def answered(self, tag: int) -> bool:
        """Note a verified reply; True when it completed a Start/Stop pair."""
        if tag >= 0:
            self.stops_due.append(tag)
        return tag <= -2


# --- the run


@dataclass
class Report:
    kind: str
    mode: str
    sent: int = 0
    answered: int = 0
    lost: int = 0
    invalid: int = 0  # replies whose authenticators did not verify
    stray: int = 0  # replies to nothing outstanding (after their request timed out)
    rejects: int = 0
    pairs: int = 0  # accounting: Stops answered (their Start was before)
    codes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    rps: float = 0.0
    avg_ms: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    cpu: float = 0.0  # this process, user + system, a share of one core, during the run
    sockets: int = 0


def _percentile(ordered: list[int], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] / 1e6 if ordered else 0.0


class Generator:
    """The sockets and the loop; one ``run()`` per instance."""

    def __init__(self, server: tuple[str, int], secret: str, kind: str, users: Sequence[tuple[str, str]], *,
                 sockets: int = 8, timeout: float = 3.0) -> None:
        self.server, self.kind, self.timeout = server, kind, timeout
        self.secret = Secret(secret.encode())
        self.packets = Packets(kind, self.secret, users)
        self.socks: list[socket.socket] = []
        for _ in range(sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.socks.append(sock)
            for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
                try:  # as root, beyond net.core.rmem_max
                    sock.setsockopt(socket.SOL_SOCKET, force, BUFFER_BYTES)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER_BYTES)
            sock.bind(("127.0.0.1", 0))
            sock.connect(server)
            sock.setblocking(False)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, mode: str, *, duration: float = 10.0, window: int = 256, rate: float = 2000.0,
            burst: int = 1000) -> Report:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        slots_total = 256 * len(self.socks)
        if mode == "burst":
            window = burst
        if not 0 < window <= slots_total:
            raise ValueError(f"{len(self.socks)} sockets carry 1 to {slots_total} requests in flight, not {window}")
        report = Report(self.kind, mode, sockets=len(self.socks))
        secret, packets, timeout_ns = self.secret, self.packets, int(self.timeout * 1e9)
        build, is_acct = packets.build, self.kind == "acct"
        sends = [s.send for s in self.socks]
        receivers = {s.fileno(): (i << 8, s.recv) for i, s in enumerate(self.socks)}
        poller = select.epoll()
        for s in self.socks:
            poller.register(s.fileno(), select.EPOLLIN)
        # a slot is socket << 8 | Identifier; the free ones in least-recently-used order, the sockets interleaved
        free = collections.deque((s << 8) | ident for ident in range(256) for s in range(len(self.socks)))
        popleft, release = free.popleft, free.append
        pending: list[tuple[int, bytes, int] | None] = [None] * slots_total  # (sent at, authenticator, tag)
        latencies: list[int] = []
        note_latency = latencies.append
        codes: collections.Counter[int] = collections.Counter()
        monotonic_ns = time.monotonic_ns
        seq = 0

        def receive(events: list[tuple[int, int]]) -> None:
            for fd, _ in events:
                base, recv = receivers[fd]
                while True:
                    try:
                        data = recv(4096)
                    except BlockingIOError:
                        break
                    except ConnectionRefusedError:  # ICMP port unreachable: nothing listens there
                        continue
                    now = monotonic_ns()
                    if len(data) < 20 or (data[2] << 8 | data[3]) != len(data):
                        report.invalid += 1
                        continue
                    slot = base | data[1]
                    entry = pending[slot]
                    if entry is None:
                        report.stray += 1
                    elif not response_ok(data, entry[1], secret, status=not is_acct):
                        report.invalid += 1
                    else:
                        pending[slot] = None
                        release(slot)
                        note_latency(now - entry[0])
                        codes[data[0]] += 1
                        if is_acct and packets.answered(entry[2]):
                            report.pairs += 1

        def expire(now: int) -> None:
            """Requests without a verified reply for longer than the timeout are lost."""
            for slot, entry in enumerate(pending):
                if entry is not None and now - entry[0] > timeout_ns:
                    pending[slot] = None
                    release(slot)
                    report.lost += 1

        def send(count: int) -> int:
            """Build and send up to ``count`` requests; how many went."""
            nonlocal seq
            for done in range(count):
                slot = popleft()
                packet, authenticator, tag = build(slot & 0xFF, seq)
                try:
                    sends[slot >> 8](packet)
                except (BlockingIOError, ConnectionRefusedError):  # a full send buffer; an ICMP error
                    free.appendleft(slot)
                    packets.unsent(tag)
                    return done
                pending[slot] = (monotonic_ns(), authenticator, tag)
                seq += 1
            return count

        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        started = last_reply = last_expiry = monotonic_ns()
        if mode == "burst":
            built = []
            for _ in range(burst):
                slot = popleft()
                built.append((slot, *build(slot & 0xFF, seq)))
                seq += 1
            usage_before = resource.getrusage(resource.RUSAGE_SELF)
            started = last_reply = monotonic_ns()
            for slot, packet, authenticator, tag in built:
                while True:
                    try:
                        sends[slot >> 8](packet)
                        break
                    except BlockingIOError:
                        select.select([], [self.socks[slot >> 8]], [], 0.01)
                pending[slot] = (monotonic_ns(), authenticator, tag)
        else:
            end_sending, interval, total = started + int(duration * 1e9), 1e9 / rate, int(duration * rate)
            while True:
                now = monotonic_ns()
                if now >= end_sending:
                    break
                room = window - (slots_total - len(free))
                if mode == "saturate":
                    send(room)
                    wait = 0.1
                else:
                    due = min(int((now - started) / interval) + 1, total)
                    if due > seq:
                        send(min(room, due - seq))
                    wait = max(0.0, min(0.1, (started + seq * interval - monotonic_ns()) / 1e9))
                events = poller.poll(wait)
                if events:
                    receive(events)
                    last_reply = monotonic_ns()
                if now - last_expiry > 100_000_000:
                    expire(now)
                    last_expiry = now
        report.sent = seq
        # the stragglers: every request in flight gets its reply or times out
        while len(free) < slots_total:
            now = monotonic_ns()
            expire(now)
            oldest = min(entry[0] for entry in pending if entry is not None) if len(free) < slots_total else now
            events = poller.poll(max(0.0, min(0.1, (oldest + timeout_ns - now) / 1e9)))
            if events:
                receive(events)
                last_reply = monotonic_ns()
        usage_after = resource.getrusage(resource.RUSAGE_SELF)
        elapsed = max(1e-9, (monotonic_ns() - started) / 1e9)
        poller.close()
        report.seconds = max(1e-9, (last_reply - started) / 1e9)
        report.answered = len(latencies)
        report.rps = report.answered / report.seconds
        report.rejects = codes.get(ACCESS_REJECT, 0)
        report.codes = {CODE_NAMES.get(c, str(c)): n for c, n in sorted(codes.items())}
        ordered = sorted(latencies)
        if ordered:
            report.avg_ms = sum(ordered) / len(ordered) / 1e6
            report.p50_ms, report.p99_ms = _percentile(ordered, 0.50), _percentile(ordered, 0.99)
            report.max_ms = ordered[-1] / 1e6
        cpu = usage_after.ru_utime + usage_after.ru_stime - usage_before.ru_utime - usage_before.ru_stime
        report.cpu = cpu / elapsed
        return report


def parse_server(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def load(server: tuple[str, int], secret: str, kind: str, mode: str, *, users: int = 1000,
         password: str = DEFAULT_PASSWORD, sockets: int = 8, timeout: float = 3.0, **run: Any) -> Report:
    """One run, with enough sockets for the requests in flight."""
    in_flight = run.get("burst", 1000) if mode == "burst" else run.get("window", 256)
    sockets = max(sockets, -(-in_flight // 256))
    with Generator(server, secret, kind, bench_users(users, password), sockets=sockets, timeout=timeout) as gen:
        return gen.run(mode, **run)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True, type=parse_server, help="host:port")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--kind", choices=KINDS, default="pap")
    parser.add_argument("--mode", choices=MODES, default="saturate")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (saturate, pace; default: %(default)s)")
    parser.add_argument("--window", type=int, default=256, help="requests in flight at most (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=2000.0, help="requests/s in pace mode (default: %(default)s)")
    parser.add_argument("--burst", type=int, default=1000, help="requests of a burst (default: %(default)s)")
    parser.add_argument("--users", type=int, default=1000, help="user0000, user0001, ... (default: %(default)s)")
    parser.add_argument("--password", default=DEFAULT_PASSWORD, help="every user's password")
    parser.add_argument("--sockets", type=int, default=8, help="source ports, at least (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds before a request is lost")
    args = parser.parse_args(argv)
    report = load(args.server, args.secret, args.kind, args.mode, users=args.users, password=args.password,
                  sockets=args.sockets, timeout=args.timeout, duration=args.duration, window=args.window,
                  rate=args.rate, burst=args.burst)
    json.dump(asdict(report), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
